//! `LocalBackend`: the [`ImageBackend`] the server talks to.
//!
//! It declares what the family can do, checks what the core cannot know (how many images the
//! family can use), turns a [`BackendCall`] into a [`Generate`] on the worker thread (decoding the
//! source image and the OpenAI mask there), and waits for the worker's answer or the client's
//! cancellation.

use std::sync::Arc;

use async_trait::async_trait;
use easel_core::backend::{BackendCall, BackendOutput, CallContext, Capabilities, ImageBackend, OutputImage, SizeRule};
use easel_core::error::BackendError;
use easel_core::imaging;
use easel_core::types::{ImageSize, Operation, Quality};
use image::{DynamicImage, GrayImage};
use tokio::sync::oneshot;

use crate::config::Resolved;
use crate::model::Model;
use crate::pipeline::{Generate, InitImage};
use crate::worker::{Job, LoadState, Worker};

/// Largest input image decoded, in pixels.
const MAX_INPUT_PIXELS: u64 = 64 * 1024 * 1024;

pub struct LocalBackend {
    id: String,
    cfg: Arc<Resolved>,
    caps: Capabilities,
    worker: Worker,
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
        let caps = Capabilities {
            operations: vec![Operation::Generate, Operation::Edit, Operation::Variation],
            sizes: SizeRule::Range {
                multiple_of: 8,
                min_edge: d.min_edge,
                max_edge: d.max_edge,
                min_pixels: u64::from(d.min_edge) * u64::from(d.min_edge),
                max_pixels: u64::from(d.max_edge) * u64::from(d.max_edge),
                max_aspect: 4.0,
            },
            native_sizes: None,
            default_size: cfg.default_size,
            max_n: cfg.max_n,
            max_n_per_call: cfg.max_n,
            max_input_images: 1,
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
        };
        let worker = Worker::spawn(id, cfg.clone())?;
        Ok(Self { id: id.to_string(), cfg: Arc::new(cfg), caps, worker })
    }

    fn check(&self, call: &BackendCall) -> Result<(), BackendError> {
        if call.images.len() > 1 {
            return Err(BackendError::invalid(
                Some("image".to_string()),
                format!("The {} model uses one input image; {} were given.", self.cfg.family.name(), call.images.len()),
            ));
        }
        if call.operation != Operation::Generate && call.images.is_empty() {
            return Err(BackendError::invalid(Some("image".to_string()), "This operation needs an input image."));
        }
        if call.mask.is_some() && call.images.is_empty() {
            return Err(BackendError::invalid(Some("mask".to_string()), "A mask needs an input image."));
        }
        if !call.size.width.is_multiple_of(8) || !call.size.height.is_multiple_of(8) {
            return Err(BackendError::invalid(
                Some("size".to_string()),
                format!("Invalid size '{}': width and height must be multiples of 8.", call.size),
            ));
        }
        let x = &call.extensions;
        if let Some(s) = x.steps
            && !(1..=200).contains(&s)
        {
            return Err(BackendError::invalid(Some("steps".to_string()), "steps must be between 1 and 200."));
        }
        if let Some(g) = x.guidance_scale
            && !(0.0..=50.0).contains(&g)
        {
            return Err(BackendError::invalid(
                Some("guidance_scale".to_string()),
                "guidance_scale must be between 0 and 50.",
            ));
        }
        if let Some(s) = x.strength
            && !(s > 0.0 && s <= 1.0)
        {
            return Err(BackendError::invalid(
                Some("strength".to_string()),
                "strength must be greater than 0 and at most 1.",
            ));
        }
        Ok(())
    }
}

fn decode(bytes: &[u8], param: &str) -> Result<DynamicImage, BackendError> {
    imaging::decode(bytes, MAX_INPUT_PIXELS)
        .map_err(|e| BackendError::invalid(Some(param.to_string()), format!("Cannot decode the {param}: {e}.")))
}

