//! The options of a `[[models]]` entry with `backend = "local"`.
//!
//! Parsed strictly (`deny_unknown_fields`) so a typo fails at startup with the field's name, not
//! silently at the first request. Everything but `family` and `path` has a family default.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use easel_core::backend::ExtensionRanges;
use easel_core::limits;
use easel_core::range::{FloatRange, IntRange};
use easel_core::types::ImageSize;
use serde::Deserialize;

use crate::family::{Family, FamilyDefaults};
use crate::pipeline::{Decoder, Preview};
use crate::scheduler::SchedulerKind;

/// Sizes are multiples of the VAE's downsampling factor, 8 for every family served.
pub const SIZE_MULTIPLE: u32 = 8;

/// What local models accept for the open-model extensions, in requests (the core checks them
/// against the model's capabilities) and as `[[models]]` defaults alike. Zero strength would skip
/// every step, so it starts above zero.
pub const EXTENSION_RANGES: ExtensionRanges = ExtensionRanges {
    steps: IntRange::new(1, 200),
    guidance_scale: FloatRange::new(0.0, 50.0),
    strength: FloatRange::above(0.0, 1.0),
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// `sd-1.5`, `sd-1.5-inpaint`, `sd-2.1`, `sd-2-inpaint`, `sd-turbo`, `sdxl`, `sdxl-inpaint`, `sdxl-turbo`.
    pub family: String,
    /// A folder in the diffusers layout.
    pub path: PathBuf,
    /// `cpu` (default), `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// `f32` (default on CPU), `f16` (default on CUDA) or `bf16`.
    pub dtype: Option<String>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub scheduler: Option<SchedulerKind>,
    /// img2img strength when the request gives none (default 0.8; masked edits default to 1.0).
    pub strength: Option<f32>,
    /// Requests waiting beyond the one running; a full queue answers 503 with Retry-After.
    #[serde(default = "queue_size")]
    pub queue_size: usize,
    /// Most images denoised in one UNet batch (default 4, lowered by `memory_budget_mib`).
    pub max_batch: Option<u32>,
    /// Memory the model may use: weights must fit, and batches are sized to fit the rest.
    pub memory_budget_mib: Option<u64>,
    /// `WxH` for `size=auto`; default the family's native square.
    pub default_size: Option<String>,
    pub min_edge: Option<u32>,
    pub max_edge: Option<u32>,
    /// Most images per request (default 10).
    pub max_n: Option<u32>,
    /// How partial images are rendered: `vae` (default), `approx` or `taesd` (needs `tiny_vae`).
    pub preview: Option<Preview>,
    /// A folder with diffusers' tiny autoencoder (`AutoencoderTiny`, e.g. `madebyollin/taesd`),
    /// for `preview = "taesd"` and `decoder = "taesd"`. Off by default.
    pub tiny_vae: Option<PathBuf>,
    /// What decodes the final image: `vae` (default) or `taesd` (faster, lower quality; needs
    /// `tiny_vae`).
    pub decoder: Option<Decoder>,
    /// The most pixels a delivered image may have. Sizes the model does not make natively (an
    /// edge over `max_edge`, such as 1280x720 of a 1024-edge model) are made at the nearest
    /// native size of the same shape and resized, up to this budget; default `max_edge`².
    pub max_output_pixels: Option<u64>,
    /// Seconds a worker taken out of rotation by panicking jobs waits, with no job, before it
    /// tests itself with a one-step probe (default 30; see `worker`).
    pub recheck_after_secs: Option<u64>,
}

fn cpu() -> String {
    "cpu".into()
}

fn queue_size() -> usize {
    8
}

/// The options resolved against the family's defaults.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub family: Family,
    pub path: PathBuf,
    pub device: DeviceSpec,
    pub dtype: DType,
    pub defaults: FamilyDefaults,
    pub strength: f32,
    pub queue_size: usize,
    pub max_batch: u32,
    pub memory_budget: Option<u64>,
    pub default_size: ImageSize,
    pub max_n: u32,
    pub preview: Preview,
    pub tiny_vae: Option<PathBuf>,
    pub decoder: Decoder,
    pub max_output_pixels: u64,
    pub recheck_after: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) if cfg!(feature = "cuda") => {
                Device::new_cuda(i).with_context(|| format!("cannot open CUDA device {i}"))
            }
            Self::Cuda(_) => bail!("device 'cuda' needs easel built with the `cuda` feature"),
        }
    }
}

