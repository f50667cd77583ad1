//! Loading a model folder in the diffusers layout.
//!
//! `model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` and, for SDXL,
//! `text_encoder_2/` and `tokenizer_2/`. Every architecture parameter comes from the folder's JSON
//! configs; weights are safetensors read tensor by tensor (`*.safetensors`, or the `*.fp16.safetensors`
//! variant when that is all there is). Text encoders always run in f32, as diffusers does on CPU
//! and candle's example does everywhere; the UNet and VAE run in the configured dtype.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::clip::{ClipConfig, ClipText};
use crate::family::Family;
use crate::pipeline::Decoder;
use crate::scheduler::TrainSchedule;
use crate::taesd::{TinyVae, TinyVaeLayout};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{UNet, UNetConfig};
use crate::vae::{Vae, VaeConfig};
use crate::weights::bytes_in;

pub struct TextEncoder {
    pub model: ClipText,
    pub tokenizer: ClipTokenizer,
}

pub struct Model {
    pub family: Family,
    pub device: Device,
    pub dtype: DType,
    pub text: TextEncoder,
    /// SDXL's second encoder (OpenCLIP bigG with projection).
    pub text2: Option<TextEncoder>,
    pub unet: UNet,
    pub vae: Vae,
    pub train: TrainSchedule,
    /// diffusers' SDXL `force_zeros_for_empty_prompt`: an empty negative prompt is all zeros.
    pub zeros_for_empty_prompt: bool,
    /// The optional tiny autoencoder (`tiny_vae`), for previews and, when asked, the final decode.
    pub tiny_vae: Option<TinyVae>,
    /// What decodes the final latents.
    pub decoder: Decoder,
    /// Bytes of weights loaded (all on the device while the loop runs).
    pub weights_bytes: u64,
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The weights file of a component folder.
pub fn weights_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no {stem}.safetensors in {}", dir.display())
}

/// The weights files of a component folder: one file, or the shards its
/// `{stem}.safetensors.index.json` (or the fp16 variant's) lists, each checked to exist.
pub fn weights_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    if let Ok(one) = weights_file(dir, stem) {
        return Ok(vec![one]);
    }
    for index in [format!("{stem}.safetensors.index.json"), format!("{stem}.fp16.safetensors.index.json")] {
        let path = dir.join(&index);
        if !path.is_file() {
            continue;
        }
        let map = read_json(&path)?;
        let map = map
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("{} has no weight_map", path.display()))?;
        let mut files: Vec<String> = map.values().filter_map(Value::as_str).map(str::to_string).collect();
        files.sort();
        files.dedup();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            bail!("{} lists {}, which is missing", path.display(), missing.display());
        }
        anyhow::ensure!(!files.is_empty(), "{} lists no files", path.display());
        return Ok(files);
    }
    bail!("no {stem}.safetensors (or sharded index) in {}", dir.display())
}

fn weights(file: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    crate::weights::var_builder(file, dtype, device)
}

/// A text encoder's parts, read from its small files.
struct EncoderLayout {
    config: ClipConfig,
    weights: PathBuf,
    tokenizer: ClipTokenizer,
}

impl EncoderLayout {
    fn read(root: &Path, enc: &str, tok: &str) -> Result<Self> {
        let dir = root.join(enc);
        let config = serde_json::from_value(read_json(&dir.join("config.json"))?)
            .with_context(|| format!("{enc}/config.json is not a CLIP text config"))?;
        Ok(Self { config, weights: weights_file(&dir, "model")?, tokenizer: ClipTokenizer::load(&root.join(tok))? })
    }

    fn load(self, enc: &str, device: &Device) -> Result<TextEncoder> {
        let vb = weights(&self.weights, DType::F32, device)?;
        let model = ClipText::new(vb, &self.config).with_context(|| format!("loading {enc}"))?;
        Ok(TextEncoder { model, tokenizer: self.tokenizer })
    }
}

/// What a model folder holds, from its small files only: every config parsed and checked against
/// the family, every weights file found, no tensor read. `easel serve --check-config` stops here;
/// [`Model::load`] goes on to read the weights.
pub struct Layout {
    family: Family,
    text: EncoderLayout,
    text2: Option<EncoderLayout>,
    unet: (UNetConfig, PathBuf),
    vae: (VaeConfig, PathBuf),
    train: TrainSchedule,
    zeros_for_empty_prompt: bool,
}

impl Layout {
    pub fn read(root: &Path, family: Family) -> Result<Self> {
        anyhow::ensure!(root.is_dir(), "the model folder {} does not exist", root.display());
        let index = read_json(&root.join("model_index.json"))?;
        let text = EncoderLayout::read(root, "text_encoder", "tokenizer")?;
        let text2 =
            if family.is_xl() { Some(EncoderLayout::read(root, "text_encoder_2", "tokenizer_2")?) } else { None };
        let ucfg = UNetConfig::from_json(&read_json(&root.join("unet/config.json"))?)?;
        match (family.is_inpaint(), ucfg.in_channels) {
            (true, 9) | (false, 4) => {}
            (true, c) => bail!("family {} needs a 9-channel inpainting UNet, the folder's has {c}", family.name()),
            (false, c) => {
                bail!("family {} needs a 4-channel UNet, the folder's has {c} (use the -inpaint family)", family.name())
            }
        }
        if family.is_xl() != ucfg.text_time.is_some() {
            bail!("family {} does not match the UNet's addition_embed_type", family.name());
        }
        let unet = (ucfg, weights_file(&root.join("unet"), "diffusion_pytorch_model")?);
        let vae = (
            VaeConfig::from_json(&read_json(&root.join("vae/config.json"))?)?,
            weights_file(&root.join("vae"), "diffusion_pytorch_model")?,
        );
        let train = TrainSchedule::from_json(&read_json(&root.join("scheduler/scheduler_config.json"))?)?;
        let zeros_for_empty_prompt =
            family.is_xl() && index.get("force_zeros_for_empty_prompt").and_then(Value::as_bool).unwrap_or(true);
        Ok(Self { family, text, text2, unet, vae, train, zeros_for_empty_prompt })
    }
}

