//! TAESD, the tiny distilled autoencoder (diffusers' `AutoencoderTiny`): an optional, lossy
//! stand-in for the full VAE, for partial images (`preview = "taesd"`) and, when a model's
//! config asks, for the final decode (`decoder = "taesd"`).
//!
//! Why: the full VAE decoder is most of a one-step generation on CPU (about 1.2 TFLOP at 512²);
//! TAESD's decoder is plain 3×3 convolutions and ReLUs at 64 channels (about 0.14 TFLOP), several
//! times faster, at the cost of detail (it was distilled to approximate the VAE, not to match
//! it). Off by default: it changes the pixels.
//!
//! The structure follows diffusers' `EncoderTiny` / `DecoderTiny` exactly, so a folder with its
//! `config.json` and `diffusion_pytorch_model.safetensors` (such as `madebyollin/taesd` for the
//! SD 1.x/2.x latents, `madebyollin/taesdxl` for SDXL's) loads unchanged. Both are one
//! `nn.Sequential` named `encoder.layers` / `decoder.layers`, whose indices count every entry,
//! activations and upsamplers included. The decoder takes the pipeline's scaled latents divided
//! by the config's `scaling_factor` (1.0 for the published weights), squashes them with
//! `3·tanh(x/3)` and returns pixels in [0, 1], mapped here to [-1, 1] like the VAE's.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::Deserialize;

use crate::model::{read_json, weights_file};
use crate::ops::Conv;

/// The keys of diffusers' `AutoencoderTiny` config that change the network, with its defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct TinyVaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "sixty_four")]
    pub encoder_block_out_channels: Vec<usize>,
    #[serde(default = "sixty_four")]
    pub decoder_block_out_channels: Vec<usize>,
    #[serde(default = "relu")]
    pub act_fn: String,
    #[serde(default = "nearest")]
    pub upsample_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "two")]
    pub upsampling_scaling_factor: usize,
    #[serde(default = "encoder_blocks")]
    pub num_encoder_blocks: Vec<usize>,
    #[serde(default = "decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "one")]
    pub scaling_factor: f64,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}
fn sixty_four() -> Vec<usize> {
    vec![64; 4]
}
fn relu() -> String {
    "relu".into()
}
fn nearest() -> String {
    "nearest".into()
}
fn encoder_blocks() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}

impl TinyVaeConfig {
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        if let Some(class) = v.get("_class_name").and_then(|c| c.as_str()) {
            ensure!(class == "AutoencoderTiny", "_class_name is {class}, not AutoencoderTiny");
        }
        let cfg: Self = serde_json::from_value(v.clone())?;
        Activation::parse(&cfg.act_fn)?;
        ensure!(cfg.upsample_fn == "nearest", "upsample_fn {} is not supported (only nearest)", cfg.upsample_fn);
        for (what, channels, blocks) in [
            ("encoder", &cfg.encoder_block_out_channels, &cfg.num_encoder_blocks),
            ("decoder", &cfg.decoder_block_out_channels, &cfg.num_decoder_blocks),
        ] {
            ensure!(
                !channels.is_empty() && channels.len() == blocks.len(),
                "{what}_block_out_channels and num_{what}_blocks must be non-empty and of the same length"
            );
            // diffusers chains each stage's convolution into the next stage's blocks at the
            // stage's own width: different widths would not run there either.
            ensure!(channels.iter().all(|&c| c == channels[0]), "{what}_block_out_channels must all be equal");
        }
        ensure!(cfg.upsampling_scaling_factor >= 1, "upsampling_scaling_factor must be at least 1");
        ensure!(cfg.scaling_factor > 0.0, "scaling_factor must be positive");
        Ok(cfg)
    }

    /// Pixels per latent along an edge.
    pub fn upscale(&self) -> usize {
        self.upsampling_scaling_factor.pow(self.num_decoder_blocks.len() as u32 - 1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Relu,
    Silu,
    Gelu,
}

impl Activation {
    /// diffusers' `get_activation` names (mish is not supported).
    fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_lowercase().as_str() {
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            "gelu" => Self::Gelu,
            other => bail!("act_fn {other} is not supported (relu, silu, swish or gelu)"),
        })
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Relu => x.relu()?,
            Self::Silu => candle_nn::ops::silu(x)?,
            Self::Gelu => x.gelu_erf()?,
        })
    }
}

/// diffusers' `AutoencoderTinyBlock` at equal widths: `relu(conv(act(conv(act(conv(x))))) + x)`.
struct Block {
    convs: [Conv; 3],
    act: Activation,
}

impl Block {
    fn new(vb: VarBuilder, c: usize, act: Activation) -> Result<Self> {
        let conv = |i: usize| Conv::new(vb.pp(format!("conv.{i}")), c, c, 3, PAD1);
        Ok(Self { convs: [conv(0)?, conv(2)?, conv(4)?], act })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.act.apply(&self.convs[0].forward(x)?)?;
        let h = self.act.apply(&self.convs[1].forward(&h)?)?;
        let h = self.convs[2].forward(&h)?;
        Ok((h + x)?.relu()?)
    }
}

