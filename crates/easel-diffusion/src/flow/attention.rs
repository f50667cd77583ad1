//! Joint attention over the concatenated `[text; image]` sequence: one function, so a fused
//! (flash) kernel can replace the plain matmul–softmax–matmul later without touching the models.

use anyhow::Result;
use candle_core::{DType, Tensor};

/// `softmax(q·kᵀ/√d + mask)·v` for `q`, `k`, `v` `[B, H, S, D]`; returns `[B, S, H·D]`. `mask`,
/// when given, is additive (0 keep, −∞ drop) and broadcasts to `[B, H, S_q, S_k]`. The softmax
/// runs in f32 for half-precision inputs.
pub fn joint_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let dtype = q.dtype();
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.contiguous()?;
    let kt = k.transpose(2, 3)?.contiguous()?;
    let mut scores = (q.matmul(&kt)? * scale)?.to_dtype(DType::F32)?;
    if let Some(m) = mask {
        scores = scores.broadcast_add(&m.to_dtype(DType::F32)?)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    let out = probs.matmul(&v.contiguous()?)?;
    Ok(out.transpose(1, 2)?.contiguous()?.reshape((b, s, h * d))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_masked_key_gets_no_weight() {
        let dev = Device::Cpu;
        let q = Tensor::ones((1, 1, 1, 2), DType::F32, &dev).unwrap();
        let k = Tensor::ones((1, 1, 2, 2), DType::F32, &dev).unwrap();
        let v = Tensor::new(&[[[[1f32, 1.0], [5.0, 5.0]]]], &dev).unwrap();
        let mask = Tensor::new(&[0f32, f32::NEG_INFINITY], &dev).unwrap();
        let out: Vec<f32> = joint_attention(&q, &k, &v, Some(&mask)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(out, vec![1.0, 1.0]);
        let out: Vec<f32> = joint_attention(&q, &k, &v, None).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(out, vec![3.0, 3.0]);
    }
}
