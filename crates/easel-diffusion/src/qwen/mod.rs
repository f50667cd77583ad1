//! Qwen-Image (`qwen-image`, text to image) and Qwen-Image-Edit (`qwen-image-edit`) on candle.
//!
//! A diffusers-layout folder: `transformer/` ([`transformer`], `QwenImageTransformer2DModel`),
//! `text_encoder/` (Qwen2.5-VL: its language model in [`text`], its vision tower in [`vision`] for
//! the edit), `tokenizer/` (`tokenizer.json`), `vae/` ([`vae`], the causal video VAE used on single
//! frames), `scheduler/` (FlowMatch Euler, [`crate::flow::scheduler`]). [`QwenLayout::read`] checks
//! the configs against each other without reading a tensor (`--check-config`); [`QwenModel::load`]
//! reads the weights in the configured dtype. [`pipeline`] runs text to image (true CFG with
//! Qwen's norm-preserving rescale); `edit` adds the source image. [`random`] writes random models.
//!
//! dtypes: f32 on CPU; bf16 on GPUs. Never f16: Qwen-Image's activations overflow it (diffusers
//! and the model card say so), so f16 is refused at load.

pub mod edit;
pub mod pipeline;
pub mod positions;
pub mod processor;
pub mod random;
pub mod random_vision;
pub mod text;
pub mod tokenizer;
pub mod transformer;
pub mod vae;
pub mod vision;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde_json::Value;

use crate::family::Family;
use crate::flow::FlowConfig;
use crate::model::{read_json, weights_files};
use crate::placement::{Part, Placed, Plan, Role, Weights};
use crate::weights::var_builder_files;
use text::{QwenTextEncoder, QwenTokenizer, TextConfig};
use transformer::{QwenTransformer, QwenTransformerConfig};
use vae::{QwenVae, QwenVaeConfig};

/// A scheduler preset that replaces the folder's `scheduler_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowPreset {
    /// Qwen-Image-Lightning (lightx2v's distilled LoRAs, fused or merged into the weights): a fixed
    /// exponential shift of ln 3 (`base_shift = max_shift = ln 3`, so e^μ = 3 at every size), no
    /// terminal stretch; run with 4 or 8 steps and no CFG.
    Lightning,
}

impl FlowPreset {
    pub fn flow_config(self) -> FlowConfig {
        match self {
            Self::Lightning => FlowConfig {
                use_dynamic_shifting: true,
                base_shift: 3f64.ln(),
                max_shift: 3f64.ln(),
                base_image_seq_len: 256,
                max_image_seq_len: 8192,
                shift_terminal: None,
                ..FlowConfig::default()
            },
        }
    }

    /// Steps and guidance (`true_cfg_scale`) the preset runs with unless the config says otherwise.
    pub fn steps_and_guidance(self) -> (u32, f32) {
        match self {
            Self::Lightning => (8, 1.0),
        }
    }
}

/// What a Qwen-Image folder holds, from its small files only.
pub struct QwenLayout {
    pub family: Family,
    pub text_config: TextConfig,
    /// `text_encoder/config.json` as written (the edit reads its `vision_config`).
    pub text_json: Value,
    pub text_files: Vec<PathBuf>,
    /// Loaded at `read` to check it, then moved into the model (not read twice).
    pub tokenizer: QwenTokenizer,
    pub transformer: QwenTransformerConfig,
    pub transformer_files: Vec<PathBuf>,
    pub vae: QwenVaeConfig,
    pub vae_files: Vec<PathBuf>,
    pub flow: FlowConfig,
    /// `processor/preprocessor_config.json` (the edit's image processor).
    pub processor: Option<processor::ProcessorConfig>,
}

