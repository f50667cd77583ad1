//! RGB to YCbCr with 4:2:0 chroma, two rows at a time: the luma of every pixel, and the Cb and
//! Cr of each 2×2 square from the sums of its red, green and blue. Converting the sum is the
//! same as libjpeg's convert-then-average (the transform is linear) without the intermediate
//! rounding, and a third of the multiplications.
//!
//! Fixed point with libjpeg's constants (16 fractional bits), done as 16×16-bit high
//! multiplications with 8 fractional bits kept, the arithmetic that SSE2 does eight lanes at a
//! time (`pmulhuw`): luma is within one step of libjpeg's rounding for about 1 % of pixels.

const FIX_R_Y: u16 = 19595; // 0.29900 × 2^16
const FIX_G_Y: u16 = 38470; // 0.58700
const FIX_B_Y: u16 = 7471; // 0.11400
const FIX_R_CB: u16 = 11059; // 0.16874
const FIX_G_CB: u16 = 21709; // 0.33126
const FIX_G_CR: u16 = 27439; // 0.41869
const FIX_B_CR: u16 = 5329; // 0.08131
/// 128 for the chroma offset, plus just under a half to round, with 8 fractional bits: the
/// largest chroma (pure blue's Cb) is then 65535, within `u16`.
const CHROMA_BIAS: u16 = (128 << 8) + 127;

/// `(a × b) >> 16`.
#[inline(always)]
fn mul_high(a: u16, b: u16) -> u16 {
    ((u32::from(a) * u32::from(b)) >> 16) as u16
}

#[inline(always)]
fn luma(r: u16, g: u16, b: u16) -> u8 {
    ((mul_high(r << 8, FIX_R_Y) + mul_high(g << 8, FIX_G_Y) + mul_high(b << 8, FIX_B_Y) + 128) >> 8) as u8
}

/// Cb and Cr of the sums of four pixels' channels (each at most 1020).
#[inline(always)]
fn chroma(r: u16, g: u16, b: u16) -> (u8, u8) {
    // 0.5 × sum / 4 with 8 fractional bits is sum × 32; the rest as high multiplications of
    // sum × 64 (at most 65280).
    let cb = (b << 5) + CHROMA_BIAS - mul_high(r << 6, FIX_R_CB) - mul_high(g << 6, FIX_G_CB);
    let cr = (r << 5) + CHROMA_BIAS - mul_high(g << 6, FIX_G_CR) - mul_high(b << 6, FIX_B_CR);
    ((cb >> 8) as u8, (cr >> 8) as u8)
}

/// Converts two rows of `N`-byte pixels (1: gray, 3: RGB, 4: RGBA with alpha ignored), of an
/// even number of pixels: the luma of each row into `y_top` and `y_bottom`, and one Cb and Cr
/// per 2×2 square into `cb` and `cr`.
///
/// Compiled twice, for baseline x86-64 and for AVX2 (`pulp`'s V3), and the AVX2 copy is taken
/// when the CPU has it. On its own: the whole scan dispatched as one inlined body was slower,
/// this loop no longer vectorised there; the DCT gained nothing from being compiled for AVX2 and
/// has its own intrinsics instead ([`super::dct`]), and the Huffman coder gained nothing
/// (bench/pixels.md).
pub fn convert_pair<const N: usize>(
    top: &[u8],
    bottom: &[u8],
    y_top: &mut [u8],
    y_bottom: &mut [u8],
    cb: &mut [u8],
    cr: &mut [u8],
) {
    pulp::Arch::new().dispatch(Pair::<N> { top, bottom, y_top, y_bottom, cb, cr });
}

struct Pair<'a, const N: usize> {
    top: &'a [u8],
    bottom: &'a [u8],
    y_top: &'a mut [u8],
    y_bottom: &'a mut [u8],
    cb: &'a mut [u8],
    cr: &'a mut [u8],
}

impl<const N: usize> pulp::WithSimd for Pair<'_, N> {
    type Output = ();

    /// Inlined, with everything it calls, into the function that `pulp` compiles per target.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self { top, bottom, y_top, y_bottom, cb, cr } = self;
        convert::<N>(top, bottom, y_top, y_bottom, cb, cr);
    }
}

