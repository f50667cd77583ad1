//! Fused (flash-style) softmax attention for f32 on the CPU, and the VAE's attention block that
//! uses it.
//!
//! The VAE's mid block at 512² attends over 4096 tokens: a full score matrix is 64 MiB per head, which candle would write, read back for the softmax,
//! write again and read for the product with the values, all from main memory, with a libm call
//! per score for `exp`. Here each block of query rows streams the keys and values in tiles: a
//! tile of scores (cache-sized) comes from one GEMM, is turned into probabilities with the
//! vectorised [`crate::exp`] under a running maximum and sum (the online softmax: earlier partial
//! results are rescaled when the maximum grows), and is multiplied into the block's output at
//! once, so the score matrix never exists. Query blocks run in parallel over rayon. Tile products
//! go through [`crate::gemm`], which reads the heads straight out of the `(batch, tokens,
//! heads·dim)` projections, so no transposed copies are made either. Other devices and dtypes use
//! candle's attention block. The UNet's attention uses it too (on the CPU in f32).

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear};
use rayon::prelude::*;

use crate::exp::exp;
use crate::gemm::{View, gemm};
use crate::ops::{GroupNorm, host};
use crate::profile;

/// Query rows per block: the largest of 512 and 256 that still gives every thread four blocks
/// or more, else 128. Each block packs every key and value tile for its own GEMMs, so taller
/// blocks pack less per score; shorter ones keep every core busy when there are few tokens
/// (2-core Zen 5, 5 December 2026, against 128 rows everywhere: sd-1.5's attention at 512² with
/// CFG 1.10 → 1.01 s a step, sd-turbo's 0.50 → 0.46 s an image, SDXL's 0.53 → 0.48 s a step; 512
/// rows everywhere had been as fast on 2 cores, but leaves a 16-core server's threads idle at
/// 1,024 tokens).
fn query_block(batch: usize, n: usize, threads: usize) -> usize {
    [512, 256].into_iter().find(|&rows| batch * n.div_ceil(rows) >= 4 * threads).unwrap_or(128)
}

/// Key rows per tile: a tile of keys and one of values stay within 256 KiB (L2) together.
fn key_tile(d: usize) -> usize {
    (32 * 1024 / d.max(1)).clamp(64, 512)
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub batch: usize,
    /// Query tokens.
    pub n: usize,
    /// Key and value tokens.
    pub m: usize,
    pub heads: usize,
    /// Channels per head.
    pub d: usize,
}

/// `softmax(q·kᵀ)·v` per batch and head, with `q` `(batch, n, heads·d)` (already scaled), `k`
/// and `v` `(batch, m, heads·d)`, row-major; the result is `(batch, n, heads·d)`.
pub fn attend_slices(q: &[f32], k: &[f32], v: &[f32], s: Dims) -> Vec<f32> {
    attend_in_blocks(q, k, v, s, query_block(s.batch, s.n, rayon::current_num_threads()))
}

/// [`attend_slices`] with `block` query rows per block.
fn attend_in_blocks(q: &[f32], k: &[f32], v: &[f32], s: Dims, block: usize) -> Vec<f32> {
    let Dims { batch, n, m, heads, d } = s;
    let dim = heads * d;
    assert!(q.len() == batch * n * dim && k.len() == batch * m * dim && v.len() == batch * m * dim);
    let mut out = vec![0f32; batch * n * dim];
    if n == 0 || dim == 0 {
        return out;
    }
    let tile = key_tile(d).min(m.max(1));
    let blocks = out
        .par_chunks_mut(n * dim)
        .enumerate()
        .flat_map(|(bi, image)| image.par_chunks_mut(block * dim).enumerate().map(move |(i, o)| (bi, i, o)));
    blocks.for_each(|(bi, index, out_block)| {
        let q0 = index * block;
        let rows = out_block.len() / dim;
        let mut scores = vec![0f32; rows * tile];
        let mut acc = vec![0f32; rows * d];
        let mut max = vec![f32::NEG_INFINITY; rows];
        let mut sum = vec![0f32; rows];
        for h in 0..heads {
            acc.fill(0.0);
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            let qh = View::rows(&q[(bi * n + q0) * dim + h * d..], rows, d, dim);
            let mut k0 = 0;
            while k0 < m {
                let kt = tile.min(m - k0);
                let base = (bi * m + k0) * dim + h * d;
                let s = &mut scores[..rows * kt];
                gemm(s, kt, qh, View::rows(&k[base..], kt, d, dim).t(), false, 1);
                crate::simd! { online_softmax(s, kt, &mut max, &mut sum, &mut acc, d) };
                gemm(&mut acc, d, View::rows(s, rows, kt, kt), View::rows(&v[base..], kt, d, dim), true, 1);
                k0 += kt;
            }
            crate::simd! {
                for r in 0..rows {
                    let inv = 1.0 / sum[r];
                    let dst = &mut out_block[r * dim + h * d..r * dim + (h + 1) * d];
                    for (o, a) in dst.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                        *o = a * inv;
                    }
                }
            };
        }
    });
    out
}

