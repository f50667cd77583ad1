//! Winograd convolutions for 3×3, stride 1, padding 1 (CPU f32): the VAE decoder's and the
//! UNet's resnet convolutions, most of the arithmetic of a CPU image.
//!
//! F(m×m, 3×3) cuts each (m+2)×(m+2) input tile into (m+2)² element-wise products per channel
//! pair instead of 9m² multiply-adds: F(4×4) does 36 products for 16 outputs (4× fewer than a
//! direct convolution), F(2×2) 16 for 4 (2.25× fewer). In matrix form (Lavin & Gray, 2016), per
//! tile: `Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`; summed over input channels, each of the (m+2)²
//! positions is one GEMM `(cout × cin) · (cin × tiles)` on the `gemm` crate ([`crate::gemm`]).
//! The input is processed a band of tile rows at a time so the transformed input and the GEMMs'
//! output stay under [`BAND`] floats each, in buffers kept between bands and calls.
//!
//! The input and output transforms run across tiles, not within one: each input row is split
//! into its `m` phases (`x mod m`), so that element `i` of every tile in a row is one contiguous
//! run, and every step of `Bᵀ·B` and `Aᵀ·A` becomes a loop over tiles with contiguous loads and
//! stores, compiled for AVX-512 or AVX2 at run time ([`crate::exp::simd`]). Written per tile
//! with a scatter, as first, they took twice the GEMMs' time at 128 channels.
//!
//! The kernel transform runs per call, not once at load: keeping it would hold 4× the weights
//! (F(4×4)) in memory, 0.8 GB more for the VAE decoder alone, to save about 3 % of the run
//! (one small f64 product per output channel, vectorised along the input channels).
//!
//! What the network does just before a convolution — a group norm with SiLU, a nearest
//! upsampling — can be done by the input transform as it reads each band's rows ([`Prologue`]),
//! so the full-size tensor between the two is never written.

use std::cell::RefCell;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::exp::silu as silu_f32;
use crate::gemm::{View, gemm};
use crate::ops::Extra;
use crate::profile;

/// Largest transformed-input or GEMM-output band, in f32 elements (32 MiB; glibc then keeps
/// the buffers on its heap between bands instead of mapping fresh zeroed pages each time, and a
/// 512-channel 64×64 input fits one band).
const BAND: usize = 8 * 1024 * 1024;

/// Output tile edge `m` of F(m×m, 3×3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    F2,
    F4,
}

/// Which variant, if any, a convolution of this shape uses; the one place the choice is made.
///
/// - Few tiles or few channels: the per-call kernel transform, the 16 or 36 thin GEMMs and the
///   transforms are not repaid. Measured at 512² output (`easel-diffusion-bench --convs`): 4→512
///   at 64² took 0.16–0.19 s against 0.005–0.03 s direct, 512→512 at 64² (256 tiles) 0.8–1.2 s
///   against 1.5–1.7 s; 128→3 at 512² (the VAE's output convolution) 0.25–0.29 s against
///   0.14 s, the output transform of 128 channels for 3 outputs. So at least 256 tiles of the
///   variant and 16 channels in and out: F(4×4) from a 64×64 image, F(2×2) from 32×32 (tiles
///   are counted rounding up, so 31×31 too). The UNet's 32² level (512² images, a batch of two
///   with guidance; Zen 5, 3 December) takes F(2×2) at 0.61–0.71× the direct time, run by run:
///   320→640 27 against 38 ms, 640→640 31 against 46–48, 1920→640 77–85 against 127–136,
///   1280→1280 111–113 against 178–182; SDXL's 2560→1280 there (a 1024² image) 179–187
///   against 283–288; a batch of one 0.70–0.94×. The 16² level (64 tiles) was not tried.
/// - Accuracy: F(4×4)'s transforms have coefficients up to 5 (Bᵀ) and 8 (Aᵀ), so its rounding
///   error is 10–20× a direct convolution's and grows with the sum length. Against an f64 direct
///   convolution (the tests), with weights scaled like a trained network's, the max error
///   relative to the output's max magnitude measured 3e-6 at cin = 4, 1.0e-5 at 128 and 1.5e-5
///   at 512: inside issue 12's 3e-5 bound up to 512 (the whole VAE), but with only 2× to spare
///   there, so wider inputs (the UNet's 640 and 1280 levels) take F(2×2): 8e-7 at 512, and
///   6e-7 at SDXL's widest input, 2560 channels (a test).
pub fn variant(cin: usize, cout: usize, h: usize, w: usize) -> Option<Variant> {
    if cin < 16 || cout < 16 {
        return None;
    }
    if h.div_ceil(4) * w.div_ceil(4) >= 256 && cin <= 512 {
        return Some(Variant::F4);
    }
    (h.div_ceil(2) * w.div_ceil(2) >= 256).then_some(Variant::F2)
}

