//! The KL autoencoder (VAE) that maps pixels to latents and back.
//!
//! Written here because candle's `AutoEncoderKL` hides the latent distribution's mean, and so its
//! convolutions, group norms and mid-block attention take the CPU fast paths of [`crate::ops`]
//! and [`crate::attention`] (the decoder dominates a one-step generation on CPU). Encoding
//! returns the mean: img2img and inpainting need a deterministic encode (the mean, or a sample
//! drawn from Easel's seeded noise), not candle's unseedable `sample()`.
//! `scaling_factor` and `shift_factor` come from `vae/config.json` (0.18215 for SD, 0.13025 for SDXL;
//! FLUX's 16-channel VAE: 0.3611 and 0.1159, without the quant convolutions), as do the block widths
//! and group count.

use anyhow::{Context, Result};
use candle_core::{D, DType, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::attention::VaeAttention;
use crate::blocks::Resnet;
use crate::ops::{Conv, Extra, GroupNorm, Source};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct VaeConfig {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    /// Subtracted before scaling when encoding, added back when decoding (FLUX: 0.1159; SD: 0).
    pub shift_factor: f64,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    /// Decode in f32 when the model runs in f16 (`model::Layout::vae_dtype`); diffusers' default
    /// is true.
    pub force_upcast: bool,
}

impl VaeConfig {
    /// Pixels per latent pixel: 2 per down block after the first (8 for SD and FLUX.1).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let u = |k: &str, d: usize| v.get(k).and_then(Value::as_u64).map_or(d, |x| x as usize);
        let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(true);
        Ok(Self {
            block_out_channels: serde_json::from_value(
                v.get("block_out_channels").cloned().context("vae config: block_out_channels missing")?,
            )?,
            layers_per_block: u("layers_per_block", 2),
            latent_channels: u("latent_channels", 4),
            norm_num_groups: u("norm_num_groups", 32),
            scaling_factor: v.get("scaling_factor").and_then(Value::as_f64).unwrap_or(0.18215),
            shift_factor: v.get("shift_factor").and_then(Value::as_f64).unwrap_or(0.0),
            use_quant_conv: b("use_quant_conv"),
            use_post_quant_conv: b("use_post_quant_conv"),
            force_upcast: b("force_upcast"),
        })
    }
}

struct Mid {
    first: Resnet,
    attn: VaeAttention,
    second: Resnet,
}

impl Mid {
    fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            first: Resnet::new(vb.pp("resnets.0"), c, c, None, groups, 1e-6, 1.0)?,
            attn: VaeAttention::new(vb.pp("attentions.0"), c, groups)?,
            second: Resnet::new(vb.pp("resnets.1"), c, c, None, groups, 1e-6, 1.0)?,
        })
    }

    fn forward(&self, x: Tensor) -> Result<Tensor> {
        let x = self.first.forward(x, None)?;
        let x = self.attn.forward(&x)?;
        self.second.forward(x, None)
    }
}

struct Level {
    resnets: Vec<Resnet>,
    /// Encoder: stride-2 conv after zero-padding right and bottom; decoder: ×2 nearest + conv.
    resample: Option<Conv>,
}

pub struct Vae {
    cfg: VaeConfig,
    enc_in: Conv,
    enc_down: Vec<Level>,
    enc_mid: Mid,
    enc_norm: GroupNorm,
    enc_out: Conv,
    quant: Option<Conv>,
    post_quant: Option<Conv>,
    dec_in: Conv,
    dec_mid: Mid,
    dec_up: Vec<Level>,
    dec_norm: GroupNorm,
    dec_out: Conv,
    /// The weights' dtype: `encode` and `decode` cast their input to it.
    dtype: DType,
}