impl LocalConfig {
    pub fn from_options(options: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(options.clone()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub fn resolve(&self) -> Result<Resolved> {
        let family = Family::parse(&self.family)?;
        let device = match self.device.as_str() {
            "cpu" => DeviceSpec::Cpu,
            "cuda" => DeviceSpec::Cuda(0),
            other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => DeviceSpec::Cuda(i),
                None => bail!("device must be 'cpu', 'cuda' or 'cuda:N', not '{other}'"),
            },
        };
        let dtype = match (self.dtype.as_deref(), device) {
            (None, DeviceSpec::Cpu) | (Some("f32"), _) => DType::F32,
            (None, DeviceSpec::Cuda(_)) | (Some("f16"), DeviceSpec::Cuda(_)) => DType::F16,
            (Some("bf16"), DeviceSpec::Cuda(_)) => DType::BF16,
            (Some("f16" | "bf16"), DeviceSpec::Cpu) => {
                bail!("dtype f16/bf16 is for GPUs; use f32 on the CPU")
            }
            (Some(other), _) => bail!("dtype must be 'f32', 'f16' or 'bf16', not '{other}'"),
        };
        let mut defaults = family.defaults();
        let ranges = EXTENSION_RANGES;
        if let Some(s) = self.steps {
            ranges.steps.check("steps", i64::from(s))?;
            defaults.steps = s;
        }
        if let Some(g) = self.guidance_scale {
            ranges.guidance_scale.check("guidance_scale", g)?;
            defaults.guidance_scale = g;
        }
        if let Some(s) = self.scheduler {
            defaults.scheduler = s;
        }
        if let Some(m) = self.min_edge {
            defaults.min_edge = m;
        }
        if let Some(m) = self.max_edge {
            defaults.max_edge = m;
        }
        let m = SIZE_MULTIPLE;
        if defaults.min_edge % m != 0
            || defaults.max_edge % m != 0
            || defaults.min_edge < m
            || defaults.min_edge > defaults.max_edge
        {
            bail!("min_edge and max_edge must be multiples of {m} with min_edge <= max_edge");
        }
        let default_size = match &self.default_size {
            Some(s) => ImageSize::parse(s).map_err(|e| anyhow::anyhow!("default_size: {e}"))?,
            None => {
                let e = defaults.size.clamp(defaults.min_edge, defaults.max_edge);
                ImageSize::new(e, e)
            }
        };
        let strength = ranges.strength.check("strength", self.strength.unwrap_or(0.8))?;
        if self.queue_size == 0 {
            bail!("queue_size must be at least 1");
        }
        let native_max = u64::from(defaults.max_edge).pow(2);
        let max_output_pixels = self.max_output_pixels.unwrap_or(native_max);
        if max_output_pixels < u64::from(defaults.min_edge).pow(2) {
            bail!("max_output_pixels must be at least min_edge² ({})", u64::from(defaults.min_edge).pow(2));
        }
        let preview = self.preview.unwrap_or(Preview::Vae);
        let decoder = self.decoder.unwrap_or_default();
        if self.tiny_vae.is_none() && (preview == Preview::Taesd || decoder == Decoder::Taesd) {
            bail!("preview = \"taesd\" and decoder = \"taesd\" need tiny_vae, a folder with an AutoencoderTiny");
        }
        let recheck_after = std::time::Duration::from_secs(self.recheck_after_secs.unwrap_or(30));
        if recheck_after.is_zero() {
            bail!("recheck_after_secs must be at least 1");
        }
        Ok(Resolved {
            family,
            path: self.path.clone(),
            device,
            dtype,
            defaults,
            strength,
            queue_size: self.queue_size,
            max_batch: self.max_batch.unwrap_or(4).max(1),
            memory_budget: self.memory_budget_mib.map(|m| m * 1024 * 1024),
            default_size,
            max_n: self.max_n.unwrap_or(limits::MAX_N).clamp(1, limits::MAX_N),
            preview,
            tiny_vae: self.tiny_vae.clone(),
            decoder,
            max_output_pixels,
            recheck_after,
        })
    }
}

impl Resolved {
    /// Images per UNet batch at this size: `max_batch`, lowered to fit the memory budget left
    /// after the weights. The estimate is the larger of the UNet's first self-attention scores
    /// (8 heads, f32, doubled under guidance) and the VAE decoder's live full-resolution activations.
    pub fn batch_for(&self, size: ImageSize, cfg: bool, weights: u64) -> u32 {
        let Some(budget) = self.memory_budget else {
            return self.max_batch;
        };
        let tokens = size.pixels() / 64;
        let attention = 8 * tokens * tokens * 4 * if cfg { 2 } else { 1 };
        let vae = size.pixels() * 128 * 4 * 6;
        let per_image = attention.max(vae).max(1);
        let left = budget.saturating_sub(weights);
        ((left / per_image) as u32).clamp(1, self.max_batch)
    }
}