/// One variant's transforms: `G` (n × 3, in f64 for the kernel transform), `Bᵀd` and `Aᵀm` for
/// one column of a tile (`N = M + 2` points, `M` outputs).
pub(crate) trait Transform<const N: usize, const M: usize>: Sync {
    const G: [[f64; 3]; N];
    fn bt(d: [f32; N]) -> [f32; N];
    fn at(m: [f32; N]) -> [f32; M];
}

/// F(2×2, 3×3).
pub(crate) struct F2x2;
/// F(4×4, 3×3), interpolation points 0, ±1, ±2, ∞.
pub(crate) struct F4x4;

impl Transform<4, 2> for F2x2 {
    const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

    #[inline(always)]
    fn bt(d: [f32; 4]) -> [f32; 4] {
        [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
    }

    #[inline(always)]
    fn at(m: [f32; 4]) -> [f32; 2] {
        [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
    }
}

impl Transform<6, 4> for F4x4 {
    const G: [[f64; 3]; 6] = [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];

    #[inline(always)]
    fn bt(d: [f32; 6]) -> [f32; 6] {
        let a = d[4] - 4.0 * d[2];
        let b = d[3] - 4.0 * d[1];
        let c = d[4] - d[2];
        let e = 2.0 * (d[3] - d[1]);
        [4.0 * d[0] - 5.0 * d[2] + d[4], a + b, a - b, c + e, c - e, 4.0 * d[1] - 5.0 * d[3] + d[5]]
    }

    #[inline(always)]
    fn at(m: [f32; 6]) -> [f32; 4] {
        let (s1, d1) = (m[1] + m[2], m[1] - m[2]);
        let (s2, d2) = (m[3] + m[4], m[3] - m[4]);
        [m[0] + s1 + s2, d1 + 2.0 * d2, s1 + 4.0 * s2, d1 + 8.0 * d2 + m[5]]
    }
}

/// How the input transform makes the convolution's input from the tensor it is given, as it
/// reads each row: the layer before a convolution, done on the fly instead of as a tensor of its
/// own. A group norm (with SiLU) or a nearest upsampling before a convolution wrote a full-size
/// tensor (up to 256 MiB in the VAE decoder at 512²) that the convolution then read once; here
/// each input row is made in a buffer of the band's rows, in cache, where the transform reads it.
/// The values are the same bits as the layer's own output.
#[derive(Clone, Copy)]
pub enum Prologue<'a> {
    /// The tensor as it is.
    None,
    /// `x · scale + shift` per image and channel (`b · cin` values each, a group norm:
    /// [`crate::ops::GroupNorm::affine`]), then SiLU: a resnet's norm and activation.
    NormSilu { scale: &'a [f32], shift: &'a [f32] },
    /// Each pixel doubled along both axes (nearest upsampling ×2): the tensor is half the
    /// convolution's input size.
    Doubled,
}

impl Prologue<'_> {
    /// What the profile's labels add for it.
    pub fn label(&self) -> &'static str {
        match self {
            Prologue::None => "",
            Prologue::NormSilu { .. } => " (+group norm, SiLU)",
            Prologue::Doubled => " (+upsample x2)",
        }
    }

    /// The convolution's input size from the given tensor's.
    pub fn size(&self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Prologue::Doubled => (2 * h, 2 * w),
            _ => (h, w),
        }
    }
}