/// One entry of the `nn.Sequential`.
enum Layer {
    Conv(Conv),
    Act(Activation),
    Block(Box<Block>),
    Upsample(usize),
}

const PAD1: Conv2dConfig = Conv2dConfig { padding: 1, stride: 1, dilation: 1, groups: 1, cudnn_fwd_algo: None };

fn run(layers: &[Layer], mut x: Tensor) -> Result<Tensor> {
    for layer in layers {
        x = match layer {
            Layer::Conv(c) => c.forward(&x)?,
            Layer::Act(a) => a.apply(&x)?,
            Layer::Block(b) => b.forward(&x)?,
            Layer::Upsample(f) => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(h * f, w * f)?
            }
        };
    }
    Ok(x)
}

pub struct TinyVae {
    cfg: TinyVaeConfig,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
}

impl TinyVae {
    pub fn new(vb: VarBuilder, cfg: &TinyVaeConfig) -> Result<Self> {
        let act = Activation::parse(&cfg.act_fn)?;
        let e = vb.pp("encoder.layers");
        let mut encoder = Vec::new();
        let ch = &cfg.encoder_block_out_channels;
        for (i, &blocks) in cfg.num_encoder_blocks.iter().enumerate() {
            let k = encoder.len();
            encoder.push(Layer::Conv(if i == 0 {
                Conv::new(e.pp(k), cfg.in_channels, ch[i], 3, PAD1)?
            } else {
                Conv::no_bias(e.pp(k), ch[i], ch[i], 3, Conv2dConfig { stride: 2, ..PAD1 })?
            }));
            for _ in 0..blocks {
                let k = encoder.len();
                encoder.push(Layer::Block(Box::new(Block::new(e.pp(k), ch[i], act)?)));
            }
        }
        let k = encoder.len();
        encoder.push(Layer::Conv(Conv::new(e.pp(k), ch[ch.len() - 1], cfg.latent_channels, 3, PAD1)?));

        let d = vb.pp("decoder.layers");
        let ch = &cfg.decoder_block_out_channels;
        let mut decoder = vec![Layer::Conv(Conv::new(d.pp(0), cfg.latent_channels, ch[0], 3, PAD1)?), Layer::Act(act)];
        let stages = cfg.num_decoder_blocks.len();
        for (i, &blocks) in cfg.num_decoder_blocks.iter().enumerate() {
            for _ in 0..blocks {
                let k = decoder.len();
                decoder.push(Layer::Block(Box::new(Block::new(d.pp(k), ch[i], act)?)));
            }
            let last = i + 1 == stages;
            if !last {
                decoder.push(Layer::Upsample(cfg.upsampling_scaling_factor));
            }
            let k = decoder.len();
            decoder.push(Layer::Conv(if last {
                Conv::new(d.pp(k), ch[i], cfg.out_channels, 3, PAD1)?
            } else {
                Conv::no_bias(d.pp(k), ch[i], ch[i], 3, PAD1)?
            }));
        }
        Ok(Self { cfg: cfg.clone(), encoder, decoder })
    }

    pub fn config(&self) -> &TinyVaeConfig {
        &self.cfg
    }

    /// Scaled latents (as the denoising loop makes them) → pixels in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let x = (latents / self.cfg.scaling_factor)?;
        let x = ((x / 3.0)?.tanh()? * 3.0)?;
        let pixels = run(&self.decoder, x)?;
        Ok(((pixels * 2.0)? - 1.0)?)
    }

    /// Pixels in [-1, 1] → scaled latents.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = ((pixels + 1.0)? / 2.0)?;
        Ok((run(&self.encoder, x)? * self.cfg.scaling_factor)?)
    }
}

/// A tiny VAE folder's config, checked, and its weights file; no tensor read.
pub struct TinyVaeLayout {
    pub config: TinyVaeConfig,
    weights: PathBuf,
}

impl TinyVaeLayout {
    pub fn read(dir: &Path) -> Result<Self> {
        ensure!(dir.is_dir(), "the tiny VAE folder {} does not exist", dir.display());
        let file = dir.join("config.json");
        let config = TinyVaeConfig::from_json(&read_json(&file)?)
            .with_context(|| format!("{} is not a usable AutoencoderTiny config", file.display()))?;
        Ok(Self { config, weights: weights_file(dir, "diffusion_pytorch_model")? })
    }

    pub fn load(self, dtype: DType, device: &Device) -> Result<TinyVae> {
        let vb = crate::weights::var_builder(&self.weights, dtype, device)?;
        TinyVae::new(vb, &self.config).with_context(|| format!("loading the tiny VAE {}", self.weights.display()))
    }
}
