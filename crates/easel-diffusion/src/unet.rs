//! The conditional UNet of SD 1.x / 2.x / SDXL.
//!
//! candle's own `UNet2DConditionModel` has no `add_embedding`, so it cannot run SDXL as diffusers
//! does. This module owns the top level instead: it reads `unet/config.json` (per-block heads and
//! transformer depths, linear projections), builds the levels of [`crate::blocks`], and adds SDXL's
//! micro-conditioning (`add_time_proj` over the six size/crop ids, concatenated with the pooled
//! text embedding, through `add_embedding` into the time embedding).

use anyhow::{Context, Result, bail};
use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use candle_transformers::models::stable_diffusion::embeddings::Timesteps;

use crate::blocks::{AttnSpec, DownLevel, LevelShape, MidLevel, UpLevel};
use crate::embedder::MlpEmbedder;
use crate::ops::{Conv, GroupNorm as FastGroupNorm};
use serde_json::Value;

/// One resolution level.
#[derive(Debug, Clone)]
pub struct Level {
    pub channels: usize,
    /// Transformer layers per attention, `None` for a level without cross-attention.
    pub transformer_layers: Option<usize>,
    /// diffusers' `attention_head_dim`, which is in fact the number of heads.
    pub heads: usize,
}

#[derive(Debug, Clone)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub levels: Vec<Level>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    /// SDXL micro-conditioning: (addition_time_embed_dim, projection_class_embeddings_input_dim).
    pub text_time: Option<(usize, usize)>,
}

fn per_level(v: Option<&Value>, n: usize, default: usize, what: &str) -> Result<Vec<usize>> {
    match v {
        None | Some(Value::Null) => Ok(vec![default; n]),
        Some(Value::Number(x)) => Ok(vec![x.as_u64().context(what.to_string())? as usize; n]),
        Some(Value::Array(a)) if a.len() == n => a
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize).with_context(|| format!("unet config: bad {what}")))
            .collect(),
        Some(_) => bail!("unet config: {what} must be a number or a list of {n}"),
    }
}

impl UNetConfig {
    pub fn from_json(v: &Value) -> Result<Self> {
        let u = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let f = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
        let b = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
        let channels: Vec<usize> = serde_json::from_value(
            v.get("block_out_channels").cloned().context("unet config: block_out_channels missing")?,
        )?;
        let n = channels.len();
        let types: Vec<String> = serde_json::from_value(
            v.get("down_block_types").cloned().context("unet config: down_block_types missing")?,
        )?;
        if types.len() != n {
            bail!("unet config: {} down_block_types for {n} block_out_channels", types.len());
        }
        let heads = match v.get("num_attention_heads") {
            Some(x) if !x.is_null() => per_level(Some(x), n, 8, "num_attention_heads")?,
            _ => per_level(v.get("attention_head_dim"), n, 8, "attention_head_dim")?,
        };
        let depth = per_level(v.get("transformer_layers_per_block"), n, 1, "transformer_layers_per_block")?;
        let cross = match v.get("cross_attention_dim") {
            Some(Value::Number(x)) => x.as_u64().context("cross_attention_dim")? as usize,
            _ => bail!("unet config: cross_attention_dim must be a number"),
        };
        let levels = (0..n)
            .map(|i| Level {
                channels: channels[i],
                transformer_layers: types[i].contains("CrossAttn").then_some(depth[i]),
                heads: heads[i],
            })
            .collect();
        let text_time = match v.get("addition_embed_type").and_then(Value::as_str) {
            None => None,
            Some("text_time") => Some((
                u("addition_time_embed_dim").context("unet config: addition_time_embed_dim missing")?,
                u("projection_class_embeddings_input_dim")
                    .context("unet config: projection_class_embeddings_input_dim missing")?,
            )),
            Some(other) => bail!("unet config: addition_embed_type '{other}' is not supported"),
        };
        Ok(Self {
            in_channels: u("in_channels").unwrap_or(4),
            out_channels: u("out_channels").unwrap_or(4),
            levels,
            layers_per_block: u("layers_per_block").unwrap_or(2),
            norm_num_groups: u("norm_num_groups").unwrap_or(32),
            norm_eps: f("norm_eps", 1e-5),
            cross_attention_dim: cross,
            use_linear_projection: b("use_linear_projection", false),
            flip_sin_to_cos: b("flip_sin_to_cos", true),
            freq_shift: f("freq_shift", 0.0),
            downsample_padding: u("downsample_padding").unwrap_or(1),
            mid_block_scale_factor: f("mid_block_scale_factor", 1.0),
            text_time,
        })
    }
}

pub struct UNet {
    cfg: UNetConfig,
    conv_in: Conv,
    time_proj: Timesteps,
    time_embedding: MlpEmbedder,
    add: Option<(Timesteps, MlpEmbedder)>,
    down: Vec<DownLevel>,
    mid: MidLevel,
    up: Vec<UpLevel>,
    norm_out: FastGroupNorm,
    conv_out: Conv,
}

/// SDXL's extra conditioning for one batch.
pub struct AddedCond {
    /// `(batch, pooled_dim)`.
    pub text_embeds: Tensor,
    /// `(batch, 6)`, f32: original h, w, crop top, left, target h, w.
    pub time_ids: Tensor,
}

