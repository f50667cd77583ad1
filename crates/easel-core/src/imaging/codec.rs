//! Decoding and encoding.
//!
//! PNG is written with `image`'s fast compression and adaptive filtering: the slowest zlib
//! settings cost ten times the time for a few percent of size. WebP is lossy through libwebp with
//! a configurable `method` (speed/size trade-off; `image`'s own WebP encoder is lossless only).
//! JPEG is Easel's own baseline encoder ([`super::jpeg`]), 4:2:0 like libjpeg's and Pillow's
//! defaults: RGB, RGBA (alpha dropped) and gray pixels go in without a conversion copy.
//!
//! Every decode is bounded twice before it starts: by pixels and by the bytes the decoded pixels
//! take, both read from the header ([`DecodeLimits`]), and then by the `image` crate's own
//! allocation limit while it runs. A compressed image is tiny next to what it decodes to, so the
//! size of the upload says nothing about the memory it costs.

use std::io::Cursor;

use bytes::Bytes;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageReader};

use super::jpeg::{self, Layout};
use super::{ImageError, sniff};
use crate::base64::ImageBytes;
use crate::types::{ImageSize, InputFormat, OutputFormat};

/// Encoder settings that are not per request.
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    /// JPEG quality when the request gives no `output_compression`.
    pub jpeg_quality: u8,
    /// WebP quality when the request gives no `output_compression`.
    pub webp_quality: u8,
    /// libwebp's method, 0 (fastest) to 6 (smallest).
    pub webp_method: u8,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        Self { jpeg_quality: 90, webp_quality: 80, webp_method: 1 }
    }
}

/// What an image's header says, without decoding its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: InputFormat,
    pub size: ImageSize,
    pub has_alpha: bool,
    /// The bytes its decoded pixels take: width × height × bytes per pixel of the color type the
    /// decoder produces (16-bit channels count two bytes).
    pub decoded_bytes: u64,
}

/// The most a decode may produce: pixels, and bytes of decoded pixels.
///
/// Both, because pixels alone do not bound memory: a PNG of a few hundred bytes can declare
/// 8192 × 8192 16-bit RGBA, 64 Mpx and 512 MiB once decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_bytes: u64,
}

impl DecodeLimits {
    /// The default byte budget of one decoded image: 64 Mpx of 8-bit RGBA.
    pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

    /// `max_pixels` with the default byte budget.
    pub const fn pixels(max_pixels: u64) -> Self {
        Self { max_pixels, max_bytes: Self::DEFAULT_MAX_BYTES }
    }

    /// Refuses a header over either limit.
    pub fn check(&self, header: &Header) -> Result<(), ImageError> {
        let (width, height) = (header.size.width, header.size.height);
        if header.size.pixels() > self.max_pixels {
            return Err(ImageError::TooLarge { width, height, max_pixels: self.max_pixels });
        }
        if header.decoded_bytes > self.max_bytes {
            return Err(ImageError::TooManyBytes {
                width,
                height,
                bytes: header.decoded_bytes,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }

    /// The `image` crate's own limits for a decode within these: its allocation cap covers the
    /// output buffer and the codec's working memory (JPEG decodes component planes of the same
    /// order as the output), so it is twice the byte budget; the budget itself was checked on the
    /// header before.
    fn for_image_crate(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.max_bytes.saturating_mul(2));
        limits
    }
}

/// The format, dimensions and channel layout of an image, from its header only.
pub fn header(bytes: &[u8]) -> Result<Header, ImageError> {
    let format = sniff(bytes).ok_or(ImageError::UnknownFormat)?;
    let reader = ImageReader::with_format(Cursor::new(bytes), image_format(format));
    let decoder = reader.into_decoder().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt("the image has no pixels".into()));
    }
    Ok(Header {
        format,
        size: ImageSize::new(width, height),
        has_alpha: decoder.color_type().has_alpha(),
        decoded_bytes: decoder.total_bytes(),
    })
}

/// The format and dimensions of an image, from its header only.
pub fn probe(bytes: &[u8]) -> Result<(InputFormat, ImageSize), ImageError> {
    header(bytes).map(|h| (h.format, h.size))
}