/// A 3×3, stride-1, padding-1 convolution's weights, ready for the Winograd path.
pub struct Winograd {
    /// `(cout, cin, 3, 3)`, CPU f32, contiguous.
    weight: Tensor,
    bias: Option<Vec<f32>>,
    cin: usize,
    cout: usize,
}

thread_local! {
    /// The transformed kernel, and the transformed input and the GEMMs' output of a band, kept
    /// between bands and calls (a band is at most [`BAND`] elements): fresh buffers of tens of
    /// MiB would be fresh zeroed pages, faulted in one by one, every band and every call.
    static BUFFERS: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

impl Winograd {
    /// `None` when the weights are not CPU f32 (the caller keeps candle's convolution).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Self>> {
        let (cout, cin, kh, kw) = weight.dims4()?;
        if !weight.device().is_cpu() || weight.dtype() != DType::F32 {
            return Ok(None);
        }
        if (kh, kw) != (3, 3) {
            bail!("Winograd needs a 3×3 kernel, got {kh}×{kw}");
        }
        let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
        Ok(Some(Self { weight: weight.contiguous()?, bias, cin, cout }))
    }

    /// Whether [`Self::forward`] takes this input after `prologue` (CPU f32, and [`variant`]
    /// says yes).
    pub fn takes(&self, x: &Tensor, prologue: Prologue) -> bool {
        match x.dims4() {
            Ok((_, c, h, w)) => {
                let (h, w) = prologue.size(h, w);
                x.device().is_cpu() && x.dtype() == DType::F32 && c == self.cin && variant(c, self.cout, h, w).is_some()
            }
            Err(_) => false,
        }
    }

    /// The convolution of `x` `(b, cin, h, w)` after `prologue`, bias and `extra` ([`Extra`])
    /// included, with the variant [`variant`] picks (F(4×4) when it declines: callers check
    /// [`Self::takes`] first).
    pub fn forward(&self, x: &Tensor, prologue: Prologue, extra: Extra) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (h, w) = prologue.size(h, w);
        match variant(c, self.cout, h, w).unwrap_or(Variant::F4) {
            Variant::F2 => self.run::<F2x2, 4, 2>(x, prologue, extra, BAND),
            Variant::F4 => self.run::<F4x4, 6, 4>(x, prologue, extra, BAND),
        }
    }

    /// The transformed kernel `(n², cout, cin)`: `U = G g Gᵀ` per channel pair, in f64, as
    /// `U[(r,c)] = Σ_(a,b) C[(r,c),(a,b)] · g[a][b]` with `C[(r,c),(a,b)] = G[r][a]·G[c][b]`,
    /// summed in tap order (the same bits as any order of the loops around it). Per output channel,
    /// [`KERNEL_LANES`] input channels at a time: their nine taps stay in registers while four
    /// positions' sums run side by side. Written first as one pass over an accumulator in memory
    /// per tap and position (loads and stores, not arithmetic, set its speed), it took 0.23 s of
    /// an sd-turbo image, now 0.155 s (Zen 5), most of it writing `U` (38 MB for 512→512).
    fn kernel<const N: usize>(&self, g: &[[f64; 3]; N], u: &mut [f32]) -> Result<()> {
        const L: usize = KERNEL_LANES;
        const R: usize = 4;
        const { assert!((N * N).is_multiple_of(R)) };
        let (cin, cout) = (self.cin, self.cout);
        let coef: Vec<[f64; 9]> =
            (0..N * N).map(|rc| std::array::from_fn(|ab| g[rc / N][ab / 3] * g[rc % N][ab % 3])).collect();
        // Output channel `co` owns row `co` of each position's (cout × cin) plane.
        let mut rows: Vec<Vec<&mut [f32]>> = (0..cout).map(|_| Vec::with_capacity(N * N)).collect();
        for plane in u.chunks_mut(cout * cin) {
            for (co, row) in plane.chunks_mut(cin).enumerate() {
                rows[co].push(row);
            }
        }
        crate::ops::host(&self.weight, |w| {
            rows.into_par_iter().enumerate().for_each(|(co, mut dst)| {
                crate::simd! {
                    for c0 in (0..cin).step_by(L) {
                        let lanes = L.min(cin - c0);
                        // The nine taps of `lanes` input channels, tap-major (zero past `cin`).
                        let mut k = [[0f64; L]; 9];
                        for (l, taps) in w[(co * cin + c0) * 9..(co * cin + c0 + lanes) * 9].chunks_exact(9).enumerate() {
                            for (ab, &v) in taps.iter().enumerate() {
                                k[ab][l] = f64::from(v);
                            }
                        }
                        for rc in (0..N * N).step_by(R) {
                            let mut acc = [[0f64; L]; R];
                            for ab in 0..9 {
                                for (r, acc) in acc.iter_mut().enumerate() {
                                    let cv = coef[rc + r][ab];
                                    for (a, &kv) in acc.iter_mut().zip(&k[ab]) {
                                        *a += cv * kv;
                                    }
                                }
                            }
                            for (r, acc) in acc.iter().enumerate() {
                                for (d, &a) in dst[rc + r][c0..c0 + lanes].iter_mut().zip(acc) {
                                    *d = a as f32;
                                }
                            }
                        }
                    }
                }
            });
        })?;
        Ok(())
    }

    fn run<T: Transform<N, M>, const N: usize, const M: usize>(
        &self,
        x: &Tensor,
        prologue: Prologue,
        extra: Extra,
        band_size: usize,
    ) -> Result<Tensor> {
        let (b, cin, xh, xw) = x.dims4()?;
        let (h, w) = prologue.size(xh, xw);
        let cout = self.cout;
        if cin != self.cin {
            bail!("Winograd convolution expects {} input channels, got {cin}", self.cin);
        }
        if let Prologue::NormSilu { scale, shift } = prologue
            && (scale.len() != b * cin || shift.len() != b * cin)
        {
            bail!(
                "Winograd convolution: {} scales and {} shifts for {b} images of {cin} channels",
                scale.len(),
                shift.len()
            );
        }
        let offsets = extra.offsets(self.bias.as_deref(), b, cout)?;
        let x = x.contiguous()?;
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        let rows = (band_size / (N * N * cin.max(cout) * tw)).clamp(1, th);
        let mut out = vec![0f32; b * cout * h * w];
        let band_len = N * N * cin.max(cout) * rows * tw;
        with_buffers([N * N * cout * cin, band_len, band_len], |[u, vbuf, mbuf]| {
            profile::time("winograd kernel", || (format!("{cin}->{cout}"), 0.0), || self.kernel(&T::G, u))?;
            extra.residual_with(&[b, cout, h, w], |residual| {
                crate::ops::host(&x, |data| {
                    for (n, dst) in out.chunks_mut(cout * h * w).enumerate() {
                        let add = Add {
                            offsets: offsets.as_deref().map(|o| &o[n * cout..(n + 1) * cout]),
                            residual: residual.map(|r| &r[n * cout * h * w..(n + 1) * cout * h * w]),
                        };
                        let img = &data[n * cin * xh * xw..(n + 1) * cin * xh * xw];
                        let prologue = match prologue {
                            Prologue::NormSilu { scale, shift } => Prologue::NormSilu {
                                scale: &scale[n * cin..(n + 1) * cin],
                                shift: &shift[n * cin..(n + 1) * cin],
                            },
                            other => other,
                        };
                        let mut ty0 = 0;
                        while ty0 < th {
                            let tr = rows.min(th - ty0);
                            let band = Band { h, w, tw, ty0, tr };
                            let t = band.tiles();
                            let v = &mut vbuf[..cin * N * N * t];
                            profile::time(
                                "winograd input",
                                || (format!("{cin} @{h}x{w}{}", prologue.label()), 0.0),
                                || band.input::<T, N, M>(img, prologue, cin, v),
                            );
                            // Position p: (cout × cin) · (cin × T), the input read in place from its
                            // (cin, n², T) layout, the product written to plane p of (n², cout, T).
                            let m = &mut mbuf[..N * N * cout * t];
                            let _t = profile::start("winograd gemm", || {
                                (format!("{cin}->{cout} @{h}x{w}"), 2.0 * (N * N * cout * cin * t) as f64)
                            });
                            // The 16 or 36 positions' GEMMs are independent: each runs whole on one
                            // thread, its panels in that core's cache (2.5 s against 3.1 s for each
                            // GEMM split over both cores, sd-turbo 512²'s VAE, 2-core Xeon).
                            m.par_chunks_exact_mut(cout * t).enumerate().for_each(|(p, plane)| {
                                let lhs = View::rows(&u[p * cout * cin..(p + 1) * cout * cin], cout, cin, cin);
                                let rhs = View::rows(&v[p * t..], cin, t, N * N * t);
                                gemm(plane, t, lhs, rhs, false, 1);
                            });
                            drop(_t);
                            profile::time(
                                "winograd output",
                                || (format!("{cout} @{h}x{w}"), 0.0),
                                || band.output::<T, N, M>(m, dst, cout, add),
                            );
                            ty0 += tr;
                        }
                    }
                })
            })?
        })?;
        Ok(Tensor::from_vec(out, (b, cout, h, w), &Device::Cpu)?)
    }
}

