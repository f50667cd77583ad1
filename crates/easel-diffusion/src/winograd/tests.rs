//! Each variant against an f64 direct convolution. The error is max |winograd − f64| / max |f64|
//! over the whole output (relative to the output's largest magnitude, like the parity script),
//! bounded by 3e-5 (issue 12); weights are scaled like a trained network's (std 1/√(9·cin)),
//! inputs are standard normal, biases are drawn with std 0.1.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::{BAND, Extra, F2x2, F4x4, Prologue, Transform, Variant, Winograd, variant};

const TOLERANCE: f64 = 3e-5;

fn normal(n: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * std) as f32
        })
        .collect()
}

/// Direct 3×3 correlation with zero padding 1, in f64.
#[expect(clippy::too_many_arguments, reason = "a convolution's geometry, in the test only")]
fn direct(
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
) -> Vec<f64> {
    let mut out = vec![0f64; b * cout * h * w];
    for n in 0..b {
        for co in 0..cout {
            for y in 0..h {
                for xx in 0..w {
                    let mut s = bias.map_or(0.0, |b| f64::from(b[co]));
                    for ci in 0..cin {
                        for ky in 0..3 {
                            let iy = y as isize + ky as isize - 1;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..3 {
                                let ix = xx as isize + kx as isize - 1;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((n * cin + ci) * h + iy as usize) * w + ix as usize];
                                let wv = wt[((co * cin + ci) * 3 + ky) * 3 + kx];
                                s += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out[((n * cout + co) * h + y) * w + xx] = s;
                }
            }
        }
    }
    out
}

/// Random input, weights and bias for one shape.
struct Case {
    x: Vec<f32>,
    wt: Vec<f32>,
    bias: Option<Vec<f32>>,
    dims: (usize, usize, usize, usize, usize),
}

impl Case {
    fn new(b: usize, cin: usize, cout: usize, h: usize, w: usize, bias: bool) -> Self {
        let seed = (b * 7 + cin * 131 + cout * 17 + h * 3 + w) as u64;
        Self {
            x: normal(b * cin * h * w, 1.0, seed),
            wt: normal(cout * cin * 9, 1.0 / (9.0 * cin as f64).sqrt(), seed + 1),
            bias: bias.then(|| normal(cout, 0.1, seed + 2)),
            dims: (b, cin, cout, h, w),
        }
    }

    fn reference(&self) -> Vec<f64> {
        let (b, cin, cout, h, w) = self.dims;
        direct(&self.x, &self.wt, self.bias.as_deref(), b, cin, cout, h, w)
    }

    /// Max |winograd − f64| / max |f64| for `variant` with bands of `band` floats.
    fn error(&self, v: Variant, band: usize, want: &[f64]) -> f64 {
        let (b, cin, cout, h, w) = self.dims;
        let dev = Device::Cpu;
        let weight = Tensor::from_vec(self.wt.clone(), (cout, cin, 3, 3), &dev).unwrap();
        let bias = self.bias.as_ref().map(|b| Tensor::from_vec(b.clone(), cout, &dev).unwrap());
        let wg = Winograd::new(&weight, bias.as_ref()).unwrap().unwrap();
        let x = Tensor::from_vec(self.x.clone(), (b, cin, h, w), &dev).unwrap();
        let y = match v {
            Variant::F2 => wg.run::<F2x2, 4, 2>(&x, Prologue::None, Extra::default(), band),
            Variant::F4 => wg.run::<F4x4, 6, 4>(&x, Prologue::None, Extra::default(), band),
        }
        .unwrap();
        assert_eq!(y.dims4().unwrap(), (b, cout, h, w));
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = y.iter().zip(want).fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
        diff / max
    }
}

/// Odd sizes (not multiples of 4 or 2, and narrower than a tile), 1/3/4/128/512 channels, batch 2, bias or not, and one
/// image wide enough for whole blocks of the transforms' vector lanes plus a remainder.
const SHAPES: &[(usize, usize, usize, usize, usize, bool)] = &[
    (1, 16, 16, 70, 71, true),
    (1, 1, 1, 7, 5, false),
    (1, 1, 1, 8, 8, true),
    (2, 3, 4, 9, 6, true),
    (1, 4, 128, 13, 11, true),
    (1, 128, 3, 10, 10, true),
    (2, 128, 128, 9, 15, true),
    (1, 512, 512, 6, 5, true),
    (1, 512, 4, 5, 6, false),
    // Narrower than one F(4×4) tile: no whole tile column in the phases.
    (1, 2, 3, 7, 1, true),
    (1, 2, 3, 5, 2, true),
    (1, 2, 2, 6, 3, false),
];

/// Each variant, in one band and in bands of one tile row (every band boundary crossed).
#[test]
fn each_variant_matches_a_direct_convolution_in_f64() {
    for &(b, cin, cout, h, w, bias) in SHAPES {
        let case = Case::new(b, cin, cout, h, w, bias);
        let want = case.reference();
        for v in [Variant::F4, Variant::F2] {
            for band in [BAND, 1] {
                let e = case.error(v, band, &want);
                println!("{v:?} b={b} {cin}->{cout} {h}x{w} bias={bias} band={band}: {e:.2e}");
                assert!(e < TOLERANCE, "{v:?} b={b} {cin}->{cout} {h}x{w} band {band}: relative error {e:.2e}");
            }
        }
    }
}

/// F(2×2) at the widest inputs the UNets give it (an up block's first convolution: SD's 1280
/// channels from below and 640 skipped, SDXL's 1280 and 1280), which F(4×4) is not trusted
/// with: the error grows with the sum.
#[test]
fn f2_holds_at_the_unets_widest_inputs() {
    for cin in [1920, 2560] {
        let case = Case::new(1, cin, 16, 8, 8, true);
        let want = case.reference();
        let e = case.error(Variant::F2, BAND, &want);
        println!("F2 {cin}->16 8x8: {e:.2e}");
        assert!(e < TOLERANCE / 10.0, "{cin} channels: relative error {e:.2e}");
    }
}

/// A wrong transform (a sign flipped in Bᵀ) is caught by the same comparison.
#[test]
fn a_wrong_transform_fails_the_comparison() {
    struct Bad;
    impl Transform<6, 4> for Bad {
        const G: [[f64; 3]; 6] = F4x4::G;
        fn bt(d: [f32; 6]) -> [f32; 6] {
            let mut r = F4x4::bt(d);
            r[3] = -r[3];
            r
        }
        fn at(m: [f32; 6]) -> [f32; 4] {
            F4x4::at(m)
        }
    }
    let dev = Device::Cpu;
    let wt = normal(4 * 4 * 9, 0.2, 1);
    let weight = Tensor::from_vec(wt.clone(), (4, 4, 3, 3), &dev).unwrap();
    let wg = Winograd::new(&weight, None).unwrap().unwrap();
    let x = normal(4 * 8 * 8, 1.0, 2);
    let xt = Tensor::from_vec(x.clone(), (1, 4, 8, 8), &dev).unwrap();
    let y = wg
        .run::<Bad, 6, 4>(&xt, Prologue::None, Extra::default(), BAND)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = direct(&x, &wt, None, 1, 4, 4, 8, 8);
    let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = y.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    assert!(diff / max > 1e-2);
}

#[test]
fn the_rule_keeps_small_images_on_the_direct_path() {
    assert_eq!(variant(512, 64, 16, 16), None);
    assert_eq!(variant(1280, 1280, 16, 16), None);
    assert_eq!(variant(1280, 1280, 30, 30), None);
    assert_eq!(variant(4, 64, 64, 64), None);
    assert_eq!(variant(512, 64, 64, 64), Some(Variant::F4));
    assert_eq!(variant(128, 64, 512, 512), Some(Variant::F4));
    assert_eq!(variant(640, 64, 64, 64), Some(Variant::F2));
    assert_eq!(variant(1280, 64, 128, 128), Some(Variant::F2));
    // 32×32 has 256 F(2×2) tiles (64 of F(4×4)): the UNet's second level, and a VAE at 256².
    assert_eq!(variant(512, 64, 32, 32), Some(Variant::F2));
    assert_eq!(variant(1920, 640, 32, 32), Some(Variant::F2));
    assert_eq!(variant(1280, 1280, 32, 48), Some(Variant::F2));
    // Few output channels (the VAE's 128→3 output convolution): the output transform is not repaid.
    assert_eq!(variant(128, 3, 512, 512), None);
}

/// `ops::Conv` sends a 3×3 padding-1 convolution of a 64×64 input through this module (its
/// output is bit-identical to `Winograd::forward`'s) and agrees with candle's own convolution.
#[test]
fn ops_conv_takes_the_winograd_path() {
    use candle_core::{DType, Module};
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = candle_nn::Conv2dConfig { padding: 1, ..Default::default() };
    let conv = crate::ops::Conv::new(vb.pp("c"), 16, 16, 3, cfg).unwrap();
    let candle = candle_nn::conv2d(16, 16, 3, cfg, vb.pp("c")).unwrap();
    let wg = Winograd::new(candle.weight(), candle.bias()).unwrap().unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 16, 64, 64), &dev).unwrap();
    assert!(wg.takes(&x, Prologue::None));
    let got = conv.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let same =
        wg.forward(&x, Prologue::None, Extra::default()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got, same);
    let want = candle.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff / max < 3e-5, "relative error {:.2e}", diff / max);
}

