//! Qwen-Image-Edit (`qwen-image-edit`): Qwen-Image's sampling loop conditioned on a source
//! image twice, as diffusers' `QwenImageEditPipeline` does it.
//!
//! 1. The source is resized (PIL Lanczos) to [`calculate_dimensions`] of [`CONDITION_PIXELS`] at
//!    its own aspect ratio: multiples of 32, about 1024² whatever the output size.
//! 2. **Vision branch**: the Qwen2-VL processor brings it to multiples of 28 (bicubic) and cuts
//!    it into patches; Qwen2.5-VL's vision tower turns each 2×2 patches into one feature. The edit
//!    template's `<|image_pad|>` is expanded to that many tokens whose embeddings are replaced by
//!    the features before the language model runs, with the image tokens at their 3-D M-RoPE
//!    positions (frame, row, column, from the placeholder's index) and the text after them
//!    continuing from the larger side of the grid, as transformers' `get_rope_index` gives them.
//!    The last hidden state less the template's first [`EDIT_DROP`] tokens is the prompt
//!    embedding (the image tokens stay in it; no `max_sequence_length` cut in the edit). The
//!    negative prompt is encoded the same way, with the same image.
//! 3. **VAE branch**: the same resized source through the VAE encoder (posterior mean,
//!    normalised by the per-channel mean and std), packed 2×2 and appended after the noise tokens
//!    at every step as RoPE frame 1; the transformer's output for them is dropped before CFG, and
//!    μ of the schedule counts the target tokens only (`super::pipeline::denoise`).
//!
//! The output size is the request's (the core resolves `size=auto` to the source's size). A
//! source always reaches the backend at the call size, so a source whose shape differs from the
//! requested size arrives centre-cropped to it. `strength` does not apply: the edit always
//! starts from pure noise, as diffusers' does.
//!
//! One trap in the reference: diffusers 0.42.1 calls transformers 5.23's model without the
//! processor's `mm_token_type_ids`, so its image tokens fall back to 1-D positions. Qwen-Image-Edit
//! was trained with transformers 4.x, which always derived the 3-D positions from the ids; Easel
//! uses those, and `scripts/parity/qwen_edit.py` passes the token types to the reference.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use image::DynamicImage;

use super::QwenModel;
use super::pipeline::{Condition, Prompts, cfg_scale, denoise, finish, initial_noise, negative_prompt};
use super::processor::{self, Filter, ProcessorConfig, calculate_dimensions};
use super::text::{QwenTextEncoder, QwenTokenizer};
use super::transformer::ImageShape;
use super::vision::Grid;
use crate::flow::pack;
use crate::pipeline::{Generate, Hooks, RunError};

/// Qwen-Image-Edit's template; `{}` is the prompt, `<|image_pad|>` the source image.
pub const EDIT_TEMPLATE: &str = "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n";
/// Hidden states dropped from the front (diffusers' `prompt_template_encode_start_idx`).
pub const EDIT_DROP: usize = 64;
/// The area the source is brought to before both branches (diffusers: `1024 * 1024`).
pub const CONDITION_PIXELS: u64 = 1024 * 1024;
const IMAGE_PAD: &str = "<|image_pad|>";

/// The source image prepared for both branches.
pub struct Source {
    /// The size both branches start from: [`calculate_dimensions`] of the condition area.
    pub width: u32,
    pub height: u32,
    /// The vision branch's flattened patches and their grid.
    pub patches: Vec<f32>,
    pub grid: Grid,
    /// The VAE branch's input `(1, 3, height, width)`, f32 in [−1, 1].
    pub pixels: Tensor,
}