/// One tile of the online softmax: turns each row of `s` (`kt` scores) into `e^(score - max)`
/// with the row's running maximum, and rescales the row's running sum and output accumulator
/// when that maximum grew.
#[inline(always)]
fn online_softmax(s: &mut [f32], kt: usize, max: &mut [f32], sum: &mut [f32], acc: &mut [f32], d: usize) {
    for (r, row) in s.chunks_exact_mut(kt).enumerate() {
        let m_new = max[r].max(lane_max(row));
        let scale = exp(max[r] - m_new);
        max[r] = m_new;
        for x in row.iter_mut() {
            *x = exp(*x - m_new);
        }
        sum[r] = sum[r] * scale + lane_sum(row);
        if scale != 1.0 {
            for a in &mut acc[r * d..(r + 1) * d] {
                *a *= scale;
            }
        }
    }
}

/// Maximum of a row, in eight independent lanes so it vectorises.
#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    tail.iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a })
}

/// Sum of a row, in eight lanes.
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// [`attend_slices`] on tensors: `q` `(batch, n, heads·d)` already scaled, `k` and `v` `(batch, m,
/// heads·d)`, f32 on the CPU.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, n, dim) = q.dims3()?;
    let m = k.dim(1)?;
    ensure!(dim % heads == 0 && k.dims3()? == (batch, m, dim) && v.dims3()? == (batch, m, dim), "attention shapes");
    let s = Dims { batch, n, m, heads, d: dim / heads };
    let _t = profile::start("attention (fused)", || {
        (format!("{batch}x{heads} heads, {n}x{m} tokens, d={}", s.d), 4.0 * (batch * heads * n * m * s.d) as f64)
    });
    let out = host(q, |q| host(k, |k| host(v, |v| attend_slices(q, k, v, s))))???;
    Ok(Tensor::from_vec(out, (batch, n, dim), &Device::Cpu)?)
}

/// Whether [`attend`] serves these tensors.
pub fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The VAE's single-head self-attention over the pixels of a feature map (diffusers'
/// `Attention` with `group_norm`, residual added): the fused kernel for f32 on the CPU, candle's
/// block elsewhere. Only one side's weights are loaded.
pub enum VaeAttention {
    Fused { norm: GroupNorm, q: Linear, k: Linear, v: Linear, out: Linear },
    Candle(candle_transformers::models::stable_diffusion::attention::AttentionBlock),
}

impl VaeAttention {
    pub fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        use candle_transformers::models::stable_diffusion::attention::{AttentionBlock, AttentionBlockConfig};
        if !(vb.device().is_cpu() && vb.dtype() == DType::F32) {
            let cfg = AttentionBlockConfig {
                num_head_channels: None,
                num_groups: groups,
                rescale_output_factor: 1.0,
                eps: 1e-6,
            };
            return Ok(Self::Candle(AttentionBlock::new(vb, channels, cfg)?));
        }
        let (q, k, v, out) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        Ok(Self::Fused {
            norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, 1e-6)?,
            q: linear(channels, channels, vb.pp(q))?,
            k: linear(channels, channels, vb.pp(k))?,
            v: linear(channels, channels, vb.pp(v))?,
            out: linear(channels, channels, vb.pp(out))?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let Self::Fused { norm, q, k, v, out } = self else {
            let Self::Candle(block) = self else { unreachable!("two variants") };
            // One image at a time: candle's block mixes the images of a batch when the channels
            // are few (its batched matmul on the transposed `(b, h·w, c)` view; seen with the
            // 4-channel tiny FLUX VAE, max error 0.86 against the image decoded alone).
            let b = xs.dim(0)?;
            if b == 1 {
                return Ok(block.forward(xs)?);
            }
            let parts = (0..b).map(|i| block.forward(&xs.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&parts, 0)?);
        };
        ensure!(fused(xs), "VAE attention: loaded for f32 on the CPU, given {:?} on {:?}", xs.dtype(), xs.device());
        let (b, c, h, w) = xs.dims4()?;
        let x = norm.forward(xs, false)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let q = (q.forward(&x)? * (1.0 / (c as f64).sqrt()))?;
        let o = attend(&q, &k.forward(&x)?, &v.forward(&x)?, 1)?;
        let o = out.forward(&o)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((o + xs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: Dims) -> Vec<f64> {
        let Dims { batch, n, m, heads, d } = s;
        let dim = heads * d;
        let mut out = vec![0f64; batch * n * dim];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..n {
                    let qi = &q[(b * n + i) * dim + h * d..][..d];
                    let scores: Vec<f64> = (0..m)
                        .map(|j| {
                            let kj = &k[(b * m + j) * dim + h * d..][..d];
                            qi.iter().zip(kj).map(|(&a, &c)| f64::from(a) * f64::from(c)).sum()
                        })
                        .collect();
                    let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                    let total: f64 = p.iter().sum();
                    for c in 0..d {
                        out[(b * n + i) * dim + h * d + c] =
                            (0..m).map(|j| p[j] * f64::from(v[(b * m + j) * dim + h * d + c])).sum::<f64>() / total;
                    }
                }
            }
        }
        out
    }

