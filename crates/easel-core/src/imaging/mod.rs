//! Pixel work: sniffing, decoding, encoding, resizing and compositing.
//!
//! Everything here is synchronous and CPU-bound; async callers run it through
//! [`tokio::task::spawn_blocking`] (see [`crate::service`]) so the runtime's worker threads stay
//! free for I/O. Codecs come from well-kept crates: `image` for decoding and PNG, libwebp
//! (through the `webp` crate) for lossy WebP, `fast_image_resize` for SIMD resampling. JPEG
//! encoding is Easel's own ([`jpeg`]): every encoder that builds with cargo and a C compiler alone
//! took two to six times Pillow's CPU (bench/pixels.md).

mod codec;
mod composite;
mod jpeg;
mod resize;

pub use codec::{DecodeLimits, EncodeSettings, Header, decode, decode_limited, encode, header, probe, probe_encoded};
pub use composite::{apply_mask, flatten, has_transparency};
pub use easel_types::sniff::sniff;
pub use resize::{resize_cover, resize_exact};

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unsupported image format: expected PNG, JPEG or WebP")]
    UnknownFormat,
    #[error("the image cannot be decoded: {0}")]
    Corrupt(String),
    #[error("the image is too large: {width}x{height} exceeds {max_pixels} pixels")]
    TooLarge { width: u32, height: u32, max_pixels: u64 },
    #[error(
        "the image is too large to decode: {width}x{height} in its color type takes {bytes} bytes, over the {max_bytes} this server decodes"
    )]
    TooManyBytes { width: u32, height: u32, bytes: u64, max_bytes: u64 },
}