/// [`probe`] for bytes that may be base64 text: only the start is decoded, enough for the
/// header of nearly every image (all of it when the header lies further on, as a JPEG's may
/// after large metadata segments).
pub fn probe_encoded(bytes: &ImageBytes) -> Result<(InputFormat, ImageSize), ImageError> {
    const HEADER_BYTES: usize = 4096;
    let corrupt = |e: crate::base64::Base64Error| ImageError::Corrupt(e.to_string());
    // Raw bytes are their own prefix, so the fallback only ever applies to base64.
    let prefix = bytes.prefix(HEADER_BYTES).map_err(corrupt)?;
    probe(&prefix).or_else(|e| if prefix.len() < bytes.len() { probe(&bytes.raw().map_err(corrupt)?) } else { Err(e) })
}

/// Decodes a PNG, JPEG or WebP image, refusing images over `max_pixels` or over the default byte
/// budget ([`DecodeLimits::DEFAULT_MAX_BYTES`]).
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ImageError> {
    decode_limited(bytes, DecodeLimits::pixels(max_pixels))
}

/// Decodes a PNG, JPEG or WebP image within `limits`: the header is checked first, so an image
/// over either limit is refused before any pixel buffer exists, and the decode itself runs under
/// the `image` crate's allocation limit.
pub fn decode_limited(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage, ImageError> {
    let header = header(bytes)?;
    limits.check(&header)?;
    if header.format == InputFormat::Jpeg {
        jpeg_sampling_check(bytes)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format(header.format));
    reader.limits(limits.for_image_crate());
    // A decoder that panics on a hostile file (zune-jpeg 0.5.15 does on some, found by the
    // `image_decode` fuzz target) refuses that file; it does not take the request down with it.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| ImageError::Corrupt(format!("the {:?} decoder failed on this file", header.format)))?;
    decoded.map_err(|e| match e {
        image::ImageError::Limits(_) => ImageError::TooManyBytes {
            width: header.size.width,
            height: header.size.height,
            bytes: header.decoded_bytes,
            max_bytes: limits.max_bytes,
        },
        e => ImageError::Corrupt(e.to_string()),
    })
}

/// Refuses a JPEG whose frame samples a later component more finely than its first (the luma),
/// or with sampling factors outside 1–4. Such files are legal in principle and unheard of in
/// practice, and zune-jpeg 0.5.15 (the `image` crate's JPEG decoder) indexes past its buffers on
/// them: a panic, found by the `image_decode` fuzz target. The markers are walked as the decoder
/// walks them (segment lengths skipped, bytes between segments passed over) up to the first scan.
fn jpeg_sampling_check(bytes: &[u8]) -> Result<(), ImageError> {
    let refuse = |why: &str| Err(ImageError::Corrupt(format!("unsupported JPEG: {why}")));
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = bytes[i + 1];
        i += 2;
        match marker {
            0xFF | 0x00 => i -= 1,
            0x01 | 0xD0..=0xD8 => {}
            0xD9 | 0xDA => return Ok(()),
            _ => {
                let Some(len) = bytes.get(i..i + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
                    return Ok(());
                };
                let frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
                if frame && let Some(segment) = bytes.get(i + 2..(i + len).min(bytes.len())) {
                    let components = segment
                        .get(6..)
                        .unwrap_or_default()
                        .chunks_exact(3)
                        .take(usize::from(segment.get(5).copied().unwrap_or(0)));
                    let mut first = None;
                    for c in components {
                        let (h, v) = (c[1] >> 4, c[1] & 15);
                        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                            return refuse("a sampling factor outside 1-4");
                        }
                        let (fh, fv) = *first.get_or_insert((h, v));
                        if h > fh || v > fv {
                            return refuse("a colour component sampled more finely than the luma");
                        }
                    }
                }
                i += len;
            }
        }
    }
    Ok(())
}

fn image_format(format: InputFormat) -> image::ImageFormat {
    match format {
        InputFormat::Png => image::ImageFormat::Png,
        InputFormat::Jpeg => image::ImageFormat::Jpeg,
        InputFormat::Webp => image::ImageFormat::WebP,
    }
}