impl Layout {
    /// Bytes of weights the model holds: text encoders in f32, the UNet in `dtype`, the VAE in
    /// [`Layout::vae_dtype`].
    pub fn weights_bytes(&self, dtype: DType) -> Result<u64> {
        let all = |_: &str| true;
        let mut total = bytes_in(std::slice::from_ref(&self.text.weights), DType::F32, &all)?;
        if let Some(t) = &self.text2 {
            total += bytes_in(std::slice::from_ref(&t.weights), DType::F32, &all)?;
        }
        total += bytes_in(std::slice::from_ref(&self.unet.1), dtype, &all)?;
        total += bytes_in(std::slice::from_ref(&self.vae.1), self.vae_dtype(dtype), &all)?;
        Ok(total)
    }

    /// The VAE's dtype in a model run in `dtype`: f32 for an f16 SDXL whose VAE config says
    /// `force_upcast` (diffusers' SDXL pipelines decode so: the SDXL VAE overflows f16 into
    /// black images; the SD 1.x/2.x pipelines never upcast), else `dtype`.
    pub fn vae_dtype(&self, dtype: DType) -> DType {
        if dtype == DType::F16 && self.family.is_xl() && self.vae.0.force_upcast { DType::F32 } else { dtype }
    }
}

impl Model {
    /// Reads the weights; with a `budget` (bytes), they must fit it (the SD models are small
    /// enough to stay whole; the flow families place their parts, [`crate::placement`]).
    pub fn load(root: &Path, family: Family, device: &Device, dtype: DType, budget: Option<u64>) -> Result<Self> {
        let layout = Layout::read(root, family)?;
        let weights_bytes = layout.weights_bytes(dtype)?;
        if let Some(budget) = budget.filter(|b| weights_bytes > *b) {
            bail!(
                "the weights need about {} MiB, over memory_budget_mib = {}",
                weights_bytes.div_ceil(1024 * 1024),
                budget / (1024 * 1024)
            );
        }
        let vae_dtype = layout.vae_dtype(dtype);
        let text = layout.text.load("text_encoder", device)?;
        let text2 = match layout.text2 {
            Some(l) => Some(l.load("text_encoder_2", device)?),
            None => None,
        };
        let (ucfg, ufile) = layout.unet;
        let unet = UNet::new(weights(&ufile, dtype, device)?, &ucfg).context("loading unet")?;
        let (vcfg, vfile) = layout.vae;
        let vae = Vae::new(weights(&vfile, vae_dtype, device)?, &vcfg).context("loading vae")?;
        Ok(Self {
            family: layout.family,
            device: device.clone(),
            dtype,
            text,
            text2,
            unet,
            vae,
            train: layout.train,
            zeros_for_empty_prompt: layout.zeros_for_empty_prompt,
            tiny_vae: None,
            decoder: Decoder::Vae,
            weights_bytes,
        })
    }

    /// Loads the tiny autoencoder in `dir` beside the VAE, checked against it (latent channels
    /// and pixels per latent), and makes it the final decoder when `decoder` says so.
    pub fn with_tiny_vae(mut self, dir: &Path, decoder: Decoder) -> Result<Self> {
        let layout = TinyVaeLayout::read(dir)?;
        let (lat, factor) = (self.vae.config().latent_channels, self.latent_factor());
        let cfg = &layout.config;
        if cfg.latent_channels != lat || cfg.upscale() != factor {
            bail!(
                "the tiny VAE {} takes {} latent channels at {}x, the model's VAE {lat} at {factor}x",
                dir.display(),
                cfg.latent_channels,
                cfg.upscale()
            );
        }
        self.tiny_vae = Some(layout.load(self.dtype, &self.device)?);
        self.decoder = decoder;
        Ok(self)
    }

    /// The downscale factor from pixels to latents.
    pub fn latent_factor(&self) -> usize {
        self.vae.config().scale_factor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{self, Scale};
    use candle_core::Tensor;

    #[test]
    fn an_f16_sdxl_decodes_in_f32_when_its_vae_says_force_upcast() {
        let dir = tempfile::tempdir().unwrap();
        let load = |family: Family| {
            let root = dir.path().join(family.name());
            random::create(family, Scale::Tiny, &root, 0, None).unwrap();
            Model::load(&root, family, &Device::Cpu, DType::F16, None).unwrap()
        };
        let xl = load(Family::Sdxl);
        assert!(xl.vae.config().force_upcast);
        assert_eq!((xl.dtype, xl.vae.dtype()), (DType::F16, DType::F32));
        let latents = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(crate::pipeline::decode(&xl, &latents).unwrap().dtype(), DType::F32);
        // diffusers' SD 1.x/2.x pipelines never upcast: their VAE stays in the model's dtype.
        assert_eq!(load(Family::SdTurbo).vae.dtype(), DType::F16);
    }
}
