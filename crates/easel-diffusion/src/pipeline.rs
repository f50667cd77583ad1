//! One batch of images through text encoding, the denoising loop and the VAE.
//!
//! Owns what candle leaves to its examples: classifier-free guidance with `[uncond, cond]`
//! batched through one UNet call, seeded host noise, img2img with `strength`, inpainting both with
//! 9-channel UNets and by latent blending for ordinary ones, SDXL conditioning, previews of the
//! predicted clean image, and cancellation between steps.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, GrayImage, RgbImage};

use crate::model::Model;
use crate::noise::BatchNoise;
use crate::scheduler::{Scheduler, SchedulerKind};
use crate::unet::AddedCond;

/// How partial images are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preview {
    /// A full VAE decode of the predicted clean latent.
    Vae,
    /// A fixed linear map from the 4 latent channels to RGB, upscaled: nearly free, blurry.
    Approx,
    /// The tiny autoencoder (`tiny_vae`): several times cheaper than the VAE, close but lossy.
    Taesd,
}

/// What decodes the final latents: the model's VAE (default) or, when a model's config asks,
/// its tiny autoencoder (faster, lower quality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoder {
    #[default]
    Vae,
    Taesd,
}

/// The source of an edit, already at the output size.
pub struct InitImage {
    /// Shared with the core's decoded source: read, never changed.
    pub image: std::sync::Arc<DynamicImage>,
    /// 255 where the model repaints (the OpenAI mask's transparent pixels), 0 where it keeps.
    pub mask: Option<GrayImage>,
    pub strength: f64,
}

pub struct Generate {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    /// One seed per image of the batch.
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub guidance_scale: f64,
    pub scheduler: SchedulerKind,
    pub init: Option<InitImage>,
    /// Partial images wanted (of the first image of the batch).
    pub partials: u32,
    pub preview: Preview,
}

#[derive(Debug)]
pub enum RunError {
    Cancelled,
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for RunError {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

/// Hooks the loop calls back into.
pub struct Hooks<'a> {
    pub cancelled: &'a dyn Fn() -> bool,
    pub partial: &'a mut dyn FnMut(DynamicImage),
    /// After each step: the steps done and the steps this batch runs.
    pub step: &'a mut dyn FnMut(usize, usize),
}

/// Text conditioning for one batch: `[uncond × b, cond × b]` under guidance.
pub struct Conditioning {
    pub context: Tensor,
    pub added: Option<AddedCond>,
}

/// Encodes `[negative, prompt]` (only the prompt without guidance), repeated for `b` images.
pub fn encode_text(
    model: &Model,
    prompts: [&str; 2],
    cfg: bool,
    b: usize,
    size: (usize, usize),
) -> Result<Conditioning> {
    let dev = &model.device;
    let list: Vec<&str> = if cfg { prompts.to_vec() } else { vec![prompts[1]] };
    let mut contexts = Vec::new();
    let mut pooled = Vec::new();
    for (k, text) in list.iter().enumerate() {
        let is_negative = cfg && k == 0;
        let mut parts = Vec::new();
        let encoders: Vec<&crate::model::TextEncoder> =
            std::iter::once(&model.text).chain(model.text2.as_ref()).collect();
        let mut last_pooled = None;
        for enc in encoders {
            let tokens = enc.tokenizer.encode(text)?;
            if tokens.dropped > 0 {
                tracing::info!(dropped = tokens.dropped, "prompt longer than 77 CLIP tokens; the end was truncated");
            }
            let ids = Tensor::new(tokens.ids.as_slice(), dev)?.unsqueeze(0)?;
            let out = enc.model.forward(&ids, enc.tokenizer.eos())?;
            parts.push(if model.family.is_xl() { out.penultimate } else { out.last });
            last_pooled = Some(out.pooled);
        }
        let mut ctx = Tensor::cat(&parts, 2)?;
        let mut pool = last_pooled.expect("at least one encoder");
        if is_negative && text.is_empty() && model.zeros_for_empty_prompt {
            ctx = ctx.zeros_like()?;
            pool = pool.zeros_like()?;
        }
        contexts.push(ctx.repeat((b, 1, 1))?);
        pooled.push(pool.repeat((b, 1))?);
    }
    let context = Tensor::cat(&contexts, 0)?.to_dtype(model.dtype)?;
    let added = if model.family.is_xl() {
        let rows = context.dim(0)?;
        let (h, w) = (size.0 as f32, size.1 as f32);
        let ids: Vec<f32> = (0..rows).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
        Some(AddedCond {
            text_embeds: Tensor::cat(&pooled, 0)?.to_dtype(model.dtype)?,
            time_ids: Tensor::from_vec(ids, (rows, 6), dev)?,
        })
    } else {
        None
    };
    Ok(Conditioning { context, added })
}

/// An RGB image → `(1, 3, h, w)` in [-1, 1], f32.
pub fn image_to_tensor(img: &DynamicImage, dev: &Device) -> Result<Tensor> {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let t = Tensor::from_vec(rgb.into_raw(), (h as usize, w as usize, 3), dev)?.permute((2, 0, 1))?;
    Ok(((t.to_dtype(DType::F32)? / 127.5)? - 1.0)?.unsqueeze(0)?)
}

/// `(b, 3, h, w)` in [-1, 1] → images.
pub fn tensor_to_images(t: &Tensor) -> Result<Vec<DynamicImage>> {
    let t = ((t.to_dtype(DType::F32)?.clamp(-1.0, 1.0)? + 1.0)? * 127.5)?.round()?.to_dtype(DType::U8)?;
    let (b, _, h, w) = t.dims4()?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let data: Vec<u8> = t.get(i)?.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
        let img = RgbImage::from_raw(w as u32, h as u32, data).expect("buffer matches its dimensions");
        out.push(DynamicImage::ImageRgb8(img));
    }
    Ok(out)
}

