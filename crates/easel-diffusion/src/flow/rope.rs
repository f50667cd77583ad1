//! Multi-axis rotary position embedding, rotating interleaved pairs `(2j, 2j+1)` (candle's
//! `rope_i`), not the rotate-half layout of the Qwen2.5-VL language model.
//!
//! Each token has one position per axis (FLUX: `(0, row, col)` over the packed grid, text all
//! zeros; Qwen: centred rows and columns, frame = image index). The head dimension is split into
//! one slice per axis (FLUX `(16, 56, 56)`); slice `k` of size `d` rotates pair `j` by
//! `pos_k / θ^(2j/d)`. As diffusers: frequencies and angles in f64, cos and sin stored in f32,
//! and the rotation done in f32 whatever the model dtype, then cast back.

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};

/// cos and sin tables, `[S, D/2]` f32, one row per token.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// FLUX's image ids: `(0, r, c)` for each token of an `h × w` packed grid, row-major.
pub fn flux_image_ids(h: usize, w: usize) -> Vec<[f32; 3]> {
    (0..h).flat_map(|r| (0..w).map(move |c| [0.0, r as f32, c as f32])).collect()
}

impl Rope {
    /// Tables for tokens with positions `ids` (one row per token, one column per axis).
    pub fn new<const A: usize>(ids: &[[f32; A]], axes_dims: &[usize], theta: f64, device: &Device) -> Result<Self> {
        ensure!(axes_dims.len() == A, "{} RoPE axes for ids with {A} columns", axes_dims.len());
        ensure!(axes_dims.iter().all(|d| d.is_multiple_of(2)), "RoPE axis dims must be even: {axes_dims:?}");
        let half: usize = axes_dims.iter().sum::<usize>() / 2;
        let freqs: Vec<Vec<f64>> = axes_dims
            .iter()
            .map(|&d| (0..d / 2).map(|j| 1.0 / theta.powf((2 * j) as f64 / d as f64)).collect())
            .collect();
        let mut cos = Vec::with_capacity(ids.len() * half);
        let mut sin = Vec::with_capacity(ids.len() * half);
        for row in ids {
            for (axis, fs) in freqs.iter().enumerate() {
                let p = f64::from(row[axis]);
                for f in fs {
                    let a = p * f;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        Self::from_tables(cos, sin, ids.len(), half, device)
    }

    /// Tables computed elsewhere (`[S, D/2]` row-major), e.g. Qwen's f32 tables.
    pub fn from_tables(cos: Vec<f32>, sin: Vec<f32>, seq: usize, half: usize, device: &Device) -> Result<Self> {
        ensure!(cos.len() == seq * half && sin.len() == seq * half, "RoPE tables of the wrong size");
        Ok(Self { cos: Tensor::from_vec(cos, (seq, half), device)?, sin: Tensor::from_vec(sin, (seq, half), device)? })
    }

    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rotates `x` `[B, H, S, D]` (S = the tables' length) in f32; returns `x`'s dtype.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope_i(&xf, &self.cos, &self.sin)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_pairs_by_position_over_frequency() {
        let dev = Device::Cpu;
        // One axis of dim 4: pair 0 turns by p, pair 1 by p/100.
        let rope = Rope::new(&[[0.0], [2.0]], &[4], 10000.0, &dev).unwrap();
        let x = Tensor::from_vec(vec![1f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], (1, 1, 2, 4), &dev).unwrap();
        let y: Vec<f32> = rope.apply(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let expect = [1.0, 0.0, 1.0, 0.0, 2f32.cos(), 2f32.sin(), 0.02f32.cos(), 0.02f32.sin()];
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }

    #[test]
    fn flux_ids_are_row_major() {
        assert_eq!(flux_image_ids(2, 3)[4], [0.0, 1.0, 1.0]);
    }
}
