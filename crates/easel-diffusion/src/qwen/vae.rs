//! Qwen-Image's VAE (`AutoencoderKLQwenImage`, the Wan-2.1 causal video VAE) on single frames.
//!
//! The released VAE is 3-D: causal convolutions over time, with temporal down/upsampling. An image
//! is one frame, and diffusers runs the first frame with an empty cache, so every causal 3×3×3
//! kernel sees two zero frames and then the frame: only its last temporal tap touches data, and it
//! is exactly a 3×3 2-D convolution. The `time_conv`s of the temporal resamplers are skipped on the
//! first chunk. So this is a 2-D network that reads the 3-D checkpoint: weights `(o, i, t, k, k)`
//! are cut to their last tap at load (the `time_conv`s are read only to check the file).
//!
//! Its other parts: `RMS_norm` is an L2 normalisation over channels (no epsilon beyond
//! `F.normalize`'s 1e-12 floor) times √C times `gamma`; downsampling pads (0, 1, 0, 1) before a
//! stride-2 convolution; the mid-block attention is single-headed over pixels. Latents are
//! normalised per channel with the config's `latents_mean` / `latents_std`; the decoder's output is
//! clamped to [−1, 1]. Encoding returns the posterior mean (the first `z_dim` channels after
//! `quant_conv`), deterministic for edits and img2img.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};
use serde_json::Value;

use crate::ops::Conv;

#[derive(Debug, Clone, PartialEq)]
pub struct QwenVaeConfig {
    pub base_dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub attn_scales: Vec<f64>,
    pub temperal_downsample: Vec<bool>,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
}

impl QwenVaeConfig {
    /// `vae/config.json`; absent keys take diffusers' defaults (the released model's values).
    pub fn from_json(v: &Value) -> Result<Self> {
        fn list<T: serde::de::DeserializeOwned>(v: &Value, k: &str, d: T) -> Result<T> {
            match v.get(k) {
                Some(x) => serde_json::from_value(x.clone()).with_context(|| format!("vae config: bad `{k}`")),
                None => Ok(d),
            }
        }
        let u = |k: &str, d: usize| v.get(k).and_then(Value::as_u64).map_or(d, |x| x as usize);
        let cfg = Self {
            base_dim: u("base_dim", 96),
            z_dim: u("z_dim", 16),
            dim_mult: list(v, "dim_mult", vec![1, 2, 4, 4])?,
            num_res_blocks: u("num_res_blocks", 2),
            attn_scales: list(v, "attn_scales", vec![])?,
            temperal_downsample: list(v, "temperal_downsample", vec![false, true, true])?,
            latents_mean: list(v, "latents_mean", LATENTS_MEAN.to_vec())?,
            latents_std: list(v, "latents_std", LATENTS_STD.to_vec())?,
        };
        if cfg.dim_mult.is_empty() || cfg.temperal_downsample.len() + 1 < cfg.dim_mult.len() {
            bail!("vae config: temperal_downsample needs one entry per level but the last");
        }
        if cfg.latents_mean.len() != cfg.z_dim || cfg.latents_std.len() != cfg.z_dim {
            bail!("vae config: latents_mean and latents_std need z_dim = {} entries", cfg.z_dim);
        }
        Ok(cfg)
    }

    /// Pixels per latent along an edge.
    pub fn scale_factor(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }
}

/// The released model's per-channel latent statistics (diffusers' defaults).
pub const LATENTS_MEAN: [f64; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];
pub const LATENTS_STD: [f64; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];

/// A causal 3-D convolution applied to one frame: its last temporal tap as a 2-D convolution.
/// (Random models draw the weights with the 2-D fan-in, the part that touches data.)
fn causal_conv(vb: VarBuilder, cin: usize, cout: usize, k: usize) -> Result<Conv> {
    let bound = 1.0 / ((cin * k * k) as f64).sqrt();
    let w = vb.get_with_hints((cout, cin, k, k, k), "weight", Init::Randn { mean: 0.0, stdev: bound })?;
    let w = w.narrow(2, k - 1, 1)?.squeeze(2)?.contiguous()?;
    let b = vb.get_with_hints(cout, "bias", Init::Uniform { lo: -bound, up: bound })?;
    Conv::from_weights(w, Some(b), Conv2dConfig { padding: k / 2, ..Default::default() })
}

fn conv2d(vb: VarBuilder, cin: usize, cout: usize, k: usize, cfg: Conv2dConfig) -> Result<Conv> {
    Conv::new(vb, cin, cout, k, cfg)
}

/// `RMS_norm`: L2 over channels × √C × gamma.
struct ChannelNorm {
    gamma: Tensor,
    scale: f64,
}

impl ChannelNorm {
    /// `images`: the gamma is `(C, 1, 1)` (attention) rather than `(C, 1, 1, 1)` (3-D blocks).
    fn new(vb: VarBuilder, c: usize, images: bool) -> Result<Self> {
        let one = Init::Const(1.0);
        let gamma = if images {
            vb.get_with_hints((c, 1, 1), "gamma", one)?
        } else {
            vb.get_with_hints((c, 1, 1, 1), "gamma", one)?
        };
        Ok(Self { gamma: gamma.reshape((1, c, 1, 1))?, scale: (c as f64).sqrt() })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let y = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        Ok((y * self.scale)?.broadcast_mul(&self.gamma)?)
    }
}

