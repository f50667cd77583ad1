//! The forward DCT and quantisation of 8×8 blocks, a 16-row strip at a time.
//!
//! The DCT is Arai, Agui and Nakajima's in single-precision float, as in libjpeg's `jfdctflt.c`:
//! five multiplications per 8 points, its output scale folded into the quantisation
//! reciprocals, so quantising is one multiplication per coefficient. At least as accurate as
//! libjpeg-turbo's default integer DCT (`islow`). Each pass runs the 8 columns side by side
//! (plain loops the compiler vectorises); the second pass works on the transposed block, so the
//! output comes out transposed, which the Huffman coder's zigzag tables absorb.
//!
//! Where the CPU has AVX2 the same arithmetic runs written out in AVX2 intrinsics (`pulp`'s safe
//! wrappers, picked at run time): a block row per register, the transpose in eight-wide
//! shuffles. Same coefficients, bit for bit; 12 % off the whole encode on a Zen 5
//! (bench/pixels.md).

/// libjpeg's `aanscalefactor`: cos(kπ/16)·√2 for k > 0, 1 for k = 0.
const AAN_SCALE: [f64; 8] = [1.0, 1.387039845, 1.306562965, 1.175875602, 1.0, 0.785694958, 0.541196100, 0.275899379];

/// Adding 1.5 × 2^23 to a float of magnitude below 2^22 leaves its integer rounding (to nearest,
/// ties to even) in the low mantissa bits: rounding without SSE4.1's `roundps`.
const ROUND_MAGIC: f32 = 12_582_912.0;
const ROUND_MAGIC_BITS: i32 = 0x4B40_0000;

/// The level shift (samples are coded as `sample - 128`), taken off the DC alone after the
/// transform: the DCT is linear, a constant block has only a DC, and the two unnormalised AAN
/// passes make the DC the sum of the 64 samples.
const LEVEL_SHIFT_DC: f32 = 128.0 * 64.0;

/// A quantisation table as reciprocals, with the DCT's scale folded in, in transposed order.
pub struct Quantizer {
    reciprocals: [f32; 64],
}

impl Quantizer {
    /// From a table in natural order.
    pub fn new(table: &[u8; 64]) -> Self {
        let mut reciprocals = [0.0; 64];
        for (i, r) in reciprocals.iter_mut().enumerate() {
            let (u, v) = (i / 8, i % 8);
            *r = (1.0 / (f64::from(table[v * 8 + u]) * AAN_SCALE[u] * AAN_SCALE[v] * 8.0)) as f32;
        }
        Self { reciprocals }
    }
}

/// The blocks of one 16-row strip in coding order, six per MCU: four luma blocks (top left, top
/// right, bottom left, bottom right), then one Cb and one Cr. `luma` is 16 rows of `width`
/// samples (a multiple of 16), `cb` and `cr` 8 rows of `width / 2`; `out` holds
/// `width / 16 × 6` blocks.
///
/// Where the CPU has AVX2 the blocks go through [`avx2::transform`] (the same arithmetic in the
/// same order, so the same coefficients, bit for bit); elsewhere through [`transform`].
pub fn transform_strip(
    luma: &[u8],
    cb: &[u8],
    cr: &[u8],
    width: usize,
    quantizers: &[Quantizer; 2],
    out: &mut [[i16; 64]],
) {
    debug_assert!(width.is_multiple_of(16) && out.len() == width / 16 * 6, "a strip is whole MCUs");
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        pulp::Simd::vectorize(simd, Strip { blocks: simd, luma, cb, cr, width, quantizers, out });
        return;
    }
    Strip { blocks: Portable, luma, cb, cr, width, quantizers, out }.run();
}

/// How one block is transformed. Methods and types, not closures, all the way down to the
/// intrinsics: a closure's call shim is not always inlined into `pulp`'s AVX2 function, and
/// every intrinsic below it then becomes a call (ten times slower).
trait Blocks: Copy {
    fn transform(self, plane: &[u8], at: usize, stride: usize, quantizer: &Quantizer, out: &mut [i16; 64]);
}

#[derive(Clone, Copy)]
struct Portable;

