//! Pixel work: sniffing, decoding, encoding, resizing and compositing.
//!
//! Everything here is synchronous and CPU-bound; async callers run it through
//! [`tokio::task::spawn_blocking`] (see [`crate::service`]) so the runtime's worker threads stay
//! free for I/O. Codecs come from well-kept crates: `image` for decoding, PNG and JPEG, libwebp
//! (through the `webp` crate) for lossy WebP, `fast_image_resize` for SIMD resampling.

mod codec;
mod composite;
mod resize;

pub use codec::{DecodeLimits, EncodeSettings, Header, decode, decode_limited, encode, header, probe};
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

/// A PNG that is only a header: `IHDR` declaring `width` × `height` 16-bit RGBA, a few bytes
/// of `IDAT`, `IEND`. Decoders read the header without complaint; the pixels do not exist.
#[cfg(test)]
pub(crate) fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]); // 16-bit, RGBA, deflate, adaptive, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}