impl QwenLayout {
    pub fn read(root: &Path, family: Family) -> Result<Self> {
        anyhow::ensure!(root.is_dir(), "the model folder {} does not exist", root.display());
        let index = read_json(&root.join("model_index.json"))?;
        // Edit-2509/2511 run another pipeline (several pictures, a 384² vision branch, their own
        // template), which `edit.rs` does not implement: refused rather than run wrongly.
        if index.get("_class_name").and_then(serde_json::Value::as_str) == Some("QwenImageEditPlusPipeline") {
            bail!(
                "{} is a QwenImageEditPlusPipeline (Qwen-Image-Edit-2509/2511), which Easel does not run yet; qwen-image-edit takes the original Qwen-Image-Edit",
                root.display()
            );
        }
        let cfg = |dir: &str, file: &str| read_json(&root.join(dir).join(file));
        let text_json = cfg("text_encoder", "config.json")?;
        let text_config = TextConfig::from_json(&text_json).context("text_encoder/config.json")?;
        let transformer =
            QwenTransformerConfig::from_json(&cfg("transformer", "config.json")?).context("transformer/config.json")?;
        let vae = QwenVaeConfig::from_json(&cfg("vae", "config.json")?).context("vae/config.json")?;
        let flow = FlowConfig::from_json(&cfg("scheduler", "scheduler_config.json")?)
            .context("scheduler/scheduler_config.json")?;
        if transformer.latent_channels() != vae.z_dim || transformer.out_channels != vae.z_dim {
            bail!(
                "transformer/config.json (in_channels {}, out_channels {}) does not match the VAE's z_dim {}",
                transformer.in_channels,
                transformer.out_channels,
                vae.z_dim
            );
        }
        if transformer.joint_attention_dim != text_config.hidden_size {
            bail!(
                "transformer/config.json's joint_attention_dim {} is not the text encoder's hidden_size {}",
                transformer.joint_attention_dim,
                text_config.hidden_size
            );
        }
        if family == Family::QwenImageEdit && text_json.get("vision_config").is_none() {
            bail!("text_encoder/config.json has no vision_config: qwen-image-edit needs Qwen2.5-VL's vision tower");
        }
        let tokenizer = QwenTokenizer::load(&root.join("tokenizer"))?;
        let processor = if family == Family::QwenImageEdit {
            let v = read_json(&root.join("processor/preprocessor_config.json"))?;
            Some(processor::ProcessorConfig::from_json(&v).context("processor/preprocessor_config.json")?)
        } else {
            None
        };
        Ok(Self {
            family,
            text_config,
            text_json,
            text_files: weights_files(&root.join("text_encoder"), "model")?,
            tokenizer,
            transformer,
            transformer_files: weights_files(&root.join("transformer"), "diffusion_pytorch_model")?,
            vae,
            vae_files: weights_files(&root.join("vae"), "diffusion_pytorch_model")?,
            flow,
            processor,
        })
    }
}

impl QwenLayout {
    /// The vision tower's config, for `qwen-image-edit`.
    pub fn vision_config(&self) -> Result<Option<vision::VisionConfig>> {
        if self.family != Family::QwenImageEdit {
            return Ok(None);
        }
        let v = vision::VisionConfig::from_json(&self.text_json["vision_config"])
            .context("text_encoder/config.json: vision_config")?;
        Ok(Some(v))
    }

    /// The parts as the memory plan sees them, in `dtype`: the text encoder's files hold the
    /// language model and the vision tower (counted only for the edit).
    pub fn parts(&self, dtype: DType) -> Result<Vec<Part>> {
        let mut parts = vec![Part::of(TEXT, Role::Text, &self.text_files, dtype, &|n| !vision::is_tower_tensor(n))?];
        if self.family == Family::QwenImageEdit {
            parts.push(Part::of(VISION, Role::Text, &self.text_files, dtype, &vision::is_tower_tensor)?);
        }
        parts.push(Part::new(TRANSFORMER, Role::Denoiser, &self.transformer_files, dtype)?);
        parts.push(Part::new("vae", Role::Decoder, &self.vae_files, dtype)?);
        Ok(parts)
    }
}

/// The plan's names of the parts kept off the device when over budget.
const TEXT: &str = "text_encoder";
const VISION: &str = "vision_tower";
const TRANSFORMER: &str = "transformer";

