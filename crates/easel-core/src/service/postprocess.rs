//! What the core does to each image a backend returns so the client gets what it asked for.
//!
//! Bytes that already match (format, size, no mask, no background change) pass through without
//! a decode: relaying a provider's PNG costs no pixel work, and a provider's base64 text reaches
//! the client as it came (only the header is decoded, to read the size). [`passes_through`] says
//! so before any pixel work is queued.

use crate::base64::ImageBytes;
use image::{DynamicImage, Rgb};

use crate::backend::OutputImage;
use crate::imaging::{self, DecodeLimits, EncodeSettings};
use crate::job::{FinalImage, ImageJob};
use crate::types::{Background, ImageSize, OutputFormat};

use super::ServiceSettings;

#[derive(Debug, Clone)]
pub(super) struct Finish {
    size: ImageSize,
    /// The backend picked the size (`size=auto` passed on): its images keep theirs.
    keep_size: bool,
    format: OutputFormat,
    compression: Option<u8>,
    background: Background,
    encode: EncodeSettings,
    /// For the backend's images: up to four times the job's pixels (a backend may make more than
    /// asked, the core resizes), and the byte budget or 8-bit RGBA at that many pixels, whichever
    /// is larger.
    limits: DecodeLimits,
}

impl Finish {
    pub(super) fn for_job(job: &ImageJob, settings: &ServiceSettings) -> Self {
        Self {
            size: job.size,
            keep_size: job.size_auto,
            format: job.options.output_format,
            compression: job.options.output_compression,
            background: job.options.background,
            encode: settings.encode,
            limits: {
                let max_pixels = settings.max_input_pixels.max(job.size.pixels() * 4);
                DecodeLimits { max_pixels, max_bytes: settings.max_decoded_bytes.max(max_pixels.saturating_mul(4)) }
            },
        }
    }
}

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// The image as delivered when its encoded bytes already match (format, size, no mask, no
/// background to flatten): `Ok(None)` when pixel work is needed. Reads the header only.
pub(super) fn passes_through(image: &OutputImage, params: &Finish, masked: bool) -> anyhow::Result<Option<FinalImage>> {
    let OutputImage::Encoded { bytes, format } = image else { return Ok(None) };
    if *format != params.format || masked || params.background == Background::Opaque {
        return Ok(None);
    }
    let (_, size) = imaging::probe_encoded(bytes)?;
    let untouched = params.keep_size || size == params.size;
    Ok(untouched.then(|| FinalImage { bytes: bytes.clone(), format: *format, size }))
}

pub(super) fn finish(
    image: OutputImage,
    params: &Finish,
    source: Option<&DynamicImage>,
    mask: Option<&DynamicImage>,
) -> anyhow::Result<FinalImage> {
    if let Some(done) = passes_through(&image, params, mask.is_some())? {
        return Ok(done);
    }
    let pixels = match image {
        OutputImage::Encoded { bytes, .. } => imaging::decode_limited(&bytes.raw()?, params.limits)?,
        OutputImage::Pixels(pixels) => pixels,
    };
    let size = if params.keep_size { ImageSize::new(pixels.width(), pixels.height()) } else { params.size };
    let mut pixels = imaging::resize_cover(&pixels, size)?;
    if let (Some(source), Some(mask)) = (source, mask) {
        // Both already have the delivered size (see `decode_sources`): only generations, which
        // have no mask, leave the size to the backend.
        pixels = imaging::apply_mask(&pixels, source, mask);
    }
    if params.format == OutputFormat::Jpeg || params.background == Background::Opaque {
        pixels = imaging::flatten(&pixels, WHITE);
    }
    let bytes = imaging::encode(&pixels, params.format, params.compression, &params.encode)?;
    Ok(FinalImage { bytes: bytes.into(), format: params.format, size })
}

/// Partial images are previews: encoded in the job's format at whatever size they come.
/// A relayed partial already in the job's format stays as it came (its base64 text too).
pub(super) fn finish_partial(image: OutputImage, params: &Finish) -> anyhow::Result<ImageBytes> {
    let pixels = match image {
        OutputImage::Encoded { bytes, format } if format == params.format => return Ok(bytes),
        OutputImage::Encoded { bytes, .. } => imaging::decode_limited(&bytes.raw()?, params.limits)?,
        OutputImage::Pixels(pixels) => pixels,
    };
    let pixels = if params.format == OutputFormat::Jpeg { imaging::flatten(&pixels, WHITE) } else { pixels };
    Ok(imaging::encode(&pixels, params.format, params.compression, &params.encode)?.into())
}

