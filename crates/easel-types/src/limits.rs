//! The Images API's own limits: the same for every model, so each is written here once. Limits
//! that depend on the model (sizes, `n`, prompt length, the open-model extensions) live in the
//! model's `Capabilities` in `easel-core`; limits an operator sets live in the server's config,
//! with these as their defaults.

use crate::range::IntRange;

/// `output_compression`, 0-100 (the quality of JPEG and WebP output).
pub const OUTPUT_COMPRESSION: IntRange = IntRange::new(0, 100);

/// `partial_images`, 0-3 while streaming.
pub const PARTIAL_IMAGES: IntRange = IntRange::new(0, 3);

/// The most images one request may ask for (OpenAI's limit); a model may allow fewer.
pub const MAX_N: u32 = 10;

/// The most input images one edit may carry (OpenAI's limit); the default of
/// `images.max_input_images`, and a model may allow fewer.
pub const MAX_INPUT_IMAGES: usize = 16;

/// The most pixels one input image may have: the default of `images.max_input_pixels`.
pub const MAX_INPUT_PIXELS: u64 = 64 * 1024 * 1024;
