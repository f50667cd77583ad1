//! Loading a FLUX.1 folder in the diffusers layout: `model_index.json`, `transformer/` (one file
//! or shards), `vae/`, `scheduler/`, and the text parts [`FluxTextLayout`] reads (`text_encoder/`,
//! `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`).
//!
//! [`FluxLayout::read`] parses every config and checks the parts against each other and the family
//! (dev embeds guidance, schnell does not; the transformer's widths match the encoders' and the
//! VAE's) without reading a tensor — `easel serve --check-config` stops there. [`FluxLayout::load`]
//! reads the weights tensor by tensor; a missing tensor or one of the wrong shape fails naming
//! it and its file. CLIP runs in f32 (as the SD encoders), T5, the transformer and the VAE in the
//! configured dtype; a memory budget the model is over keeps the encoders and the transformer
//! off the device between uses ([`crate::placement`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device};

use super::text::{DEV_MAX_SEQUENCE_LENGTH, FluxText, FluxTextLayout, SCHNELL_MAX_SEQUENCE_LENGTH};
use super::transformer::{FluxConfig, FluxTransformer};
use crate::family::Family;
use crate::flow::FlowConfig;
use crate::model::{read_json, weights_file, weights_files};
use crate::placement::{Part, Placed, Plan, Role, Weights};
use crate::vae::{Vae, VaeConfig};

/// The plan's name of the transformer (its folder).
const TRANSFORMER: &str = "transformer";

pub struct FluxModel {
    pub family: Family,
    pub device: Device,
    pub dtype: DType,
    pub text: FluxText,
    pub transformer: Placed<FluxTransformer>,
    /// The transformer's config (readable while the transformer is off the device).
    pub transformer_config: FluxConfig,
    pub vae: Vae,
    pub flow: FlowConfig,
    /// T5 tokens per prompt: 256 for schnell, 512 for dev (diffusers' limits).
    pub max_sequence_length: usize,
    /// Bytes of weights on the device while the loop runs.
    pub denoising_bytes: u64,
}

impl FluxModel {
    /// Reads the weights, placed to fit `budget` bytes when one is given ([`crate::placement`]).
    pub fn load(root: &Path, family: Family, device: &Device, dtype: DType, budget: Option<u64>) -> Result<Self> {
        FluxLayout::read(root, family)?.load(device, dtype, budget)
    }

    /// Pixels per latent pixel (8 for FLUX.1; 1 for diffusers' tiny test VAE).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config().scale_factor()
    }
}

/// What a FLUX folder holds, from its small files only.
pub struct FluxLayout {
    family: Family,
    text: FluxTextLayout,
    transformer: (FluxConfig, Vec<PathBuf>),
    vae: (VaeConfig, PathBuf),
    flow: FlowConfig,
}

impl FluxLayout {
    pub fn read(root: &Path, family: Family) -> Result<Self> {
        ensure!(root.is_dir(), "the model folder {} does not exist", root.display());
        read_json(&root.join("model_index.json"))?;
        let tcfg = FluxConfig::from_json(&read_json(&root.join("transformer/config.json"))?)
            .context("transformer/config.json")?;
        match (family, tcfg.guidance_embeds) {
            (Family::FluxDev, false) => {
                bail!("family flux-dev needs a transformer with guidance_embeds (the folder's is schnell-like)")
            }
            (Family::FluxSchnell, true) => {
                bail!("family flux-schnell needs a transformer without guidance_embeds (the folder's is dev-like)")
            }
            _ => {}
        }
        let transformer = (tcfg, weights_files(&root.join("transformer"), "diffusion_pytorch_model")?);
        let vcfg = VaeConfig::from_json(&read_json(&root.join("vae/config.json"))?).context("vae/config.json")?;
        ensure!(
            vcfg.latent_channels * 4 == transformer.0.in_channels,
            "vae/config.json has {} latent channels but the transformer takes {} (4 x the latent channels)",
            vcfg.latent_channels,
            transformer.0.in_channels
        );
        let vae = (vcfg, weights_file(&root.join("vae"), "diffusion_pytorch_model")?);
        let flow = FlowConfig::from_json(&read_json(&root.join("scheduler/scheduler_config.json"))?)
            .context("scheduler/scheduler_config.json")?;
        let text = FluxTextLayout::read(root)?;
        ensure!(
            text.t5_dim() == transformer.0.joint_attention_dim,
            "text_encoder_2 is {} wide but the transformer's joint_attention_dim is {}",
            text.t5_dim(),
            transformer.0.joint_attention_dim
        );
        ensure!(
            text.pooled_dim() == transformer.0.pooled_projection_dim,
            "text_encoder is {} wide but the transformer's pooled_projection_dim is {}",
            text.pooled_dim(),
            transformer.0.pooled_projection_dim
        );
        Ok(Self { family, text, transformer, vae, flow })
    }

