//! `LocalBackend`: the [`ImageBackend`] the server talks to.
//!
//! It declares what the family can do in its [`Capabilities`] (its operations, sizes on its grid,
//! its input image count, the extension ranges of [`crate::config::EXTENSION_RANGES`], pixels in),
//! which the core checks every request against before calling; a mask sent to a family without
//! inpainting is refused here, naming `mask`, before the job is queued. The family's edges are its native sizes; a client may
//! ask for more, up to `max_output_pixels`, and the core makes those at the nearest native size
//! of the same shape and resizes (a model does not make good images far from the sizes it was
//! trained at, and upscaling is cheap next to diffusing more pixels). It turns a [`BackendCall`] into a [`Generate`] on the
//! worker thread (the source image and mask arrive decoded, at the call size) and waits for the
//! worker's answer or the client's cancellation. Its readiness is the worker's: loading, a load
//! failure, a stopped thread, or too many panicking jobs in a row (see [`crate::worker`]).

use std::sync::Arc;

use async_trait::async_trait;
use easel_core::backend::{BackendCall, BackendOutput, CallContext, Capabilities, ImageBackend, OutputImage, SizeRule};
use easel_core::error::BackendError;
use easel_core::types::{Operation, Quality};
use image::{DynamicImage, GrayImage};
use tokio::sync::oneshot;

use crate::config::{EXTENSION_RANGES, Resolved};
use crate::pipeline::{Generate, InitImage};
use crate::worker::{Job, LoadState, Worker};

pub struct LocalBackend {
    id: String,
    cfg: Arc<Resolved>,
    caps: Capabilities,
    worker: Worker,
    /// The folder was made by `create-random` (see [`crate::random::INFO_FILE`]).
    random_weights: bool,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalBackend({}, {})", self.id, self.cfg.family.name())
    }
}

/// Steps for a quality: `low` halves the default, `high`/`hd` double it, the rest keep it.
pub fn steps_for(quality: Quality, default: u32) -> u32 {
    match quality {
        Quality::Low => default.div_ceil(2).max(1),
        Quality::High | Quality::Hd => default * 2,
        Quality::Auto | Quality::Medium | Quality::Standard => default,
    }
}

impl LocalBackend {
    pub fn start(id: &str, cfg: Resolved) -> anyhow::Result<Self> {
        let d = cfg.defaults;
        let family = cfg.family;
        let native = SizeRule::Range {
            multiple_of: family.size_multiple(),
            min_edge: d.min_edge,
            max_edge: d.max_edge,
            min_pixels: u64::from(d.min_edge) * u64::from(d.min_edge),
            max_pixels: u64::from(d.max_edge) * u64::from(d.max_edge),
            max_aspect: MAX_ASPECT,
        };
        let caps = Capabilities {
            operations: family.operations().to_vec(),
            sizes: deliverable(&cfg),
            native_sizes: Some(native),
            default_size: cfg.default_size,
            picks_size: false,
            max_n: cfg.max_n,
            max_n_per_call: cfg.max_n,
            max_input_images: family.max_input_images(),
            // Masks come to the backend: the SD family inpaints with them, the others refuse them
            // (`call`) before any compute.
            native_masks: true,
            transparency: false,
            qualities: vec![
                Quality::Auto,
                Quality::Low,
                Quality::Medium,
                Quality::High,
                Quality::Standard,
                Quality::Hd,
            ],
            default_quality: Quality::Medium,
            partial_images: true,
            max_prompt_chars: 4000,
            extensions: EXTENSION_RANGES,
            pixels: cfg.family.pixel_input(),
        };
        let worker = Worker::spawn(id, cfg.clone())?;
        let random_weights = cfg.path.join(crate::random::INFO_FILE).is_file();
        Ok(Self { id: id.to_string(), cfg: Arc::new(cfg), caps, worker, random_weights })
    }
}

/// The longest edge over the shortest, for native and delivered sizes alike.
const MAX_ASPECT: f64 = 4.0;

/// The sizes a client may ask for: the native ones, and larger ones up to `max_output_pixels`
/// (the longest edge then follows from the pixels at the widest aspect ratio), which the core
/// makes at the nearest native size of the same shape and resizes.
fn deliverable(cfg: &Resolved) -> SizeRule {
    let d = cfg.defaults;
    let m = cfg.family.size_multiple();
    let widest = ((cfg.max_output_pixels as f64 * MAX_ASPECT).sqrt() as u32) / m * m;
    SizeRule::Range {
        multiple_of: m,
        min_edge: d.min_edge,
        max_edge: widest.max(d.max_edge),
        min_pixels: u64::from(d.min_edge) * u64::from(d.min_edge),
        max_pixels: cfg.max_output_pixels,
        max_aspect: MAX_ASPECT,
    }
}