/// What one image's output transform adds to every pixel: the bias plus the per-channel extra
/// (`cout` values), and the residual `(cout, h, w)` ([`Extra`]).
#[derive(Clone, Copy)]
struct Add<'a> {
    offsets: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
}

/// Runs `f` on three buffers of `lens`: the thread's reusable ones when they are free.
fn with_buffers<R>(lens: [usize; 3], f: impl FnOnce([&mut [f32]; 3]) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            for (buf, &len) in bufs.iter_mut().zip(&lens) {
                if buf.len() < len {
                    *buf = vec![0f32; len];
                }
            }
            let [a, b, c] = &mut *bufs;
            f([&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]]])
        }
        Err(_) => f(lens.map(|len| vec![0f32; len]).each_mut().map(|v| v.as_mut_slice())),
    })
}

/// Input channels the kernel transform handles together: one AVX-512 register of f64.
const KERNEL_LANES: usize = 8;

/// Elements the transforms handle together: one AVX-512 register of f32 (two AVX2 ones).
const LANES: usize = 16;

/// `outs[o][j] = f([ins[0][j], ins[1][j], …])[o]` for `j < len`: the transforms' one loop shape,
/// written over fixed blocks of [`LANES`] (no bounds checks inside) so that it vectorises across
/// tiles, with contiguous loads and stores.
#[inline(always)]
fn map_lanes<const A: usize, const B: usize>(
    ins: [&[f32]; A],
    outs: &mut [&mut [f32]; B],
    len: usize,
    f: impl Fn([f32; A]) -> [f32; B],
) {
    let mut j = 0;
    while j + LANES <= len {
        let blk: [[f32; LANES]; A] = std::array::from_fn(|a| {
            let mut l = [0f32; LANES];
            l.copy_from_slice(&ins[a][j..j + LANES]);
            l
        });
        let mut res = [[0f32; LANES]; B];
        for l in 0..LANES {
            let r = f(std::array::from_fn(|a| blk[a][l]));
            for (o, v) in r.into_iter().enumerate() {
                res[o][l] = v;
            }
        }
        for (o, r) in res.iter().enumerate() {
            outs[o][j..j + LANES].copy_from_slice(r);
        }
        j += LANES;
    }
    for j in j..len {
        let r = f(std::array::from_fn(|a| ins[a][j]));
        for (o, v) in r.into_iter().enumerate() {
            outs[o][j] = v;
        }
    }
}

