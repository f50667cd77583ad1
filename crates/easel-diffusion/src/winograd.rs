//! Winograd convolutions for 3×3, stride 1, padding 1 (CPU f32): the VAE decoder's and the
//! UNet's resnet convolutions, most of the arithmetic of a CPU image.
//!
//! F(m×m, 3×3) cuts each (m+2)×(m+2) input tile into (m+2)² element-wise products per channel
//! pair instead of 9m² multiply-adds: F(4×4) does 36 products for 16 outputs (4× fewer than a
//! direct convolution), F(2×2) 16 for 4 (2.25× fewer). In matrix form (Lavin & Gray, 2016), per
//! tile: `Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`; summed over input channels, each of the (m+2)²
//! positions is one GEMM `(cout × cin) · (cin × tiles)`, run through candle's batched matmul
//! (the `gemm` crate). The input is processed a band of tile rows at a time so the transformed
//! input and the GEMM's output stay under [`BAND`] floats each.
//!
//! The kernel transform runs per call, not once at load: it is a few tens of flops per channel
//! pair against (m+2)²·2·tiles in the GEMMs (about 1–2 % at the sizes [`variant`] admits), while
//! keeping it would hold 4× the weights (F(4×4)) in memory, 0.8 GB more for the VAE decoder
//! alone.

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

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
/// - Few tiles or few input channels: the per-call kernel transform and the 36 thin GEMMs are
///   not repaid. Measured at 512² output (`easel-diffusion-bench --convs`): 4→512 at 64² took
///   0.16–0.19 s against 0.005–0.03 s direct, 512→512 at 64² (256 tiles) 0.8–1.2 s against
///   1.5–1.7 s, 128→3 at 512² 1.8–2.0 s against 5.0 s. So at least 256 tiles (a 64×64 image)
///   and 16 input channels.
/// - Accuracy: F(4×4)'s transforms have coefficients up to 5 (Bᵀ) and 8 (Aᵀ), so its rounding
///   error is 10–20× a direct convolution's and grows with the sum length. Against an f64 direct
///   convolution (the tests), with weights scaled like a trained network's, the max error
///   relative to the output's max magnitude measured 3e-6 at cin = 4, 1.0e-5 at 128 and 1.5e-5
///   at 512: inside issue 12's 3e-5 bound up to 512 (the whole VAE), but with only 2× to spare
///   there, so wider inputs (the UNet's 640 and 1280 levels) take F(2×2), 8e-7 at 512.
pub fn variant(cin: usize, h: usize, w: usize) -> Option<Variant> {
    if h.div_ceil(4) * w.div_ceil(4) < 256 || cin < 16 {
        return None;
    }
    Some(if cin > 512 { Variant::F2 } else { Variant::F4 })
}