struct Residual {
    norm1: ChannelNorm,
    conv1: Conv,
    norm2: ChannelNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl Residual {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            norm1: ChannelNorm::new(vb.pp("norm1"), cin, false)?,
            conv1: causal_conv(vb.pp("conv1"), cin, cout, 3)?,
            norm2: ChannelNorm::new(vb.pp("norm2"), cout, false)?,
            conv2: causal_conv(vb.pp("conv2"), cout, cout, 3)?,
            shortcut: if cin == cout { None } else { Some(causal_conv(vb.pp("conv_shortcut"), cin, cout, 1)?) },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let y = self.conv1.forward(&candle_nn::ops::silu(&self.norm1.forward(x)?)?)?;
        let y = self.conv2.forward(&candle_nn::ops::silu(&self.norm2.forward(&y)?)?)?;
        Ok((y + h)?)
    }
}

/// Single-head self-attention over the pixels of a frame.
struct Attention {
    norm: ChannelNorm,
    qkv: Conv,
    proj: Conv,
}

impl Attention {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            norm: ChannelNorm::new(vb.pp("norm"), c, true)?,
            qkv: conv2d(vb.pp("to_qkv"), c, 3 * c, 1, Default::default())?,
            proj: conv2d(vb.pp("proj"), c, c, 1, Default::default())?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let qkv = self.qkv.forward(&self.norm.forward(x)?)?.reshape((b, 3 * c, h * w))?.transpose(1, 2)?;
        let q = (qkv.narrow(2, 0, c)?.contiguous()? * (1.0 / (c as f64).sqrt()))?;
        let k = qkv.narrow(2, c, c)?.contiguous()?;
        let v = qkv.narrow(2, 2 * c, c)?.contiguous()?;
        // In query chunks (the same rows, the same sums): a 1024² image has 16384 pixels here,
        // whose full score matrix alone would be 1 GiB.
        let kt = k.t()?.contiguous()?.unsqueeze(1)?;
        let o = crate::blocks::attend(&q.unsqueeze(1)?, &kt, &v.unsqueeze(1)?, crate::blocks::max_scores(q.device()))?
            .squeeze(1)?;
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((self.proj.forward(&o)? + x)?)
    }
}

struct Mid {
    first: Residual,
    attn: Attention,
    second: Residual,
}

impl Mid {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            first: Residual::new(vb.pp("resnets.0"), c, c)?,
            attn: Attention::new(vb.pp("attentions.0"), c)?,
            second: Residual::new(vb.pp("resnets.1"), c, c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.second.forward(&self.attn.forward(&self.first.forward(x)?)?)
    }
}

enum Resample {
    /// Zero-pad right and bottom by one, 3×3 convolution with stride 2.
    Down(Conv),
    /// Nearest ×2, 3×3 convolution halving the channels.
    Up(Conv),
}

impl Resample {
    /// `temporal`: the 3-D variant, whose `time_conv` is read (and checked) but unused on a frame.
    fn down(vb: VarBuilder, c: usize, temporal: bool) -> Result<Self> {
        if temporal {
            vb.get((c, c, 3, 1, 1), "time_conv.weight")?;
            vb.get(c, "time_conv.bias")?;
        }
        let cfg = Conv2dConfig { stride: 2, ..Default::default() };
        Ok(Self::Down(conv2d(vb.pp("resample.1"), c, c, 3, cfg)?))
    }

    fn up(vb: VarBuilder, c: usize, temporal: bool) -> Result<Self> {
        if temporal {
            vb.get((2 * c, c, 3, 1, 1), "time_conv.weight")?;
            vb.get(2 * c, "time_conv.bias")?;
        }
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        Ok(Self::Up(conv2d(vb.pp("resample.1"), c, c / 2, 3, cfg)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Down(conv) => conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?),
            Self::Up(conv) => {
                let (_, _, h, w) = x.dims4()?;
                conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
            }
        }
    }
}

enum Layer {
    Res(Residual),
    Attn(Attention),
    Resample(Resample),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Res(r) => r.forward(x),
            Self::Attn(a) => a.forward(x),
            Self::Resample(r) => r.forward(x),
        }
    }
}

struct Head {
    norm: ChannelNorm,
    conv: Conv,
}

impl Head {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            norm: ChannelNorm::new(vb.pp("norm_out"), cin, false)?,
            conv: causal_conv(vb.pp("conv_out"), cin, cout, 3)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&candle_nn::ops::silu(&self.norm.forward(x)?)?)
    }
}

pub struct QwenVae {
    cfg: QwenVaeConfig,
    enc_in: Conv,
    enc_layers: Vec<Layer>,
    enc_mid: Mid,
    enc_head: Head,
    quant: Conv,
    post_quant: Conv,
    dec_in: Conv,
    dec_mid: Mid,
    dec_layers: Vec<Layer>,
    dec_head: Head,
    mean: Tensor,
    /// `1 / latents_std`, as diffusers computes it (it divides by this to denormalise).
    inv_std: Tensor,
}