/// Both prologues, in bands of two tile rows (so a band's first and last input rows are the
/// clamped and overlapping ones) and a batch of two with per-image norms: the same bits as the
/// group norm with SiLU or the upsampling made as a tensor first.
#[test]
fn prologues_in_bands_match_the_layers_made_first() {
    use crate::ops::{GroupNorm, upsample_nearest};
    let dev = Device::Cpu;
    let (b, cin, cout, h, w) = (2, 16, 8, 26, 22);
    let weight = Tensor::from_vec(normal(cout * cin * 9, 0.1, 3), (cout, cin, 3, 3), &dev).unwrap();
    let bias = Tensor::from_vec(normal(cout, 0.1, 4), cout, &dev).unwrap();
    let wg = Winograd::new(&weight, Some(&bias)).unwrap().unwrap();
    let tensors = [
        ("g.weight".to_string(), Tensor::from_vec(normal(cin, 1.0, 5), cin, &dev).unwrap()),
        ("g.bias".to_string(), Tensor::from_vec(normal(cin, 1.0, 6), cin, &dev).unwrap()),
    ];
    let vb = candle_nn::VarBuilder::from_tensors(tensors.into_iter().collect(), candle_core::DType::F32, &dev);
    let gn = GroupNorm::new(vb.pp("g"), 4, cin, 1e-6).unwrap();
    let x = Tensor::from_vec(normal(b * cin * h * w, 2.0, 7), (b, cin, h, w), &dev).unwrap();
    let half = Tensor::from_vec(normal(b * cin * h * w / 4, 1.0, 8), (b, cin, h / 2, w / 2), &dev).unwrap();
    let (scale, shift) = gn.affine(&x).unwrap();
    let normed = gn.forward(&x, true).unwrap();
    let doubled = upsample_nearest(&half, h, w).unwrap();
    let bits = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let affine = Prologue::NormSilu { scale: &scale, shift: &shift };
    for v in [Variant::F2, Variant::F4] {
        let run = |x: &Tensor, p: Prologue| {
            let (n, m) = if v == Variant::F2 { (4, 2) } else { (6, 4) };
            let band = n * n * cin * w.div_ceil(m) * 2;
            bits(match v {
                Variant::F2 => wg.run::<F2x2, 4, 2>(x, p, Extra::default(), band).unwrap(),
                Variant::F4 => wg.run::<F4x4, 6, 4>(x, p, Extra::default(), band).unwrap(),
            })
        };
        assert!(run(&x, affine) == run(&normed, Prologue::None), "{v:?}: group norm");
        assert!(run(&half, Prologue::Doubled) == run(&doubled, Prologue::None), "{v:?}: upsampling");
    }
    let wrong = Prologue::NormSilu { scale: &scale[..cin], shift: &shift[..cin] };
    assert!(wg.run::<F4x4, 6, 4>(&x, wrong, Extra::default(), BAND).is_err());
}
