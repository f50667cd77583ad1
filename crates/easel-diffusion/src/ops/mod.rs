//! CPU f32 fast paths for the layers that dominate local diffusion on the CPU, and what they
//! share. candle 0.11's CPU convolution runs its GEMM on 512-pixel tiles and repacks the kernel
//! for each (one 128→128 3×3 convolution at 512² took 2.1–3.7 s here, the same FLOPs as one
//! large GEMM 0.7–1.3 s), its GroupNorm is a chain of ten tensor ops and its `Linear` adds the
//! bias in a pass of its own; so:
//!
//! - `conv`: convolutions (im2col in bounded bands into one GEMM per band, 1×1 in place, 3×3
//!   through [`crate::winograd`]);
//! - `norm`: group normalisation, fused with SiLU, or only its statistics for a convolution
//!   that applies the norm as it reads;
//! - `dense`: linear layers (a residual and the bias written into the output before the GEMM
//!   accumulates onto it) and the activations after them (GELU, CLIP's quick GELU, GEGLU);
//! - here: [`Extra`] (a time embedding and a residual added as a layer's output is made),
//!   [`Source`] (what a convolution reads: a tensor, its group norm with SiLU, or its ×2
//!   upsampling), [`host`] and the ×2 nearest upsampling.
//!
//! Anything else (GPU, f16, strides) uses candle's own ops, except convolutions on CUDA in a
//! build with the `cudnn` feature ([`crate::cudnn`]).

mod conv;
mod dense;
mod norm;

pub use conv::{CUDA_CONVOLUTIONS, Conv};
pub use dense::{geglu, gelu, linear, linear_with, quick_gelu};
pub use norm::GroupNorm;

use anyhow::{Result, bail};
use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

use crate::profile;

/// Runs `f` on the elements of a CPU f32 tensor, without a copy when it is contiguous.
pub fn host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("expected a CPU tensor") };
    let data = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    Ok(f(&data[start..start + t.elem_count()]))
}

/// What a convolution or a linear layer adds to its product besides its own bias: a vector per
/// image over the output channels (a resnet's projected time embedding, `(b, cout)`) and a tensor
/// of the output's shape (a residual connection). On the CPU fast paths both are written into
/// the output as it is made (before the product accumulates onto it; the Winograd path adds the
/// residual to each output row while the row is in cache), so neither costs a pass over memory
/// of its own nor a second output of the full size (each was a fresh 64–256 MiB tensor per resnet in the VAE at
/// 512²); elsewhere they are candle's broadcast add and add after the layer, in that order.
#[derive(Default, Clone, Copy)]
pub struct Extra<'a> {
    pub channels: Option<&'a Tensor>,
    pub residual: Option<&'a Tensor>,
}

impl Extra<'_> {
    /// `y + channels + residual` with candle's ops (the path off the CPU fast paths).
    fn add_to(&self, mut y: Tensor) -> Result<Tensor> {
        if let Some(c) = self.channels {
            let mut shape = c.dims().to_vec();
            shape.resize(y.rank(), 1);
            y = y.broadcast_add(&c.reshape(shape)?)?;
        }
        if let Some(r) = self.residual {
            y = (y + r)?;
        }
        Ok(y)
    }

    /// The per-image, per-channel offsets `bias[c] + channels[n, c]` for `b` images of `cout`
    /// channels, when there is anything to add.
    pub(crate) fn offsets(&self, bias: Option<&[f32]>, b: usize, cout: usize) -> Result<Option<Vec<f32>>> {
        let mut offsets = match self.channels {
            Some(c) => {
                let v = c.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                match v.len() {
                    n if n == b * cout => v,
                    // One vector for every image, as candle's broadcast add takes it.
                    n if n == cout => v.repeat(b),
                    n => bail!("per-channel addend: {n} values for {b} images of {cout} channels"),
                }
            }
            None if bias.is_some() => vec![0.0; b * cout],
            None => return Ok(None),
        };
        if let Some(bias) = bias {
            for (v, &bc) in offsets.iter_mut().zip(bias.iter().cycle()) {
                *v += bc;
            }
        }
        Ok(Some(offsets))
    }

    /// The residual's elements, checked against the output's shape.
    pub(crate) fn residual_with<R>(&self, shape: &[usize], f: impl FnOnce(Option<&[f32]>) -> R) -> Result<R> {
        match self.residual {
            None => Ok(f(None)),
            Some(r) if r.dims() == shape => host(r, |r| f(Some(r))),
            Some(r) => bail!("residual of shape {:?} for an output of shape {shape:?}", r.dims()),
        }
    }
}

/// What a convolution reads: a tensor, or what the layer before it would make of one, which the
/// Winograd path makes as it reads ([`Prologue`]) instead of as a tensor of its own.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Plain(&'a Tensor),
    /// The group norm of the tensor, then SiLU (a resnet's convolutions).
    Normed(&'a Tensor, &'a GroupNorm),
    /// The tensor upsampled ×2, nearest (the upsamplers' convolutions).
    Doubled(&'a Tensor),
}

impl<'a> Source<'a> {
    fn tensor(&self) -> &'a Tensor {
        match *self {
            Source::Plain(x) | Source::Normed(x, _) | Source::Doubled(x) => x,
        }
    }
}

/// `x`'s shape with its last dimension replaced by `n`.
fn last_dim_as(x: &Tensor, n: usize) -> Vec<usize> {
    let mut dims = x.dims().to_vec();
    if let Some(d) = dims.last_mut() {
        *d = n;
    }
    dims
}

/// Nearest-neighbour upsampling of `(b, c, h, w)` to `(b, c, th, tw)`: each pixel doubled along
/// both axes when that is the size asked (the UNet's and the VAE's upsamplers), on the CPU in f32
/// with one pass per plane; candle's `upsample_nearest2d` otherwise (a gather per element).
pub fn upsample_nearest(x: &Tensor, th: usize, tw: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let _t = profile::start("upsample", || (format!("{c} @{h}x{w} b{b} to {th}x{tw}"), 0.0));
    if !(x.device().is_cpu() && x.dtype() == DType::F32 && th == 2 * h && tw == 2 * w) {
        return Ok(x.upsample_nearest2d(th, tw)?);
    }
    let mut out = vec![0f32; b * c * th * tw];
    host(x, |data| {
        out.par_chunks_mut(th * tw).zip(data.par_chunks(h * w)).for_each(|(dst, src)| {
            for (rows, row) in dst.chunks_exact_mut(2 * tw).zip(src.chunks_exact(w)) {
                let (top, bottom) = rows.split_at_mut(tw);
                for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
    })?;
    Ok(Tensor::from_vec(out, (b, c, th, tw), x.device())?)
}

/// What the ops modules' tests share: weights from candle's initialisers, and how far apart two
/// outputs are.
#[cfg(test)]
mod testing {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    /// A `VarBuilder` that makes f32 CPU weights with candle's random initialisers (biases too).
    pub fn vars() -> VarBuilder<'static> {
        VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &Device::Cpu)
    }

    /// The largest absolute difference between two tensors of one shape.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn upsampling_matches_candle() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &Device::Cpu).unwrap();
        for (th, tw) in [(10, 14), (11, 14), (5, 7)] {
            let got = upsample_nearest(&x, th, tw).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = x.upsample_nearest2d(th, tw).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{th}x{tw}");
        }
    }
}
