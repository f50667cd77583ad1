//! The CLIP text encoder, written here so that its configuration is public and its outputs are
//! the ones diffusers uses.
//!
//! candle's stable-diffusion CLIP has private configs and the tanh GELU; the generic CLIP has no
//! exact GELU either. This one reads `text_encoder*/config.json`, uses exact (erf) GELU or
//! quick-GELU as configured, and returns the final (layer-normed) states, the penultimate hidden
//! states (SDXL) and the pooled, optionally projected, end-of-text embedding (SDXL's second
//! encoder). Weight names follow transformers' `CLIPTextModel(WithProjection)`. Its linear layers
//! and GELU take the CPU fast paths of [`crate::ops`] (77 token rows: the transposed product of
//! `ops::linear_with`, 2.7× candle's `Linear` here), timed by [`crate::profile`] as the UNet's are.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear, linear_no_bias};
use serde::{Deserialize, Serialize};

use crate::blocks::timed_linear;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    #[serde(rename = "gelu")]
    Gelu,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// Set (and the projection loaded) for `CLIPTextModelWithProjection`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Where pooling reads, as transformers decides: 2 (older configs, CLIP-L's included) means
    /// the highest id of each row; another value, its first position; absent, the tokenizer's
    /// end token.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipConfig {
    pub fn has_projection(&self) -> bool {
        self.architectures.iter().any(|a| a == "CLIPTextModelWithProjection")
    }
}

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct ClipText {
    cfg: ClipConfig,
    token: Embedding,
    position: Embedding,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    projection: Option<Linear>,
}

/// What one forward pass gives.
pub struct ClipOutput {
    /// The last layer with the final LayerNorm (SD 1.x / 2.x conditioning).
    pub last: Tensor,
    /// The hidden states entering the last layer (`hidden_states[-2]`, SDXL conditioning).
    pub penultimate: Tensor,
    /// The final-normed state at the end-of-text token, projected when the model has a projection.
    pub pooled: Tensor,
}

impl ClipText {
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let t = vb.pp("text_model");
        let e = t.pp("embeddings");
        let h = cfg.hidden_size;
        let token = embedding(cfg.vocab_size, h, e.pp("token_embedding"))?;
        let position = embedding(cfg.max_position_embeddings, h, e.pp("position_embedding"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = t.pp(format!("encoder.layers.{i}"));
            let a = l.pp("self_attn");
            layers.push(Layer {
                ln1: layer_norm(h, cfg.layer_norm_eps, l.pp("layer_norm1"))?,
                q: linear(h, h, a.pp("q_proj"))?,
                k: linear(h, h, a.pp("k_proj"))?,
                v: linear(h, h, a.pp("v_proj"))?,
                out: linear(h, h, a.pp("out_proj"))?,
                ln2: layer_norm(h, cfg.layer_norm_eps, l.pp("layer_norm2"))?,
                fc1: linear(h, cfg.intermediate_size, l.pp("mlp.fc1"))?,
                fc2: linear(cfg.intermediate_size, h, l.pp("mlp.fc2"))?,
            });
        }
        let final_ln = layer_norm(h, cfg.layer_norm_eps, t.pp("final_layer_norm"))?;
        let projection = if cfg.has_projection() {
            let p = cfg.projection_dim.context("a CLIPTextModelWithProjection config needs projection_dim")?;
            Some(linear_no_bias(h, p, vb.pp("text_projection"))?)
        } else {
            None
        };
        Ok(Self { cfg: cfg.clone(), token, position, layers, final_ln, projection })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// `ids` is `(batch, seq)` u32; `eos` (the tokenizer's end token) marks where pooling reads
    /// when the config names no `eos_token_id`.
    pub fn forward(&self, ids: &Tensor, eos: u32) -> Result<ClipOutput> {
        let (b, seq) = ids.dims2()?;
        if seq > self.cfg.max_position_embeddings {
            bail!("{seq} tokens exceed the encoder's {} positions", self.cfg.max_position_embeddings);
        }
        let dev = ids.device();
        let pos = Tensor::arange(0u32, seq as u32, dev)?;
        let mut xs = self.token.forward(ids)?.broadcast_add(&self.position.forward(&pos)?)?;
        let mask = causal_mask(seq, dev, xs.dtype())?;
        let mut penultimate = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == self.layers.len() {
                penultimate = xs.clone();
            }
            xs = self.layer(layer, &xs, &mask)?;
        }
        let last = self.final_ln.forward(&xs)?;
        let ids_host: Vec<Vec<u32>> = ids.to_vec2()?;
        let mut pooled = Vec::with_capacity(b);
        for (row, ids) in ids_host.iter().enumerate() {
            pooled.push(last.i((row, pool_position(ids, self.cfg.eos_token_id, eos)))?);
        }
        let mut pooled = Tensor::stack(&pooled, 0)?;
        if let Some(p) = &self.projection {
            pooled = p.forward(&pooled)?;
        }
        Ok(ClipOutput { last, penultimate, pooled })
    }

    fn layer(&self, l: &Layer, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, seq, h) = xs.dims3()?;
        let heads = self.cfg.num_attention_heads;
        let hd = h / heads;
        let r = xs.clone();
        let x = l.ln1.forward(xs)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, seq, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = split((timed_linear(&l.q, &x, None)? * (hd as f64).powf(-0.5))?)?;
        let k = split(timed_linear(&l.k, &x, None)?)?;
        let v = split(timed_linear(&l.v, &x, None)?)?;
        let att = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, seq, h))?;
        let xs = timed_linear(&l.out, &o, Some(&r))?;
        let x = timed_linear(&l.fc1, &l.ln2.forward(&xs)?, None)?;
        let x = match self.cfg.hidden_act {
            Activation::QuickGelu => crate::ops::quick_gelu(&x)?,
            Activation::Gelu => crate::ops::gelu(&x)?,
        };
        timed_linear(&l.fc2, &x, Some(&xs))
    }
}

/// Where a row of ids is pooled: transformers' rule for the config's `eos_token_id` (2: the
/// first highest id, as torch's argmax; another id: its first position), else the tokenizer's
/// end token (the last position when absent).
fn pool_position(ids: &[u32], config_eos: Option<u32>, tokenizer_eos: u32) -> usize {
    match config_eos {
        Some(2) => ids.iter().enumerate().fold(0, |best, (i, &t)| if t > ids[best] { i } else { best }),
        Some(e) => ids.iter().position(|&t| t == e).unwrap_or(0),
        None => ids.iter().position(|&t| t == tokenizer_eos).unwrap_or(ids.len().saturating_sub(1)),
    }
}

fn causal_mask(seq: usize, dev: &Device, dtype: DType) -> Result<Tensor> {
    let data: Vec<f32> =
        (0..seq).flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(data, (seq, seq), dev)?.to_dtype(dtype)?.unsqueeze(0)?.unsqueeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::pool_position;

    #[test]
    fn pooling_follows_transformers_eos_rule() {
        // CLIP-L's config says 2: the highest id, first of equals, wherever the end token is.
        assert_eq!(pool_position(&[49406, 320, 49407, 49407], Some(2), 49407), 2);
        assert_eq!(pool_position(&[0, 900, 5, 2, 1], Some(2), 2), 1);
        // Another id: its first position (pads equal to it come later).
        assert_eq!(pool_position(&[998, 7, 999, 999], Some(999), 5), 2);
        // No id in the config: the tokenizer's end token.
        assert_eq!(pool_position(&[998, 7, 999, 999], None, 7), 1);
        assert_eq!(pool_position(&[998, 7], None, 999), 1);
    }
}
