//! Linear layers and the activations after them on the CPU in f32: one GEMM into an output that
//! already holds the bias (and a residual), transposed below [`FEW_ROWS`] rows, where the `gemm`
//! crate is faster the other way round; GELU, CLIP's quick GELU and GEGLU vectorised with
//! [`crate::exp`]. Elsewhere candle's `Linear` and ops.

use anyhow::Result;
use candle_core::{DType, Module, Tensor};
use rayon::prelude::*;

use super::{Extra, host, last_dim_as};
use crate::exp::gelu_erf;
use crate::gemm::{View, gemm};

/// `x · Wᵀ + b` over the last dimension of `x`. On the CPU in f32: one GEMM into an output that
/// already holds the bias, so there is neither candle's separate broadcast add (a second pass
/// and a second output of the same size) nor a contiguous copy of a contiguous input; candle's
/// `Linear` elsewhere.
pub fn linear(l: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
    linear_with(l, x, None)
}

/// [`linear`] plus a residual of the output's shape, written into the output with the bias
/// before the GEMM accumulates onto it (no separate add, no second output; candle's `Linear`
/// and add elsewhere).
pub fn linear_with(l: &candle_nn::Linear, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    let w = l.weight();
    let (out_dim, in_dim) = w.dims2()?;
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(cpu_f32(x) && cpu_f32(w) && x.dims().last() == Some(&in_dim) && w.is_contiguous()) {
        return Extra { channels: None, residual }.add_to(l.forward(x)?);
    }
    let rows = x.elem_count() / in_dim.max(1);
    let shape = last_dim_as(x, out_dim);
    let mut out = vec![0f32; rows * out_dim];
    let bias = l.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
    Extra { channels: None, residual }.residual_with(&shape, |res| {
        if res.is_none() && bias.is_none() {
            return;
        }
        out.par_chunks_mut(out_dim.max(1)).enumerate().for_each(|(i, row)| match (res, &bias) {
            (Some(r), Some(b)) => {
                row.iter_mut().zip(&r[i * out_dim..(i + 1) * out_dim]).zip(b).for_each(|((o, &r), &b)| *o = r + b)
            }
            (Some(r), None) => row.copy_from_slice(&r[i * out_dim..(i + 1) * out_dim]),
            (None, Some(b)) => row.copy_from_slice(b),
            (None, None) => unreachable!("returned above"),
        })
    })?;
    let accumulate = bias.is_some() || residual.is_some();
    let threads = rayon::current_num_threads();
    host(w, |w| {
        host(x, |x| {
            let weights = View::rows(w, out_dim, in_dim, in_dim);
            let inputs = View::rows(x, rows, in_dim, in_dim);
            if rows >= FEW_ROWS {
                gemm(&mut out, out_dim, inputs, weights.t(), accumulate, threads);
                return;
            }
            // Few rows: the transposed product `W · xᵀ`, added onto the output as it is
            // transposed back (the same sum, `(residual + bias) + product`, as the GEMM's
            // accumulation above makes).
            let mut product = vec![0f32; out_dim * rows];
            gemm(&mut product, rows, weights, inputs.t(), false, threads);
            out.par_chunks_mut(16 * out_dim).enumerate().for_each(|(block, dst)| {
                let r0 = block * 16;
                for (o, column) in product.chunks_exact(rows).enumerate() {
                    for (row, &p) in dst.chunks_exact_mut(out_dim).zip(&column[r0..]) {
                        row[o] += p;
                    }
                }
            });
        })
    })??;
    Ok(Tensor::from_vec(out, shape, x.device())?)
}

/// Below this many rows a linear layer multiplies `W · xᵀ` and transposes the product back: the
/// `gemm` crate runs a 77-row product (a text encoder's tokens) at 55–120 GFLOP/s as `x · Wᵀ`
/// and at 250–330 transposed, 256 rows at 180–370 against 310–440; from 512 rows on the two
/// orientations are even (2-core Zen 5, 1024–5120 channels; docs/performance.md).
const FEW_ROWS: usize = 512;

/// `f` applied to each element of a CPU f32 tensor, vectorised ([`crate::simd!`]) and in
/// parallel; `None` for other devices and dtypes (the caller uses candle's op there).
#[inline(always)]
fn elementwise(x: &Tensor, f: impl Fn(f32) -> f32 + Sync + Send + Copy) -> Result<Option<Tensor>> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return Ok(None);
    }
    let mut out = vec![0f32; x.elem_count()];
    host(x, |data| {
        out.par_chunks_mut(1 << 14).zip(data.par_chunks(1 << 14)).for_each(|(o, src)| {
            crate::simd! {
                for (o, &v) in o.iter_mut().zip(src) {
                    *o = f(v);
                }
            };
        });
    })?;
    Ok(Some(Tensor::from_vec(out, x.dims(), x.device())?))
}

/// Exact (erf) GELU: the vectorised [`gelu_erf`] on the CPU in f32, candle's elsewhere.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(match elementwise(x, gelu_erf)? {
        Some(y) => y,
        None => x.gelu_erf()?,
    })
}

/// CLIP's quick GELU, `x · σ(1.702 x)`: vectorised on the CPU in f32, candle's ops elsewhere.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok(match elementwise(x, |v| v / (1.0 + crate::exp::exp(-1.702 * v)))? {
        Some(y) => y,
        None => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
    })
}

/// diffusers' GEGLU after its projection: `a · GELU(gate)` with `(a, gate)` the two halves of
/// the last dimension of `x`, on the CPU in f32 with the vectorised [`gelu_erf`] (candle's
/// `gelu_erf` is a scalar f64 `erf` per element), elsewhere with candle's ops.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    let last = x.dims().last().copied().unwrap_or(0);
    let inner = last / 2;
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        let gate = x.chunk(2, candle_core::D::Minus1)?;
        return Ok((&gate[0] * gate[1].gelu_erf()?)?);
    }
    let rows = x.elem_count() / last.max(1);
    let mut out = vec![0f32; rows * inner];
    host(x, |data| {
        out.par_chunks_mut(inner.max(1)).zip(data.par_chunks(last.max(1))).for_each(|(o, row)| {
            let (a, g) = row.split_at(inner);
            crate::simd! {
                for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
                    *o = a * gelu_erf(g);
                }
            };
        });
    })?;
    Ok(Tensor::from_vec(out, last_dim_as(x, inner), x.device())?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::ops::testing::{max_abs_diff, vars};

    #[test]
    fn linear_layers_match_candle() {
        let (dev, vb) = (Device::Cpu, vars());
        let with_bias = candle_nn::linear(13, 7, vb.pp("a")).unwrap();
        let without = candle_nn::linear_no_bias(13, 7, vb.pp("b")).unwrap();
        // Few rows (the transposed product, blocks of 16 rows and a short last one) and many.
        for shape in [(2, 5, 13), (1, 37, 13), (3, 201, 13)] {
            let x = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
            let residual = Tensor::randn(0f32, 1.0, (shape.0, shape.1, 7), &dev).unwrap();
            for l in [&with_bias, &without] {
                let got = linear(l, &x).unwrap();
                assert_eq!(got.dims(), &[shape.0, shape.1, 7]);
                let want = l.forward(&x).unwrap();
                let diff = max_abs_diff(&got, &want);
                assert!(diff < 1e-5, "{shape:?}: {diff}");
                let got = linear_with(l, &x, Some(&residual)).unwrap();
                let want = (want + &residual).unwrap();
                let diff = max_abs_diff(&got, &want);
                assert!(diff < 1e-5, "{shape:?} with a residual: {diff}");
            }
        }
    }
}