impl QwenVae {
    pub fn new(vb: VarBuilder, cfg: &QwenVaeConfig) -> Result<Self> {
        let dim = cfg.base_dim;
        let z = cfg.z_dim;
        let levels = cfg.dim_mult.len();
        // Encoder: a flat list of residual blocks, optional attention and resamplers.
        let enc = vb.pp("encoder");
        let mut dims = vec![dim];
        dims.extend(cfg.dim_mult.iter().map(|m| m * dim));
        let mut enc_layers = Vec::new();
        let mut scale = 1.0;
        for i in 0..levels {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                let idx = enc_layers.len();
                enc_layers.push(Layer::Res(Residual::new(enc.pp(format!("down_blocks.{idx}")), cin, cout)?));
                if cfg.attn_scales.contains(&scale) {
                    let idx = enc_layers.len();
                    enc_layers.push(Layer::Attn(Attention::new(enc.pp(format!("down_blocks.{idx}")), cout)?));
                }
                cin = cout;
            }
            if i + 1 != levels {
                let idx = enc_layers.len();
                let r = Resample::down(enc.pp(format!("down_blocks.{idx}")), cout, cfg.temperal_downsample[i])?;
                enc_layers.push(Layer::Resample(r));
                scale /= 2.0;
            }
        }
        let top = dims[levels];
        let enc_in = causal_conv(enc.pp("conv_in"), 3, dim, 3)?;
        let enc_mid = Mid::new(enc.pp("mid_block"), top)?;
        let enc_head = Head::new(enc.clone(), top, 2 * z)?;
        let quant = causal_conv(vb.pp("quant_conv"), 2 * z, 2 * z, 1)?;
        let post_quant = causal_conv(vb.pp("post_quant_conv"), z, z, 1)?;
        // Decoder: levels from the top, each `num_res_blocks + 1` residual blocks and an upsampler.
        let dec = vb.pp("decoder");
        let mut ddims = vec![dim * cfg.dim_mult[levels - 1]];
        ddims.extend(cfg.dim_mult.iter().rev().map(|m| m * dim));
        let up_temporal: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let dec_in = causal_conv(dec.pp("conv_in"), z, ddims[0], 3)?;
        let dec_mid = Mid::new(dec.pp("mid_block"), ddims[0])?;
        let mut dec_layers = Vec::new();
        for i in 0..levels {
            let block = dec.pp(format!("up_blocks.{i}"));
            let mut cin = if i > 0 { ddims[i] / 2 } else { ddims[i] };
            let cout = ddims[i + 1];
            for j in 0..=cfg.num_res_blocks {
                dec_layers.push(Layer::Res(Residual::new(block.pp(format!("resnets.{j}")), cin, cout)?));
                cin = cout;
            }
            if i + 1 != levels {
                let temporal = up_temporal.get(i).copied().unwrap_or(false);
                dec_layers.push(Layer::Resample(Resample::up(block.pp("upsamplers.0"), cout, temporal)?));
            }
        }
        let dec_head = Head::new(dec, ddims[levels], 3)?;
        let stat = |v: &[f64]| -> Result<Tensor> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Ok(Tensor::from_vec(v, (1, z, 1, 1), vb.device())?)
        };
        let std = stat(&cfg.latents_std)?;
        Ok(Self {
            cfg: cfg.clone(),
            enc_in,
            enc_layers,
            enc_mid,
            enc_head,
            quant,
            post_quant,
            dec_in,
            dec_mid,
            dec_layers,
            dec_head,
            mean: stat(&cfg.latents_mean)?,
            inv_std: std.recip()?,
        })
    }

    pub fn config(&self) -> &QwenVaeConfig {
        &self.cfg
    }

    /// Normalised latents `(b, z, h, w)` → pixels `(b, 3, 8h, 8w)` in [−1, 1] (model dtype in,
    /// model dtype out; the normalisation runs in f32).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let dtype = latents.dtype();
        let z = latents.to_dtype(DType::F32)?.broadcast_div(&self.inv_std)?.broadcast_add(&self.mean)?;
        let mut x = self.post_quant.forward(&z.to_dtype(dtype)?)?;
        x = self.dec_in.forward(&x)?;
        x = self.dec_mid.forward(&x)?;
        for layer in &self.dec_layers {
            x = layer.forward(&x)?;
        }
        Ok(self.dec_head.forward(&x)?.clamp(-1.0, 1.0)?)
    }

    /// Pixels `(b, 3, H, W)` in [−1, 1] → normalised latents `(b, z, H/8, W/8)`: the posterior mean.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let dtype = pixels.dtype();
        let mut x = self.enc_in.forward(pixels)?;
        for layer in &self.enc_layers {
            x = layer.forward(&x)?;
        }
        x = self.enc_head.forward(&self.enc_mid.forward(&x)?)?;
        let mean = self.quant.forward(&x)?.narrow(1, 0, self.cfg.z_dim)?;
        let z = mean.to_dtype(DType::F32)?.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)?;
        Ok(z.to_dtype(dtype)?)
    }
}