    fn noise(len: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
            })
            .collect()
    }

    /// The fused attention in blocks of `block` query rows against the f64 reference.
    fn check_in_blocks(s: Dims, amp: f32, block: usize) {
        let dim = s.heads * s.d;
        let q = noise(s.batch * s.n * dim, 1, amp);
        let k = noise(s.batch * s.m * dim, 2, amp);
        let v = noise(s.batch * s.m * dim, 3, 1.0);
        let got = attend_in_blocks(&q, &k, &v, s, block);
        let want = reference(&q, &k, &v, s);
        let top = want.iter().fold(0f64, |a, w| a.max(w.abs()));
        let err = got.iter().zip(&want).fold(0f64, |a, (&g, w)| a.max((f64::from(g) - w).abs()));
        assert!(err / top < 3e-5, "{s:?} in blocks of {block}: max relative error {:e}", err / top);
    }

    fn check(s: Dims, amp: f32) {
        check_in_blocks(s, amp, query_block(s.batch, s.n, rayon::current_num_threads()));
    }

    #[test]
    fn fused_attention_matches_f64() {
        // Several key tiles with a growing maximum, several heads and images.
        check(Dims { batch: 2, n: 100, m: 700, heads: 3, d: 40 }, 1.5);
        // Several query blocks of each height, the last one short.
        for block in [128, 256, 512] {
            check_in_blocks(Dims { batch: 2, n: 1100, m: 300, heads: 2, d: 16 }, 1.5, block);
        }
        // Cross-attention's 77 keys; one head of 512 channels (the VAE).
        check(Dims { batch: 1, n: 64, m: 77, heads: 5, d: 64 }, 1.0);
        check(Dims { batch: 1, n: 70, m: 300, heads: 1, d: 512 }, 0.3);
        // Large scores (peaked softmax) and a single token.
        check(Dims { batch: 1, n: 33, m: 700, heads: 2, d: 16 }, 6.0);
        check(Dims { batch: 1, n: 1, m: 1, heads: 1, d: 8 }, 1.0);
    }

    #[test]
    fn query_blocks_are_tall_where_every_thread_still_gets_four() {
        // sd-1.5 at 512² with CFG on 2 threads: 16 blocks of 512.
        assert_eq!(query_block(2, 4096, 2), 512);
        // 1,024 tokens: 512 would leave 4 blocks for 2 threads.
        assert_eq!(query_block(2, 1024, 2), 256);
        // Few tokens or many threads: 128, as before.
        assert_eq!(query_block(1, 1024, 2), 128);
        assert_eq!(query_block(2, 4096, 16), 128);
        assert_eq!(query_block(1, 1, 2), 128);
    }

    #[test]
    fn fused_attention_matches_candle() {
        let (b, n, m, heads, d) = (2, 96, 130, 4, 16);
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (b, n, heads * d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev).unwrap();
        let got = attend(&q, &k, &v, heads).unwrap();
        let split = |t: &Tensor, len: usize| {
            t.reshape((b, len, heads, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let kt = split(&k, m).t().unwrap().contiguous().unwrap();
        let want = crate::blocks::attend(&split(&q, n), &kt, &split(&v, m), 1 << 20).unwrap();
        let want = want.transpose(1, 2).unwrap().reshape((b, n, heads * d)).unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let top = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff / top < 3e-5, "{diff} / {top}");
    }
}
