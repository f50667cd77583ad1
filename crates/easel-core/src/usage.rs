//! Token accounting in OpenAI's image usage shape.
//!
//! OpenAI bills image models in tokens, and clients parse `usage` strictly (LiteLLM validates
//! `input_tokens_details`), so Easel reports the same shape for every model it serves:
//! - input text tokens: the prompt counted with the `o200k_base` BPE (the GPT image models'
//!   tokenizer);
//! - input image tokens: per input image, 65 + 129 per 512-pixel tile after scaling the short side
//!   to 512 (the community-measured gpt-image-1 rule; `docs/architecture.md` links the sources);
//! - output tokens: OpenAI's table for 1024x1024, 1024x1536 and 1536x1024, and the gpt-image-2
//!   formula for every other size; `standard` counts as `medium`, `hd` and `auto` as `high`.
//!   Each partial image adds 100.
//!
//! Upstream backends that report usage pass it through instead (see [`crate::backend::BackendOutput`]).

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::types::{ImageSize, Quality};
pub use easel_types::usage::Usage;

/// Loaded on first use: the vocabulary costs about 30 MB of memory an idle server need not hold.
fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Prompt tokens with the o200k_base BPE.
pub fn text_tokens(text: &str) -> u64 {
    match bpe() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        // The vocabulary is compiled in, so this cannot fail in practice; a rough estimate beats
        // failing a request over accounting.
        None => text.len().div_ceil(4) as u64,
    }
}

/// Input tokens for one image of `size`.
pub fn image_tokens(size: ImageSize) -> u64 {
    let (w, h) = (f64::from(size.width), f64::from(size.height));
    let scale = 512.0 / w.min(h);
    let (w, h) = (w * scale, h * scale);
    let tiles = ((w / 512.0).ceil() * (h / 512.0).ceil()) as u64;
    65 + 129 * tiles
}

/// Output tokens for one image of `size` at `quality`.
pub fn output_tokens(size: ImageSize, quality: Quality) -> u64 {
    let level = match quality {
        Quality::Low => 0,
        Quality::Medium | Quality::Standard => 1,
        Quality::High | Quality::Hd | Quality::Auto => 2,
    };
    let table = |a: u64, b: u64, c: u64| [a, b, c][level];
    match (size.width, size.height) {
        (1024, 1024) => table(272, 1056, 4160),
        (1024, 1536) => table(408, 1584, 6240),
        (1536, 1024) => table(400, 1568, 6208),
        (w, h) => {
            // gpt-image-2 (community-derived, matches every published figure).
            let qf: u64 = [16, 48, 96][level];
            let (w, h) = (u64::from(w), u64::from(h));
            let (long, short) = (w.max(h), w.min(h));
            let sf = (2 * qf * short + long) / (2 * long);
            (qf * sf * (2_000_000 + w * h)).div_ceil(4_000_000)
        }
    }
}

/// Usage of a request computed by Easel.
pub fn estimate(
    prompt: &str,
    inputs: impl IntoIterator<Item = ImageSize>,
    output: ImageSize,
    quality: Quality,
    images_out: u32,
    partials: u32,
) -> Usage {
    Usage {
        input_text_tokens: text_tokens(prompt),
        input_image_tokens: inputs.into_iter().map(image_tokens).sum(),
        output_tokens: output_tokens(output, quality) * u64::from(images_out) + 100 * u64::from(partials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tokens_follow_the_published_figures() {
        assert_eq!(output_tokens(ImageSize::new(1024, 1024), Quality::Low), 272);
        assert_eq!(output_tokens(ImageSize::new(1536, 1024), Quality::High), 6208);
        // gpt-image-2 formula data points from the reference.
        assert_eq!(output_tokens(ImageSize::new(3840, 2160), Quality::Low), 371);
        assert_eq!(output_tokens(ImageSize::new(3840, 2160), Quality::Medium), 3336);
        assert_eq!(output_tokens(ImageSize::new(3840, 2160), Quality::High), 13342);
    }

    #[test]
    fn input_tokens() {
        assert_eq!(image_tokens(ImageSize::new(512, 512)), 194);
        assert_eq!(image_tokens(ImageSize::new(1024, 512)), 65 + 129 * 2);
        assert_eq!(text_tokens("A cute baby sea otter"), 6);
        let u = estimate("hi", [ImageSize::new(512, 512)], ImageSize::new(1024, 1024), Quality::Low, 2, 1);
        assert_eq!(u.total_tokens(), u.input_text_tokens + 194 + 2 * 272 + 100);
    }
}
