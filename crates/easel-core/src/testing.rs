//! Builders for tests of backends (feature `testing`): a [`BackendCall`] as the core would make
//! it, without writing every field.

use std::sync::Arc;

use image::DynamicImage;

use crate::backend::{BackendCall, InputImage, SourcePixels};
use crate::imaging::{self, EncodeSettings};
use crate::request::Options;
use crate::types::{ImageSize, InputFormat, Operation, OutputFormat, Quality};

/// A [`BackendCall`] with test defaults: model `test`, one 64x64 image, quality `auto`, no
/// options. Images added with [`CallBuilder::image`] travel both as PNG bytes and, like the
/// core does for backends that take pixels, decoded at the call size.
#[derive(Debug)]
pub struct CallBuilder {
    call: BackendCall,
    sources: Vec<DynamicImage>,
    mask: Option<DynamicImage>,
}

impl CallBuilder {
    pub fn new(operation: Operation) -> Self {
        Self {
            call: BackendCall {
                operation,
                model: "test".into(),
                prompt: "a red fox in the snow".into(),
                images: Vec::new(),
                mask: None,
                pixels: None,
                n: 1,
                size: ImageSize::new(64, 64),
                size_auto: false,
                quality: Quality::Auto,
                partial_images: 0,
                options: Options::default(),
            },
            sources: Vec::new(),
            mask: None,
        }
    }

    pub fn generate() -> Self {
        Self::new(Operation::Generate)
    }

    pub fn model(mut self, id: &str) -> Self {
        self.call.model = id.into();
        self
    }

    pub fn prompt(mut self, prompt: &str) -> Self {
        self.call.prompt = prompt.into();
        self
    }

    pub fn n(mut self, n: u32) -> Self {
        self.call.n = n;
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.call.size = ImageSize::new(width, height);
        self
    }

    pub fn quality(mut self, quality: Quality) -> Self {
        self.call.quality = quality;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.call.options.extensions.seed = Some(seed);
        self
    }

    pub fn partial_images(mut self, partials: u8) -> Self {
        self.call.partial_images = partials;
        self
    }

    /// Changes the options in place.
    pub fn options(mut self, change: impl FnOnce(&mut Options)) -> Self {
        change(&mut self.call.options);
        self
    }

    /// Adds an input image (PNG bytes, and pixels when it is the first).
    pub fn image(mut self, image: &DynamicImage) -> Self {
        self.call.images.push(png_input(image));
        self.sources.push(image.clone());
        self
    }

    /// Adds an input image as bytes only, as an upstream backend receives it.
    pub fn input(mut self, input: InputImage) -> Self {
        self.call.images.push(input);
        self
    }

    /// Sets the mask (OpenAI's convention: transparent = edit).
    pub fn mask(mut self, mask: &DynamicImage) -> Self {
        self.call.mask = Some(png_input(mask));
        self.mask = Some(mask.clone());
        self
    }

    pub fn build(mut self) -> BackendCall {
        let size = self.call.size;
        if let Some(first) = self.sources.first() {
            let at = |image: &DynamicImage| Arc::new(imaging::resize_cover(image, size).expect("resize"));
            self.call.pixels = Some(SourcePixels { image: at(first), mask: self.mask.as_ref().map(at) });
        }
        self.call
    }
}

/// `image` as a PNG input image, its header already read.
pub fn png_input(image: &DynamicImage) -> InputImage {
    let bytes = imaging::encode(image, OutputFormat::Png, None, &EncodeSettings::default()).expect("encode");
    InputImage {
        bytes,
        format: InputFormat::Png,
        size: ImageSize::new(image.width(), image.height()),
        has_alpha: image.color().has_alpha(),
    }
}

/// Appends one PNG chunk (length, type, data, CRC) to `out`, for hand-made PNGs in tests.
pub fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = png_crc(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The CRC a PNG chunk carries over its type and data.
pub fn png_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A PNG that is only a header: `IHDR` declaring `width` × `height` at `bit_depth` and
/// `color_type`, a few bytes of `IDAT`, `IEND`. Decoders read the header without complaint; the
/// pixels do not exist (a decompression bomb when the size is large).
pub fn png_header_only(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// [`png_header_only`] declaring 16-bit RGBA: 8 bytes a pixel once decoded.
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    png_header_only(width, height, 16, 6)
}