/// OpenAI's mask (transparent = edit) as 255 = repaint, at `size`, cropped like the source.
/// Alpha below one half counts as transparent, as diffusers binarises masks at 0.5.
fn repaint_mask(mask: &DynamicImage, size: ImageSize) -> Result<GrayImage, BackendError> {
    let mask = if mask.width() == size.width && mask.height() == size.height {
        mask.clone()
    } else {
        imaging::resize_cover(mask, size).map_err(BackendError::Internal)?
    };
    let rgba = mask.to_rgba8();
    Ok(GrayImage::from_fn(size.width, size.height, |x, y| {
        image::Luma([if rgba.get_pixel(x, y)[3] < 128 { 255 } else { 0 }])
    }))
}

fn prepare(call: BackendCall, cfg: &Resolved, model: &Model) -> Result<Generate, BackendError> {
    let d = cfg.defaults;
    let x = &call.extensions;
    let steps = x.steps.unwrap_or_else(|| steps_for(call.quality, d.steps)) as usize;
    let first_seed = x.seed.unwrap_or_else(rand::random);
    let seeds = (0..u64::from(call.n)).map(|i| first_seed.wrapping_add(i)).collect();
    let size = call.size;
    let init = match call.images.first() {
        None => None,
        Some(img) => {
            let source = decode(&img.bytes, "image")?;
            let source = if source.width() == size.width && source.height() == size.height {
                source
            } else {
                imaging::resize_cover(&source, size).map_err(BackendError::Internal)?
            };
            let mask = match &call.mask {
                Some(m) => Some(repaint_mask(&decode(&m.bytes, "mask")?, size)?),
                None => None,
            };
            let default = if mask.is_some() { 1.0 } else { cfg.strength };
            Some(InitImage { image: source, mask, strength: f64::from(x.strength.unwrap_or(default)) })
        }
    };
    let prompt = if call.operation == Operation::Variation { String::new() } else { call.prompt.clone() };
    let f = model.latent_factor() as u32;
    if !size.width.is_multiple_of(f) || !size.height.is_multiple_of(f) {
        return Err(BackendError::invalid(
            Some("size".to_string()),
            format!("Invalid size '{size}': this model needs multiples of {f}."),
        ));
    }
    Ok(Generate {
        prompt,
        negative_prompt: x.negative_prompt.clone().unwrap_or_default(),
        width: size.width as usize,
        height: size.height as usize,
        seeds,
        steps,
        guidance_scale: f64::from(x.guidance_scale.unwrap_or(d.guidance_scale)),
        scheduler: d.scheduler,
        init,
        partials: u32::from(call.partial_images),
        preview: cfg.preview,
    })
}

#[async_trait]
impl ImageBackend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn readiness(&self) -> Result<(), String> {
        match self.worker.state() {
            LoadState::Ready => Ok(()),
            LoadState::Loading => Err(format!("model '{}' is still loading", self.id)),
            LoadState::Failed(e) => Err(format!("model '{}' failed to load: {e}", self.id)),
        }
    }

    async fn call(&self, call: BackendCall, cx: CallContext) -> Result<BackendOutput, BackendError> {
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
        self.check(&call)?;
        let cfg = Arc::clone(&self.cfg);
        let (reply, answer) = oneshot::channel();
        let partials = if call.partial_images > 0 { cx.partials.clone() } else { None };
        self.worker.submit(Job {
            prepare: Box::new(move |model| prepare(call, &cfg, model)),
            cancel: cx.cancel.clone(),
            partials,
            reply,
        })?;
        let images = tokio::select! {
            () = cx.cancel.cancelled() => return Err(BackendError::Cancelled),
            answer = answer => answer.map_err(|_| BackendError::Internal(anyhow::anyhow!("the local worker dropped a job")))??,
        };
        Ok(BackendOutput {
            images: images.into_iter().map(OutputImage::Pixels).collect(),
            revised_prompt: None,
            usage: None,
        })
    }
}