impl Blocks for Portable {
    #[inline(always)]
    fn transform(self, plane: &[u8], at: usize, stride: usize, quantizer: &Quantizer, out: &mut [i16; 64]) {
        transform(plane, at, stride, quantizer, out);
    }
}

#[cfg(target_arch = "x86_64")]
impl Blocks for pulp::x86::V3 {
    #[inline(always)]
    fn transform(self, plane: &[u8], at: usize, stride: usize, quantizer: &Quantizer, out: &mut [i16; 64]) {
        avx2::transform(self, plane, at, stride, quantizer, out);
    }
}

struct Strip<'a, B> {
    blocks: B,
    luma: &'a [u8],
    cb: &'a [u8],
    cr: &'a [u8],
    width: usize,
    quantizers: &'a [Quantizer; 2],
    out: &'a mut [[i16; 64]],
}

impl<B: Blocks> Strip<'_, B> {
    #[inline(always)]
    fn run(self) {
        let Self { blocks, luma, cb, cr, width, quantizers, out } = self;
        let half = width / 2;
        for (mcu, six) in out.chunks_exact_mut(6).enumerate() {
            let [b0, b1, b2, b3, b4, b5] = six else { unreachable!("chunks of six") };
            blocks.transform(luma, mcu * 16, width, &quantizers[0], b0);
            blocks.transform(luma, mcu * 16 + 8, width, &quantizers[0], b1);
            blocks.transform(luma, mcu * 16 + 8 * width, width, &quantizers[0], b2);
            blocks.transform(luma, mcu * 16 + 8 * width + 8, width, &quantizers[0], b3);
            blocks.transform(cb, mcu * 8, half, &quantizers[1], b4);
            blocks.transform(cr, mcu * 8, half, &quantizers[1], b5);
        }
    }
}

impl<B: Blocks> pulp::WithSimd for Strip<'_, B> {
    type Output = ();

    /// Inlined, with everything it calls, into the function that `pulp` compiles for AVX2.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        self.run();
    }
}

/// The 8×8 block of `plane` whose top-left sample is `plane[at]`, rows `stride` apart,
/// transformed and quantised into `out` in transposed order: `out[u * 8 + v]` is the coefficient
/// of horizontal frequency `u` and vertical frequency `v`, natural index `v * 8 + u`.
///
/// No clamping is needed for baseline Huffman coding: from 8-bit samples the DC is within
/// -1024..=1016 (so DC differences fit its 11 bits) and every AC coefficient within ±930 (its
/// limit is 10 bits, ±1023), even with a table of ones.
fn transform(plane: &[u8], at: usize, stride: usize, quantizer: &Quantizer, out: &mut [i16; 64]) {
    let mut rows = [[0.0f32; 8]; 8];
    for (r, row) in rows.iter_mut().enumerate() {
        let src = &plane[at + r * stride..][..8];
        for (d, &s) in row.iter_mut().zip(src) {
            *d = f32::from(s);
        }
    }
    columns(&mut rows);
    let mut t = [[0.0f32; 8]; 8];
    for (r, row) in rows.iter().enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c][r] = x;
        }
    }
    columns(&mut t);
    t[0][0] -= LEVEL_SHIFT_DC;
    let flat = t.as_flattened();
    for ((o, &x), &q) in out.iter_mut().zip(flat).zip(&quantizer.reciprocals) {
        let rounded = (x * q + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC_BITS;
        // Never clamps (see above); written so, the conversion is one `packssdw`.
        *o = rounded.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    }
}