#[inline(always)]
fn convert<const N: usize>(
    top: &[u8],
    bottom: &[u8],
    y_top: &mut [u8],
    y_bottom: &mut [u8],
    cb: &mut [u8],
    cr: &mut [u8],
) {
    let (g_at, b_at) = if N >= 3 { (1, 2) } else { (0, 0) };
    let rgb = |p: &[u8]| (u16::from(p[0]), u16::from(p[g_at]), u16::from(p[b_at]));
    let pairs = top.chunks_exact(2 * N).zip(bottom.chunks_exact(2 * N));
    let outputs = y_top.chunks_exact_mut(2).zip(y_bottom.chunks_exact_mut(2)).zip(cb.iter_mut().zip(cr));
    for ((t, b), ((yt, yb), (cb, cr))) in pairs.zip(outputs) {
        let pixels = [rgb(t), rgb(&t[N..]), rgb(b), rgb(&b[N..])];
        yt[0] = luma(pixels[0].0, pixels[0].1, pixels[0].2);
        yt[1] = luma(pixels[1].0, pixels[1].1, pixels[1].2);
        yb[0] = luma(pixels[2].0, pixels[2].1, pixels[2].2);
        yb[1] = luma(pixels[3].0, pixels[3].1, pixels[3].2);
        let sum = pixels.iter().fold((0, 0, 0), |s, p| (s.0 + p.0, s.1 + p.1, s.2 + p.2));
        (*cb, *cr) = chroma(sum.0, sum.1, sum.2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 2×2 square of a single colour.
    fn square<const N: usize>(pixel: &[u8]) -> [u8; 3] {
        let two = [pixel, pixel].concat();
        let (mut yt, mut yb, mut cb, mut cr) = ([0; 2], [0; 2], [0], [0]);
        convert_pair::<N>(&two, &two, &mut yt, &mut yb, &mut cb, &mut cr);
        assert_eq!((yt, yb), ([yt[0]; 2], [yt[0]; 2]));
        [yt[0], cb[0], cr[0]]
    }

    #[test]
    fn primaries_and_grays_match_libjpeg() {
        // What jccolor.c's arithmetic gives.
        assert_eq!(square::<3>(&[0, 0, 0]), [0, 128, 128]);
        assert_eq!(square::<3>(&[255, 255, 255]), [255, 128, 128]);
        assert_eq!(square::<3>(&[255, 0, 0]), [76, 85, 255]);
        assert_eq!(square::<3>(&[0, 255, 0]), [150, 44, 21]);
        assert_eq!(square::<3>(&[0, 0, 255]), [29, 255, 107]);
        assert_eq!(square::<4>(&[0, 0, 255, 0]), [29, 255, 107]);
        for v in 0..=255 {
            assert_eq!(square::<1>(&[v]), [v, 128, 128]);
            assert_eq!(square::<3>(&[v; 3]), [v, 128, 128]);
        }
    }

    #[test]
    fn luma_is_libjpegs_to_within_one_and_chroma_averages_the_square() {
        let exact = |p: [i32; 3]| (19595 * p[0] + 38470 * p[1] + 7471 * p[2] + 32768) >> 16;
        let mut state = 1u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let (mut off, mut total) = (0, 0);
        for _ in 0..2000 {
            let px: [u8; 12] = std::array::from_fn(|_| next());
            let (mut yt, mut yb, mut cb, mut cr) = ([0; 2], [0; 2], [0], [0]);
            convert_pair::<3>(&px[..6], &px[6..], &mut yt, &mut yb, &mut cb, &mut cr);
            for (i, y) in yt.into_iter().chain(yb).enumerate() {
                let e = exact(std::array::from_fn(|c| i32::from(px[i * 3 + c])));
                assert!((i32::from(y) - e).abs() <= 1);
                off += usize::from(i32::from(y) != e);
                total += 1;
            }
            let sum = |c: usize| (0..4).map(|i| f64::from(px[i * 3 + c])).sum::<f64>() / 4.0;
            let (r, g, b) = (sum(0), sum(1), sum(2));
            let (want_cb, want_cr) =
                (128.0 - 0.16874 * r - 0.33126 * g + 0.5 * b, 128.0 + 0.5 * r - 0.41869 * g - 0.08131 * b);
            assert!((f64::from(cb[0]) - want_cb).abs() < 0.52, "{} vs {want_cb}", cb[0]);
            assert!((f64::from(cr[0]) - want_cr).abs() < 0.52, "{} vs {want_cr}", cr[0]);
        }
        assert!(off * 50 < total, "{off} of {total} off by one");
    }
}