/// Community-measured linear map from SD latents to RGB, for cheap previews.
const LATENT_RGB: [[f32; 3]; 4] =
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]];

fn preview(model: &Model, x0: &Tensor, kind: Preview) -> Result<DynamicImage> {
    let x0 = x0.narrow(0, 0, 1)?;
    let pixels = match kind {
        Preview::Vae => model.vae.decode(&x0)?,
        Preview::Taesd => tiny_vae(model)?.decode(&x0.to_dtype(model.dtype)?)?,
        Preview::Approx => {
            let m = Tensor::new(&LATENT_RGB, x0.device())?;
            let (_, c, h, w) = x0.dims4()?;
            let flat = x0.to_dtype(DType::F32)?.reshape((c, h * w))?.t()?.matmul(&m)?;
            let f = model.latent_factor();
            flat.t()?.reshape((1, 3, h, w))?.upsample_nearest2d(h * f, w * f)?
        }
    };
    Ok(tensor_to_images(&pixels)?.remove(0))
}

fn tiny_vae(model: &Model) -> Result<&crate::taesd::TinyVae> {
    model.tiny_vae.as_ref().ok_or_else(|| anyhow::anyhow!("taesd needs a tiny_vae folder in the model's config"))
}

/// Scaled latents → pixels in [-1, 1], through the model's final decoder.
pub fn decode(model: &Model, latents: &Tensor) -> Result<Tensor> {
    match model.decoder {
        Decoder::Vae => model.vae.decode(latents),
        Decoder::Taesd => tiny_vae(model)?.decode(&latents.to_dtype(model.dtype)?),
    }
}

/// Which steps (0-based, of those that run) end with a partial image.
pub fn partial_steps(partials: u32, steps: usize) -> Vec<usize> {
    let k = (partials as usize).min(steps);
    let mut v: Vec<usize> = (1..=k).map(|m| (m * steps).div_ceil(k + 1).saturating_sub(1)).collect();
    v.dedup();
    v
}

/// Runs the batch and decodes it.
pub fn run(model: &Model, g: &Generate, mut hooks: Hooks<'_>) -> Result<Vec<DynamicImage>, RunError> {
    let latents = denoise(model, g, &mut hooks)?;
    if (hooks.cancelled)() {
        return Err(RunError::Cancelled);
    }
    let pixels = decode(model, &latents)?;
    let images = tensor_to_images(&pixels)?;
    let start = g.steps - run_steps(g);
    if partial_steps(g.partials, g.steps - start).contains(&(g.steps - start - 1)) {
        // The last step's clean estimate is the final latent: its render is the final image.
        (hooks.partial)(images[0].clone());
    }
    if images.len() != g.seeds.len() {
        return Err(anyhow::anyhow!("the VAE returned {} images for a batch of {}", images.len(), g.seeds.len()).into());
    }
    Ok(images)
}

/// Steps that run: all of them, or for an edit the last `floor(steps * strength)` (at least one).
fn run_steps(g: &Generate) -> usize {
    match &g.init {
        Some(init) => ((g.steps as f64 * init.strength.clamp(0.0, 1.0)).floor() as usize).clamp(1, g.steps),
        None => g.steps,
    }
}

