//! CPU fast paths for the two operations that dominate the VAE decoder and the UNet: 3×3
//! convolutions and group normalisation (fused with SiLU where the network applies one next).
//!
//! candle 0.11's CPU conv2d runs its GEMM on 512-pixel tiles and repacks the kernel for each
//! (one 128→128 3×3 convolution at 512² took 2.1–3.7 s here, the same FLOPs as one large GEMM
//! 0.7–1.3 s); its GroupNorm is a chain of ten tensor ops. Here a convolution builds its im2col
//! matrix a band of output rows at a time (bounded memory, in a buffer reused across bands and
//! calls) and runs one GEMM per band through [`crate::gemm`] (candle's own GEMM crate) straight
//! into its rows of the output, which already holds the bias, so there is no per-band output,
//! no concatenation and no bias pass; 1×1 convolutions multiply the input in place, with no
//! im2col at all. The weights are reshaped once at load (a view, not a copy). Group norm is two passes over each
//! group in parallel (f64 statistics) and one that writes the output with SiLU fused, using the
//! vectorised [`crate::exp`]; before a convolution that takes the Winograd path only the
//! statistics pass runs, and the convolution applies the norm as it reads ([`Source`]). Anything else (GPU, f16, strides) uses candle's own ops, except convolutions on CUDA in a build with the `cudnn` feature ([`crate::cudnn`]).

use std::cell::RefCell;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Module, Storage, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};
use rayon::prelude::*;

use crate::exp::{gelu_erf, silu as silu_f32};
use crate::gemm::{View, gemm};
use crate::profile;
use crate::winograd::{Prologue, Winograd};

/// Largest im2col band, in f32 elements (64 MiB).
const BAND: usize = 16 * 1024 * 1024;

/// Largest im2col matrix candle's convolution may make at once off the CPU fast path (the GPU),
/// in bytes. candle's CUDA `conv2d` writes the whole `(b·ho·wo, cin·k·k)` matrix, then the
/// product, then the product again in NCHW order: for the VAE decoder's 256-channel
/// convolutions at 1024² the matrix alone is 4.5 GiB in f16 (9 GiB in SDXL's upcast f32 VAE),
/// the largest allocation of the H200 runs (BENCHMARKS.md). Above this the output rows are made
/// in bands.
const CANDLE_COLS_BYTES: usize = 2 << 30;

/// What runs convolutions on a CUDA device in this build (for the tools' reports).
pub const CUDA_CONVOLUTIONS: &str = if cfg!(feature = "cudnn") { "cuDNN" } else { "candle's im2col and cuBLAS" };

