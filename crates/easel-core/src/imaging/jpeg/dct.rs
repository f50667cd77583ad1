//! The forward DCT and quantisation of one 8×8 block.
//!
//! The DCT is Arai, Agui and Nakajima's in single-precision float, as in libjpeg's `jfdctflt.c`:
//! five multiplications per 8 points, its output scale folded into the quantisation
//! reciprocals, so quantising is one multiplication per coefficient. At least as accurate as
//! libjpeg-turbo's default integer DCT (`islow`). Each pass runs the 8 columns side by side
//! (plain loops the compiler vectorises); the second pass works on the transposed block, so the
//! output comes out transposed, which the Huffman coder's zigzag tables absorb.

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

/// The 8×8 block of `plane` whose top-left sample is `plane[at]`, rows `stride` apart,
/// transformed and quantised into `out` in transposed order: `out[u * 8 + v]` is the coefficient
/// of horizontal frequency `u` and vertical frequency `v`, natural index `v * 8 + u`.
///
/// No clamping is needed for baseline Huffman coding: from 8-bit samples the DC is within
/// -1024..=1016 (so DC differences fit its 11 bits) and every AC coefficient within ±930 (its
/// limit is 10 bits, ±1023), even with a table of ones.
pub fn transform(plane: &[u8], at: usize, stride: usize, quantizer: &Quantizer, out: &mut [i16; 64]) {
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
