//! A vectorisable `exp` for f32 slices, for group norm's SiLU and attention's softmax.
//!
//! `f32::exp` is a call into libm per element, which the compiler cannot vectorise: SiLU after
//! every group norm and the softmax of every attention call it billions of times per image.
//! [`exp`] is a range reduction (`x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`) and a degree-7 polynomial
//! for `e^r`, written with plain arithmetic and no branches, so a loop over a slice becomes SIMD
//! code; [`simd`] runs such a loop with AVX-512 or AVX2 when the CPU has it (runtime detection; the default
//! x86-64 target only has SSE2, half the width). There is no fused multiply-add in the
//! formula, so every machine and every code path gives the same bits. Its relative error is
//! below 2.5e-7 (about 2 ulp) wherever the result is a normal f32 (`tests::exp_is_accurate`).

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two: `LN2_HI` has few enough bits that `n · LN2_HI` is exact for `|n| < 2^9`.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5·2^23 rounds an f32 below 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;
/// Past these, `e^x` is 0 or infinite in f32 (the clamp only keeps `n` in range).
const LO: f32 = -104.0;
const HI: f32 = 89.0;

/// `e^x` in f32 (0 below about -103.9, infinity above about 88.72, NaN for NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let c = x.clamp(LO, HI);
    // `t` holds n = round(c·log2 e) in its low mantissa bits; reading it from there (integer
    // subtraction) instead of a float-to-int cast keeps the loop in vector registers: Rust's
    // saturating `as i32` compiles to one scalar conversion per lane.
    let t = c * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    // Taylor coefficients of e^r past the linear term; |r| ≤ 0.347 makes the next one < 1e-8.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let y = (p * r) * r + r + 1.0;
    // 2^n as two normal factors, so results near the f32 limits under- or overflow correctly.
    let half = ni >> 1;
    let y = y * f32::from_bits(((half + 127) << 23) as u32) * f32::from_bits(((ni - half + 127) << 23) as u32);
    if x.is_nan() { x } else { y }
}

/// `simd! { body }`: runs `body` through [`simd`](crate::exp::simd) as an `#[inline(always)]`
/// closure, so it is compiled inside the AVX-512 / AVX2 wrapper (see there). The body's value
/// is the macro's value.
#[macro_export]
#[doc(hidden)]
macro_rules! simd {
    ($($body:tt)*) => {
        $crate::exp::simd(
            #[inline(always)]
            || { $($body)* },
        )
    };
}

/// Runs `f` compiled for AVX-512 (16 lanes of f32) or else AVX2 and FMA (8 lanes) when this CPU
/// has them (x86-64; the default target has only SSE2's 4), so loops over slices in `f` (calls
/// to [`exp`], the Winograd transforms) vectorise to the widest registers. Rust never contracts
/// `a * b + c` into an FMA on its own, and the reductions here sum in fixed lanes, so the results
/// are the same bits on every path.
///
/// Call it through [`simd!`](crate::simd), which makes the closure `#[inline(always)]`. Only
/// code inlined into the target-feature wrapper is compiled for it; a closure left as a function
/// of its own is compiled for the default target. Without the attribute LLVM kept the large ones
/// (the Winograd transforms, the attention's softmax, group norm, GEGLU) out of line, so they ran
/// on SSE2's 4-lane registers (seen in `perf annotate`): inlined, sd-1.5's attention went from
/// 1.87 to 1.19 s per CFG step (2-core Zen 5, bench/diffusion/kernels.md).
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return avx512(f);
        }
        if avx2 {
            return self::avx2(f);
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, reason = "a call to a target_feature function, after detecting the features")]
#[inline(always)]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn run<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    // SAFETY: `simd` calls this only after detecting AVX-512F, AVX2 and FMA at runtime.
    unsafe { run(f) }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, reason = "a call to a target_feature function, after detecting the features")]
