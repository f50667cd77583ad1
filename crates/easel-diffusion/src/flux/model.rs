//! Loading a FLUX.1 folder in the diffusers layout: `model_index.json`, `transformer/` (one file
//! or shards), `vae/`, `scheduler/`, and the text parts [`FluxTextLayout`] reads (`text_encoder/`,
//! `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`).
//!
//! [`FluxLayout::read`] parses every config and checks the parts against each other and the family
//! (dev embeds guidance, schnell does not; the transformer's widths match the encoders' and the
//! VAE's) without reading a tensor — `easel serve --check-config` stops there. [`FluxLayout::load`]
//! reads the weights tensor by tensor; a missing tensor or one of the wrong shape fails naming
//! it and its file. Text encoders run in f32 (as the SD ones), the transformer and VAE in the
//! configured dtype.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device};

use super::text::{DEV_MAX_SEQUENCE_LENGTH, FluxText, FluxTextLayout, SCHNELL_MAX_SEQUENCE_LENGTH};
use super::transformer::{FluxConfig, FluxTransformer};
use crate::family::Family;
use crate::flow::FlowConfig;
use crate::model::{read_json, weights_file, weights_files};
use crate::vae::{Vae, VaeConfig};

pub struct FluxModel {
    pub family: Family,
    pub device: Device,
    pub dtype: DType,
    /// The VAE's dtype: the model's, except f32 for bf16 on the CPU (candle's CPU convolutions
    /// have no bf16 matmul; the VAE is small).
    pub vae_dtype: DType,
    pub text: FluxText,
    pub transformer: FluxTransformer,
    pub vae: Vae,
    pub flow: FlowConfig,
    /// T5 tokens per prompt: 256 for schnell, 512 for dev (diffusers' limits).
    pub max_sequence_length: usize,
}

impl FluxModel {
    pub fn load(root: &Path, family: Family, device: &Device, dtype: DType) -> Result<Self> {
        FluxLayout::read(root, family)?.load(device, dtype)
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
        Ok(Self { family, text, transformer, vae, flow })
    }

    pub fn load(self, device: &Device, dtype: DType) -> Result<FluxModel> {
        let text = self.text.load(device)?;
        let (tcfg, tfiles) = self.transformer;
        ensure!(
            text.t5_dim() == tcfg.joint_attention_dim,
            "text_encoder_2 is {} wide but the transformer's joint_attention_dim is {}",
            text.t5_dim(),
            tcfg.joint_attention_dim
        );
        ensure!(
            text.pooled_dim() == tcfg.pooled_projection_dim,
            "text_encoder is {} wide but the transformer's pooled_projection_dim is {}",
            text.pooled_dim(),
            tcfg.pooled_projection_dim
        );
        let vb = crate::weights::var_builder_files(&tfiles, dtype, device)?;
        let transformer = FluxTransformer::new(vb, &tcfg).context("loading transformer")?;
        let (vcfg, vfile) = self.vae;
        let vae_dtype = if device.is_cpu() && dtype == DType::BF16 { DType::F32 } else { dtype };
        let vae = Vae::new(crate::weights::var_builder(&vfile, vae_dtype, device)?, &vcfg).context("loading vae")?;
        let max_sequence_length = match self.family {
            Family::FluxSchnell => SCHNELL_MAX_SEQUENCE_LENGTH,
            _ => DEV_MAX_SEQUENCE_LENGTH,
        };
        Ok(FluxModel {
            family: self.family,
            device: device.clone(),
            dtype,
            vae_dtype,
            text,
            transformer,
            vae,
            flow: self.flow,
            max_sequence_length,
        })
    }
}