#[cfg(test)]
mod tests {
    use image::{Rgba, RgbaImage};

    use super::*;
    use crate::base64::{Base64, ImageBytes};

    fn params(keep_size: bool) -> Finish {
        Finish {
            size: ImageSize::new(64, 64),
            keep_size,
            format: OutputFormat::Png,
            compression: None,
            background: Background::Auto,
            encode: EncodeSettings::default(),
            limits: DecodeLimits { max_pixels: 1 << 20, max_bytes: 1 << 24 },
        }
    }

    fn solid(w: u32, h: u32, rgba: [u8; 4]) -> DynamicImage {
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(w, h, Rgba(rgba)))
    }

    #[test]
    fn a_size_the_backend_picked_is_kept() {
        let made = || OutputImage::Pixels(solid(96, 64, [1, 2, 3, 255]));
        assert_eq!(finish(made(), &params(true), None, None).unwrap().size, ImageSize::new(96, 64));
        assert_eq!(finish(made(), &params(false), None, None).unwrap().size, ImageSize::new(64, 64), "resized");
        // Encoded bytes of the size the backend picked pass through untouched.
        let png = imaging::encode(&solid(96, 64, [1, 2, 3, 255]), OutputFormat::Png, None, &EncodeSettings::default())
            .unwrap();
        let kept = finish(
            OutputImage::Encoded { bytes: png.clone().into(), format: OutputFormat::Png },
            &params(true),
            None,
            None,
        )
        .unwrap();
        assert_eq!((kept.size, kept.bytes), (ImageSize::new(96, 64), png.into()));
    }

    fn base64_png(w: u32, h: u32) -> ImageBytes {
        let png = imaging::encode(&solid(w, h, [9, 8, 7, 255]), OutputFormat::Png, None, &EncodeSettings::default());
        ImageBytes::Base64(Base64::encode(&png.unwrap()))
    }

    #[test]
    fn base64_that_matches_is_delivered_as_the_same_text() {
        let text = base64_png(64, 64);
        let made = OutputImage::Encoded { bytes: text.clone(), format: OutputFormat::Png };
        let done = finish(made, &params(false), None, None).unwrap();
        let (ImageBytes::Base64(given), ImageBytes::Base64(kept)) = (&text, &done.bytes) else {
            panic!("passed through as base64, not {:?}", done.bytes)
        };
        assert_eq!(kept.as_bytes().as_ptr(), given.as_bytes().as_ptr(), "the same text, not a copy");
        assert_eq!(done.size, ImageSize::new(64, 64));
    }

    #[test]
    fn base64_that_needs_a_change_is_decoded_and_encoded_again() {
        let made = || OutputImage::Encoded { bytes: base64_png(96, 64), format: OutputFormat::Png };
        let resized = finish(made(), &params(false), None, None).unwrap();
        assert!(matches!(resized.bytes, ImageBytes::Raw(_)), "resized: {:?}", resized.bytes);
        assert_eq!(imaging::probe_encoded(&resized.bytes).unwrap().1, ImageSize::new(64, 64));
        let jpeg = Finish { format: OutputFormat::Jpeg, ..params(true) };
        let converted = finish(made(), &jpeg, None, None).unwrap();
        assert!(matches!(&converted.bytes, ImageBytes::Raw(b) if b.starts_with(&[0xFF, 0xD8])), "converted to JPEG");
        let opaque = Finish { background: Background::Opaque, ..params(true) };
        assert!(matches!(finish(made(), &opaque, None, None).unwrap().bytes, ImageBytes::Raw(_)), "flattened");
        assert!(passes_through(&made(), &params(true), true).unwrap().is_none(), "a mask to composite");
        assert!(passes_through(&made(), &params(true), false).unwrap().is_some(), "the size the backend picked");
    }

    #[test]
    fn base64_whose_header_is_not_an_image_fails() {
        let made =
            OutputImage::Encoded { bytes: ImageBytes::Base64(Base64::encode(&[7; 9000])), format: OutputFormat::Png };
        assert!(finish(made, &params(true), None, None).is_err());
    }
}