    /// The VAE's dtype for a model run in `dtype` on `device`: f32 for bf16 on the CPU (candle's
    /// CPU convolutions have no bf16 matmul; the VAE is small).
    fn vae_dtype(device: &Device, dtype: DType) -> DType {
        if device.is_cpu() && dtype == DType::BF16 { DType::F32 } else { dtype }
    }

    /// The parts as the memory plan sees them, in the dtypes they run in.
    pub fn parts(&self, device: &Device, dtype: DType) -> Result<Vec<Part>> {
        let mut parts = self.text.parts(dtype)?;
        parts.push(Part::new(TRANSFORMER, Role::Denoiser, &self.transformer.1, dtype)?);
        parts.push(Part::new("vae", Role::Decoder, std::slice::from_ref(&self.vae.1), Self::vae_dtype(device, dtype))?);
        Ok(parts)
    }

    pub fn load(self, device: &Device, dtype: DType, budget: Option<u64>) -> Result<FluxModel> {
        let plan = Plan::new(self.parts(device, dtype)?, budget)?;
        if plan.offloads() {
            tracing::info!(
                ?plan,
                "FLUX is over its memory budget: its text encoders and transformer go on the device one at a time"
            );
        }
        let text = self.text.load(device, dtype, &plan)?;
        let (tcfg, tfiles) = self.transformer;
        let weights = Weights::new(&tfiles, dtype, device, plan.placement(TRANSFORMER))?;
        let config = tcfg.clone();
        let transformer =
            Placed::new(&weights, move |vb| FluxTransformer::new(vb, &config).context("loading transformer"))?;
        let (vcfg, vfile) = self.vae;
        let vae = Vae::new(crate::weights::var_builder(&vfile, Self::vae_dtype(device, dtype), device)?, &vcfg)
            .context("loading vae")?;
        let max_sequence_length = match self.family {
            Family::FluxSchnell => SCHNELL_MAX_SEQUENCE_LENGTH,
            _ => DEV_MAX_SEQUENCE_LENGTH,
        };
        Ok(FluxModel {
            family: self.family,
            device: device.clone(),
            dtype,
            text,
            transformer,
            transformer_config: tcfg,
            vae,
            flow: self.flow,
            max_sequence_length,
            denoising_bytes: plan.denoising_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Generate, Hooks, Preview};
    use crate::placement::Role;
    use crate::random::Scale;

    /// Over its budget, FLUX builds its encoders and transformer for each use (from their files
    /// on the CPU) and makes the same image; a budget under its largest part fails at load.
    #[test]
    fn over_budget_the_parts_take_turns_and_the_image_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (root, family, cpu) = (dir.path().join("m"), Family::FluxSchnell, Device::Cpu);
        super::super::random::create(family, Scale::Tiny, &root, 0).unwrap();
        let parts = FluxLayout::read(&root, family).unwrap().parts(&cpu, DType::F32).unwrap();
        let sum = |role| parts.iter().filter(|p| p.role == role).map(|p| p.bytes).sum::<u64>();
        let budget = sum(Role::Text).max(sum(Role::Denoiser)) + sum(Role::Decoder);
        assert!(budget < parts.iter().map(|p| p.bytes).sum::<u64>());
        let g = Generate {
            prompt: "a red fox".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            seeds: vec![3],
            steps: 2,
            guidance_scale: 0.0,
            scheduler: crate::scheduler::SchedulerKind::Euler,
            init: None,
            partials: 1,
            preview: Preview::Vae,
        };
        let run = |budget: Option<u64>| {
            let m = FluxModel::load(&root, family, &cpu, DType::F32, budget).unwrap();
            assert_eq!(m.transformer.is_resident(), budget.is_none());
            assert_eq!(
                m.denoising_bytes,
                if budget.is_some() {
                    sum(Role::Denoiser) + sum(Role::Decoder)
                } else {
                    parts.iter().map(|p| p.bytes).sum()
                }
            );
            let never = || false;
            let mut partials = Vec::new();
            let hooks = Hooks { cancelled: &never, partial: &mut |p| partials.push(p), step: &mut |_, _| {} };
            let images = super::super::pipeline::run(&m, &g, hooks).unwrap();
            (images[0].to_rgb8().into_raw(), partials.len())
        };
        assert_eq!(run(None), run(Some(budget)));
        let err =
            format!("{:#}", FluxModel::load(&root, family, &cpu, DType::F32, Some(budget - 1)).map(drop).unwrap_err());
        assert!(err.contains("transformer") && err.contains("one at a time"), "{err}");
    }
}