/// `B` disjoint slices of `len` from `buf`, the `o`-th starting at `start + o * stride`
/// (`stride ≥ len`).
fn strided_mut<const B: usize>(buf: &mut [f32], start: usize, stride: usize, len: usize) -> [&mut [f32]; B] {
    let mut rest = &mut buf[start..];
    std::array::from_fn(|o| {
        let (row, tail) = std::mem::take(&mut rest).split_at_mut(len);
        if o + 1 < B {
            rest = &mut tail[stride - len..];
        }
        row
    })
}

/// `tr` rows of tiles starting at tile row `ty0`, of an `h × w` image `tw` tiles wide.
struct Band {
    h: usize,
    w: usize,
    tw: usize,
    ty0: usize,
    tr: usize,
}

impl Band {
    fn tiles(&self) -> usize {
        self.tr * self.tw
    }

    /// `Bᵀ d B` of every tile of every channel into `v`, laid out `(cin, n², tiles)`, reading
    /// one image `img` through `prologue` (its per-channel values are this image's).
    ///
    /// Per channel and tile row: each of the tile row's `N` input rows is split into its `M`
    /// phases (`x mod M`), so that element `i` of every tile is one contiguous run; `·B` runs
    /// across the tiles on those runs, then `Bᵀ·` across the tiles on the `N` results. Both
    /// vectorise ([`map_lanes`]).
    fn input<T: Transform<N, M>, const N: usize, const M: usize>(
        &self,
        img: &[f32],
        prologue: Prologue,
        cin: usize,
        v: &mut [f32],
    ) {
        let (h, w, tw) = (self.h, self.w, self.tw);
        let t = self.tiles();
        let pw = tw + 1;
        // The input rows the band reads: from the row above its first tile row to the last
        // tile row's last, within the image.
        let first = (self.ty0 * M).saturating_sub(1);
        let end = ((self.ty0 + self.tr) * M + N - M - 1).min(h);
        let made = if matches!(prologue, Prologue::None) { 0 } else { (end - first) * w };
        v.par_chunks_mut(N * N * t).enumerate().take(cin).for_each_init(
            || (vec![0f32; M * pw], vec![0f32; N * N * tw], vec![0f32; made]),
            |(phases, rows, band_rows), (c, vc)| {
                crate::simd! {
                    // The channel's rows `first..end` as the convolution sees them, indexed from
                    // `base`.
                    let (plane, base) = match prologue {
                        Prologue::None => (&img[c * h * w..(c + 1) * h * w], 0),
                        Prologue::NormSilu { scale, shift } => {
                            let (s, b) = (scale[c], shift[c]);
                            let src = &img[c * h * w + first * w..c * h * w + end * w];
                            for (o, &x) in band_rows.iter_mut().zip(src) {
                                *o = silu_f32(x * s + b);
                            }
                            (&band_rows[..], first)
                        }
                        Prologue::Doubled => {
                            let (sh, sw) = (h / 2, w / 2);
                            let small = &img[c * sh * sw..(c + 1) * sh * sw];
                            for (y, row) in (first..end).zip(band_rows.chunks_exact_mut(w)) {
                                let src = &small[y / 2 * sw..(y / 2 + 1) * sw];
                                for (pair, &x) in row.chunks_exact_mut(2).zip(src) {
                                    pair[0] = x;
                                    pair[1] = x;
                                }
                            }
                            (&band_rows[..], first)
                        }
                    };
                    for ty in 0..self.tr {
                        let y0 = ((self.ty0 + ty) * M) as isize - 1;
                        for i in 0..N {
                            let y = y0 + i as isize;
                            // Padded x runs from -1; phase r holds x = j·M + r - 1.
                            phases.fill(0.0);
                            if y >= 0 && y < h as isize {
                                let src = &plane[(y as usize - base) * w..(y as usize - base + 1) * w];
                                // Padded x' = x + 1 goes to phase x' % M at x' / M: column 0
                                // holds the pad and x < M - 1, then every M pixels from M - 1 on
                                // fill one column of all phases (a contiguous read per column).
                                let lead = (M - 1).min(w);
                                for (x, &val) in src[..lead].iter().enumerate() {
                                    phases[(x + 1) * pw] = val;
                                }
                                let body = &src[lead..];
                                let chunks = body.chunks_exact(M);
                                let rest = chunks.remainder();
                                let mut j = 1;
                                for px in chunks {
                                    for (r, &val) in px.iter().enumerate() {
                                        phases[r * pw + j] = val;
                                    }
                                    j += 1;
                                }
                                for (r, &val) in rest.iter().enumerate() {
                                    phases[r * pw + j] = val;
                                }
                            }
                            let ins: [&[f32]; N] = std::array::from_fn(|k| &phases[(k % M) * pw + k / M..][..tw]);
                            let mut outs = strided_mut::<N>(rows, i * N * tw, tw, tw);
                            map_lanes(ins, &mut outs, tw, T::bt);
                        }
                        for l in 0..N {
                            let ins: [&[f32]; N] = std::array::from_fn(|i| &rows[(i * N + l) * tw..][..tw]);
                            let mut outs = strided_mut::<N>(vc, l * t + ty * tw, N * t, tw);
                            map_lanes(ins, &mut outs, tw, T::bt);
                        }
                    }
                }
            },
        );
    }