/// Resizes the source to the condition area at its aspect ratio and prepares both branches.
pub fn prepare_source(image: &DynamicImage, area: u64, cfg: &ProcessorConfig, device: &Device) -> Result<Source> {
    let rgb = image.to_rgb8();
    ensure!(rgb.width() > 0 && rgb.height() > 0, "the source image is empty");
    let (width, height) = calculate_dimensions(area as f64, f64::from(rgb.width()) / f64::from(rgb.height()));
    ensure!(width > 0 && height > 0, "a {}x{} source is too narrow to edit", rgb.width(), rgb.height());
    let resized = processor::resize(&rgb, width, height, Filter::Lanczos)?;
    let (patches, grid) = processor::process(&resized, cfg)?;
    let pixels = Tensor::from_vec(processor::vae_pixels(&resized), (1, 3, height as usize, width as usize), device)?;
    Ok(Source { width, height, patches, grid, pixels })
}

/// The template's ids around `prompt` with the image placeholder expanded to `n` image tokens,
/// and the index of the first image token.
pub fn template_ids(tokenizer: &QwenTokenizer, prompt: &str, n: usize) -> Result<(Vec<u32>, usize)> {
    let pad = tokenizer.token_to_id(IMAGE_PAD).with_context(|| format!("the tokenizer has no {IMAGE_PAD} token"))?;
    let ids = tokenizer.encode(&EDIT_TEMPLATE.replace("{}", prompt), usize::MAX)?;
    let start = ids.iter().position(|&i| i == pad).context("the edit template lost its image placeholder")?;
    let mut out = Vec::with_capacity(ids.len() + n);
    out.extend_from_slice(&ids[..start]);
    out.extend(std::iter::repeat_n(pad, n));
    out.extend_from_slice(&ids[start + 1..]);
    Ok((out, start))
}

/// M-RoPE positions `(3, len)` (temporal, row, column streams, flattened stream-major) for a
/// sequence whose image tokens, `rows × cols` of them row-major, start at `start`.
pub fn mrope_positions(len: usize, start: usize, rows: usize, cols: usize) -> Vec<f32> {
    let n = rows * cols;
    let after = start + rows.max(cols);
    let mut streams = [Vec::with_capacity(len), Vec::with_capacity(len), Vec::with_capacity(len)];
    for i in 0..len {
        let p = if i < start {
            [i; 3]
        } else if i < start + n {
            let k = i - start;
            [start, start + k / cols, start + k % cols]
        } else {
            [after + (i - start - n); 3]
        };
        for (s, v) in streams.iter_mut().zip(p) {
            s.push(v as f32);
        }
    }
    streams.concat()
}

/// Prompt embeddings `(1, L, D)` of `prompt` through `text` (the model's encoder, on the device)
/// with the source's vision `features` `(n, D)` in place of its image tokens; `grid` is the
/// source's patch grid.
pub fn encode_with_image(
    model: &QwenModel,
    text: &QwenTextEncoder,
    prompt: &str,
    features: &Tensor,
    grid: Grid,
) -> Result<Tensor> {
    let merge = model.vision_config.as_ref().map_or(2, |v| v.spatial_merge_size);
    let (rows, cols) = (grid.h / merge, grid.w / merge);
    let n = features.dim(0)?;
    ensure!(n == rows * cols * grid.t, "{n} vision features for a {rows}x{cols} grid");
    let (ids, start) = template_ids(&model.tokenizer, prompt, n)?;
    ensure!(
        ids.len() > EDIT_DROP,
        "the edit template made {} tokens, no more than the {EDIT_DROP} it drops",
        ids.len()
    );
    let dev = &model.device;
    let embeds = text.embed(&Tensor::new(ids.as_slice(), dev)?.unsqueeze(0)?)?;
    let s = ids.len();
    let embeds = Tensor::cat(
        &[
            &embeds.narrow(1, 0, start)?,
            &features.to_dtype(embeds.dtype())?.unsqueeze(0)?,
            &embeds.narrow(1, start + n, s - start - n)?,
        ],
        1,
    )?;
    let positions = Tensor::from_vec(mrope_positions(s, start, rows, cols), (3, 1, s), dev)?;
    let hidden = text.forward_embeds(&embeds, Some(&positions), None)?;
    Ok(hidden.narrow(1, EDIT_DROP, s - EDIT_DROP)?)
}

