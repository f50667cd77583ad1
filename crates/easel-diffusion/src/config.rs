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
    /// `sd-1.5`, `sd-1.5-inpaint`, `sd-2.1`, `sd-2-inpaint`, `sd-turbo`, `sdxl`, `sdxl-inpaint`, `sdxl-turbo`,
    /// `flux-schnell`, `flux-dev`, `qwen-image`, `qwen-image-edit`.
    pub family: String,
    /// A folder in the diffusers layout.
    pub path: PathBuf,
    /// `cpu` (default), `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// `f32` (default on CPU), `f16` (default on CUDA) or `bf16` (default on CUDA for the flow
    /// families, which also take it on the CPU and refuse f16).
    pub dtype: Option<String>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub scheduler: Option<SchedulerKind>,
    /// img2img strength when the request gives none (default 0.8, FLUX 0.6; masked edits default to 1.0).
    pub strength: Option<f32>,
    /// Requests waiting beyond the one running; a full queue answers 503 with Retry-After.
    #[serde(default = "queue_size")]
    pub queue_size: usize,
    /// Most images denoised in one UNet batch (default 4, lowered by `memory_budget_mib`).
    pub max_batch: Option<u32>,
    /// Memory the model may use: weights must fit (the flow families' parts one at a time,
    /// `crate::placement`), and batches are sized to fit the rest.
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
    /// A scheduler preset of the family: `lightning` (qwen-image: Qwen-Image-Lightning's fixed
    /// shift, 8 steps and no CFG unless `steps` / `guidance_scale` say otherwise).
    pub preset: Option<crate::qwen::FlowPreset>,
    /// qwen-image-edit: the area, in pixels, the source image is brought to before the vision
    /// tower and the VAE see it, 64² to 4096² (default 1024², as the model was trained; smaller is faster).
    pub condition_pixels: Option<u64>,
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
    pub preset: Option<crate::qwen::FlowPreset>,
    pub condition_pixels: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// The device named by `device` (`cpu`, `cuda`, `cuda:N`) and the dtype `family` runs in
    /// there (`dtype` or the family's default for the device): the one place these are checked,
    /// for the config file and the tool binaries alike.
    pub fn with_dtype(family: Family, device: &str, dtype: Option<&str>) -> Result<(Self, DType)> {
        let device = match device {
            "cpu" => DeviceSpec::Cpu,
            "cuda" => DeviceSpec::Cuda(0),
            other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => DeviceSpec::Cuda(i),
                None => bail!("device must be 'cpu', 'cuda' or 'cuda:N', not '{other}'"),
            },
        };
        // The flow transformers (FLUX, Qwen) are bf16 models: f16 overflows their activations,
        // and bf16 also runs on the CPU (half the memory of f32). The SD family is f16 on GPUs.
        let flow = family.kind() != crate::family::Kind::Sd;
        let dtype = match (dtype.map(parse_dtype).transpose()?, device) {
            (None, DeviceSpec::Cpu) | (Some(DType::F32), _) => DType::F32,
            (Some(DType::F16), _) if flow => bail!("dtype f16 overflows {}; use bf16 or f32", family.name()),
            (None, DeviceSpec::Cuda(_)) if flow => DType::BF16,
            (Some(DType::BF16), DeviceSpec::Cpu) if flow => DType::BF16,
            (None, DeviceSpec::Cuda(_)) => DType::F16,
            (Some(d), DeviceSpec::Cuda(_)) => d,
            (Some(_), DeviceSpec::Cpu) => {
                bail!("dtype f16/bf16 is for GPUs; use f32 on the CPU (bf16 runs on the CPU for the flow families)")
            }
        };
        Ok((device, dtype))
    }

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