/// Encodes `image` as `format`. `compression` is OpenAI's `output_compression` (0-100, used as
/// the quality of JPEG and WebP; PNG is lossless and ignores it). JPEG drops any alpha channel,
/// so callers flatten transparent images first.
pub fn encode(
    image: &DynamicImage,
    format: OutputFormat,
    compression: Option<u8>,
    settings: &EncodeSettings,
) -> anyhow::Result<Bytes> {
    let mut out = Vec::with_capacity((image.width() * image.height()) as usize);
    match format {
        OutputFormat::Png => {
            let encoder = PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            match image {
                DynamicImage::ImageRgb8(rgb) => {
                    encoder.write_image(rgb, rgb.width(), rgb.height(), image::ExtendedColorType::Rgb8)?
                }
                DynamicImage::ImageRgba8(rgba) => {
                    encoder.write_image(rgba, rgba.width(), rgba.height(), image::ExtendedColorType::Rgba8)?
                }
                DynamicImage::ImageLuma8(l) => {
                    encoder.write_image(l, l.width(), l.height(), image::ExtendedColorType::L8)?
                }
                other if other.color().has_alpha() => {
                    let rgba = other.to_rgba8();
                    encoder.write_image(&rgba, rgba.width(), rgba.height(), image::ExtendedColorType::Rgba8)?
                }
                other => {
                    let rgb = other.to_rgb8();
                    encoder.write_image(&rgb, rgb.width(), rgb.height(), image::ExtendedColorType::Rgb8)?
                }
            }
        }
        OutputFormat::Jpeg => {
            let quality = compression.unwrap_or(settings.jpeg_quality).clamp(1, 100);
            let (width, height) = (image.width(), image.height());
            let mut samples = |raw: &[u8], layout: Layout, channels: usize| -> anyhow::Result<()> {
                // An `ImageBuffer` may sit on a longer buffer; the image is its start.
                let pixels = raw.get(..width as usize * height as usize * channels).unwrap_or(raw);
                Ok(jpeg::encode(pixels, layout, width, height, quality, &mut out)?)
            };
            match image {
                DynamicImage::ImageRgb8(rgb) => samples(rgb.as_raw(), Layout::Rgb, 3)?,
                DynamicImage::ImageRgba8(rgba) => samples(rgba.as_raw(), Layout::Rgba, 4)?,
                DynamicImage::ImageLuma8(gray) => samples(gray.as_raw(), Layout::Gray, 1)?,
                other => samples(other.to_rgb8().as_raw(), Layout::Rgb, 3)?,
            }
        }
        OutputFormat::Webp => {
            let quality = f32::from(compression.unwrap_or(settings.webp_quality).min(100));
            let encoder = match image {
                DynamicImage::ImageRgb8(rgb) => webp::Encoder::from_rgb(rgb, rgb.width(), rgb.height()),
                DynamicImage::ImageRgba8(rgba) => webp::Encoder::from_rgba(rgba, rgba.width(), rgba.height()),
                _ => return encode(&normalise(image), format, compression, settings),
            };
            let mut config = webp::WebPConfig::new().map_err(|()| anyhow::anyhow!("libwebp config init failed"))?;
            config.quality = quality;
            config.method = i32::from(settings.webp_method.min(6));
            config.lossless = 0;
            let memory =
                encoder.encode_advanced(&config).map_err(|e| anyhow::anyhow!("libwebp encoding failed: {e:?}"))?;
            out.extend_from_slice(&memory);
        }
    }
    Ok(Bytes::from(out))
}