/// Everything the loop needs from the source and the prompts.
pub fn prepare(
    model: &QwenModel,
    g: &Generate,
    image: &DynamicImage,
    area: u64,
    cfg: &ProcessorConfig,
) -> Result<(Prompts, Condition)> {
    let (Some(tower), Some(vcfg)) = (&model.vision, &model.vision_config) else {
        bail!("{} has no vision tower loaded", model.family.name())
    };
    let dev = &model.device;
    let source = prepare_source(image, area, cfg, dev)?;
    let f = model.vae_factor();
    let (w, h) = (source.width as usize, source.height as usize);
    ensure!(
        w.is_multiple_of(2 * f) && h.is_multiple_of(2 * f),
        "the condition size {w}x{h} does not pack into 2x2 latent tokens of {f} px"
    );
    let n = source.patches.len() / vcfg.patch_dim();
    let patches = Tensor::from_vec(source.patches, (n, vcfg.patch_dim()), dev)?;
    // One part on the device at a time when the model is over its budget: the tower, then the
    // language model.
    let features = tower.get()?.forward(&patches, &[source.grid])?;
    let text = model.text.get()?;
    let cond = encode_with_image(model, &text, &g.prompt, &features, source.grid)?;
    let uncond = if cfg_scale(g).is_some() {
        Some(encode_with_image(model, &text, negative_prompt(g), &features, source.grid)?)
    } else {
        None
    };
    drop(text);
    let latents = model.vae.encode(&source.pixels.to_dtype(model.dtype)?)?;
    let tokens = pack(&latents)?;
    let shape = ImageShape { frames: 1, rows: h / f / 2, cols: w / f / 2 };
    Ok((Prompts { cond, uncond }, Condition { tokens, shapes: vec![shape] }))
}

/// Runs an edit batch (one source image, one output per seed) and decodes it.
pub fn run(model: &QwenModel, g: &Generate, mut hooks: Hooks<'_>) -> Result<Vec<DynamicImage>, RunError> {
    let Some(init) = &g.init else {
        return Err(anyhow::anyhow!("{} edits an image: it needs a source image", model.family.name()).into());
    };
    if init.mask.is_some() {
        return Err(anyhow::anyhow!("{} has no inpainting: it takes no mask", model.family.name()).into());
    }
    let cfg = model.processor.clone().unwrap_or_default();
    let (prompts, condition) = prepare(model, g, &init.image, model.condition_pixels, &cfg)?;
    if (hooks.cancelled)() {
        return Err(RunError::Cancelled);
    }
    let latents = denoise(model, g, &prompts, Some(&condition), initial_noise(model, g)?, &mut hooks)?;
    finish(model, g, &latents, &mut hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest area `condition_pixels` allows still gives a 1:4 source both branches' sizes.
    #[test]
    fn a_wide_source_at_the_smallest_area_prepares_both_branches() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 16, image::Rgb([10, 20, 30])));
        let s = prepare_source(&img, 64 * 64, &ProcessorConfig::default(), &Device::Cpu).unwrap();
        assert_eq!((s.width, s.height), (128, 32));
        assert_eq!(s.pixels.dims(), [1, 3, 32, 128]);
        // smart_resize(32, 128) = (28, 140): 2 × 10 patches of 14 px.
        assert_eq!(s.grid, Grid { t: 1, h: 2, w: 10 });
        assert_eq!(s.patches.len(), 20 * 3 * 2 * 14 * 14);
    }

    /// transformers' `get_rope_index` for 3 text tokens, a 2×3 image block, 2 text tokens.
    #[test]
    fn mrope_positions_match_transformers() {
        let p = mrope_positions(11, 3, 2, 3);
        let (t, h, w) = (&p[0..11], &p[11..22], &p[22..33]);
        assert_eq!(t, [0., 1., 2., 3., 3., 3., 3., 3., 3., 6., 7.]);
        assert_eq!(h, [0., 1., 2., 3., 3., 3., 4., 4., 4., 6., 7.]);
        assert_eq!(w, [0., 1., 2., 3., 4., 5., 3., 4., 5., 6., 7.]);
    }
}