/// A loaded Qwen-Image(-Edit) model.
pub struct QwenModel {
    pub family: Family,
    pub device: Device,
    pub dtype: DType,
    pub text: Placed<QwenTextEncoder>,
    pub tokenizer: QwenTokenizer,
    pub transformer: Placed<QwenTransformer>,
    pub vae: QwenVae,
    pub flow: FlowConfig,
    pub text_json: Value,
    /// Qwen2.5-VL's vision tower and its config, for `qwen-image-edit`.
    pub vision: Option<Placed<vision::VisionTower>>,
    pub vision_config: Option<vision::VisionConfig>,
    /// The edit's image processor settings.
    pub processor: Option<processor::ProcessorConfig>,
    /// The area the edit brings its source image to (diffusers: 1024², [`edit::CONDITION_PIXELS`]).
    pub condition_pixels: u64,
    /// Bytes of weights on the device while the loop runs.
    pub denoising_bytes: u64,
}

impl QwenModel {
    /// Reads the weights, placed to fit `budget` bytes when one is given ([`crate::placement`]);
    /// `preset`, when given, replaces the folder's scheduler config.
    pub fn load(
        root: &Path,
        family: Family,
        device: &Device,
        dtype: DType,
        preset: Option<FlowPreset>,
        budget: Option<u64>,
    ) -> Result<Self> {
        if dtype == DType::F16 {
            bail!("Qwen-Image does not run in f16 (its activations overflow it): use dtype = \"bf16\" on GPUs");
        }
        let layout = QwenLayout::read(root, family)?;
        let plan = Plan::new(layout.parts(dtype)?, budget)?;
        if plan.offloads() {
            tracing::info!(
                ?plan,
                "Qwen-Image is over its memory budget: its text encoder and transformer go on the device one at a time"
            );
        }
        // The language model and the vision tower share files, placed alike (Role::Text): one host copy.
        let text_weights = Weights::new(&layout.text_files, dtype, device, plan.placement(TEXT))?;
        let text_config = layout.text_config.clone();
        let text = Placed::new(&text_weights, move |vb| {
            QwenTextEncoder::new(vb, &text_config).context("loading text_encoder")
        })?;
        let vision_config = layout.vision_config()?;
        let vision = match vision_config.clone() {
            Some(vcfg) => Some(Placed::new(&text_weights, move |vb| {
                vision::VisionTower::load(vb, &vcfg).context("loading the text encoder's vision tower")
            })?),
            None => None,
        };
        let weights = Weights::new(&layout.transformer_files, dtype, device, plan.placement(TRANSFORMER))?;
        let tcfg = layout.transformer.clone();
        let transformer =
            Placed::new(&weights, move |vb| QwenTransformer::new(vb, &tcfg).context("loading transformer"))?;
        let vae =
            QwenVae::new(var_builder_files(&layout.vae_files, dtype, device)?, &layout.vae).context("loading vae")?;
        Ok(Self {
            family,
            device: device.clone(),
            dtype,
            text,
            tokenizer: layout.tokenizer,
            transformer,
            vae,
            flow: preset.map_or(layout.flow, FlowPreset::flow_config),
            text_json: layout.text_json,
            vision,
            vision_config,
            processor: layout.processor,
            condition_pixels: edit::CONDITION_PIXELS,
            denoising_bytes: plan.denoising_bytes(),
        })
    }

    /// Pixels per latent along an edge (8 for the released VAE).
    pub fn vae_factor(&self) -> usize {
        self.vae.config().scale_factor()
    }

    /// The pixel grid of sizes: the VAE factor times the 2×2 packing.
    pub fn size_multiple(&self) -> usize {
        2 * self.vae_factor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowSchedule;
    use crate::pipeline::{Generate, Hooks, Preview};
    use crate::placement::Role;
    use crate::random::Scale;

    fn tiny() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        random::create(Family::QwenImage, Scale::Tiny, &dir.path().join("m"), 0).unwrap();
        dir
    }

