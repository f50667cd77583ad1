//! FLUX.1's denoiser, diffusers' `FluxTransformer2DModel`, reading diffusers' weight names.
//!
//! `x_embedder` lifts the packed latents, `context_embedder` the T5 states; the conditioning
//! vector is `timestep_embedder(sin(σ·1000))` [+ `guidance_embedder(sin(g·1000))` for dev] +
//! `text_embedder(CLIP pooled)`. Then `num_layers` double-stream blocks (separate weights for text
//! and image, one joint attention over `[text; image]`), `num_single_layers` single-stream blocks
//! over the concatenation (attention in parallel with an MLP), and an adaptive LayerNorm
//! (`norm_out`: scale, then shift — the reverse of BFL's order) before `proj_out`. Every size
//! comes from `transformer/config.json`, so diffusers' tiny test model loads as the 12 B one does.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde_json::Value;

use crate::embedder::MlpEmbedder;
use crate::flow::blocks::{FeedForward, Qkv};
use crate::flow::embed::timestep_embedding;
use crate::flow::norm::{Modulation, gated, layer_norm, modulate};
use crate::flow::{Rope, joint_attention};

/// diffusers hard-codes RoPE's θ and the MLP ratio.
pub const ROPE_THETA: f64 = 10000.0;
const MLP_RATIO: usize = 4;
const TIMESTEP_DIM: usize = 256;

/// `transformer/config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    pub guidance_embeds: bool,
    pub axes_dims_rope: Vec<usize>,
}

impl FluxConfig {
    pub fn from_json(v: &Value) -> Result<Self> {
        let u = |k: &str, d: Option<usize>| -> Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => d.with_context(|| format!("transformer config: `{k}` is missing")),
                Some(x) => x
                    .as_u64()
                    .map(|x| x as usize)
                    .with_context(|| format!("transformer config: `{k}` is not an integer")),
            }
        };
        if u("patch_size", Some(1))? != 1 {
            bail!("transformer config: only patch_size 1 is supported (FLUX packs 2x2 before the transformer)");
        }
        let in_channels = u("in_channels", Some(64))?;
        let axes_dims_rope: Vec<usize> = match v.get("axes_dims_rope") {
            None | Some(Value::Null) => vec![16, 56, 56],
            Some(x) => serde_json::from_value(x.clone())
                .context("transformer config: `axes_dims_rope` is not a list of integers")?,
        };
        let cfg = Self {
            in_channels,
            out_channels: u("out_channels", Some(in_channels))?,
            num_layers: u("num_layers", Some(19))?,
            num_single_layers: u("num_single_layers", Some(38))?,
            attention_head_dim: u("attention_head_dim", Some(128))?,
            num_attention_heads: u("num_attention_heads", Some(24))?,
            joint_attention_dim: u("joint_attention_dim", Some(4096))?,
            pooled_projection_dim: u("pooled_projection_dim", Some(768))?,
            guidance_embeds: v.get("guidance_embeds").and_then(Value::as_bool).unwrap_or(false),
            axes_dims_rope,
        };
        ensure!(
            cfg.axes_dims_rope.len() == 3,
            "transformer config: axes_dims_rope needs 3 axes (text/time, row, column)"
        );
        ensure!(
            cfg.axes_dims_rope.iter().sum::<usize>() == cfg.attention_head_dim,
            "transformer config: axes_dims_rope {:?} must add up to attention_head_dim {}",
            cfg.axes_dims_rope,
            cfg.attention_head_dim
        );
        ensure!(
            cfg.in_channels.is_multiple_of(4),
            "transformer config: in_channels {} is not 4 x the latent channels",
            cfg.in_channels
        );
        ensure!(cfg.out_channels == cfg.in_channels, "transformer config: out_channels must equal in_channels");
        Ok(cfg)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// The VAE's latent channels this transformer works on.
    pub fn latent_channels(&self) -> usize {
        self.in_channels / 4
    }
}

/// Attention over `[a; b]` (q, k, v concatenated along the sequence), RoPE on the whole.
fn attend(parts: &[(Tensor, Tensor, Tensor)], rope: &Rope) -> Result<Tensor> {
    let cat =
        |pick: fn(&(Tensor, Tensor, Tensor)) -> &Tensor| Tensor::cat(&parts.iter().map(pick).collect::<Vec<_>>(), 2);
    let (q, k, v) = (rope.apply(&cat(|p| &p.0)?)?, rope.apply(&cat(|p| &p.1)?)?, cat(|p| &p.2)?);
    joint_attention(&q, &k, &v, None)
}