impl Vae {
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let (first, last) = (ch[0], *ch.last().context("vae config: no blocks")?);
        let g = cfg.norm_num_groups;
        let lat = cfg.latent_channels;
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        let one = Conv2dConfig::default();
        let stride2 = Conv2dConfig { stride: 2, ..Default::default() };
        let e = vb.pp("encoder");
        let enc_in = Conv::new(e.pp("conv_in"), 3, first, 3, pad1)?;
        let mut enc_down = Vec::new();
        for (i, &out) in ch.iter().enumerate() {
            let vb = e.pp(format!("down_blocks.{i}"));
            let input = if i == 0 { first } else { ch[i - 1] };
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    Resnet::new(
                        vb.pp(format!("resnets.{j}")),
                        if j == 0 { input } else { out },
                        out,
                        None,
                        g,
                        1e-6,
                        1.0,
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i + 1 < ch.len())
                .then(|| Conv::new(vb.pp("downsamplers.0.conv"), out, out, 3, stride2))
                .transpose()?;
            enc_down.push(Level { resnets, resample });
        }
        let enc_mid = Mid::new(e.pp("mid_block"), last, g)?;
        let enc_norm = GroupNorm::new(e.pp("conv_norm_out"), g, last, 1e-6)?;
        let enc_out = Conv::new(e.pp("conv_out"), last, 2 * lat, 3, pad1)?;
        let d = vb.pp("decoder");
        let dec_in = Conv::new(d.pp("conv_in"), lat, last, 3, pad1)?;
        let dec_mid = Mid::new(d.pp("mid_block"), last, g)?;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut dec_up = Vec::new();
        for (i, &out) in rev.iter().enumerate() {
            let vb = d.pp(format!("up_blocks.{i}"));
            let input = if i == 0 { rev[0] } else { rev[i - 1] };
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    Resnet::new(
                        vb.pp(format!("resnets.{j}")),
                        if j == 0 { input } else { out },
                        out,
                        None,
                        g,
                        1e-6,
                        1.0,
                    )
                })
                .collect::<Result<_>>()?;
            let resample =
                (i + 1 < rev.len()).then(|| Conv::new(vb.pp("upsamplers.0.conv"), out, out, 3, pad1)).transpose()?;
            dec_up.push(Level { resnets, resample });
        }
        let dec_norm = GroupNorm::new(d.pp("conv_norm_out"), g, first, 1e-6)?;
        let dec_out = Conv::new(d.pp("conv_out"), first, 3, 3, pad1)?;
        let quant = cfg.use_quant_conv.then(|| Conv::new(vb.pp("quant_conv"), 2 * lat, 2 * lat, 1, one)).transpose()?;
        let post_quant =
            cfg.use_post_quant_conv.then(|| Conv::new(vb.pp("post_quant_conv"), lat, lat, 1, one)).transpose()?;
        Ok(Self {
            cfg: cfg.clone(),
            enc_in,
            enc_down,
            enc_mid,
            enc_norm,
            enc_out,
            quant,
            post_quant,
            dec_in,
            dec_mid,
            dec_up,
            dec_norm,
            dec_out,
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// The dtype it computes in (f32 for an f16 SDXL whose config says `force_upcast`).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Pixels in [-1, 1] `(b, 3, H, W)` → the mean of the latent distribution, shifted and scaled.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = self.enc_in.forward(&pixels.to_dtype(self.dtype)?)?;
        for level in &self.enc_down {
            for r in &level.resnets {
                x = r.forward(x, None)?;
            }
            if let Some(down) = &level.resample {
                x = down.forward(&x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?)?;
            }
        }
        x = self.enc_mid.forward(x)?;
        x = self.enc_out.forward(&self.enc_norm.forward(&x, true)?)?;
        if let Some(q) = &self.quant {
            x = q.forward(&x)?;
        }
        let mean = x.narrow(1, 0, self.cfg.latent_channels)?;
        Ok(((mean - self.cfg.shift_factor)? * self.cfg.scaling_factor)?)
    }

    /// Scaled latents → pixels in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut x = ((latents.to_dtype(self.dtype)? / self.cfg.scaling_factor)? + self.cfg.shift_factor)?;
        if let Some(q) = &self.post_quant {
            x = q.forward(&x)?;
        }
        x = self.dec_in.forward(&x)?;
        x = self.dec_mid.forward(x)?;
        for level in &self.dec_up {
            for r in &level.resnets {
                x = r.forward(x, None)?;
            }
            if let Some(up) = &level.resample {
                x = up.forward_from(Source::Doubled(&x), Extra::default())?;
            }
        }
        self.dec_out.forward_from(Source::Normed(&x, &self.dec_norm), Extra::default())
    }
}
