//! One batch of FLUX.1 images: text encoding, the flow-matching loop, the VAE.
//!
//! As diffusers' `FluxPipeline` and `FluxImg2ImgPipeline`: Easel's seeded noise `(16, h, w)` per
//! image (h, w = 2·⌊H/16⌋, 2·⌊W/16⌋ for the 8× VAE), packed 2×2; text ids all zero and image ids
//! `(0, row, col)` for RoPE; sigmas shifted by the scheduler config (schnell: none; dev: by the
//! image's token count); dev's distilled guidance as an input of the transformer (no second
//! pass); the Euler step in f32. Edits are img2img: the source's VAE latents (the posterior mean,
//! where diffusers draws a sample from it with torch's RNG) noised to the first step that
//! `strength` leaves (`scale_noise`), then the remaining steps. Partial images decode the
//! predicted clean latents `x − σ·v` with the VAE. FLUX has no negative prompt here (diffusers'
//! optional true CFG is not served) and no inpainting (the backend refuses masks).

use anyhow::{Result, anyhow, ensure};
use candle_core::{DType, Tensor};
use image::DynamicImage;

use super::model::FluxModel;
use super::text::FluxPrompt;
use super::transformer::ROPE_THETA;
use crate::flow::rope::flux_image_ids;
use crate::flow::{FlowSchedule, Rope, pack, unpack};
use crate::noise::BatchNoise;
use crate::pipeline::{Generate, Hooks, RunError, image_to_tensor, partial_steps, tensor_to_images};

/// The latent grid of an image: `(h, w)` in latent pixels (even), as diffusers floors it.
pub fn latent_size(model: &FluxModel, width: usize, height: usize) -> Result<(usize, usize)> {
    let f = model.vae_scale_factor() * 2;
    ensure!(
        width.is_multiple_of(f) && height.is_multiple_of(f) && width > 0 && height > 0,
        "{width}x{height} is not a multiple of {f}"
    );
    Ok((2 * (height / f), 2 * (width / f)))
}

/// The schedule for `steps` steps at a latent grid of `h × w` (the shift depends on the packed
/// token count).
pub fn schedule(model: &FluxModel, steps: usize, (h, w): (usize, usize)) -> FlowSchedule {
    FlowSchedule::new(&model.flow, steps, model.flow.mu((h / 2) * (w / 2)))
}

/// RoPE over `[text (all-zero ids); image (0, row, col)]`.
pub fn rope(model: &FluxModel, text_len: usize, (h, w): (usize, usize)) -> Result<Rope> {
    let mut ids = vec![[0f32; 3]; text_len];
    ids.extend(flux_image_ids(h / 2, w / 2));
    Rope::new(&ids, &model.transformer_config.axes_dims_rope, ROPE_THETA, &model.device)
}

/// Packed latents `[B, N, 4C]` → pixels `[B, 3, H, W]` in [-1, 1] (the VAE undoes scale and
/// shift, in its own dtype).
pub fn decode(model: &FluxModel, packed: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    model.vae.decode(&unpack(packed, h, w)?)
}

/// What one sampling loop needs besides the model.
pub struct Sampling<'a> {
    /// Text conditioning, batch 1 (repeated over the latents' batch).
    pub prompt: &'a FluxPrompt,
    pub schedule: &'a FlowSchedule,
    /// The first step that runs (img2img), 0 for a generation.
    pub start: usize,
    /// Dev's guidance value; ignored by schnell.
    pub guidance: f32,
    /// The latent grid.
    pub size: (usize, usize),
    /// Partial images wanted (of the first image).
    pub partials: u32,
}