impl UNet {
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let n = cfg.levels.len();
        let c0 = cfg.levels[0].channels;
        let temb = c0 * 4;
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        let conv_in = Conv::new(vb.pp("conv_in"), cfg.in_channels, c0, 3, pad1)?;
        let time_proj = Timesteps::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift);
        let time_embedding = MlpEmbedder::new(vb.pp("time_embedding"), c0, temb)?;
        let add = match cfg.text_time {
            None => None,
            Some((dim, input)) => Some((
                Timesteps::new(dim, cfg.flip_sin_to_cos, cfg.freq_shift),
                MlpEmbedder::new(vb.pp("add_embedding"), input, temb)?,
            )),
        };
        let shape = LevelShape { layers: cfg.layers_per_block, temb, groups: cfg.norm_num_groups, eps: cfg.norm_eps };
        let attn = |level: &Level| {
            level.transformer_layers.map(|depth| AttnSpec {
                heads: level.heads,
                depth,
                context: cfg.cross_attention_dim,
                groups: cfg.norm_num_groups,
                linear_projection: cfg.use_linear_projection,
            })
        };
        let mut down = Vec::with_capacity(n);
        for (i, level) in cfg.levels.iter().enumerate() {
            let cin = if i == 0 { c0 } else { cfg.levels[i - 1].channels };
            let vb = vb.pp(format!("down_blocks.{i}"));
            down.push(DownLevel::new(vb, cin, level.channels, shape, attn(level), i + 1 < n, cfg.downsample_padding)?);
        }
        let last = cfg.levels.last().context("unet config has no blocks")?;
        let mid_attn = AttnSpec {
            heads: last.heads,
            depth: last.transformer_layers.unwrap_or(1),
            context: cfg.cross_attention_dim,
            groups: cfg.norm_num_groups,
            linear_projection: cfg.use_linear_projection,
        };
        let mid = MidLevel::new(vb.pp("mid_block"), last.channels, shape, mid_attn, cfg.mid_block_scale_factor)?;
        let mut up = Vec::with_capacity(n);
        let rev: Vec<&Level> = cfg.levels.iter().rev().collect();
        for (i, level) in rev.iter().enumerate() {
            let prev = if i == 0 { last.channels } else { rev[i - 1].channels };
            let skip_in = rev[(i + 1).min(n - 1)].channels;
            let layers = cfg.layers_per_block + 1;
            let skips: Vec<usize> =
                (0..layers).map(|j| if j + 1 == layers { skip_in } else { level.channels }).collect();
            let vb = vb.pp(format!("up_blocks.{i}"));
            up.push(UpLevel::new(vb, prev, level.channels, &skips, shape, attn(level), i + 1 < n)?);
        }
        let norm_out = FastGroupNorm::new(vb.pp("conv_norm_out"), cfg.norm_num_groups, c0, cfg.norm_eps)?;
        let conv_out = Conv::new(vb.pp("conv_out"), c0, cfg.out_channels, 3, pad1)?;
        Ok(Self { cfg: cfg.clone(), conv_in, time_proj, time_embedding, add, down, mid, up, norm_out, conv_out })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    pub fn forward(&self, xs: &Tensor, timestep: f64, context: &Tensor, added: Option<&AddedCond>) -> Result<Tensor> {
        let b = xs.dim(0)?;
        let dev = xs.device();
        let t = Tensor::full(timestep as f32, b, dev)?;
        let mut emb = self.time_embedding.forward(&sinusoids(&self.time_proj, &t, xs.dtype())?)?;
        match (&self.add, added) {
            (Some((proj, embed)), Some(a)) => {
                let ids = sinusoids(proj, &a.time_ids.flatten_all()?, xs.dtype())?.reshape((b, ()))?;
                let input = Tensor::cat(&[&a.text_embeds, &ids.to_dtype(a.text_embeds.dtype())?], 1)?;
                emb = (emb + embed.forward(&input)?)?;
            }
            (Some(_), None) => bail!("this UNet needs SDXL micro-conditioning (pooled text embeddings and time ids)"),
            (None, _) => {}
        }
        let mut x = self.conv_in.forward(xs)?;
        let mut skips = vec![x.clone()];
        for level in &self.down {
            x = level.forward(&x, &emb, context, &mut skips)?;
        }
        x = self.mid.forward(&x, &emb, context)?;
        for level in &self.up {
            x = level.forward(&x, &mut skips, &emb, context)?;
        }
        let x = self.norm_out.forward(&x, true)?;
        self.conv_out.forward(&x)
    }
}

/// The sinusoidal embedding of timesteps (or SDXL's size ids) in f32, then cast to `dtype`, as
/// diffusers computes it: a timestep near 1000 times a frequency, rounded to f16, is off by up to
/// a quarter of a radian (in bf16, by two), which put half-precision outputs up to 8× (GPU, 512²)
/// and 17× (CPU, tiny models) further from the f32 answer than diffusers' own (BENCHMARKS.md).
fn sinusoids(proj: &Timesteps, t: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    proj.forward(&t.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn half_precision_timestep_embeddings_are_computed_in_f32() {
        let proj = Timesteps::new(320, true, 0.0);
        // Timesteps and SDXL's size ids, f32 as the UNet and the pipeline pass them.
        let t = Tensor::new(&[999.5f32, 1.25, 1024.0, 1000.0], &Device::Cpu).unwrap();
        let exact = proj.forward(&t).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let got = sinusoids(&proj, &t, dtype).unwrap().to_dtype(DType::F32).unwrap();
            let err = (got - &exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // The rounding of values in [-1, 1] to the dtype, no more (computed in f16 the
            // products were off by up to 0.25 rad; in bf16 by 2).
            assert!(err <= if dtype == DType::F16 { 5e-4 } else { 4e-3 }, "{dtype:?}: {err}");
        }
    }
}
