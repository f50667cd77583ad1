//! The layers FLUX.1's and Qwen-Image's double-stream blocks share, under the same diffusers
//! names: a stream's q/k/v projections with per-head RMSNorm on q and k, and the GELU-tanh
//! feed-forward (`net.0.proj`, `net.2`). Each transformer applies RoPE its own way (FLUX over the
//! joined `[text; image]` sequence, Qwen per stream), so [`Qkv`] stops before it.

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

use crate::flow::norm::HeadRmsNorm;

/// `[B, S, H·D]` → `[B, H, S, D]` (contiguous).
pub fn heads(x: &Tensor, h: usize) -> Result<Tensor> {
    let (b, s, hd) = x.dims3()?;
    Ok(x.reshape((b, s, h, hd / h))?.transpose(1, 2)?.contiguous()?)
}

/// The feed-forward of both families: `dim → 4·dim`, GELU (tanh), `→ dim`.
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self { proj: linear(dim, 4 * dim, vb.pp("net.0.proj"))?, out: linear(4 * dim, dim, vb.pp("net.2"))? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.out.forward(&self.proj.forward(x)?.gelu()?)?)
    }
}

/// One stream's q, k, v projections with per-head RMSNorm (eps 1e-6) on q and k.
pub struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: HeadRmsNorm,
    norm_k: HeadRmsNorm,
}

impl Qkv {
    /// `names`: the q, k, v projections and the q, k norms under `vb`.
    pub fn new(vb: &VarBuilder, names: [&str; 5], dim: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            q: linear(dim, dim, vb.pp(names[0]))?,
            k: linear(dim, dim, vb.pp(names[1]))?,
            v: linear(dim, dim, vb.pp(names[2]))?,
            norm_q: HeadRmsNorm::new(vb.pp(names[3]), head_dim, 1e-6)?,
            norm_k: HeadRmsNorm::new(vb.pp(names[4]), head_dim, 1e-6)?,
        })
    }

    /// `[B, H, S, D]` each, q and k normalised, not rotated.
    pub fn forward(&self, x: &Tensor, h: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let q = self.norm_q.forward(&heads(&self.q.forward(x)?, h)?)?;
        let k = self.norm_k.forward(&heads(&self.k.forward(x)?, h)?)?;
        Ok((q, k, heads(&self.v.forward(x)?, h)?))
    }
}