/// The denoising loop from packed `latents` (already noised to `s.start`); returns the final
/// packed latents in the model dtype.
pub fn sample(model: &FluxModel, latents: Tensor, s: &Sampling<'_>, hooks: &mut Hooks<'_>) -> Result<Tensor, RunError> {
    let b = latents.dim(0)?;
    let t5 = s.prompt.t5.repeat((b, 1, 1))?;
    let pooled = s.prompt.pooled.repeat((b, 1))?;
    let rope = rope(model, t5.dim(1)?, s.size)?;
    let guidance = model.transformer_config.guidance_embeds.then(|| vec![s.guidance; b]);
    let steps = s.schedule.steps();
    let partial_at = partial_steps(s.partials, steps - s.start);
    let mut latents = latents.to_dtype(model.dtype)?;
    let transformer = model.transformer.get()?;
    for i in s.start..steps {
        if (hooks.cancelled)() {
            return Err(RunError::Cancelled);
        }
        let t = vec![s.schedule.model_t(i); b];
        let v = transformer.forward(&latents, &t5, &pooled, &t, guidance.as_deref(), &rope)?;
        if partial_at.contains(&(i - s.start)) && i + 1 < steps {
            let x0 = s.schedule.x0(&latents.narrow(0, 0, 1)?, &v.narrow(0, 0, 1)?, i)?;
            let pixels = decode(model, &x0, s.size)?;
            (hooks.partial)(tensor_to_images(&pixels)?.remove(0));
        }
        latents = s.schedule.step(&latents, &v, i)?;
        (hooks.step)(i + 1 - s.start, steps - s.start);
    }
    Ok(latents)
}

/// Everything before the loop for a [`Generate`]: the prompt encoded, the schedule, the first
/// step and the initial packed latents (noise, or the noised source of an edit).
pub fn prepare(model: &FluxModel, g: &Generate) -> Result<(FluxPrompt, FlowSchedule, usize, Tensor)> {
    let b = g.seeds.len();
    ensure!(b > 0, "no seeds");
    let size = latent_size(model, g.width, g.height)?;
    let c = model.transformer_config.latent_channels();
    let prompt = model.text.encode(&g.prompt, model.max_sequence_length)?;
    let schedule = schedule(model, g.steps, size);
    let noise = BatchNoise::new(&g.seeds).draw((c, size.0, size.1), &model.device)?;
    let (start, latents) = match &g.init {
        None => (0, noise),
        Some(init) => {
            ensure!(init.mask.is_none(), "FLUX has no inpainting: masks are refused before this point");
            let pixels = image_to_tensor(&init.image, &model.device)?;
            let x0 = model.vae.encode(&pixels)?.to_dtype(DType::F32)?;
            ensure!(x0.dims()[2..] == [size.0, size.1], "the source image is not at the output size");
            let start = schedule.start_for_strength(init.strength);
            (start, schedule.scale_noise(&x0.repeat((b, 1, 1, 1))?, &noise, start)?)
        }
    };
    Ok((prompt, schedule, start, pack(&latents)?))
}

/// Runs the batch and decodes it.
pub fn run(model: &FluxModel, g: &Generate, mut hooks: Hooks<'_>) -> Result<Vec<DynamicImage>, RunError> {
    let (prompt, schedule, start, latents) = prepare(model, g)?;
    let size = latent_size(model, g.width, g.height)?;
    let s = Sampling {
        prompt: &prompt,
        schedule: &schedule,
        start,
        guidance: g.guidance_scale as f32,
        size,
        partials: g.partials,
    };
    let latents = sample(model, latents, &s, &mut hooks)?;
    if (hooks.cancelled)() {
        return Err(RunError::Cancelled);
    }
    let images = tensor_to_images(&decode(model, &latents, size)?)?;
    let ran = schedule.steps() - start;
    if partial_steps(g.partials, ran).contains(&(ran - 1)) {
        // The last step's clean estimate is the final latent: its render is the final image.
        (hooks.partial)(images[0].clone());
    }
    if images.len() != g.seeds.len() {
        return Err(anyhow!("the VAE returned {} images for a batch of {}", images.len(), g.seeds.len()).into());
    }
    Ok(images)
}