/// One AAN pass down each of the 8 columns (jfdctflt.c's arithmetic, one column per lane).
#[inline(always)]
#[allow(clippy::needless_range_loop, reason = "`c` picks the same column out of all eight rows")]
fn columns(d: &mut [[f32; 8]; 8]) {
    for c in 0..8 {
        let tmp0 = d[0][c] + d[7][c];
        let tmp7 = d[0][c] - d[7][c];
        let tmp1 = d[1][c] + d[6][c];
        let tmp6 = d[1][c] - d[6][c];
        let tmp2 = d[2][c] + d[5][c];
        let tmp5 = d[2][c] - d[5][c];
        let tmp3 = d[3][c] + d[4][c];
        let tmp4 = d[3][c] - d[4][c];

        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;
        d[0][c] = tmp10 + tmp11;
        d[4][c] = tmp10 - tmp11;
        let z1 = (tmp12 + tmp13) * 0.707_106_77;
        d[2][c] = tmp13 + z1;
        d[6][c] = tmp13 - z1;

        let tmp10 = tmp4 + tmp5;
        let tmp11 = tmp5 + tmp6;
        let tmp12 = tmp6 + tmp7;
        let z5 = (tmp10 - tmp12) * 0.382_683_43;
        let z2 = 0.541_196_1 * tmp10 + z5;
        let z4 = 1.306_563 * tmp12 + z5;
        let z3 = tmp11 * 0.707_106_77;
        let z11 = tmp7 + z3;
        let z13 = tmp7 - z3;
        d[5][c] = z13 + z2;
        d[3][c] = z13 - z2;
        d[1][c] = z11 + z4;
        d[7][c] = z11 - z4;
    }
}