/// OpenAI's mask (transparent = edit) as 255 = repaint. Alpha below one half counts as
/// transparent, as diffusers binarises masks at 0.5. The core has brought it to the call size.
fn repaint_mask(mask: &DynamicImage) -> GrayImage {
    let rgba = mask.to_rgba8();
    GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([if rgba.get_pixel(x, y)[3] < 128 { 255 } else { 0 }])
    })
}

/// An f32 from the request as the decimal the client wrote (0.7, not 0.699999988…): the
/// pipelines count steps as diffusers does in Python floats (`int(N − N·strength)`,
/// `int(N·strength)`), and 0.3f32 (0.30000001) runs 4 of 10 steps where diffusers runs 3.
fn as_written(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

fn prepare(call: BackendCall, cfg: &Resolved) -> Generate {
    let d = cfg.defaults;
    let x = &call.options.extensions;
    let steps = x.steps.unwrap_or_else(|| steps_for(call.quality, d.steps)) as usize;
    let first_seed = x.seed.unwrap_or_else(rand::random);
    let seeds = (0..u64::from(call.n)).map(|i| first_seed.wrapping_add(i)).collect();
    let init = call.pixels.as_ref().map(|pixels| {
        let mask = pixels.mask.as_deref().map(repaint_mask);
        let default = if mask.is_some() { 1.0 } else { cfg.strength };
        InitImage {
            image: std::sync::Arc::clone(&pixels.image),
            mask,
            strength: as_written(x.strength.unwrap_or(default)),
        }
    });
    let prompt = if call.operation == Operation::Variation { String::new() } else { call.prompt.clone() };
    Generate {
        prompt,
        negative_prompt: x.negative_prompt.clone().unwrap_or_default(),
        width: call.size.width as usize,
        height: call.size.height as usize,
        seeds,
        steps,
        guidance_scale: f64::from(x.guidance_scale.unwrap_or(d.guidance_scale)),
        scheduler: d.scheduler,
        init,
        partials: u32::from(call.partial_images),
        preview: cfg.preview,
    }
}

#[async_trait]
impl ImageBackend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn random_weights(&self) -> bool {
        self.random_weights
    }

    async fn readiness(&self) -> Result<(), String> {
        match self.worker.state() {
            LoadState::Ready if !self.worker.alive() => {
                Err(format!("model '{}': its worker thread has stopped", self.id))
            }
            LoadState::Ready => match self.worker.health.problem() {
                Some(problem) => Err(format!("model '{}' is failing: {problem}", self.id)),
                None => Ok(()),
            },
            LoadState::Loading => Err(format!("model '{}' is still loading", self.id)),
            LoadState::Failed(e) => Err(format!("model '{}' failed to load: {e}", self.id)),
        }
    }

    async fn call(&self, call: BackendCall, cx: CallContext) -> Result<BackendOutput, BackendError> {
        if !self.cfg.family.takes_masks() && call.pixels.as_ref().is_some_and(|p| p.mask.is_some()) {
            return Err(BackendError::invalid(
                Some("mask".to_string()),
                format!(
                    "The model '{}' ({}) has no inpainting: edits take an image and a prompt, not a mask.",
                    self.id,
                    self.cfg.family.name()
                ),
            ));
        }
        match self.worker.state() {
            LoadState::Ready => {}
            LoadState::Loading => {
                return Err(BackendError::Unavailable {
                    message: format!("The model '{}' is still loading.", self.id),
                    retry_after: Some(std::time::Duration::from_secs(5)),
                });
            }
            LoadState::Failed(e) => {
                return Err(BackendError::Unavailable {
                    message: format!("The model '{}' failed to load: {e}", self.id),
                    retry_after: None,
                });
            }
        }
        let (reply, answer) = oneshot::channel();
        let partials = if call.partial_images > 0 { cx.partials.clone() } else { None };
        let steps = easel_core::job::Steps::current();
        self.worker.submit(Job {
            generate: prepare(call, &self.cfg),
            cancel: cx.cancel.clone(),
            partials,
            steps,
            reply,
        })?;
        let images = tokio::select! {
            () = cx.cancel.cancelled() => return Err(BackendError::Cancelled),
            answer = answer => answer.map_err(|_| BackendError::Internal(anyhow::anyhow!("the local worker dropped a job")))??,
        };
        Ok(BackendOutput { images: images.into_iter().map(OutputImage::Pixels).collect(), ..BackendOutput::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::as_written;
    use crate::flow::{FlowConfig, FlowSchedule};

    #[test]
    fn strength_counts_steps_as_the_client_wrote_it() {
        assert_eq!(as_written(0.3), 0.3);
        // diffusers: 10 steps at strength 0.3 start at int(10 − 3.0) = 7; 0.3f32 is 0.30000001.
        let s = FlowSchedule::new(&FlowConfig::default(), 10, 0.0);
        assert_eq!(s.start_for_strength(as_written(0.3)), 7);
        assert_eq!(s.start_for_strength(f64::from(0.3f32)), 6, "the f32 itself runs a step more");
    }
}