struct DoubleBlock {
    norm1: Modulation,
    norm1_context: Modulation,
    img: Qkv,
    txt: Qkv,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
    heads: usize,
}

impl DoubleBlock {
    fn new(vb: VarBuilder, cfg: &FluxConfig) -> Result<Self> {
        let dim = cfg.inner_dim();
        let hd = cfg.attention_head_dim;
        let attn = vb.pp("attn");
        Ok(Self {
            norm1: Modulation::new(vb.pp("norm1.linear"), dim, 6)?,
            norm1_context: Modulation::new(vb.pp("norm1_context.linear"), dim, 6)?,
            img: Qkv::new(&attn, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], dim, hd)?,
            txt: Qkv::new(&attn, ["add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"], dim, hd)?,
            to_out: candle_nn::linear(dim, dim, attn.pp("to_out.0"))?,
            to_add_out: candle_nn::linear(dim, dim, attn.pp("to_add_out"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            ff_context: FeedForward::new(vb.pp("ff_context"), dim)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, img: &Tensor, txt: &Tensor, temb: &Tensor, rope: &Rope) -> Result<(Tensor, Tensor)> {
        let m = self.norm1.forward(temb)?;
        let c = self.norm1_context.forward(temb)?;
        let img_in = modulate(&layer_norm(img)?, &m[0], &m[1])?;
        let txt_in = modulate(&layer_norm(txt)?, &c[0], &c[1])?;
        let s_txt = txt.dim(1)?;
        let joint = attend(&[self.txt.forward(&txt_in, self.heads)?, self.img.forward(&img_in, self.heads)?], rope)?;
        let s_all = joint.dim(1)?;
        let txt_attn = self.to_add_out.forward(&joint.narrow(1, 0, s_txt)?.contiguous()?)?;
        let img_attn = self.to_out.forward(&joint.narrow(1, s_txt, s_all - s_txt)?.contiguous()?)?;

        let img = (img + gated(&m[2], &img_attn)?)?;
        let ff = self.ff.forward(&modulate(&layer_norm(&img)?, &m[3], &m[4])?)?;
        let img = (&img + gated(&m[5], &ff)?)?;

        let txt = (txt + gated(&c[2], &txt_attn)?)?;
        let ff = self.ff_context.forward(&modulate(&layer_norm(&txt)?, &c[3], &c[4])?)?;
        let txt = (&txt + gated(&c[5], &ff)?)?;
        Ok((img, txt))
    }
}

struct SingleBlock {
    norm: Modulation,
    qkv: Qkv,
    proj_mlp: Linear,
    proj_out: Linear,
    heads: usize,
}

impl SingleBlock {
    fn new(vb: VarBuilder, cfg: &FluxConfig) -> Result<Self> {
        let dim = cfg.inner_dim();
        let mlp = dim * MLP_RATIO;
        Ok(Self {
            norm: Modulation::new(vb.pp("norm.linear"), dim, 3)?,
            qkv: Qkv::new(&vb.pp("attn"), ["to_q", "to_k", "to_v", "norm_q", "norm_k"], dim, cfg.attention_head_dim)?,
            proj_mlp: candle_nn::linear(dim, mlp, vb.pp("proj_mlp"))?,
            proj_out: candle_nn::linear(dim + mlp, dim, vb.pp("proj_out"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `x` is `[text; image]`.
    fn forward(&self, x: &Tensor, temb: &Tensor, rope: &Rope) -> Result<Tensor> {
        let m = self.norm.forward(temb)?;
        let normed = modulate(&layer_norm(x)?, &m[0], &m[1])?;
        let mlp = self.proj_mlp.forward(&normed)?.gelu()?;
        let attn = attend(&[self.qkv.forward(&normed, self.heads)?], rope)?;
        let out = self.proj_out.forward(&Tensor::cat(&[&attn, &mlp], D::Minus1)?)?;
        Ok((x + gated(&m[2], &out)?)?)
    }
}

pub struct FluxTransformer {
    cfg: FluxConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    timestep_embedder: MlpEmbedder,
    guidance_embedder: Option<MlpEmbedder>,
    text_embedder: MlpEmbedder,
    blocks: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    norm_out: Modulation,
    proj_out: Linear,
    dtype: DType,
    device: Device,
}

impl FluxTransformer {
    pub fn new(vb: VarBuilder, cfg: &FluxConfig) -> Result<Self> {
        let dim = cfg.inner_dim();
        let tte = vb.pp("time_text_embed");
        let blocks = (0..cfg.num_layers)
            .map(|i| DoubleBlock::new(vb.pp(format!("transformer_blocks.{i}")), cfg))
            .collect::<Result<_>>()?;
        let single = (0..cfg.num_single_layers)
            .map(|i| SingleBlock::new(vb.pp(format!("single_transformer_blocks.{i}")), cfg))
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            x_embedder: candle_nn::linear(cfg.in_channels, dim, vb.pp("x_embedder"))?,
            context_embedder: candle_nn::linear(cfg.joint_attention_dim, dim, vb.pp("context_embedder"))?,
            timestep_embedder: MlpEmbedder::new(tte.pp("timestep_embedder"), TIMESTEP_DIM, dim)?,
            guidance_embedder: if cfg.guidance_embeds {
                Some(MlpEmbedder::new(tte.pp("guidance_embedder"), TIMESTEP_DIM, dim)?)
            } else {
                None
            },
            text_embedder: MlpEmbedder::new(tte.pp("text_embedder"), cfg.pooled_projection_dim, dim)?,
            blocks,
            single,
            norm_out: Modulation::new(vb.pp("norm_out.linear"), dim, 2)?,
            proj_out: candle_nn::linear(dim, cfg.out_channels, vb.pp("proj_out"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &FluxConfig {
        &self.cfg
    }

    /// `values·1000` after a cast to the model dtype, as diffusers scales σ and the guidance.
    fn embed_scalar(&self, values: &[f32], mlp: &MlpEmbedder) -> Result<Tensor> {
        let t = (Tensor::new(values, &self.device)?.to_dtype(self.dtype)? * 1000.0)?;
        let t: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
        let emb = timestep_embedding(&t, TIMESTEP_DIM, 1.0, &self.device)?.to_dtype(self.dtype)?;
        mlp.forward(&emb)
    }

    /// One prediction: `img` `[B, N, in]` packed latents, `txt` `[B, S, joint]` T5 states,
    /// `pooled` `[B, pooled]`, `t` the pipeline's `t/1000` per image, `guidance` per image (dev
    /// only), `rope` over the S + N tokens. Returns the velocity `[B, N, out]`.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        pooled: &Tensor,
        t: &[f32],
        guidance: Option<&[f32]>,
        rope: &Rope,
    ) -> Result<Tensor> {
        let (b, n, _) = img.dims3()?;
        let s = txt.dim(1)?;
        ensure!(
            t.len() == b && rope.len() == s + n,
            "flux forward: {b} images, {} timesteps, rope over {}",
            t.len(),
            rope.len()
        );
        let mut temb = self.embed_scalar(t, &self.timestep_embedder)?;
        match (&self.guidance_embedder, guidance) {
            (Some(mlp), Some(g)) => temb = (temb + self.embed_scalar(g, mlp)?)?,
            (Some(_), None) => bail!("this FLUX transformer embeds guidance and needs a guidance value"),
            _ => {}
        }
        let temb = (temb + self.text_embedder.forward(&pooled.to_dtype(self.dtype)?)?)?;
        let mut img = self.x_embedder.forward(&img.to_dtype(self.dtype)?)?;
        let mut txt = self.context_embedder.forward(&txt.to_dtype(self.dtype)?)?;
        for block in &self.blocks {
            (img, txt) = block.forward(&img, &txt, &temb, rope)?;
        }
        let mut x = Tensor::cat(&[&txt, &img], 1)?;
        for block in &self.single {
            x = block.forward(&x, &temb, rope)?;
        }
        let img = x.narrow(1, s, n)?.contiguous()?;
        let m = self.norm_out.forward(&temb)?;
        let out = modulate(&layer_norm(&img)?, &m[1], &m[0])?;
        Ok(self.proj_out.forward(&out)?)
    }
}