/// `f32`, `f16` or `bf16`. Serving checks it against the family and device
/// ([`DeviceSpec::with_dtype`]); the parity tool takes any of them anywhere (numerics
/// experiments, e.g. the SD family in f16 on the CPU; candle has no bf16 convolution there).
pub fn parse_dtype(dtype: &str) -> Result<DType> {
    match dtype {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => bail!("dtype must be 'f32', 'f16' or 'bf16', not '{other}'"),
    }
}

impl LocalConfig {
    pub fn from_options(options: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(options.clone()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub fn resolve(&self) -> Result<Resolved> {
        let family = Family::parse(&self.family)?;
        let (device, dtype) = DeviceSpec::with_dtype(family, &self.device, self.dtype.as_deref())?;
        let flow = family.kind() != crate::family::Kind::Sd;
        let qwen = family.kind() == crate::family::Kind::Qwen;
        let mut defaults = family.defaults();
        if let Some(p) = self.preset {
            if !qwen {
                bail!("`preset` is for the qwen-image families, not {}", family.name());
            }
            (defaults.steps, defaults.guidance_scale) = p.steps_and_guidance();
        }
        if let Some(p) = self.condition_pixels {
            if family != Family::QwenImageEdit {
                bail!("`condition_pixels` is for qwen-image-edit, not {}", family.name());
            }
            // Below 64² a 1:4 source would round to an edge of 0 (edges are multiples of 32).
            if !(64 * 64..=4096 * 4096).contains(&p) {
                bail!("condition_pixels must be within 4096 (64²) and 16777216 (4096²), not {p}");
            }
        }
        // The flow families take their scheduler from the folder (and `preset`) and render partial
        // images with their VAE: options that would change neither are refused, not ignored.
        if flow && self.scheduler.is_some() {
            bail!(
                "`scheduler` is for the Stable Diffusion families: {} runs the folder's scheduler/scheduler_config.json (FlowMatch Euler)",
                family.name()
            );
        }
        if flow && self.preview.is_some_and(|p| p != Preview::Vae) {
            bail!("{} renders partial images with its VAE only: leave `preview` unset or \"vae\"", family.name());
        }
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
        let m = family.size_multiple();
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
        let strength = ranges.strength.check("strength", self.strength.unwrap_or(defaults.strength))?;
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
        if self.tiny_vae.is_some() && family.kind() != crate::family::Kind::Sd {
            bail!("tiny_vae (TAESD) is for the Stable Diffusion families, not {}", family.name());
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
            preset: self.preset,
            condition_pixels: self.condition_pixels,
        })
    }
}

impl Resolved {
    /// Images per UNet batch at this size: `max_batch`, lowered to fit the memory budget left
    /// after the weights. The estimate is the larger of the denoiser's largest attention scores
    /// (f32) and the VAE decoder's live full-resolution activations. SD: the UNet's first
    /// self-attention (8 heads, a token per 8×8 pixels), doubled under guidance (one batched
    /// pass). Flow families: joint attention over the image tokens (one per 16×16 pixels) and up
    /// to 512 text tokens, 24 heads; their guidance is not a batched second pass.
    pub fn batch_for(&self, size: ImageSize, cfg: bool, weights: u64) -> u32 {
        let Some(budget) = self.memory_budget else {
            return self.max_batch;
        };
        let attention = match self.family.kind() {
            crate::family::Kind::Sd => {
                let tokens = size.pixels() / 64;
                8 * tokens * tokens * 4 * if cfg { 2 } else { 1 }
            }
            crate::family::Kind::Flux | crate::family::Kind::Qwen => {
                let tokens = size.pixels() / 256 + 512;
                24 * tokens * tokens * 4
            }
        };
        let vae = size.pixels() * 128 * 4 * 6;
        let per_image = attention.max(vae).max(1);
        let left = budget.saturating_sub(weights);
        ((left / per_image) as u32).clamp(1, self.max_batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(family: &str) -> Resolved {
        let options =
            serde_json::json!({"family": family, "path": "/x", "memory_budget_mib": 20 * 1024, "max_batch": 16});
        LocalConfig::from_options(&options).unwrap().resolve().unwrap()
    }

    #[test]
    fn batches_are_sized_by_the_family_s_attention() {
        let size = ImageSize::new(1024, 1024);
        // SD: 8 heads × 16384² scores × 4 B = 8 GiB an image, twice that with guidance.
        assert_eq!(resolved("sdxl").batch_for(size, false, 0), 2);
        assert_eq!(resolved("sdxl").batch_for(size, true, 0), 1);
        // FLUX: 24 heads × (4096 + 512)² × 4 B ≈ 1.9 GiB an image (dev's guidance is no second
        // pass), under the VAE decoder's 3 GiB, which then sets the batch.
        assert_eq!(resolved("flux-dev").batch_for(size, true, 0), 6);
    }

    #[test]
    fn condition_pixels_is_qwen_image_edit_s_and_bounded() {
        let resolve = |family: &str, pixels: u64| {
            let options = serde_json::json!({"family": family, "path": "/x", "condition_pixels": pixels});
            LocalConfig::from_options(&options).unwrap().resolve()
        };
        assert_eq!(resolve("qwen-image-edit", 4096).unwrap().condition_pixels, Some(4096));
        let err = resolve("qwen-image", 4096).unwrap_err();
        assert!(err.to_string().contains("qwen-image-edit"), "{err}");
        assert!(resolve("qwen-image-edit", 100).unwrap_err().to_string().contains("condition_pixels"));
    }

    #[test]
    fn flow_families_keep_to_their_16_pixel_grid() {
        let options = serde_json::json!({"family": "flux-schnell", "path": "/x", "min_edge": 264});
        let err = LocalConfig::from_options(&options).unwrap().resolve().unwrap_err();
        assert!(err.to_string().contains("multiples of 16"), "{err}");
        assert_eq!(resolved("flux-schnell").defaults.steps, 4);
        assert_eq!((resolved("flux-schnell").strength, resolved("sd-turbo").strength), (0.6, 0.8));
    }

    #[test]
    fn flow_families_refuse_the_sd_sampling_options() {
        let resolve = |family: &str, key: &str, value: &str| {
            let mut options = serde_json::json!({"family": family, "path": "/x"});
            options[key] = value.into();
            LocalConfig::from_options(&options).unwrap().resolve()
        };
        let err = resolve("flux-dev", "scheduler", "euler_a").unwrap_err().to_string();
        assert!(err.contains("`scheduler`") && err.contains("flux-dev"), "{err}");
        let err = resolve("qwen-image", "preview", "approx").unwrap_err().to_string();
        assert!(err.contains("preview") && err.contains("qwen-image"), "{err}");
        assert!(resolve("qwen-image", "preview", "vae").is_ok());
        assert!(resolve("sd-turbo", "scheduler", "euler_a").is_ok());
    }

    #[test]
    fn flow_families_run_in_bf16_not_f16() {
        let dtype = |family: &str, device: &str, dtype: Option<&str>| {
            let mut options = serde_json::json!({"family": family, "path": "/x", "device": device});
            if let Some(d) = dtype {
                options["dtype"] = d.into();
            }
            LocalConfig::from_options(&options).unwrap().resolve().map(|r| r.dtype)
        };
        assert_eq!(dtype("flux-dev", "cpu", Some("bf16")).unwrap(), DType::BF16);
        assert!(dtype("flux-dev", "cpu", Some("f16")).unwrap_err().to_string().contains("overflows"));
        assert!(dtype("sd-turbo", "cpu", Some("bf16")).is_err());
        assert_eq!(dtype("flux-dev", "cpu", None).unwrap(), DType::F32);
        assert_eq!(dtype("flux-dev", "cuda", None).unwrap(), DType::BF16);
        assert_eq!(dtype("sd-turbo", "cuda", None).unwrap(), DType::F16);
    }
}