/// RGB or RGBA 8-bit, the two layouts every encoder here takes directly.
fn normalise(image: &DynamicImage) -> DynamicImage {
    if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    #[test]
    fn jpegs_that_crash_the_decoder_are_refused() {
        // The `image_decode` fuzz target's finds (zune-jpeg 0.5.15 indexed past its buffer):
        // one with components sampled 1x1, 1x1, 2x4, refused before decoding, and one the
        // decoder panics on, refused when it does.
        let finer = include_bytes!("../../../../fuzz/seeds/image_decode/chroma-finer-than-luma.jpg");
        let err = decode(finer, 256 * 256).unwrap_err();
        assert!(err.to_string().contains("sampled more finely than the luma"), "{err}");
        let overrun = include_bytes!("../../../../fuzz/seeds/image_decode/zune-idct-overrun.jpg");
        let err = decode(overrun, 256 * 256).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt(_)), "{err}");
    }

    fn gradient() -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(48, 32, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, 90])))
    }

    #[test]
    fn every_format_round_trips_with_its_size() {
        let settings = EncodeSettings::default();
        for format in OutputFormat::ALL {
            let bytes = encode(&gradient(), *format, None, &settings).unwrap();
            let (sniffed, size) = probe(&bytes).unwrap();
            assert_eq!(sniffed.as_output(), *format);
            assert_eq!(size, ImageSize::new(48, 32));
            assert_eq!(decode(&bytes, u64::MAX).unwrap().width(), 48);
        }
    }

    #[test]
    fn jpeg_takes_every_pixel_layout() {
        let images = [
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(20, 12, image::Luma([90]))),
            DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(20, 12, image::LumaA([90, 7]))),
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(20, 12, Rgba([90, 90, 90, 0]))),
            DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(20, 12, Rgb([90 * 257u16; 3]))),
        ];
        for image in images {
            let bytes = encode(&image, OutputFormat::Jpeg, Some(90), &EncodeSettings::default()).unwrap();
            let back = decode(&bytes, u64::MAX).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), (20, 12));
            for channel in back.get_pixel(10, 6).0 {
                assert!(channel.abs_diff(90) <= 1, "{:?}: {channel}", image.color());
            }
        }
    }

    #[test]
    fn lossy_webp_keeps_alpha() {
        let rgba = RgbaImage::from_fn(16, 16, |x, _| Rgba([200, 10, 10, if x < 8 { 0 } else { 255 }]));
        let bytes =
            encode(&DynamicImage::ImageRgba8(rgba), OutputFormat::Webp, Some(70), &EncodeSettings::default()).unwrap();
        let back = decode(&bytes, u64::MAX).unwrap().to_rgba8();
        assert_eq!(back.get_pixel(0, 0)[3], 0);
        assert_eq!(back.get_pixel(15, 0)[3], 255);
    }

    #[test]
    fn a_tiny_png_declaring_half_a_gigabyte_is_refused_from_its_header() {
        let bomb = crate::testing::png_bomb(8192, 8192);
        assert!(bomb.len() < 100, "{} bytes", bomb.len());
        let header = header(&bomb).unwrap();
        assert_eq!(header.size.pixels(), 64 * 1024 * 1024, "within the default pixel limit");
        assert_eq!(header.decoded_bytes, 8192 * 8192 * 8, "16-bit RGBA is 8 bytes a pixel");
        let started = std::time::Instant::now();
        let refused = decode(&bomb, crate::limits::MAX_INPUT_PIXELS);
        assert!(started.elapsed() < std::time::Duration::from_millis(100), "took {:?}", started.elapsed());
        match refused {
            Err(ImageError::TooManyBytes { width: 8192, height: 8192, bytes, max_bytes }) => {
                assert_eq!((bytes, max_bytes), (512 * 1024 * 1024, DecodeLimits::DEFAULT_MAX_BYTES));
            }
            other => panic!("{other:?}"),
        }
        // The same bytes within a budget that admits them fail as corrupt, not by allocation.
        let wide = DecodeLimits { max_pixels: u64::MAX, max_bytes: 1 << 30 };
        assert!(matches!(decode_limited(&crate::testing::png_bomb(64, 64), wide), Err(ImageError::Corrupt(_))));
    }

    #[test]
    fn the_byte_budget_counts_the_color_type() {
        let rgb = encode(&gradient(), OutputFormat::Png, None, &EncodeSettings::default()).unwrap();
        assert_eq!(header(&rgb).unwrap().decoded_bytes, 48 * 32 * 3);
        let exact = DecodeLimits { max_pixels: u64::MAX, max_bytes: 48 * 32 * 3 };
        assert!(decode_limited(&rgb, exact).is_ok());
        let short = DecodeLimits { max_bytes: 48 * 32 * 3 - 1, ..exact };
        assert!(matches!(decode_limited(&rgb, short), Err(ImageError::TooManyBytes { .. })));
    }

    #[test]
    fn garbage_and_oversized_images_are_refused() {
        assert!(matches!(probe(b"not an image"), Err(ImageError::UnknownFormat)));
        assert!(matches!(probe(b"\x89PNG\r\n\x1a\ntruncated"), Err(ImageError::Corrupt(_))));
        let png = encode(&gradient(), OutputFormat::Png, None, &EncodeSettings::default()).unwrap();
        assert!(matches!(decode(&png, 100), Err(ImageError::TooLarge { .. })));
    }
}
