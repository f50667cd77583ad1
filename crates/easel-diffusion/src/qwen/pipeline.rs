//! Qwen-Image's sampling loop, as diffusers' `QwenImagePipeline` runs it.
//!
//! Noise is Easel's seeded host noise (one stream per image, so a seed gives the same image alone
//! or in a batch), drawn as `[B, C, h, w]` latents and packed 2×2. The schedule is FlowMatch
//! Euler with μ from the packed sequence length (the folder's scheduler config, or a
//! [`super::FlowPreset`]). Guidance is Qwen's "true CFG": when the scale is above 1 the negative
//! prompt gets its own forward (its own length, mask and RoPE), `neg + s·(cond − neg)` is
//! rescaled per token to the conditional prediction's norm over the 64 packed channels.
//!
//! `Generate.guidance_scale` is diffusers' `true_cfg_scale` (Qwen-Image has no distilled guidance
//! input, and diffusers ignores its `guidance_scale` for it). diffusers guides only when a
//! negative prompt is also given; the API always has one (empty by default), and an empty one is
//! sent as `" "`, as Qwen's own examples do. Scale ≤ 1 is one forward per step.
//!
//! The loop itself ([`denoise`]) takes prepared prompt embeddings and optional condition-image
//! tokens, so Qwen-Image-Edit (`super::edit`) runs the same code with its own prompt template and
//! its source images appended to the sequence.

use anyhow::Result;
use candle_core::{DType, Tensor};
use image::DynamicImage;

use super::QwenModel;
use super::text::{MAX_SEQUENCE_LENGTH, encode_prompt};
use super::transformer::{ImageShape, TextInput};
use crate::flow::{FlowSchedule, pack, unpack};
use crate::noise::BatchNoise;
use crate::pipeline::{Generate, Hooks, RunError, partial_steps, tensor_to_images};

/// The negative prompt sent when the request has none (Qwen's examples use `" "`).
pub const EMPTY_NEGATIVE: &str = " ";

/// Prompt embeddings for one batch: `[1, S, D]` each, repeated over the batch at each forward.
pub struct Prompts {
    pub cond: Tensor,
    /// Present when guiding.
    pub uncond: Option<Tensor>,
}

/// Condition images of an edit: their packed latents `[1, M, 4C]` (appended after the noise
/// tokens, repeated over the batch) and their shapes in packed tokens (RoPE frames 1, 2, ...).
pub struct Condition {
    pub tokens: Tensor,
    pub shapes: Vec<ImageShape>,
}

/// The true-CFG scale, when guiding (`guidance_scale > 1`).
pub fn cfg_scale(g: &Generate) -> Option<f64> {
    (g.guidance_scale > 1.0).then_some(g.guidance_scale)
}

/// The negative prompt as sent to the encoder.
pub fn negative_prompt(g: &Generate) -> &str {
    if g.negative_prompt.is_empty() { EMPTY_NEGATIVE } else { &g.negative_prompt }
}

/// Latent height and width (before packing) for the request's size.
pub fn latent_size(model: &QwenModel, g: &Generate) -> Result<(usize, usize)> {
    let m = model.size_multiple();
    if g.width == 0 || g.height == 0 || !g.width.is_multiple_of(m) || !g.height.is_multiple_of(m) {
        anyhow::bail!("{}x{} is not a multiple of {m}", g.width, g.height);
    }
    let f = model.vae_factor();
    Ok((g.height / f, g.width / f))
}

/// The packed initial noise `[B, N, 4C]`, one seeded stream per image.
pub fn initial_noise(model: &QwenModel, g: &Generate) -> Result<Tensor> {
    let (h, w) = latent_size(model, g)?;
    let c = model.vae.config().z_dim;
    let noise = BatchNoise::new(&g.seeds).draw((c, h, w), &model.device)?;
    pack(&noise)
}

/// Text-to-image prompt embeddings (and the negative's when guiding).
pub fn encode(model: &QwenModel, g: &Generate) -> Result<Prompts> {
    let text = model.text.get()?;
    let enc = |p: &str| encode_prompt(&text, &model.tokenizer, p, MAX_SEQUENCE_LENGTH, &model.device);
    let cond = enc(&g.prompt)?;
    let uncond = if cfg_scale(g).is_some() { Some(enc(negative_prompt(g))?) } else { None };
    Ok(Prompts { cond, uncond })
}

/// Runs a text-to-image batch and decodes it.
pub fn run(model: &QwenModel, g: &Generate, mut hooks: Hooks<'_>) -> Result<Vec<DynamicImage>, RunError> {
    if g.init.is_some() {
        return Err(
            anyhow::anyhow!("{} makes images from text only; it takes no source image", model.family.name()).into()
        );
    }
    let prompts = encode(model, g)?;
    let latents = denoise(model, g, &prompts, None, initial_noise(model, g)?, &mut hooks)?;
    finish(model, g, &latents, &mut hooks)
}

