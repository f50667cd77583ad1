//! Qwen-Image's denoiser: diffusers' `QwenImageTransformer2DModel`, with its weight names.
//!
//! An MMDiT of identical double-stream blocks (no single-stream blocks, unlike FLUX): image tokens
//! (`img_in`) and text tokens (`txt_norm` RMSNorm then `txt_in`) keep their own modulation, q/k/v
//! projections, per-head RMSNorms and GELU-tanh MLPs, and meet in one joint attention over
//! `[text; image]`. The timestep is the only conditioning vector (`Timesteps(256, scale 1000)` →
//! MLP); there is no pooled text and no guidance embedding. RoPE is the interleaved-pair kind of
//! [`crate::flow::rope`] over (frame, row, column) axes, with Qwen's own positions
//! ([`super::positions`]): image rows and columns centred on zero, the frame axis the image's
//! index (0 the target, 1.. the condition images of an edit), and text token `k` at `m + k` on all
//! three axes, `m` the largest half-edge of any image. Padded text is masked out as attention keys when a mask is given.
//!
//! `zero_cond_t` (Qwen-Image-Edit-2511) modulates the tokens of every image after the first with
//! the embedding of t = 0, the text stream and the output norm with t.

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Linear, RmsNorm, VarBuilder, linear, rms_norm};
use serde_json::Value;

use crate::embedder::MlpEmbedder;
use crate::flow::attention::joint_attention;
use crate::flow::blocks::{FeedForward, Qkv};
use crate::flow::embed::timestep_embedding;
use crate::flow::norm::{Modulation, layer_norm, modulate};
use crate::flow::rope::Rope;

use super::positions::qwen_rope;
pub use super::positions::{ImageShape, rope_ids};

/// `transformer/config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenTransformerConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub axes_dims_rope: Vec<usize>,
    pub zero_cond_t: bool,
}

impl QwenTransformerConfig {
    pub fn from_json(v: &Value) -> Result<Self> {
        let u = |k: &str, d: usize| -> Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(x) => x
                    .as_u64()
                    .map(|n| n as usize)
                    .with_context(|| format!("transformer config: `{k}` is not an integer")),
            }
        };
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        for unsupported in ["guidance_embeds", "use_additional_t_cond", "use_layer3d_rope"] {
            if flag(unsupported) {
                bail!("transformer config: `{unsupported}` is not supported (Qwen-Image and Qwen-Image-Edit only)");
            }
        }
        let in_channels = u("in_channels", 64)?;
        let axes_dims_rope: Vec<usize> = match v.get("axes_dims_rope") {
            Some(a) => serde_json::from_value(a.clone()).context("transformer config: bad `axes_dims_rope`")?,
            None => vec![16, 56, 56],
        };
        let cfg = Self {
            patch_size: u("patch_size", 2)?,
            in_channels,
            out_channels: u("out_channels", 16)?,
            num_layers: u("num_layers", 60)?,
            attention_head_dim: u("attention_head_dim", 128)?,
            num_attention_heads: u("num_attention_heads", 24)?,
            joint_attention_dim: u("joint_attention_dim", 3584)?,
            axes_dims_rope,
            zero_cond_t: flag("zero_cond_t"),
        };
        if cfg.axes_dims_rope.len() != 3 || cfg.axes_dims_rope.iter().sum::<usize>() != cfg.attention_head_dim {
            bail!(
                "transformer config: axes_dims_rope {:?} must be three sizes summing to attention_head_dim",
                cfg.axes_dims_rope
            );
        }
        if cfg.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            bail!("transformer config: axes_dims_rope sizes must be even");
        }
        if cfg.patch_size != 2 {
            bail!("transformer config: patch_size {} (only 2, the 2×2 latent packing, is supported)", cfg.patch_size);
        }
        Ok(cfg)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Latent channels before packing (`in_channels / 4`).
    pub fn latent_channels(&self) -> usize {
        self.in_channels / (self.patch_size * self.patch_size)
    }
}