#[inline(always)]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    #[target_feature(enable = "avx2,fma")]
    fn run<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    // SAFETY: `simd` calls this only after detecting AVX2 and FMA at runtime.
    unsafe { run(f) }
}

/// `xs[i] = e^xs[i]`.
pub fn exp_in_place(xs: &mut [f32]) {
    crate::simd! {
        for v in xs.iter_mut() {
            *v = exp(*v);
        }
    };
}

/// `SiLU(x) = x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `GELU(x) = x·Φ(x) = x/2·(1 + erf(x/√2))`, the exact-erf form diffusers uses (candle computes
/// it with a scalar f64 `erf` per element). `1 + erf(z)` is `2 − erfc(|z|)` or `erfc(|z|)` with
/// erfc from Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7) on [`exp`], branch-free, so
/// a loop over a slice vectorises; within 2e-7·(1 + |x|) of the f64 form
/// (`tests::gelu_matches_f64`).
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let erfc = p * exp(-(a * a));
    0.5 * x * if z >= 0.0 { 2.0 - erfc } else { erfc }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_f64() {
        for i in -20_000..=20_000 {
            let x = i as f32 / 2000.0;
            let xf = f64::from(x);
            let want = 0.5 * xf * (1.0 + candle_core::cpu::erf::erf_f64(xf / std::f64::consts::SQRT_2));
            let got = f64::from(gelu_erf(x));
            assert!((got - want).abs() <= 2e-7 * (1.0 + xf.abs()), "gelu({x}) = {got}, want {want}");
        }
        assert_eq!(gelu_erf(0.0), 0.0);
        assert!(gelu_erf(f32::NAN).is_nan());
        assert_eq!(gelu_erf(-100.0), 0.0);
        assert_eq!(gelu_erf(100.0), 100.0);
    }

    #[test]
    fn exp_is_accurate() {
        // Every normal-range result, sampled densely: 2 million points over [-87.3, 88.7].
        let (lo, hi) = (-87.3f64, 88.7f64);
        let count = 2_000_000;
        let mut xs: Vec<f32> = (0..=count).map(|i| (lo + (hi - lo) * f64::from(i) / f64::from(count)) as f32).collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1.0, std::f32::consts::LN_2]);
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = f64::from(x).exp();
            let rel = (f64::from(y) - want).abs() / want;
            assert!(rel < 2.5e-7, "exp({x}) = {y}, want {want} (relative error {rel:e})");
            worst = worst.max(rel);
        }
        // Also the same bits as the scalar path (no FMA contraction in the SIMD one).
        for (&x, &y) in xs.iter().zip(&ys).step_by(997) {
            assert_eq!(exp(x).to_bits(), y.to_bits(), "exp({x})");
        }
        assert!(worst > 0.0);
    }

    #[test]
    fn exp_limits() {
        let mut xs = vec![-200.0, -104.5, -103.99, 88.8, 200.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        exp_in_place(&mut xs);
        assert_eq!(&xs[..2], &[0.0, 0.0]);
        assert!(xs[2] >= 0.0 && xs[2] < 1e-44, "{}", xs[2]);
        assert_eq!(&xs[3..7], &[f32::INFINITY, f32::INFINITY, f32::INFINITY, 0.0]);
        assert!(xs[7].is_nan());
        // Subnormal results are approximated, never wrong by more than their spacing allows.
        let mut sub = vec![-90.0f32, -95.0, -100.0];
        exp_in_place(&mut sub);
        for (x, y) in [-90.0f64, -95.0, -100.0].iter().zip(sub) {
            let want = x.exp();
            assert!((f64::from(y) - want).abs() <= want * 1e-2 + 1.5e-45, "exp({x}) = {y}, want {want}");
        }
    }

    #[test]
    fn silu_matches_f64() {
        for i in -2000..=2000 {
            let x = i as f32 / 50.0;
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            let got = f64::from(silu(x));
            assert!((got - want).abs() <= want.abs() * 5e-7 + 1e-30, "silu({x}) = {got}, want {want}");
        }
    }
}