/// G (n × 3) of each variant, in f64 for the kernel transform.
const G2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
const G4: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Bᵀd for one column of an F(2×2) tile.
#[inline(always)]
fn bt2(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// Aᵀm for F(2×2).
#[inline(always)]
fn at2(m: [f32; 4]) -> [f32; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// Bᵀd for one column of an F(4×4) tile (interpolation points 0, ±1, ±2, ∞).
#[inline(always)]
fn bt4(d: [f32; 6]) -> [f32; 6] {
    let a = d[4] - 4.0 * d[2];
    let b = d[3] - 4.0 * d[1];
    let c = d[4] - d[2];
    let e = 2.0 * (d[3] - d[1]);
    [4.0 * d[0] - 5.0 * d[2] + d[4], a + b, a - b, c + e, c - e, 4.0 * d[1] - 5.0 * d[3] + d[5]]
}

/// Aᵀm for F(4×4).
#[inline(always)]
fn at4(m: [f32; 6]) -> [f32; 4] {
    let (s1, d1) = (m[1] + m[2], m[1] - m[2]);
    let (s2, d2) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + s1 + s2, d1 + 2.0 * d2, s1 + 4.0 * s2, d1 + 8.0 * d2 + m[5]]
}

/// A 3×3, stride-1, padding-1 convolution's weights, ready for the Winograd path.
pub struct Winograd {
    /// `(cout, cin, 3, 3)`, CPU f32, contiguous.
    weight: Tensor,
    bias: Option<Vec<f32>>,
    cin: usize,
    cout: usize,
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

    /// Whether [`Self::forward`] takes this input (CPU f32, and [`variant`] says yes).
    pub fn takes(&self, x: &Tensor) -> bool {
        match x.dims4() {
            Ok((_, c, h, w)) => {
                x.device().is_cpu() && x.dtype() == DType::F32 && c == self.cin && variant(c, h, w).is_some()
            }
            Err(_) => false,
        }
    }

    /// The convolution of `x` `(b, cin, h, w)`, bias included, with the variant [`variant`] picks
    /// (F(4×4) when it declines: callers check [`Self::takes`] first).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        match variant(c, h, w).unwrap_or(Variant::F4) {
            Variant::F2 => self.run::<4, 2>(x, &G2, bt2, at2, BAND),
            Variant::F4 => self.run::<6, 4>(x, &G4, bt4, at4, BAND),
        }
    }

    /// The transformed kernel `(n², cout, cin)`: `U = G g Gᵀ` per channel pair, in f64.
    fn kernel<const N: usize>(&self, g: &[[f64; 3]; N]) -> Result<Tensor> {
        let (cin, cout) = (self.cin, self.cout);
        let mut u = vec![0f32; N * N * cout * cin];
        // Output channel `co` owns row `co` of each position's (cout × cin) plane.
        let mut rows: Vec<Vec<&mut [f32]>> = (0..cout).map(|_| Vec::with_capacity(N * N)).collect();
        for plane in u.chunks_mut(cout * cin) {
            for (co, row) in plane.chunks_mut(cin).enumerate() {
                rows[co].push(row);
            }
        }
        crate::ops::host(&self.weight, |w| {
            rows.into_par_iter().enumerate().for_each(|(co, mut dst)| {
                for ci in 0..cin {
                    let k = &w[(co * cin + ci) * 9..(co * cin + ci) * 9 + 9];
                    // G g (n × 3), then (G g) Gᵀ (n × n).
                    let gg: [[f64; 3]; N] = std::array::from_fn(|r| {
                        std::array::from_fn(|c| (0..3).map(|a| g[r][a] * f64::from(k[a * 3 + c])).sum())
                    });
                    for r in 0..N {
                        for c in 0..N {
                            dst[r * N + c][ci] = (0..3).map(|b| gg[r][b] * g[c][b]).sum::<f64>() as f32;
                        }
                    }
                }
            });
        })?;
        Ok(Tensor::from_vec(u, (N * N, cout, cin), &Device::Cpu)?)
    }

    fn run<const N: usize, const M: usize>(
        &self,
        x: &Tensor,
        g: &[[f64; 3]; N],
        bt: fn([f32; N]) -> [f32; N],
        at: fn([f32; N]) -> [f32; M],
        band_size: usize,
    ) -> Result<Tensor> {
        let (b, cin, h, w) = x.dims4()?;
        let cout = self.cout;
        if cin != self.cin {
            bail!("Winograd convolution expects {} input channels, got {cin}", self.cin);
        }
        let u = self.kernel(g)?;
        let x = x.contiguous()?;
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        let rows = (band_size / (N * N * cin.max(cout) * tw)).clamp(1, th);
        let mut out = vec![0f32; b * cout * h * w];
        for (n, dst) in out.chunks_mut(cout * h * w).enumerate() {
            let mut ty0 = 0;
            while ty0 < th {
                let tr = rows.min(th - ty0);
                let band = Band { h, w, tw, ty0, tr };
                let v = crate::ops::host(&x, |data| {
                    band.input::<N, M>(&data[n * cin * h * w..(n + 1) * cin * h * w], cin, bt)
                })?;
                // (cin, n², T) → (n², cin, T): a strided view the GEMM reads directly.
                let v = Tensor::from_vec(v, (cin, N * N, band.tiles()), &Device::Cpu)?.transpose(0, 1)?;
                let m = u.matmul(&v)?;
                crate::ops::host(&m, |m| band.output::<N, M>(m, dst, cout, self.bias.as_deref(), at))?;
                ty0 += tr;
            }
        }
        Ok(Tensor::from_vec(out, (b, cout, h, w), &Device::Cpu)?)
    }
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

    /// `Bᵀ d B` of every tile of every channel, laid out `(cin, n², tiles)`.
    fn input<const N: usize, const M: usize>(&self, img: &[f32], cin: usize, bt: fn([f32; N]) -> [f32; N]) -> Vec<f32> {
        let (h, w, tw) = (self.h, self.w, self.tw);
        let t = self.tiles();
        let mut v = vec![0f32; cin * N * N * t];
        // Padded width: tiles read columns -1 ..= tw·m, stored from index 0.
        let pw = tw * M + 2;
        let zeros = vec![0f32; w];
        v.par_chunks_mut(N * N * t).enumerate().for_each_init(
            || vec![0f32; N * pw],
            |col, (c, vc)| {
                let plane = &img[c * h * w..(c + 1) * h * w];
                for ty in 0..self.tr {
                    // Column pass (Bᵀd), contiguous along x: vectorises.
                    let y0 = ((self.ty0 + ty) * M) as isize - 1;
                    let src: [&[f32]; N] = std::array::from_fn(|i| {
                        let y = y0 + i as isize;
                        if y < 0 || y >= h as isize { &zeros[..] } else { &plane[y as usize * w..(y as usize + 1) * w] }
                    });
                    let mut rows: [&mut [f32]; N] = split_rows(col, pw);
                    for x in 0..w {
                        let r = bt(std::array::from_fn(|i| src[i][x]));
                        for k in 0..N {
                            rows[k][x + 1] = r[k];
                        }
                    }
                    // Row pass (·B), one tile at a time.
                    for j in 0..tw {
                        for (k, row) in rows.iter_mut().enumerate() {
                            let d: [f32; N] = std::array::from_fn(|i| row[j * M + i]);
                            let r = bt(d);
                            for (l, val) in r.into_iter().enumerate() {
                                vc[(k * N + l) * t + ty * tw + j] = val;
                            }
                        }
                    }
                }
            },
        );
        v
    }

    /// `Aᵀ M A` of every tile of every output channel from the GEMMs' `(n², cout, tiles)`, plus
    /// the bias, written into `dst` `(cout, h, w)`.
    fn output<const N: usize, const M: usize>(
        &self,
        m: &[f32],
        dst: &mut [f32],
        cout: usize,
        bias: Option<&[f32]>,
        at: fn([f32; N]) -> [f32; M],
    ) {
        let (h, w, tw) = (self.h, self.w, self.tw);
        let t = self.tiles();
        dst.par_chunks_mut(h * w).enumerate().for_each_init(
            || vec![0f32; M * N * tw],
            |tmp, (co, plane)| {
                let b = bias.map_or(0.0, |b| b[co]);
                for ty in 0..self.tr {
                    let base = co * t + ty * tw;
                    // Aᵀ along the tile's rows, vectorised over the tiles of this row.
                    for l in 0..N {
                        let src: [&[f32]; N] = std::array::from_fn(|k| {
                            let at = (k * N + l) * cout * t + base;
                            &m[at..at + tw]
                        });
                        for j in 0..tw {
                            let r = at(std::array::from_fn(|k| src[k][j]));
                            for (i, val) in r.into_iter().enumerate() {
                                tmp[(i * N + l) * tw + j] = val;
                            }
                        }
                    }
                    // ·A along the columns, then the bias, clipped to the image.
                    let y0 = (self.ty0 + ty) * M;
                    for j in 0..tw {
                        for i in 0..M.min(h - y0) {
                            let r = at(std::array::from_fn(|l| tmp[(i * N + l) * tw + j]));
                            let row = &mut plane[(y0 + i) * w..(y0 + i + 1) * w];
                            for (jj, val) in r.into_iter().enumerate().take(w.saturating_sub(j * M)) {
                                row[j * M + jj] = val + b;
                            }
                        }
                    }
                }
            },
        );
    }
}

/// `N` disjoint rows of `len` from the front of `buf`.
fn split_rows<const N: usize>(buf: &mut [f32], len: usize) -> [&mut [f32]; N] {
    let mut rest = buf;
    std::array::from_fn(|_| {
        let (row, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        row
    })
}

#[cfg(test)]
mod tests;