struct Block {
    img_mod: Modulation,
    txt_mod: Modulation,
    img_qkv: Qkv,
    txt_qkv: Qkv,
    img_out: Linear,
    txt_out: Linear,
    img_mlp: FeedForward,
    txt_mlp: FeedForward,
    heads: usize,
}

/// Shift, scale and gate for each token of a stream: `[B, 1, D]` when one timestep serves all
/// tokens, `[B, N, D]` under `zero_cond_t`.
type Mod3 = [Tensor; 3];

impl Block {
    fn new(vb: VarBuilder, cfg: &QwenTransformerConfig) -> Result<Self> {
        let dim = cfg.inner_dim();
        let hd = cfg.attention_head_dim;
        let a = vb.pp("attn");
        Ok(Self {
            img_mod: Modulation::new(vb.pp("img_mod.1"), dim, 6)?,
            txt_mod: Modulation::new(vb.pp("txt_mod.1"), dim, 6)?,
            img_qkv: Qkv::new(&a, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], dim, hd)?,
            txt_qkv: Qkv::new(&a, ["add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"], dim, hd)?,
            img_out: linear(dim, dim, a.pp("to_out.0"))?,
            txt_out: linear(dim, dim, a.pp("to_add_out"))?,
            img_mlp: FeedForward::new(vb.pp("img_mlp"), dim)?,
            txt_mlp: FeedForward::new(vb.pp("txt_mlp"), dim)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// The six modulation tensors of a stream, `[B, 1, D]` each, or per token when `split` gives
    /// the image's token count under t and the embedding of t = 0 for the rest.
    fn mods(m: &Modulation, temb: &Tensor, zero: Option<(&Tensor, usize, usize)>) -> Result<(Mod3, Mod3)> {
        let at =
            |t: &Tensor| -> Result<Vec<Tensor>> { m.forward(t)?.into_iter().map(|x| Ok(x.unsqueeze(1)?)).collect() };
        let mut parts = at(temb)?;
        if let Some((temb0, first, rest)) = zero {
            let zeros = at(temb0)?;
            parts = parts
                .into_iter()
                .zip(zeros)
                .map(|(p, z)| -> Result<Tensor> {
                    let (b, _, d) = p.dims3()?;
                    Ok(Tensor::cat(&[p.broadcast_as((b, first, d))?, z.broadcast_as((b, rest, d))?], 1)?)
                })
                .collect::<Result<Vec<_>>>()?;
        }
        let mut it = parts.into_iter();
        let mut next3 = || -> Result<Mod3> {
            let mut take = || it.next().context("modulation gave fewer than six tensors");
            Ok([take()?, take()?, take()?])
        };
        Ok((next3()?, next3()?))
    }

    #[expect(clippy::too_many_arguments, reason = "the two streams, their conditioning, RoPE and the mask")]
    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        temb: &Tensor,
        zero: Option<(&Tensor, usize, usize)>,
        img_rope: &Rope,
        txt_rope: &Rope,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let ([is1, ic1, ig1], [is2, ic2, ig2]) = Self::mods(&self.img_mod, temb, zero)?;
        let ([ts1, tc1, tg1], [ts2, tc2, tg2]) = Self::mods(&self.txt_mod, temb, None)?;
        let img_in = modulate_tokens(&layer_norm(img)?, &is1, &ic1)?;
        let txt_in = modulate_tokens(&layer_norm(txt)?, &ts1, &tc1)?;
        let (iq, ik, iv) = self.img_qkv.forward(&img_in, self.heads)?;
        let (iq, ik) = (img_rope.apply(&iq)?, img_rope.apply(&ik)?);
        let (tq, tk, tv) = self.txt_qkv.forward(&txt_in, self.heads)?;
        let (tq, tk) = (txt_rope.apply(&tq)?, txt_rope.apply(&tk)?);
        let q = Tensor::cat(&[tq, iq], 2)?;
        let k = Tensor::cat(&[tk, ik], 2)?;
        let v = Tensor::cat(&[tv, iv], 2)?;
        let joint = joint_attention(&q, &k, &v, mask)?;
        let s = txt.dim(1)?;
        let n = img.dim(1)?;
        let txt_attn = self.txt_out.forward(&joint.narrow(1, 0, s)?.contiguous()?)?;
        let img_attn = self.img_out.forward(&joint.narrow(1, s, n)?.contiguous()?)?;
        let img = (img + img_attn.broadcast_mul(&ig1)?)?;
        let txt = (txt + txt_attn.broadcast_mul(&tg1)?)?;
        let img_mlp = self.img_mlp.forward(&modulate_tokens(&layer_norm(&img)?, &is2, &ic2)?)?;
        let txt_mlp = self.txt_mlp.forward(&modulate_tokens(&layer_norm(&txt)?, &ts2, &tc2)?)?;
        Ok(((img + img_mlp.broadcast_mul(&ig2)?)?, (txt + txt_mlp.broadcast_mul(&tg2)?)?))
    }
}

/// `x·(1 + scale) + shift` with per-token (or broadcast) `[B, N|1, D]` shift and scale.
fn modulate_tokens(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    if shift.dim(1)? == 1 {
        return modulate(x, &shift.squeeze(1)?, &scale.squeeze(1)?);
    }
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

pub struct QwenTransformer {
    img_in: Linear,
    txt_norm: RmsNorm,
    txt_in: Linear,
    time: MlpEmbedder,
    blocks: Vec<Block>,
    norm_out: Linear,
    proj_out: Linear,
    cfg: QwenTransformerConfig,
}

/// What one forward needs besides the latents.
pub struct TextInput<'a> {
    /// `[B, S, joint_attention_dim]`.
    pub embeds: &'a Tensor,
    /// `[B, S]`, 1 for tokens and 0 for padding; `None` when no row is padded.
    pub mask: Option<&'a Tensor>,
}

impl QwenTransformer {
    pub fn new(vb: VarBuilder, cfg: &QwenTransformerConfig) -> Result<Self> {
        let dim = cfg.inner_dim();
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                Block::new(vb.pp(format!("transformer_blocks.{i}")), cfg)
                    .with_context(|| format!("transformer block {i}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            img_in: linear(cfg.in_channels, dim, vb.pp("img_in"))?,
            txt_norm: rms_norm(cfg.joint_attention_dim, 1e-6, vb.pp("txt_norm"))?,
            txt_in: linear(cfg.joint_attention_dim, dim, vb.pp("txt_in"))?,
            time: MlpEmbedder::new(vb.pp("time_text_embed.timestep_embedder"), 256, dim)?,
            blocks,
            norm_out: linear(dim, 2 * dim, vb.pp("norm_out.linear"))?,
            proj_out: linear(dim, cfg.patch_size * cfg.patch_size * cfg.out_channels, vb.pp("proj_out"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &QwenTransformerConfig {
        &self.cfg
    }

    /// The timestep embedding `[B, D]` of `t` (the scheduler's σ-like `t/1000`, one per row), in
    /// the model dtype. diffusers casts `t` to the latent dtype first.
    fn temb(&self, t: &[f32], dtype: DType, dev: &Device) -> Result<Tensor> {
        let t: Vec<f32> = Tensor::new(t, &Device::Cpu)?.to_dtype(dtype)?.to_dtype(DType::F32)?.to_vec1()?;
        let proj = timestep_embedding(&t, 256, 1000.0, dev)?;
        self.time.forward(&proj.to_dtype(dtype)?)
    }

    /// The velocity `[B, N, 4·out_channels]` for packed latents `x` `[B, N, in_channels]` (the
    /// tokens of every image in `shapes`, in order), at model time `t` (one per row).
    pub fn forward(&self, x: &Tensor, text: TextInput<'_>, t: &[f32], shapes: &[ImageShape]) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let s = text.embeds.dim(1)?;
        let total: usize = shapes.iter().map(|s| s.tokens()).sum();
        if t.len() != b {
            bail!("{} timesteps for a batch of {b}", t.len());
        }
        if total != n || shapes.is_empty() {
            bail!("the image shapes {shapes:?} hold {total} tokens, the latents {n}");
        }
        if text.embeds.dim(D::Minus1)? != self.cfg.joint_attention_dim {
            bail!(
                "text embeddings of width {} for a transformer that takes {}",
                text.embeds.dim(D::Minus1)?,
                self.cfg.joint_attention_dim
            );
        }
        let dtype = x.dtype();
        let dev = x.device();
        let mut img = self.img_in.forward(x)?;
        let mut txt = self.txt_in.forward(&self.txt_norm.forward(&text.embeds.to_dtype(dtype)?)?)?;
        let temb = self.temb(t, dtype, dev)?;
        let first = shapes[0].tokens();
        let temb0 = if self.cfg.zero_cond_t && n > first { Some(self.temb(&vec![0.0; b], dtype, dev)?) } else { None };
        let zero = temb0.as_ref().map(|t0| (t0, first, n - first));
        let (img_ids, txt_ids) = rope_ids(shapes, s);
        let axes = &self.cfg.axes_dims_rope;
        let img_rope = qwen_rope(&img_ids, axes, dev)?;
        let txt_rope = qwen_rope(&txt_ids, axes, dev)?;
        let mask = match text.mask {
            Some(m) => Some(key_mask(m, b, n, dev)?),
            None => None,
        };
        for block in &self.blocks {
            (img, txt) = block.forward(&img, &txt, &temb, zero, &img_rope, &txt_rope, mask.as_ref())?;
        }
        let emb = self.norm_out.forward(&candle_nn::ops::silu(&temb)?)?.chunk(2, D::Minus1)?;
        let img = modulate(&layer_norm(&img)?, &emb[1], &emb[0])?;
        Ok(self.proj_out.forward(&img)?)
    }
}

/// The additive key mask `[B, 1, 1, S + N]` of `[text; image]`: −∞ for padded text keys.
fn key_mask(mask: &Tensor, b: usize, n: usize, dev: &Device) -> Result<Tensor> {
    let keep = mask.to_dtype(DType::F32)?;
    let (mb, s) = keep.dims2()?;
    if mb != b {
        bail!("text mask for {mb} rows, latents for {b}");
    }
    let neg = keep.ge(0.5)?.where_cond(&keep.zeros_like()?, &Tensor::full(f32::NEG_INFINITY, (b, s), dev)?)?;
    let full = Tensor::cat(&[neg, Tensor::zeros((b, n), DType::F32, dev)?], 1)?;
    Ok(full.reshape((b, 1, 1, s + n))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_tiny_config_loads_and_unsupported_variants_are_named() {
        let tiny = serde_json::json!({"patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 2,
            "attention_head_dim": 16, "num_attention_heads": 3, "joint_attention_dim": 16,
            "guidance_embeds": false, "axes_dims_rope": [8, 4, 4]});
        let cfg = QwenTransformerConfig::from_json(&tiny).unwrap();
        assert_eq!((cfg.inner_dim(), cfg.latent_channels()), (48, 4));
        let released = QwenTransformerConfig::from_json(&serde_json::json!({})).unwrap();
        assert_eq!((released.inner_dim(), released.num_layers, released.joint_attention_dim), (3072, 60, 3584));
        let mut guided = tiny.clone();
        guided["guidance_embeds"] = true.into();
        let err = QwenTransformerConfig::from_json(&guided).unwrap_err().to_string();
        assert!(err.contains("guidance_embeds"), "{err}");
        let mut axes = tiny;
        axes["axes_dims_rope"] = serde_json::json!([8, 4, 2]);
        assert!(QwenTransformerConfig::from_json(&axes).is_err());
    }
}
