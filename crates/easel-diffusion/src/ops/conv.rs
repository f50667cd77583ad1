//! Convolutions on the CPU in f32. A convolution builds its im2col matrix a band of output rows
//! at a time (bounded memory, in a buffer reused across bands and calls) and runs one GEMM per
//! band through [`crate::gemm`] (candle's own GEMM crate) straight into its rows of the output,
//! which already holds the bias and [`Extra`], so there is no per-band output, no concatenation
//! and no bias pass; 1×1 convolutions multiply the input in place, with no im2col at all; 3×3
//! stride-1 ones take the Winograd path ([`crate::winograd`]), which applies a group norm or an
//! upsampling as it reads ([`Source`]). The weights are reshaped once at load (a view, not a
//! copy). Elsewhere: candle's convolution in bands of output rows (the GPU), or cuDNN's
//! ([`crate::cudnn`], feature `cudnn`).

use std::cell::RefCell;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use super::{Extra, Source, host, upsample_nearest};
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

#[cfg(test)]
mod tests {
    use candle_nn::Module as _;

    use super::*;
    use crate::ops::testing::{max_abs_diff, vars};
    use crate::ops::{GroupNorm, linear_with};

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
        let (dev, vb) = (Device::Cpu, vars());
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
        let (dev, vb) = (Device::Cpu, vars());
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
                let diff = max_abs_diff(&banded, &whole);
                assert!(diff <= 1e-5, "k={k} stride={stride} rows={rows}: {diff}");
            }
        }
    }

    #[test]
    fn banded_convolutions_reuse_the_buffer() {
        // Bands of 2 rows, then 1 row, over one image: the buffer keeps the first call's
        // contents, so stale values would show wherever padding is not rewritten.
        let (dev, vb) = (Device::Cpu, vars());
        let conv = Conv::new(vb.pp("c"), 6, 4, 3, Conv2dConfig { padding: 1, ..Default::default() }).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 6, 7, 11), &dev).unwrap();
        let want = conv.inner.forward(&x).unwrap();
        for band in [6 * 9 * 11 * 2 + 5, 1, usize::MAX] {
            let got = conv.direct(&x, Extra::default(), band).unwrap();
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-5, "band {band}: {diff}");
        }
        let small = Tensor::randn(0f32, 1.0, (1, 6, 2, 3), &dev).unwrap();
        let diff = max_abs_diff(&conv.forward(&small).unwrap(), &conv.inner.forward(&small).unwrap());
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn extras_are_added_as_candle_adds_them() {
        // The time embedding per image and channel and the residual, written into the output
        // before the product: the same as candle's layer followed by its adds, on the Winograd,
        // im2col and 1×1 paths and for linear layers.
        let (dev, vb) = (Device::Cpu, vars());
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
                let diff = max_abs_diff(&got, &want);
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
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "linear: {diff}");
    }

    /// A convolution of a group norm with SiLU, or of a nearest upsampling ×2, gives the same
    /// bits whether the layer before is made as a tensor first or (on the Winograd path) in the
    /// input transform, with a time embedding and a residual added; the shapes the Winograd
    /// path declines fall back to making the tensor.
    #[test]
    fn fused_sources_match_the_layers_made_first() {
        let (dev, vb) = (Device::Cpu, vars());
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
}
