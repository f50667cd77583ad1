//! The sinusoidal timestep embedding and the two-layer MLP embedders of the flow transformers.

use anyhow::Result;
use candle_core::{Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

/// diffusers' `get_timestep_embedding` with `flip_sin_to_cos=True`, `downscale_freq_shift=0`,
/// max period 10⁴: `[cos(a) | sin(a)]` with `a_i = (t·e^{−ln(10⁴)·i/half})·scale`, in f32 as
/// torch computes it. FLUX passes `t·1000` and scale 1; Qwen passes σ and scale 1000.
pub fn timestep_embedding(t: &[f32], dim: usize, scale: f32, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let ln = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((ln * i as f32) / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &tv in t {
        let args: Vec<f32> = freqs.iter().map(|f| (tv * f) * scale).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
        if !dim.is_multiple_of(2) {
            out.push(0.0);
        }
    }
    Ok(Tensor::from_vec(out, (t.len(), dim), device)?)
}

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
/// (by one level in FLUX.1-dev's tests). Each row through the one-row path keeps an image the
/// same bits whether it is generated alone or with others (`tests/flux.rs`). These layers see a
/// handful of rows per step, so nothing is lost.
pub fn per_row(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    if x.rank() != 2 || b <= 1 {
        return Ok(l.forward(x)?);
    }
    let rows = (0..b).map(|i| l.forward(&x.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cos_comes_first() {
        let e: Vec<Vec<f32>> = timestep_embedding(&[0.0, 1.0], 4, 1.0, &Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(e[0], vec![1.0, 1.0, 0.0, 0.0]);
        // Frequencies 1 and 1e-2.
        assert!((e[1][0] - 1f32.cos()).abs() < 1e-7 && (e[1][3] - 0.01f32.sin()).abs() < 1e-7);
    }
}