    /// `Aᵀ M A` of every tile of every output channel from the GEMMs' `(n², cout, tiles)`, plus
    /// the bias and extras of `add`, written into `dst` `(cout, h, w)`: `Aᵀ·` across the tiles,
    /// then `·A`, into the `M` phases of each output row, which are interleaved into it.
    fn output<T: Transform<N, M>, const N: usize, const M: usize>(
        &self,
        m: &[f32],
        dst: &mut [f32],
        cout: usize,
        add: Add,
    ) {
        let (h, w, tw) = (self.h, self.w, self.tw);
        let t = self.tiles();
        dst.par_chunks_mut(h * w).enumerate().for_each_init(
            || (vec![0f32; M * N * t], vec![0f32; M * tw]),
            |(cols, phases), (co, plane)| {
                crate::simd! {
                    let b = add.offsets.map_or(0.0, |o| o[co]);
                    let res = add.residual.map(|r| &r[co * h * w..(co + 1) * h * w]);
                    // The first pass column by column over the whole band, so that it reads N of
                    // the N² planes at a time rather than all of them for each tile row.
                    for l in 0..N {
                        for ty in 0..self.tr {
                            let base = co * t + ty * tw;
                            let ins: [&[f32]; N] =
                                std::array::from_fn(|k| &m[(k * N + l) * cout * t + base..][..tw]);
                            let mut outs = strided_mut::<M>(cols, ty * M * N * tw + l * tw, N * tw, tw);
                            map_lanes(ins, &mut outs, tw, T::at);
                        }
                    }
                    for ty in 0..self.tr {
                        let cols = &cols[ty * M * N * tw..(ty + 1) * M * N * tw];
                        let y0 = (self.ty0 + ty) * M;
                        for i in 0..M.min(h - y0) {
                            let ins: [&[f32]; N] = std::array::from_fn(|l| &cols[(i * N + l) * tw..][..tw]);
                            let mut outs = strided_mut::<M>(phases, 0, tw, tw);
                            map_lanes(ins, &mut outs, tw, T::at);
                            let row = &mut plane[(y0 + i) * w..(y0 + i + 1) * w];
                            // Tile j's M outputs are pixels M·j .. M·j + M: one contiguous store
                            // per tile from the M phases (no index arithmetic per pixel).
                            let whole = w / M * M;
                            let (head, tail) = row.split_at_mut(whole);
                            for (j, px) in head.chunks_exact_mut(M).enumerate() {
                                for (p, out) in px.iter_mut().enumerate() {
                                    *out = phases[p * tw + j] + b;
                                }
                            }
                            for (p, out) in tail.iter_mut().enumerate() {
                                *out = phases[p * tw + whole / M] + b;
                            }
                            if let Some(r) = res {
                                for (out, &r) in row.iter_mut().zip(&r[(y0 + i) * w..(y0 + i + 1) * w]) {
                                    *out += r;
                                }
                            }
                        }
                    }
                }
            },
        );
    }
}

#[cfg(test)]
mod tests;