thread_local! {
    /// The im2col buffer, kept between bands and calls (at most [`BAND`] elements).
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

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

/// A 2-D convolution with stride 1 and "same" padding, or any candle convolution.
pub struct Conv {
    inner: candle_nn::Conv2d,
    /// `(cout, cin * k * k)`: the weights, reshaped without a copy, for the fast path (`None`
    /// unless they are f32 on the CPU).
    flat: Option<Tensor>,
    bias: Option<Vec<f32>>,
    cout: usize,
    k: usize,
    pad: usize,
    stride: usize,
    /// 3×3, stride 1, padding 1 on CPU f32: the Winograd path (`crate::winograd`).
    winograd: Option<Winograd>,
}

impl Conv {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, k: usize, cfg: Conv2dConfig) -> Result<Self> {
        Self::wrap(candle_nn::conv2d(cin, cout, k, cfg, vb)?, cout, k, cfg)
    }

    /// The same without a bias (torch's `bias=False`).
    pub fn no_bias(vb: VarBuilder, cin: usize, cout: usize, k: usize, cfg: Conv2dConfig) -> Result<Self> {
        Self::wrap(candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb)?, cout, k, cfg)
    }

    fn wrap(inner: candle_nn::Conv2d, cout: usize, k: usize, cfg: Conv2dConfig) -> Result<Self> {
        let weight = inner.weight();
        let host_f32 = weight.device().is_cpu() && weight.dtype() == DType::F32;
        let flat = host_f32.then(|| weight.flatten_from(1)?.contiguous()).transpose()?;
        let bias = match inner.bias() {
            Some(b) if host_f32 => Some(b.to_vec1::<f32>()?),
            _ => None,
        };
        let winograd = (k == 3 && cfg.stride == 1 && cfg.padding == 1 && cfg.dilation == 1 && cfg.groups == 1)
            .then(|| Winograd::new(inner.weight(), inner.bias()))
            .transpose()?
            .flatten();
        Ok(Self { inner, flat, bias, cout, k, pad: cfg.padding, stride: cfg.stride, winograd })
    }

    /// A convolution from its weight `(cout, cin, k, k)` and bias (for weights stored in another
    /// shape, such as the Qwen VAE's causal 3-D kernels used on single frames).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Result<Self> {
        let (cout, _, k, _) = weight.dims4()?;
        Self::wrap(candle_nn::Conv2d::new(weight.contiguous()?, bias, cfg), cout, k, cfg)
    }

    /// The same convolution without the Winograd path (for benchmarks against it).
    pub fn direct_only(mut self) -> Self {
        self.winograd = None;
        self
    }

    fn fast(&self, x: &Tensor) -> bool {
        self.flat.is_some()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.pad * 2 + 1 == self.k
            && self.inner.config().groups == 1
            && self.inner.config().dilation == 1
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_from(Source::Plain(x), Extra::default())
    }

    /// The convolution plus what `extra` adds ([`Extra`]).
    pub fn forward_with(&self, x: &Tensor, extra: Extra) -> Result<Tensor> {
        self.forward_from(Source::Plain(x), extra)
    }

    /// The convolution of what `source` makes, plus `extra`: on the Winograd path the layer
    /// before is applied in its input transform ([`Prologue`]); elsewhere it is made as a
    /// tensor first.
    pub fn forward_from(&self, source: Source, extra: Extra) -> Result<Tensor> {
        let x = source.tensor();
        if let Some(wg) = self.winograd.as_ref().filter(|_| self.fast(x)) {
            // Only the size matters to `takes`: a norm keeps it, an upsampling doubles it.
            let sized = match source {
                Source::Doubled(_) => Prologue::Doubled,
                _ => Prologue::None,
            };
            if wg.takes(x, sized) {
                let affine = match source {
                    Source::Normed(x, norm) => Some(norm.affine(x)?),
                    _ => None,
                };
                let prologue = match &affine {
                    Some((scale, shift)) => Prologue::NormSilu { scale, shift },
                    None => sized,
                };
                let (b, cin, h, w) = x.dims4()?;
                let (h, w) = prologue.size(h, w);
                // Counted as the direct convolution's FLOPs, so GFLOP/s compare with the im2col
                // rows.
                let _t = profile::start("conv3x3 winograd", || {
                    (
                        format!("{}{}", shape_label(3, (b, cin, h, w), self.cout), prologue.label()),
                        2.0 * (b * self.cout * cin * 9 * h * w) as f64,
                    )
                });
                return wg.forward(x, prologue, extra);
            }
        }
        let x = match source {
            Source::Plain(x) => x.clone(),
            Source::Normed(x, norm) => norm.forward(x, true)?,
            Source::Doubled(x) => {
                let (_, _, h, w) = x.dims4()?;
                upsample_nearest(x, 2 * h, 2 * w)?
            }
        };
        self.direct(&x, extra, BAND)
    }

    /// candle's convolution (and bias) of `x`, in bands of output rows whose im2col matrix stays
    /// within `budget` bytes (one row at least): the input padded once, each band's rows (with
    /// their halo) through the same layer unpadded, the bands concatenated. Each output is the
    /// same sum as candle's whole convolution computes.
    fn candle(&self, x: &Tensor, budget: usize) -> Result<Tensor> {
        let cfg = *self.inner.config();
        let (b, cin, h, w) = x.dims4()?;
        let (k, s, p) = (self.k, cfg.stride, cfg.padding);
        let (ho, wo) = ((h + 2 * p).saturating_sub(k) / s + 1, (w + 2 * p).saturating_sub(k) / s + 1);
        let row_bytes = b * wo * cin * k * k * x.dtype().size_in_bytes();
        if cfg.dilation != 1 || cfg.groups != 1 || h + 2 * p < k || row_bytes * ho <= budget {
            return Ok(self.inner.forward(x)?);
        }
        let rows = (budget / row_bytes).max(1);
        let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let unpadded = candle_nn::Conv2d::new(
            self.inner.weight().clone(),
            self.inner.bias().cloned(),
            Conv2dConfig { padding: 0, ..cfg },
        );
        let bands = (0..ho)
            .step_by(rows)
            .map(|r0| {
                let r1 = (r0 + rows).min(ho);
                unpadded.forward(&padded.narrow(2, r0 * s, (r1 - 1) * s + k - r0 * s)?.contiguous()?)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&bands, 2)?)
    }

    /// The convolution of `x` plus `extra` without the Winograd path, with im2col bands of at
    /// most `band` elements (one output row at least).
    fn direct(&self, x: &Tensor, extra: Extra, band: usize) -> Result<Tensor> {
        if !self.fast(x) {
            #[cfg(feature = "cudnn")]
            if x.device().is_cuda() {
                let _t = profile::start("conv (cudnn)", || (conv_label(self.k, x, self.cout), 0.0));
                return extra.add_to(crate::cudnn::conv2d(x, &self.inner)?);
            }
            let _t = profile::start("conv (candle)", || (conv_label(self.k, x, self.cout), 0.0));
            return extra.add_to(self.candle(x, CANDLE_COLS_BYTES)?);
        }
        let (b, cin, h, w) = x.dims4()?;
        let (cout, k, s) = (self.cout, self.k, self.stride);
        // Output size with "same" padding at this stride (the UNet's downsamplers: stride 2).
        let (ho, wo) = ((h - 1) / s + 1, (w - 1) / s + 1);
        let (hw, out_hw) = (h * w, ho * wo);
        let kk = cin * k * k;
        let Some(weights) = &self.flat else { bail!("conv: no CPU weights") };
        let threads = rayon::current_num_threads();
        // The output starts as the bias and the extras, and every band's GEMM adds its product
        // onto it.
        let offsets = extra.offsets(self.bias.as_deref(), b, cout)?;
        let accumulate = offsets.is_some() || extra.residual.is_some();
        let mut out = vec![0f32; b * cout * out_hw];
        if accumulate {
            let _t = profile::start("conv bias fill", || (format!("{cout} @{ho}x{wo}"), 0.0));
            extra.residual_with(&[b, cout, ho, wo], |res| {
                out.par_chunks_mut(out_hw).enumerate().for_each(|(i, plane)| {
                    let off = offsets.as_ref().map_or(0.0, |o| o[i]);
                    match res {
                        Some(r) => {
                            plane.iter_mut().zip(&r[i * out_hw..(i + 1) * out_hw]).for_each(|(o, &r)| *o = r + off)
                        }
                        None => plane.fill(off),
                    }
                });
            })?;
        }
        let label = || conv_label(k, x, cout);
        let geometry = Im2col { cin, h, w, k, pad: self.pad, stride: s, wo };
        host(weights, |weights| {
            let flat = View::rows(weights, cout, kk, kk);
            host(x, |data| {
                for (img, dst) in data.chunks_exact(cin * hw).zip(out.chunks_exact_mut(cout * out_hw)) {
                    if k == 1 && s == 1 {
                        let _t = profile::start("conv1x1 gemm", || (label(), 2.0 * (cout * cin * hw) as f64));
                        gemm(dst, hw, flat, View::rows(img, cin, hw, hw), accumulate, threads);
                        continue;
                    }
                    let rows = (band / (kk * wo).max(1)).clamp(1, ho);
                    with_cols(kk * rows * wo, |cols| {
                        let mut y0 = 0;
                        while y0 < ho {
                            let r = rows.min(ho - y0);
                            let n = r * wo;
                            let cols = &mut cols[..kk * n];
                            profile::time(
                                "conv im2col",
                                || (format!("{k}x{k} {cin} @{h}x{w}"), 0.0),
                                || geometry.fill(img, y0, r, cols),
                            );
                            let _t = profile::start("conv3x3 gemm", || (label(), 2.0 * (cout * kk * n) as f64));
                            gemm(&mut dst[y0 * wo..], out_hw, flat, View::rows(cols, kk, n, n), accumulate, threads);
                            y0 += r;
                        }
                    });
                }
            })
        })??;
        Ok(Tensor::from_vec(out, (b, cout, ho, wo), &Device::Cpu)?)
    }
}