    #[test]
    fn a_broken_folder_is_named_at_layout_time() {
        let dir = tiny();
        let root = dir.path().join("m");
        QwenLayout::read(&root, Family::QwenImage).unwrap();
        let cfg = root.join("transformer/config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["joint_attention_dim"] = 32.into();
        std::fs::write(&cfg, v.to_string()).unwrap();
        let err = format!("{:#}", QwenLayout::read(&root, Family::QwenImage).map(drop).unwrap_err());
        assert!(err.contains("joint_attention_dim 32"), "{err}");
        std::fs::remove_file(root.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
        std::fs::remove_file(root.join("vae/config.json")).unwrap();
        let err = format!("{:#}", QwenLayout::read(&root, Family::QwenImage).map(drop).unwrap_err());
        assert!(err.contains("vae/config.json"), "{err}");
    }

    /// bf16 (GPUs' dtype, allowed on the CPU for the flow families) runs and stays near f32;
    /// f16 is refused.
    #[test]
    fn bf16_runs_close_to_f32_and_f16_is_refused() {
        let dir = tiny();
        let root = dir.path().join("m");
        let g = Generate {
            prompt: "a fox".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            seeds: vec![1],
            steps: 2,
            guidance_scale: 4.0,
            scheduler: crate::scheduler::SchedulerKind::Euler,
            init: None,
            partials: 0,
            preview: Preview::Vae,
        };
        let run = |dtype| {
            let m = QwenModel::load(&root, Family::QwenImage, &Device::Cpu, dtype, None, None).unwrap();
            let never = || false;
            let mut hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
            let prompts = pipeline::encode(&m, &g).unwrap();
            let noise = pipeline::initial_noise(&m, &g).unwrap();
            pipeline::denoise(&m, &g, &prompts, None, noise, &mut hooks).unwrap()
        };
        let (a, b) = (run(DType::F32), run(DType::BF16));
        let err = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
            / a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 0.05, "bf16 latents differ from f32 by {err}");
        let f16 =
            QwenModel::load(&root, Family::QwenImage, &Device::Cpu, DType::F16, None, None).map(drop).unwrap_err();
        assert!(f16.to_string().contains("f16"), "{f16}");
    }

    /// Over its budget, the edit builds its vision tower, language model (one host copy of their
    /// shared files on a GPU; the files on the CPU) and transformer for each use, and makes the
    /// same image.
    #[test]
    fn an_edit_over_budget_takes_turns_and_makes_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let (root, family) = (dir.path().join("m"), Family::QwenImageEdit);
        random::create(family, Scale::Tiny, &root, 0).unwrap();
        let parts = QwenLayout::read(&root, family).unwrap().parts(DType::F32).unwrap();
        let sum = |role| parts.iter().filter(|p| p.role == role).map(|p| p.bytes).sum::<u64>();
        let budget = sum(Role::Text).max(sum(Role::Denoiser)) + sum(Role::Decoder);
        assert!(parts.iter().any(|p| p.name == VISION && p.bytes > 0), "{parts:?}");
        let source = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(48, 32, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 7) as u8, 90])
        }));
        let g = Generate {
            prompt: "make it blue".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            seeds: vec![2],
            steps: 2,
            guidance_scale: 3.0,
            scheduler: crate::scheduler::SchedulerKind::Euler,
            init: Some(crate::pipeline::InitImage { image: std::sync::Arc::new(source), mask: None, strength: 1.0 }),
            partials: 0,
            preview: Preview::Vae,
        };
        let run = |budget: Option<u64>| {
            let mut m = QwenModel::load(&root, family, &Device::Cpu, DType::F32, None, budget).unwrap();
            m.condition_pixels = 32 * 32;
            assert_eq!(m.transformer.is_resident(), budget.is_none());
            let never = || false;
            let hooks = Hooks { cancelled: &never, partial: &mut |_| {}, step: &mut |_, _| {} };
            edit::run(&m, &g, hooks).unwrap()[0].to_rgb8().into_raw()
        };
        assert_eq!(run(None), run(Some(budget)));
    }

    #[test]
    fn lightning_shifts_by_three_at_every_size() {
        let cfg = FlowPreset::Lightning.flow_config();
        for tokens in [16, 4096] {
            let s = FlowSchedule::new(&cfg, 4, cfg.mu(tokens));
            let want = [1.0, 0.9, 0.75, 0.5, 0.0];
            for (a, b) in s.sigmas().iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{:?}", s.sigmas());
            }
        }
    }
}