/// [`transform`] written out for AVX2: a block row per register, so each pass is one vector
/// operation per row, and the transpose between the passes is eight-wide shuffles. The
/// compiler's own AVX2 version of [`transform`] was no faster than its SSE2 one (it converted the
/// samples one at a time and shuffled the transpose bytewise: bench/pixels.md).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256, __m256i};

    use pulp::x86::V3;

    use super::{LEVEL_SHIFT_DC, Quantizer, ROUND_MAGIC, ROUND_MAGIC_BITS};

    #[inline(always)]
    pub fn transform(simd: V3, plane: &[u8], at: usize, stride: usize, quantizer: &Quantizer, out: &mut [i16; 64]) {
        // Written out, without closures (see `super::Blocks`).
        let mut d = [
            row(simd, plane, at),
            row(simd, plane, at + stride),
            row(simd, plane, at + 2 * stride),
            row(simd, plane, at + 3 * stride),
            row(simd, plane, at + 4 * stride),
            row(simd, plane, at + 5 * stride),
            row(simd, plane, at + 6 * stride),
            row(simd, plane, at + 7 * stride),
        ];
        columns(simd, &mut d);
        transpose(simd, &mut d);
        columns(simd, &mut d);
        d[0] = simd.avx._mm256_sub_ps(d[0], simd.avx._mm256_setr_ps(LEVEL_SHIFT_DC, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0));
        let reciprocals: &[[f32; 8]; 8] = pulp::bytemuck::cast_ref(&quantizer.reciprocals);
        let rows: &mut [[i16; 16]; 4] = pulp::bytemuck::cast_mut(out);
        for (pair, two) in rows.iter_mut().enumerate() {
            let first = quantize(simd, d[2 * pair], reciprocals[2 * pair]);
            let second = quantize(simd, d[2 * pair + 1], reciprocals[2 * pair + 1]);
            // Saturating (never needed: see `super::transform`), in 128-bit halves: put the four
            // 64-bit quarters back in row order.
            let packed = simd.avx2._mm256_packs_epi32(first, second);
            *two = pulp::cast(simd.avx2._mm256_permute4x64_epi64::<0b11_01_10_00>(packed));
        }
    }

    /// The eight samples from `plane[at]` as floats.
    #[inline(always)]
    fn row(simd: V3, plane: &[u8], at: usize) -> __m256 {
        let bytes: [u8; 8] = plane[at..at + 8].try_into().expect("eight samples");
        let bytes = simd.sse2._mm_set_epi64x(0, i64::from_le_bytes(bytes));
        simd.avx._mm256_cvtepi32_ps(simd.avx2._mm256_cvtepu8_epi32(bytes))
    }

    /// A row times its reciprocals, rounded to the nearest integer (as `super::transform` rounds).
    #[inline(always)]
    fn quantize(simd: V3, row: __m256, reciprocals: [f32; 8]) -> __m256i {
        let x = simd.avx._mm256_mul_ps(row, pulp::cast(reciprocals));
        let x = simd.avx._mm256_add_ps(x, simd.avx._mm256_set1_ps(ROUND_MAGIC));
        simd.avx2._mm256_sub_epi32(simd.avx._mm256_castps_si256(x), simd.avx._mm256_set1_epi32(ROUND_MAGIC_BITS))
    }

    #[inline(always)]
    fn add(simd: V3, a: __m256, b: __m256) -> __m256 {
        simd.avx._mm256_add_ps(a, b)
    }

    #[inline(always)]
    fn sub(simd: V3, a: __m256, b: __m256) -> __m256 {
        simd.avx._mm256_sub_ps(a, b)
    }

    #[inline(always)]
    fn mul(simd: V3, a: __m256, k: f32) -> __m256 {
        simd.avx._mm256_mul_ps(a, simd.avx._mm256_set1_ps(k))
    }

    /// `super::columns` with a vector per row: the same operations in the same order. Written
    /// twice on purpose: one generic pass over a row type for both (`[f32; 8]` rows with
    /// element-wise operations in the portable path) compiled the portable transform 35–45 %
    /// slower (the whole encode 3.6–4.5 against 2.5–3.2 ms), the AVX2 one unchanged.
    #[inline(always)]
    fn columns(simd: V3, d: &mut [__m256; 8]) {
        let tmp0 = add(simd, d[0], d[7]);
        let tmp7 = sub(simd, d[0], d[7]);
        let tmp1 = add(simd, d[1], d[6]);
        let tmp6 = sub(simd, d[1], d[6]);
        let tmp2 = add(simd, d[2], d[5]);
        let tmp5 = sub(simd, d[2], d[5]);
        let tmp3 = add(simd, d[3], d[4]);
        let tmp4 = sub(simd, d[3], d[4]);

        let tmp10 = add(simd, tmp0, tmp3);
        let tmp13 = sub(simd, tmp0, tmp3);
        let tmp11 = add(simd, tmp1, tmp2);
        let tmp12 = sub(simd, tmp1, tmp2);
        d[0] = add(simd, tmp10, tmp11);
        d[4] = sub(simd, tmp10, tmp11);
        let z1 = mul(simd, add(simd, tmp12, tmp13), 0.707_106_77);
        d[2] = add(simd, tmp13, z1);
        d[6] = sub(simd, tmp13, z1);

        let tmp10 = add(simd, tmp4, tmp5);
        let tmp11 = add(simd, tmp5, tmp6);
        let tmp12 = add(simd, tmp6, tmp7);
        let z5 = mul(simd, sub(simd, tmp10, tmp12), 0.382_683_43);
        let z2 = add(simd, mul(simd, tmp10, 0.541_196_1), z5);
        let z4 = add(simd, mul(simd, tmp12, 1.306_563), z5);
        let z3 = mul(simd, tmp11, 0.707_106_77);
        let z11 = add(simd, tmp7, z3);
        let z13 = sub(simd, tmp7, z3);
        d[5] = add(simd, z13, z2);
        d[3] = sub(simd, z13, z2);
        d[1] = add(simd, z11, z4);
        d[7] = sub(simd, z11, z4);
    }

    /// The 8×8 transpose: pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
    #[inline(always)]
    fn transpose(simd: V3, d: &mut [__m256; 8]) {
        let avx = simd.avx;
        let t = [
            avx._mm256_unpacklo_ps(d[0], d[1]),
            avx._mm256_unpackhi_ps(d[0], d[1]),
            avx._mm256_unpacklo_ps(d[2], d[3]),
            avx._mm256_unpackhi_ps(d[2], d[3]),
            avx._mm256_unpacklo_ps(d[4], d[5]),
            avx._mm256_unpackhi_ps(d[4], d[5]),
            avx._mm256_unpacklo_ps(d[6], d[7]),
            avx._mm256_unpackhi_ps(d[6], d[7]),
        ];
        let u = [
            avx._mm256_shuffle_ps::<0x44>(t[0], t[2]),
            avx._mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            avx._mm256_shuffle_ps::<0x44>(t[1], t[3]),
            avx._mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            avx._mm256_shuffle_ps::<0x44>(t[4], t[6]),
            avx._mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            avx._mm256_shuffle_ps::<0x44>(t[5], t[7]),
            avx._mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for i in 0..4 {
            d[i] = avx._mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]);
            d[i + 4] = avx._mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook 2-D DCT-II of a block of level-shifted samples, in natural order.
    fn reference(samples: &[u8; 64]) -> [f64; 64] {
        let c = |k: usize| if k == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
        std::array::from_fn(|n| {
            let (v, u) = (n / 8, n % 8);
            let mut sum = 0.0;
            for y in 0..8 {
                for x in 0..8 {
                    let s = f64::from(samples[y * 8 + x]) - 128.0;
                    sum += s
                        * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()
                        * ((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI / 16.0).cos();
                }
            }
            sum * c(u) * c(v) / 4.0
        })
    }

    #[test]
    fn matches_the_textbook_dct_then_rounds() {
        let mut state = 7u32;
        let samples: [u8; 64] = std::array::from_fn(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        });
        let expected = reference(&samples);
        let mut out = [0; 64];
        transform(&samples, 0, 8, &Quantizer::new(&[1; 64]), &mut out);
        for n in 0..64 {
            let got = out[(n % 8) * 8 + n / 8];
            assert!((f64::from(got) - expected[n]).abs() <= 0.51, "{n}: {got} vs {}", expected[n]);
        }
        // A quantiser divides: table entries of 10 give a tenth, rounded.
        let mut tenth = [0; 64];
        transform(&samples, 0, 8, &Quantizer::new(&[10; 64]), &mut tenth);
        for n in 0..64 {
            let got = tenth[(n % 8) * 8 + n / 8];
            assert!((f64::from(got) - expected[n] / 10.0).abs() <= 0.51, "{n}: {got} vs {}", expected[n] / 10.0);
        }
    }

    /// The AVX2 strip gives the portable transform's coefficients, bit for bit, on noise, flat
    /// blocks and extremes, with every quality's tables.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_strip_matches_the_portable_one() {
        let Some(simd) = pulp::x86::V3::try_new() else {
            eprintln!("no AVX2 here: nothing to compare");
            return;
        };
        let width = 48;
        let mut state = 11u32;
        let mut noise = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let luma: Vec<u8> = (0..16 * width)
            .map(|i| match (i % width) / 16 {
                0 => noise(),
                1 => 255 * u8::from(i % 2 == 0),
                _ => 77,
            })
            .collect();
        let cb: Vec<u8> = (0..8 * width / 2).map(|_| noise()).collect();
        let cr: Vec<u8> = (0..8 * width / 2).map(|i| if i % 3 == 0 { 0 } else { 255 }).collect();
        for quality in [1, 50, 90, 100] {
            let tables = super::super::tables::quant_tables(quality);
            let quantizers = [Quantizer::new(&tables[0]), Quantizer::new(&tables[1])];
            let mut portable = vec![[0; 64]; width / 16 * 6];
            let mut avx2 = portable.clone();
            Strip {
                blocks: Portable,
                luma: &luma,
                cb: &cb,
                cr: &cr,
                width,
                quantizers: &quantizers,
                out: &mut portable,
            }
            .run();
            pulp::Simd::vectorize(
                simd,
                Strip { blocks: simd, luma: &luma, cb: &cb, cr: &cr, width, quantizers: &quantizers, out: &mut avx2 },
            );
            assert_eq!(portable, avx2, "quality {quality}");
        }
    }

    #[test]
    fn flat_blocks_have_only_a_dc_and_the_extremes_fit() {
        let mut out = [0; 64];
        transform(&[200; 64], 0, 8, &Quantizer::new(&[1; 64]), &mut out);
        assert_eq!(out[0], 576); // (200 - 128) × 8
        assert!(out[1..].iter().all(|&c| c == 0));
        transform(&[0; 64], 0, 8, &Quantizer::new(&[1; 64]), &mut out);
        assert_eq!(out[0], -1024);
        // The largest AC coefficient: a half-black, half-white block.
        let edge: [u8; 64] = std::array::from_fn(|i| if i % 8 < 4 { 0 } else { 255 });
        transform(&edge, 0, 8, &Quantizer::new(&[1; 64]), &mut out);
        let largest = out.iter().skip(1).map(|c| c.unsigned_abs()).max().unwrap();
        assert!((900..=930).contains(&largest), "{largest}");
    }
}