fn conv_label(k: usize, x: &Tensor, cout: usize) -> String {
    match x.dims4() {
        Ok(dims) => shape_label(k, dims, cout),
        Err(_) => format!("{k}x{k} ->{cout}"),
    }
}

/// A convolution's profile label from its input's `(b, cin, h, w)`.
fn shape_label(k: usize, (b, cin, h, w): (usize, usize, usize, usize), cout: usize) -> String {
    format!("{k}x{k} {cin}->{cout} @{h}x{w} b{b}")
}

/// Runs `f` on an im2col buffer of `len` elements: the thread's reusable one when it is free.
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                let _t = profile::start("conv im2col alloc", || (format!("{} MiB", len >> 18), 0.0));
                *buf = vec![0f32; len];
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a rayon worker running another convolution): a fresh one.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Conv::forward(self, x).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }
}

/// The geometry of one convolution's im2col: `cin` planes of `h × w`, a `k × k` kernel with
/// `pad` zeros around and `stride`, `wo` output columns.
struct Im2col {
    cin: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
    stride: usize,
    wo: usize,
}

impl Im2col {
    /// Rows `(ci, ky, kx)`, columns the output pixels of output rows `y0 .. y0 + r`; zero outside
    /// the image. Writes every element of `cols` (it is a reused buffer).
    fn fill(&self, img: &[f32], y0: usize, r: usize, cols: &mut [f32]) {
        let Self { cin, h, w, k, pad, stride: s, wo } = *self;
        let n = r * wo;
        cols.par_chunks_mut(k * k * n).enumerate().take(cin).for_each(|(c, rows_c)| {
            let plane = &img[c * h * w..(c + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut rows_c[(ky * k + kx) * n..(ky * k + kx + 1) * n];
                    // Output x reads input x·s + shift: inside the image for lo ≤ x < hi.
                    let shift = kx as isize - pad as isize;
                    let lo = ((-shift).max(0) as usize).div_ceil(s).min(wo);
                    let hi = ((w as isize - shift).max(0) as usize).div_ceil(s).min(wo);
                    for oy in 0..r {
                        let iy = ((y0 + oy) * s + ky) as isize - pad as isize;
                        let dst = &mut row[oy * wo..(oy + 1) * wo];
                        if iy < 0 || iy >= h as isize || lo >= hi {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        dst[..lo].fill(0.0);
                        let first = (lo * s) as isize + shift;
                        if s == 1 {
                            dst[lo..hi].copy_from_slice(&src[first as usize..first as usize + (hi - lo)]);
                        } else {
                            for (d, &v) in dst[lo..hi].iter_mut().zip(src[first as usize..].iter().step_by(s)) {
                                *d = v;
                            }
                        }
                        dst[hi..].fill(0.0);
                    }
                }
            }
        });
    }
}

/// Group normalisation with an optional SiLU after it.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
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
    use super::*;

