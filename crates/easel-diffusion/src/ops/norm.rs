//! Group normalisation on the CPU in f32: two passes over each group in parallel (f64
//! statistics) and one that writes the output with SiLU fused, using the vectorised
//! [`crate::exp`]. Before a convolution that takes the Winograd path only the statistics pass
//! runs ([`GroupNorm::affine`]), and the convolution applies the norm as it reads. Elsewhere the
//! norm is candle's ops in f32.

use anyhow::Result;
use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::host;
use crate::exp::silu as silu_f32;
use crate::profile;

/// Group normalisation with an optional SiLU after it.
pub struct GroupNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) groups: usize,
    pub(super) eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, groups, eps })
    }

    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if !(x.device().is_cpu() && x.dtype() == DType::F32) {
            // In f32 whatever the dtype, as torch's and candle_nn's group norms compute: a group's
            // sum in f16 overflows (a million activations at 512²), in bf16 it loses its digits.
            let (b, c, h, w) = x.dims4()?;
            let up = |t: &Tensor| t.to_dtype(DType::F32);
            let g = up(x)?.reshape((b, self.groups, c / self.groups * h * w))?;
            let mean = g.mean_keepdim(2)?;
            let centred = g.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(2)?;
            let y = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.reshape((b, c, h, w))?;
            let y = y
                .broadcast_mul(&up(&self.weight)?.reshape((1, c, 1, 1))?)?
                .broadcast_add(&up(&self.bias)?.reshape((1, c, 1, 1))?)?
                .to_dtype(x.dtype())?;
            return Ok(if silu { candle_nn::ops::silu(&y)? } else { y });
        }
        let (b, c, h, w) = x.dims4()?;
        let _t =
            profile::start(if silu { "group_norm+silu" } else { "group_norm" }, || (format!("{c} @{h}x{w} b{b}"), 0.0));
        let (gamma, beta) = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
        let len = c / self.groups * h * w;
        let mut out = vec![0f32; b * c * h * w];
        host(x, |data| {
            out.par_chunks_mut(len).zip(data.par_chunks(len)).enumerate().for_each(|(i, (dst, src))| {
                let mut affine = vec![(0f32, 0f32); c / self.groups];
                self.group_affine(i % self.groups, src, &gamma, &beta, &mut affine);
                for ((o, s), &(scale, shift)) in dst.chunks_mut(h * w).zip(src.chunks(h * w)).zip(&affine) {
                    crate::simd! {
                        for (o, &v) in o.iter_mut().zip(s) {
                            let y = v * scale + shift;
                            *o = if silu { silu_f32(y) } else { y };
                        }
                    };
                }
            });
        })?;
        Ok(Tensor::from_vec(out, (b, c, h, w), x.device())?)
    }

    /// The norm of a CPU f32 `x` `(b, c, h, w)` as `x · scale + shift` per image and channel:
    /// the two vectors of `b · c` values, for a consumer that applies them as it reads `x` (the
    /// Winograd input transform) instead of reading a normalised copy. The same numbers as
    /// [`Self::forward`] computes.
    pub fn affine(&self, x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let (b, c, h, w) = x.dims4()?;
        let _t = profile::start("group_norm stats", || (format!("{c} @{h}x{w} b{b}"), 0.0));
        let (gamma, beta) = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
        let per = c / self.groups;
        let mut affine = vec![(0f32, 0f32); b * c];
        host(x, |data| {
            affine.par_chunks_mut(per).zip(data.par_chunks(per * h * w)).enumerate().for_each(|(i, (a, src))| {
                self.group_affine(i % self.groups, src, &gamma, &beta, a);
            });
        })?;
        Ok(affine.into_iter().unzip())
    }

    /// Group `g`'s statistics over its elements `src`, as each of its channels' `(scale, shift)`.
    fn group_affine(&self, g: usize, src: &[f32], gamma: &[f32], beta: &[f32], out: &mut [(f32, f32)]) {
        // One pass for both moments (f64 sums: E[x²] − mean² keeps 1e-16 relative precision, so
        // the cancellation matters only past |mean|/std ≈ 10⁶).
        let n = src.len() as f64;
        let (sum, squares) = crate::simd! { moments_f64(src) };
        let mean = sum / n;
        let var = (squares / n - mean * mean).max(0.0);
        let inv = 1.0 / (var + self.eps).sqrt();
        let per = out.len();
        for (j, o) in out.iter_mut().enumerate() {
            let gamma = f64::from(gamma[g * per + j]);
            *o = ((inv * gamma) as f32, (f64::from(beta[g * per + j]) - mean * inv * gamma) as f32);
        }
    }
}

/// `(Σ x, Σ x²)` in f64 over eight lanes (so it vectorises).
#[inline(always)]
fn moments_f64(xs: &[f32]) -> (f64, f64) {
    let (mut sum, mut squares) = ([0f64; 8], [0f64; 8]);
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for ((s, q), &x) in sum.iter_mut().zip(squares.iter_mut()).zip(c) {
            let x = f64::from(x);
            *s += x;
            *q += x * x;
        }
    }
    let (mut s, mut q) = (sum.iter().sum::<f64>(), squares.iter().sum::<f64>());
    for &x in tail {
        s += f64::from(x);
        q += f64::from(x) * f64::from(x);
    }
    (s, q)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::ops::testing::vars;

    #[test]
    fn group_norm_silu_matches_f64() {
        let (dev, vb) = (Device::Cpu, vars());
        let (b, c, h, w, groups) = (2, 8, 5, 7, 4);
        let gn = GroupNorm::new(vb.pp("g"), groups, c, 1e-6).unwrap();
        let gn = GroupNorm {
            weight: Tensor::randn(0f32, 1.0, c, &dev).unwrap(),
            bias: Tensor::randn(0f32, 1.0, c, &dev).unwrap(),
            ..gn
        };
        // An offset mean and a wide spread, so both statistics matter.
        let x = (Tensor::randn(0f32, 3.0, (b, c, h, w), &dev).unwrap() + 5.0).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (gamma, beta) = (gn.weight.to_vec1::<f32>().unwrap(), gn.bias.to_vec1::<f32>().unwrap());
        for silu in [false, true] {
            let got = gn.forward(&x, silu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let len = c / groups * h * w;
            let mut err = 0f64;
            for (gi, group) in xs.chunks(len).enumerate() {
                let n = len as f64;
                let mean = group.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = group.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
                for (j, &v) in group.iter().enumerate() {
                    let ch = (gi % groups) * (c / groups) + j / (h * w);
                    let y = (f64::from(v) - mean) / (var + 1e-6).sqrt() * f64::from(gamma[ch]) + f64::from(beta[ch]);
                    let y = if silu { y / (1.0 + (-y).exp()) } else { y };
                    err = err.max((f64::from(got[gi * len + j]) - y).abs() / y.abs().max(1.0));
                }
            }
            assert!(err < 3e-5, "silu={silu}: {err:e}");
        }
    }
}
