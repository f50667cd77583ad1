//! The conditioning layers every family runs on `[batch, dim]` inputs (time embeddings, pooled
//! text projections, modulation), one row at a time so an image is the same bits alone or in a
//! batch: see [`per_row`].

use anyhow::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

/// `linear_1` → SiLU → `linear_2` (diffusers' `TimestepEmbedding` and `PixArtAlphaTextProjection`).
#[derive(Debug, Clone)]
pub struct MlpEmbedder {
    linear_1: Linear,
    linear_2: Linear,
}

impl MlpEmbedder {
    pub fn new(vb: VarBuilder, input: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(input, hidden, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(hidden, hidden, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        per_row(&self.linear_2, &per_row(&self.linear_1, x)?.silu()?)
    }
}

/// A linear layer over `[B, in]`, one row at a time.
///
/// The `gemm` crate takes a matrix–vector path for one row and its blocked kernels for several,
/// and with AVX-512 the two round differently in the last bit. Run batched, an image's
/// conditioning vector would then differ from the same image's alone, and so would its pixels
/// (by one level in FLUX.1-dev's tests, `tests/flux.rs`; the SD UNet's time embedding and its
/// resnets' `time_emb_proj` are the same kind of layer, `tests/local.rs`). Each row through the one-row path keeps an image the
/// same bits whether it is generated alone or with others. These layers see a
/// handful of rows per step, so nothing is lost.
pub fn per_row(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    if x.rank() != 2 || b <= 1 {
        return Ok(l.forward(x)?);
    }
    let rows = (0..b).map(|i| l.forward(&x.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}
