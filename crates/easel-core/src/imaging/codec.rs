//! Decoding and encoding.
//!
//! PNG is written with `image`'s fast compression and adaptive filtering: the slowest zlib
//! settings cost ten times the time for a few percent of size. WebP is lossy through libwebp with
//! a configurable `method` (speed/size trade-off; `image`'s own WebP encoder is lossless only).
//! JPEG goes through `jpeg-encoder` with its AVX2 paths and 4:2:0 chroma subsampling (what
//! libjpeg and Pillow do by default): about three times faster than `image`'s encoder.

use std::io::Cursor;

use bytes::Bytes;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageReader};

use super::{ImageError, sniff};
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
    Ok(Header { format, size: ImageSize::new(width, height), has_alpha: decoder.color_type().has_alpha() })
}

/// The format and dimensions of an image, from its header only.
pub fn probe(bytes: &[u8]) -> Result<(InputFormat, ImageSize), ImageError> {
    header(bytes).map(|h| (h.format, h.size))
}

/// Decodes a PNG, JPEG or WebP image, refusing images over `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ImageError> {
    let (format, size) = probe(bytes)?;
    if size.pixels() > max_pixels {
        return Err(ImageError::TooLarge { width: size.width, height: size.height, max_pixels });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format(format));
    reader.no_limits();
    reader.decode().map_err(|e| ImageError::Corrupt(e.to_string()))
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
            let rgb;
            let pixels = match image {
                DynamicImage::ImageRgb8(rgb) => rgb,
                other => {
                    rgb = other.to_rgb8();
                    &rgb
                }
            };
            let (width, height) = (u16::try_from(pixels.width())?, u16::try_from(pixels.height())?);
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
            encoder.encode(pixels.as_raw(), width, height, jpeg_encoder::ColorType::Rgb)?;
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
    fn lossy_webp_keeps_alpha() {
        let rgba = RgbaImage::from_fn(16, 16, |x, _| Rgba([200, 10, 10, if x < 8 { 0 } else { 255 }]));
        let bytes =
            encode(&DynamicImage::ImageRgba8(rgba), OutputFormat::Webp, Some(70), &EncodeSettings::default()).unwrap();
        let back = decode(&bytes, u64::MAX).unwrap().to_rgba8();
        assert_eq!(back.get_pixel(0, 0)[3], 0);
        assert_eq!(back.get_pixel(15, 0)[3], 255);
    }

    #[test]
    fn garbage_and_oversized_images_are_refused() {
        assert!(matches!(probe(b"not an image"), Err(ImageError::UnknownFormat)));
        assert!(matches!(probe(b"\x89PNG\r\n\x1a\ntruncated"), Err(ImageError::Corrupt(_))));
        let png = encode(&gradient(), OutputFormat::Png, None, &EncodeSettings::default()).unwrap();
        assert!(matches!(decode(&png, 100), Err(ImageError::TooLarge { .. })));
    }
}