/// Decodes the final latents; emits the last partial image when the last step has one.
pub fn finish(
    model: &QwenModel,
    g: &Generate,
    latents: &Tensor,
    hooks: &mut Hooks<'_>,
) -> Result<Vec<DynamicImage>, RunError> {
    if (hooks.cancelled)() {
        return Err(RunError::Cancelled);
    }
    let images = tensor_to_images(&model.vae.decode(&latents.to_dtype(model.dtype)?)?)?;
    if partial_steps(g.partials, g.steps).contains(&(g.steps - 1)) {
        (hooks.partial)(images[0].clone());
    }
    if images.len() != g.seeds.len() {
        return Err(anyhow::anyhow!("the VAE returned {} images for a batch of {}", images.len(), g.seeds.len()).into());
    }
    Ok(images)
}

/// The denoising loop from packed noise `[B, N, 4C]`; returns the final latents `[B, C, h, w]`
/// (normalised, f32) of the target image.
pub fn denoise(
    model: &QwenModel,
    g: &Generate,
    prompts: &Prompts,
    condition: Option<&Condition>,
    noise: Tensor,
    hooks: &mut Hooks<'_>,
) -> Result<Tensor, RunError> {
    let (h, w) = latent_size(model, g)?;
    let b = g.seeds.len();
    let target = ImageShape { frames: 1, rows: h / 2, cols: w / 2 };
    let n = target.tokens();
    let mut shapes = vec![target];
    let cond_tokens = match condition {
        Some(c) => {
            shapes.extend(&c.shapes);
            Some(c.tokens.to_dtype(model.dtype)?.repeat((b, 1, 1))?)
        }
        None => None,
    };
    let sched = FlowSchedule::new(&model.flow, g.steps, model.flow.mu(n));
    let repeat = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(model.dtype)?.repeat((b, 1, 1))?) };
    let cond = repeat(&prompts.cond)?;
    let uncond = match (&prompts.uncond, cfg_scale(g)) {
        (Some(u), Some(s)) => Some((repeat(u)?, s)),
        _ => None,
    };
    let mut latents = noise.to_dtype(model.dtype)?;
    let partial_at = partial_steps(g.partials, g.steps);
    let transformer = model.transformer.get()?;
    for i in 0..g.steps {
        if (hooks.cancelled)() {
            return Err(RunError::Cancelled);
        }
        let t = vec![sched.model_t(i); b];
        let input = match &cond_tokens {
            Some(c) => Tensor::cat(&[&latents, c], 1)?,
            None => latents.clone(),
        };
        let velocity = |text: &Tensor| -> Result<Tensor> {
            let v = transformer.forward(&input, TextInput { embeds: text, mask: None }, &t, &shapes)?;
            Ok(v.narrow(1, 0, n)?)
        };
        let mut v = velocity(&cond)?;
        if let Some((neg_text, scale)) = &uncond {
            v = guide(&v, &velocity(neg_text)?, *scale)?;
        }
        // The first image's clean estimate, before the step; after the last step it is the final
        // latent, which `finish` decodes once.
        let x0 = (partial_at.contains(&i) && i + 1 < g.steps)
            .then(|| sched.x0(&latents.narrow(0, 0, 1)?, &v.narrow(0, 0, 1)?, i))
            .transpose()?;
        latents = sched.step(&latents, &v, i)?;
        if let Some(x0) = x0 {
            let preview = model.vae.decode(&unpack(&x0, h, w)?.to_dtype(model.dtype)?)?;
            (hooks.partial)(tensor_to_images(&preview)?.remove(0));
        }
        (hooks.step)(i + 1, g.steps);
    }
    Ok(unpack(&latents, h, w)?.to_dtype(DType::F32)?)
}

/// True CFG with Qwen's rescale: `neg + s·(cond − neg)`, scaled per token to `‖cond‖ / ‖comb‖`
/// (L2 over the last dimension), in the prediction's dtype as diffusers computes it.
pub fn guide(cond: &Tensor, neg: &Tensor, scale: f64) -> Result<Tensor> {
    let comb = (neg + ((cond - neg)? * scale)?)?;
    let norm = |t: &Tensor| -> Result<Tensor> { Ok(t.sqr()?.sum_keepdim(candle_core::D::Minus1)?.sqrt()?) };
    Ok(comb.broadcast_mul(&norm(cond)?.broadcast_div(&norm(&comb)?)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn guidance_keeps_the_conditional_norm_per_token() {
        let dev = Device::Cpu;
        let cond = Tensor::new(&[[[3f32, 4.0], [1.0, 0.0]]], &dev).unwrap();
        let neg = Tensor::new(&[[[0f32, 1.0], [0.0, 1.0]]], &dev).unwrap();
        let out: Vec<Vec<f32>> = guide(&cond, &neg, 4.0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        // Token 0: comb = (12, 13), rescaled to norm 5.
        let n0 = (out[0][0].powi(2) + out[0][1].powi(2)).sqrt();
        assert!((n0 - 5.0).abs() < 1e-5 && (out[0][0] / out[0][1] - 12.0 / 13.0).abs() < 1e-6, "{out:?}");
        // Token 1: comb = (4, -3), rescaled to norm 1.
        assert!((out[1][0] - 0.8).abs() < 1e-6 && (out[1][1] + 0.6).abs() < 1e-6, "{out:?}");
    }
}