    /// Direct convolution in f64.
    fn reference(
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        (b, cin, h, w): (usize, usize, usize, usize),
        cout: usize,
        k: usize,
        stride: usize,
    ) -> Vec<f64> {
        let pad = k / 2;
        let (ho, wo) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        let mut out = vec![0f64; b * cout * ho * wo];
        for n in 0..b {
            for co in 0..cout {
                for y in 0..ho {
                    for xo in 0..wo {
                        let mut s = f64::from(bias[co]);
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (
                                        (y * stride + ky) as isize - pad as isize,
                                        (xo * stride + kx) as isize - pad as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    s += f64::from(wt[((co * cin + ci) * k + ky) * k + kx])
                                        * f64::from(x[((n * cin + ci) * h + iy as usize) * w + ix as usize]);
                                }
                            }
                        }
                        out[((n * cout + co) * ho + y) * wo + xo] = s;
                    }
                }
            }
        }
        out
    }

    fn check_conv(shape: (usize, usize, usize, usize), cout: usize, k: usize, stride: usize) {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let cin = shape.1;
        let cfg = Conv2dConfig { padding: k / 2, stride, ..Default::default() };
        let conv = Conv::new(vb.pp("c"), cin, cout, k, cfg).unwrap();
        // candle initialises the bias to small random values, so the bias path is exercised.
        assert!(conv.bias.as_ref().is_some_and(|b| b.iter().any(|&v| v != 0.0)));
        let x = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let got = conv.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = reference(
            &x.flatten_all().unwrap().to_vec1().unwrap(),
            &conv.flat.as_ref().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            conv.bias.as_deref().unwrap(),
            shape,
            cout,
            k,
            stride,
        );
        let top = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f64, |a, (&g, w)| a.max((f64::from(g) - w).abs()));
        assert!(err / top < 3e-5, "{shape:?} -> {cout}, k={k}: {:e}", err / top);
        // candle's convolution agrees too.
        let candle = conv.inner.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let diff = got.iter().zip(&candle).fold(0f32, |a, (g, c)| a.max((g - c).abs()));
        assert!(f64::from(diff) / top < 3e-5);
    }

    #[test]
    fn convolutions_match_f64() {
        check_conv((2, 5, 9, 7), 6, 3, 1);
        check_conv((1, 16, 12, 33), 8, 3, 1);
        check_conv((2, 7, 5, 6), 3, 1, 1);
        check_conv((1, 3, 1, 4), 4, 3, 1);
        // The UNet's and the VAE encoder's downsamplers: stride 2, even and odd sizes.
        check_conv((2, 5, 9, 7), 6, 3, 2);
        check_conv((1, 16, 16, 12), 8, 3, 2);
        check_conv((1, 3, 1, 4), 4, 3, 2);
    }

    #[test]
    fn candles_convolution_in_bands_is_the_whole_one() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        // 3×3 "same" (the VAE's), stride 2 unpadded (the encoder's downsampler, after its own
        // padding), 1×1; odd sizes so that the last band is short.
        for (k, stride, padding, (h, w)) in [(3, 1, 1, (13, 7)), (3, 2, 0, (12, 9)), (1, 1, 0, (5, 6))] {
            let cfg = Conv2dConfig { padding, stride, ..Default::default() };
            let conv = Conv::new(vb.pp(format!("c{k}{stride}{padding}")), 5, 4, k, cfg).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 5, h, w), &dev).unwrap();
            let whole = conv.inner.forward(&x).unwrap();
            let ho = whole.dim(2).unwrap();
            let row = 2 * whole.dim(3).unwrap() * 5 * k * k * 4;
            for rows in [1, 2, 3, ho] {
                let banded = conv.candle(&x, rows * row).unwrap();
                assert_eq!(banded.dims(), whole.dims());
                let diff = (banded - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff <= 1e-5, "k={k} stride={stride} rows={rows}: {diff}");
            }
        }
    }

    #[test]
    fn banded_convolutions_reuse_the_buffer() {
        // Bands of 2 rows, then 1 row, over one image: the buffer keeps the first call's
        // contents, so stale values would show wherever padding is not rewritten.
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let conv = Conv::new(vb.pp("c"), 6, 4, 3, Conv2dConfig { padding: 1, ..Default::default() }).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 6, 7, 11), &dev).unwrap();
        let want = conv.inner.forward(&x).unwrap();
        for band in [6 * 9 * 11 * 2 + 5, 1, usize::MAX] {
            let got = conv.direct(&x, Extra::default(), band).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "band {band}: {diff}");
        }
        let small = Tensor::randn(0f32, 1.0, (1, 6, 2, 3), &dev).unwrap();
        let diff = (conv.forward(&small).unwrap() - conv.inner.forward(&small).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn extras_are_added_as_candle_adds_them() {
        // The time embedding per image and channel and the residual, written into the output
        // before the product: the same as candle's layer followed by its adds, on the Winograd,
        // im2col and 1×1 paths and for linear layers.
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        for (name, (b, cin, h, w), cout, k, cfg) in [
            ("winograd", (2, 16, 64, 66), 16, 3, pad1),
            ("im2col", (2, 6, 7, 11), 4, 3, pad1),
            ("1x1", (2, 6, 7, 11), 4, 1, Conv2dConfig::default()),
        ] {
            let conv = Conv::new(vb.pp(name), cin, cout, k, cfg).unwrap();
            let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev).unwrap();
            assert_eq!(conv.winograd.as_ref().is_some_and(|wg| wg.takes(&x, Prologue::None)), name == "winograd");
            let temb = Tensor::randn(0f32, 1.0, (b, cout), &dev).unwrap();
            let shared = Tensor::randn(0f32, 1.0, (1, cout), &dev).unwrap();
            let res = Tensor::randn(0f32, 1.0, (b, cout, h, w), &dev).unwrap();
            for extra in [
                Extra { channels: Some(&temb), residual: None },
                Extra { channels: Some(&shared), residual: None },
                Extra { channels: None, residual: Some(&res) },
                Extra { channels: Some(&temb), residual: Some(&res) },
            ] {
                let got = conv.forward_with(&x, extra).unwrap();
                let want = extra.add_to(conv.inner.forward(&x).unwrap()).unwrap();
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "{name}: {diff}");
            }
            let wrong = Tensor::zeros((b, cout, h, w + 1), DType::F32, &dev).unwrap();
            assert!(conv.forward_with(&x, Extra { channels: None, residual: Some(&wrong) }).is_err());
        }
        let l = candle_nn::linear(13, 7, vb.pp("l")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, 13), &dev).unwrap();
        let res = Tensor::randn(0f32, 1.0, (2, 5, 7), &dev).unwrap();
        let got = linear_with(&l, &x, Some(&res)).unwrap();
        let want = (l.forward(&x).unwrap() + &res).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "linear: {diff}");
    }

    #[test]
    fn linear_layers_match_candle() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
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
                let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "{shape:?}: {diff}");
                let got = linear_with(l, &x, Some(&residual)).unwrap();
                let want = (want + &residual).unwrap();
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "{shape:?} with a residual: {diff}");
            }
        }
    }

    #[test]
    fn upsampling_matches_candle() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &Device::Cpu).unwrap();
        for (th, tw) in [(10, 14), (11, 14), (5, 7)] {
            let got = upsample_nearest(&x, th, tw).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = x.upsample_nearest2d(th, tw).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{th}x{tw}");
        }
    }

    /// A convolution of a group norm with SiLU, or of a nearest upsampling ×2, gives the same
    /// bits whether the layer before is made as a tensor first or (on the Winograd path) in the
    /// input transform, with a time embedding and a residual added; the shapes the Winograd
    /// path declines fall back to making the tensor.
    #[test]
    fn fused_sources_match_the_layers_made_first() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        for (name, (b, cin, h, w), cout, winograd) in [
            ("f4", (2, 32, 64, 66), 16, true),
            ("f2", (1, 16, 32, 34), 32, true),
            ("im2col", (2, 16, 8, 10), 16, false),
        ] {
            let conv = Conv::new(vb.pp(name), cin, cout, 3, pad1).unwrap();
            let gn = GroupNorm {
                weight: Tensor::randn(0f32, 1.0, cin, &dev).unwrap(),
                bias: Tensor::randn(0f32, 1.0, cin, &dev).unwrap(),
                ..GroupNorm::new(vb.pp(format!("{name}.gn")), 8, cin, 1e-6).unwrap()
            };
            let x = (Tensor::randn(0f32, 3.0, (b, cin, h, w), &dev).unwrap() + 2.0).unwrap();
            let half = Tensor::randn(0f32, 1.0, (b, cin, h / 2, w / 2), &dev).unwrap();
            assert_eq!(conv.winograd.as_ref().is_some_and(|wg| wg.takes(&half, Prologue::Doubled)), winograd);
            let temb = Tensor::randn(0f32, 1.0, (b, cout), &dev).unwrap();
            let res = Tensor::randn(0f32, 1.0, (b, cout, h, w), &dev).unwrap();
            let extra = Extra { channels: Some(&temb), residual: Some(&res) };
            let bits = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let fused = bits(conv.forward_from(Source::Normed(&x, &gn), extra).unwrap());
            let made = bits(conv.forward_with(&gn.forward(&x, true).unwrap(), extra).unwrap());
            assert!(fused == made, "{name}: group norm");
            let fused = bits(conv.forward_from(Source::Doubled(&half), extra).unwrap());
            let made = bits(conv.forward_with(&upsample_nearest(&half, h, w).unwrap(), extra).unwrap());
            assert!(fused == made, "{name}: upsampling");
        }
    }

    #[test]
    fn group_norm_silu_matches_f64() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
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