/// The denoising loop; returns the final latents (f32, VAE-scaled).
pub fn denoise(model: &Model, g: &Generate, hooks: &mut Hooks<'_>) -> Result<Tensor, RunError> {
    let dev = &model.device;
    let b = g.seeds.len();
    let f = model.latent_factor();
    if !g.width.is_multiple_of(f) || !g.height.is_multiple_of(f) || b == 0 {
        return Err(anyhow::anyhow!("{}x{} is not a multiple of {f}", g.width, g.height).into());
    }
    let (lh, lw) = (g.height / f, g.width / f);
    let lat_c = model.vae.config().latent_channels;
    let cfg = g.guidance_scale > 1.0;
    let cond = encode_text(model, [&g.negative_prompt, &g.prompt], cfg, b, (g.height, g.width))?;
    let mut sched = Scheduler::new(g.scheduler, &model.train, g.steps)?;
    let mut noise = BatchNoise::new(&g.seeds);
    let initial = noise.draw((lat_c, lh, lw), dev)?;

    // The edit source: its clean latent, the latent mask and (9-channel models) masked latents.
    let mut start = 0;
    let mut source = None;
    let mut mask_lat = None;
    let mut masked_lat = None;
    let mut latents = (&initial * sched.init_noise_sigma())?;
    if let Some(init) = &g.init {
        let pixels = image_to_tensor(&init.image, dev)?;
        let x0 = model.vae.encode(&pixels)?.to_dtype(DType::F32)?.repeat((b, 1, 1, 1))?;
        start = g.steps - run_steps(g);
        if init.strength < 1.0 {
            latents = sched.add_noise(&x0, &initial, start)?;
        }
        if let Some(mask) = &init.mask {
            let m = Tensor::from_vec(mask.as_raw().clone(), (1, 1, g.height, g.width), dev)?.to_dtype(DType::F32)?;
            let m = (m / 255.0)?;
            if model.family.is_inpaint() {
                let keep = m.lt(0.5)?.to_dtype(DType::F32)?;
                let masked = pixels.broadcast_mul(&keep)?;
                let ml = model.vae.encode(&masked)?.to_dtype(DType::F32)?;
                masked_lat = Some(ml.repeat((b, 1, 1, 1))?);
            }
            let ml = m.interpolate2d(lh, lw)?.ge(0.5)?.to_dtype(DType::F32)?;
            mask_lat = Some(ml.repeat((b, 1, 1, 1))?);
        } else if model.family.is_inpaint() {
            // No mask: repaint everything, with the whole image as context.
            mask_lat = Some(Tensor::ones((b, 1, lh, lw), DType::F32, dev)?);
            masked_lat = Some(Tensor::zeros((b, lat_c, lh, lw), DType::F32, dev)?);
        }
        source = Some(x0);
    } else if model.family.is_inpaint() {
        mask_lat = Some(Tensor::ones((b, 1, lh, lw), DType::F32, dev)?);
        masked_lat = Some(Tensor::zeros((b, lat_c, lh, lw), DType::F32, dev)?);
    }

    let partial_at = partial_steps(g.partials, g.steps - start);
    let timesteps = sched.timesteps().to_vec();
    #[expect(clippy::needless_range_loop, reason = "`i` indexes the timesteps and is also the scheduler's step number")]
    for i in start..g.steps {
        if (hooks.cancelled)() {
            return Err(RunError::Cancelled);
        }
        let scaled = sched.scale_model_input(&latents, i)?;
        let mut input = scaled;
        if model.family.is_inpaint() {
            let (m, ml) = (mask_lat.as_ref().expect("set for inpaint"), masked_lat.as_ref().expect("set for inpaint"));
            input = Tensor::cat(&[&input, m, ml], 1)?;
        }
        if cfg {
            input = Tensor::cat(&[&input, &input], 0)?;
        }
        let out =
            model.unet.forward(&input.to_dtype(model.dtype)?, timesteps[i], &cond.context, cond.added.as_ref())?;
        let out = out.to_dtype(DType::F32)?;
        let out = if cfg {
            let parts = out.chunk(2, 0)?;
            (&parts[0] + ((&parts[1] - &parts[0])? * g.guidance_scale)?)?
        } else {
            out
        };
        let step_noise = if sched.needs_noise() { Some(noise.draw((lat_c, lh, lw), dev)?) } else { None };
        let stepped = sched.step(&out, i, &latents, step_noise.as_ref())?;
        latents = stepped.latents;
        if let (Some(x0), Some(m), false) = (&source, &mask_lat, model.family.is_inpaint()) {
            let kept = if i + 1 < g.steps { sched.add_noise(x0, &initial, i + 1)? } else { x0.clone() };
            latents = (kept.broadcast_mul(&(1.0 - m)?)? + latents.broadcast_mul(m)?)?;
        }
        // After the last step the clean estimate is the final latent: `run` decodes it once.
        if partial_at.contains(&(i - start)) && i + 1 < g.steps {
            (hooks.partial)(preview(model, &stepped.x0, g.preview)?);
        }
        (hooks.step)(i + 1 - start, g.steps - start);
    }
    Ok(latents)
}

#[cfg(test)]
mod tests {
    use super::partial_steps;

    #[test]
    fn partials_spread_over_the_steps() {
        assert_eq!(partial_steps(3, 4), vec![0, 1, 2]);
        assert_eq!(partial_steps(1, 1), vec![0]);
        assert_eq!(partial_steps(2, 10), vec![3, 6]);
        assert_eq!(partial_steps(3, 2), vec![0, 1]);
        assert!(partial_steps(0, 5).is_empty());
    }
}
