//! The normalisations of the flow transformers: LayerNorm without affine (eps 1e-6) and its
//! adaptive modulation, the SiLU → Linear modulation vectors, and per-head RMSNorm on queries and
//! keys. Statistics are taken in f32 whatever the model dtype, as torch does.

use anyhow::{Result, ensure};
use candle_core::{D, DType, Tensor};
use candle_nn::{Linear, VarBuilder};

pub const EPS: f64 = 1e-6;

/// LayerNorm over the last dimension, no weight or bias, eps 1e-6.
pub fn layer_norm(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let d = xf.dim(D::Minus1)?;
    let ones = Tensor::ones(d, DType::F32, x.device())?;
    let zeros = Tensor::zeros(d, DType::F32, x.device())?;
    Ok(candle_nn::ops::layer_norm(&xf.contiguous()?, &ones, &zeros, EPS as f32)?.to_dtype(dtype)?)
}

/// `x·(1 + scale) + shift`, with `scale` and `shift` `[B, D]` broadcast over the tokens of `x` `[B, S, D]`.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = (scale.unsqueeze(1)? + 1.0)?;
    Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift.unsqueeze(1)?)?)
}

/// `gate · y`, with `gate` `[B, D]` broadcast over the tokens of `y`.
pub fn gated(gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(y.broadcast_mul(&gate.unsqueeze(1)?)?)
}

/// SiLU → Linear → `chunks` vectors `[B, D]` (AdaLayerNormZero: shift, scale, gate, shift_mlp,
/// scale_mlp, gate_mlp; AdaLayerNormContinuous: scale, shift; the caller names them).
#[derive(Debug, Clone)]
pub struct Modulation {
    linear: Linear,
    chunks: usize,
}

impl Modulation {
    /// `vb` is the Linear's own prefix (e.g. `norm1.linear`).
    pub fn new(vb: VarBuilder, dim: usize, chunks: usize) -> Result<Self> {
        Ok(Self { linear: candle_nn::linear(dim, dim * chunks, vb)?, chunks })
    }

    pub fn forward(&self, temb: &Tensor) -> Result<Vec<Tensor>> {
        Ok(crate::embedder::per_row(&self.linear, &temb.silu()?)?.chunk(self.chunks, D::Minus1)?)
    }
}

/// RMSNorm over the head dimension with a learned weight (`norm_q`, `norm_k`, ...).
#[derive(Debug, Clone)]
pub struct HeadRmsNorm {
    weight: Tensor,
    eps: f64,
}

impl HeadRmsNorm {
    pub fn new(vb: VarBuilder, head_dim: usize, eps: f64) -> Result<Self> {
        // Ones when made at random (`create-random`): zeros would null every query and key.
        // Kept in f32 (the norm runs in f32 whatever the model dtype): converted once, not per call.
        let weight = vb.get_with_hints(head_dim, "weight", candle_nn::Init::Const(1.0))?.to_dtype(DType::F32)?;
        ensure!(eps > 0.0, "RMSNorm eps must be positive");
        Ok(Self { weight, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&xf, &self.weight, self.eps as f32)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_norm_has_zero_mean_unit_variance() {
        let x = Tensor::new(&[[[1f32, 2.0, 3.0, 6.0]]], &Device::Cpu).unwrap();
        let y: Vec<f32> = layer_norm(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mean: f32 = y.iter().sum::<f32>() / 4.0;
        let var: f32 = y.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4, "{y:?}");
    }
}
