//! The image side of Qwen-Image-Edit's inputs: transformers' `Qwen2VLImageProcessor` (what the
//! vision tower reads) and diffusers' sizing and preprocessing of the source image (what the VAE
//! reads), so both see the pixels the reference pipeline gives them.
//!
//! - [`calculate_dimensions`]: the source's size at a target area and its own aspect, each edge
//!   rounded (half to even, as Python's `round`) to a multiple of 32; diffusers resizes the source
//!   there with PIL's Lanczos filter before either branch sees it.
//! - [`smart_resize`]: the vision branch's size, multiples of `patch × merge` (28) within
//!   `min_pixels..=max_pixels`, reached with PIL's bicubic filter.
//! - [`patches`]: rescale by 1/255 (in f64, stored f32), CLIP mean/std (f32), the frame repeated
//!   to the 2-frame temporal patch, flattened in transformers' order (merge-unit rows, merge-unit
//!   columns, the 2×2 patches of a unit, channel, frame, 14 rows, 14 columns).
//!
//! Resizing uses `fast_image_resize`, a port of Pillow's convolution resampler (same filters,
//! same support scaling, 8-bit fixed-point accumulation); `scripts/parity/qwen_edit.py` measures
//! what remains against PIL and compares the patches on identical pre-resized pixels.

use anyhow::{Context, Result, bail, ensure};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde_json::Value;

use super::vision::Grid;

/// CLIP's normalisation, the Qwen2-VL processor's default.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// `processor/preprocessor_config.json`; missing keys take transformers' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            rescale_factor: 1.0 / 255.0,
        }
    }
}

fn triple(v: &Value, key: &str, default: [f32; 3]) -> Result<[f32; 3]> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => {
            let list: Vec<f32> = serde_json::from_value(x.clone())
                .with_context(|| format!("preprocessor_config.json: {key} must be three numbers"))?;
            list.try_into().map_err(|_| anyhow::anyhow!("preprocessor_config.json: {key} must be three numbers"))
        }
    }
}

impl ProcessorConfig {
    pub fn from_json(v: &Value) -> Result<Self> {
        let d = Self::default();
        let num = |keys: &[(&str, Option<&str>)], default: usize| -> Result<usize> {
            for (key, inner) in keys {
                let x = match inner {
                    Some(i) => v.get(key).and_then(|s| s.get(i)),
                    None => v.get(key),
                };
                if let Some(x) = x.filter(|x| !x.is_null()) {
                    return x
                        .as_u64()
                        .map(|n| n as usize)
                        .with_context(|| format!("preprocessor_config.json: {key} must be a positive integer"));
                }
            }
            Ok(default)
        };
        if v.get("do_normalize").and_then(Value::as_bool) == Some(false)
            || v.get("do_rescale").and_then(Value::as_bool) == Some(false)
            || v.get("do_resize").and_then(Value::as_bool) == Some(false)
        {
            bail!("preprocessor_config.json turns off resizing, rescaling or normalising, which Qwen-Image-Edit needs");
        }
        let c = Self {
            // transformers 5 writes `size: {shortest_edge, longest_edge}`; older files `min_pixels`/`max_pixels`.
            min_pixels: num(&[("min_pixels", None), ("size", Some("shortest_edge"))], d.min_pixels)?,
            max_pixels: num(&[("max_pixels", None), ("size", Some("longest_edge"))], d.max_pixels)?,
            patch_size: num(&[("patch_size", None)], d.patch_size)?,
            temporal_patch_size: num(&[("temporal_patch_size", None)], d.temporal_patch_size)?,
            merge_size: num(&[("merge_size", None)], d.merge_size)?,
            image_mean: triple(v, "image_mean", d.image_mean)?,
            image_std: triple(v, "image_std", d.image_std)?,
            rescale_factor: v.get("rescale_factor").and_then(Value::as_f64).unwrap_or(d.rescale_factor),
        };
        ensure!(
            c.patch_size > 0 && c.merge_size > 0 && c.temporal_patch_size > 0 && c.min_pixels <= c.max_pixels,
            "preprocessor_config.json: patch, merge and temporal sizes must be positive and min_pixels ≤ max_pixels"
        );
        Ok(c)
    }

    /// The edge multiple of the vision branch: patch × merge (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// Python's `round`: halves go to the even neighbour.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// diffusers' `calculate_dimensions(target_area, ratio)`: `(width, height)`, multiples of 32.
pub fn calculate_dimensions(target_area: f64, ratio: f64) -> (u32, u32) {
    let width = (target_area * ratio).sqrt();
    let height = width / ratio;
    let w = round_half_even(width / 32.0) * 32.0;
    let h = round_half_even(height / 32.0) * 32.0;
    (w as u32, h as u32)
}

/// transformers' `smart_resize`: `(height, width)`, multiples of `factor`, pixel count within
/// `min_pixels..=max_pixels`, aspect kept as nearly as the grid allows.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    ensure!(height > 0 && width > 0, "an image of {width}×{height} pixels has nothing to resize");
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        bail!("the image's aspect ratio {:.0}:1 is over 200:1", h.max(w) / h.min(w));
    }
    let mut hb = round_half_even(h / f) * f;
    let mut wb = round_half_even(w / f) * f;
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

/// The resampling filters the reference pipeline uses through PIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// diffusers' `VaeImageProcessor.resize` (`resample="lanczos"`).
    Lanczos,
    /// `Qwen2VLImageProcessor` (`resample=3`).
    Bicubic,
}

/// `image` at `width × height` with PIL's filter; the same buffer when the size already matches
/// (PIL returns a copy then, unfiltered).
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    ensure!(width > 0 && height > 0, "cannot resize an image to {width}×{height}");
    // Pillow resamples rows first and stores the intermediate as 8 bits, which clips the
    // filters' overshoot; fast_image_resize may pick the other order (up to 28/255 apart on
    // edges), so the two passes are run here one at a time, rows first.
    let rows = pass(image.as_raw().clone(), image.width(), image.height(), width, image.height(), filter)?;
    let out = pass(rows, width, image.height(), width, height, filter)?;
    RgbImage::from_raw(width, height, out).context("resized buffer of the wrong length")
}

fn pass(data: Vec<u8>, w: u32, h: u32, to_w: u32, to_h: u32, filter: Filter) -> Result<Vec<u8>> {
    if (w, h) == (to_w, to_h) {
        return Ok(data);
    }
    let src = Image::from_vec_u8(w, h, data, PixelType::U8x3)?;
    let mut dst = Image::new(to_w, to_h, PixelType::U8x3);
    let alg = ResizeAlg::Convolution(match filter {
        Filter::Lanczos => FilterType::Lanczos3,
        Filter::Bicubic => FilterType::CatmullRom,
    });
    Resizer::new().resize(&src, &mut dst, &ResizeOptions::new().resize_alg(alg))?;
    Ok(dst.into_vec())
}

/// The vision branch's input for one image already at a multiple of `factor` a side: the
/// flattened patches `(t·h·w, C·T·P·P)` and their grid.
pub fn patches(image: &RgbImage, cfg: &ProcessorConfig) -> Result<(Vec<f32>, Grid)> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let (p, m, tp) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    ensure!(
        width % cfg.factor() == 0 && height % cfg.factor() == 0,
        "the vision branch needs multiples of {} pixels, got {width}×{height}",
        cfg.factor()
    );
    // Rescale in f64 then store f32 (numpy's `rescale`), normalise in f32.
    let norm: Vec<[f32; 3]> = image
        .pixels()
        .map(|px| {
            std::array::from_fn(|c| {
                let x = (f64::from(px[c]) * cfg.rescale_factor) as f32;
                (x - cfg.image_mean[c]) / cfg.image_std[c]
            })
        })
        .collect();
    let (gh, gw) = (height / p, width / p);
    let mut out = Vec::with_capacity(gh * gw * 3 * tp * p * p);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for i in 0..m {
                for j in 0..m {
                    let (y0, x0) = ((bh * m + i) * p, (bw * m + j) * p);
                    for c in 0..3 {
                        for _ in 0..tp {
                            for y in y0..y0 + p {
                                out.extend(norm[y * width + x0..y * width + x0 + p].iter().map(|v| v[c]));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((out, Grid { t: 1, h: gh, w: gw }))
}

/// The vision branch end to end: smart_resize (bicubic), then [`patches`].
pub fn process(image: &RgbImage, cfg: &ProcessorConfig) -> Result<(Vec<f32>, Grid)> {
    let (h, w) =
        smart_resize(image.height() as usize, image.width() as usize, cfg.factor(), cfg.min_pixels, cfg.max_pixels)?;
    patches(&resize(image, w as u32, h as u32, Filter::Bicubic)?, cfg)
}

/// diffusers' `VaeImageProcessor.preprocess` of an image already at its size: `(3, h, w)` values
/// `x/255·2 − 1` (f32, channel-major), for the VAE encoder.
pub fn vae_pixels(image: &RgbImage) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = 2.0 * (f32::from(px[c]) / 255.0) - 1.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-0.5), 0.0);
        assert_eq!(round_half_even(2.4), 2.0);
    }

    /// Values printed by diffusers' `calculate_dimensions` and transformers' `smart_resize`.
    #[test]
    fn sizes_match_the_reference() {
        assert_eq!(calculate_dimensions(1024.0 * 1024.0, 1.0), (1024, 1024));
        assert_eq!(calculate_dimensions(1024.0 * 1024.0, 1280.0 / 720.0), (1376, 768));
        assert_eq!(calculate_dimensions(384.0 * 384.0, 3.0 / 4.0), (320, 448));
        assert_eq!(smart_resize(1024, 1024, 28, 3136, 12_845_056).unwrap(), (1036, 1036));
        assert_eq!(smart_resize(768, 1376, 28, 3136, 12_845_056).unwrap(), (756, 1372));
        assert_eq!(smart_resize(10, 10, 28, 3136, 12_845_056).unwrap(), (56, 56));
        assert_eq!(smart_resize(4000, 3000, 28, 3136, 1_000_000).unwrap(), (1148, 840));
        assert!(smart_resize(1, 300, 28, 3136, 12_845_056).is_err());
    }

    #[test]
    fn patches_follow_transformers_order() {
        // 28×56: one merge unit high, two wide; red = (x + 2y) mod 256.
        let img = RgbImage::from_fn(56, 28, |x, y| image::Rgb([((x + 2 * y) % 256) as u8, 0, 0]));
        let cfg =
            ProcessorConfig { image_mean: [0.0; 3], image_std: [1.0; 3], rescale_factor: 1.0, ..Default::default() };
        let (p, grid) = patches(&img, &cfg).unwrap();
        assert_eq!(grid, Grid { t: 1, h: 2, w: 4 });
        let dim = 3 * 2 * 14 * 14;
        assert_eq!(p.len(), 8 * dim);
        // Patch 2 is unit 0's (row 1, col 0): starts at y 14, x 0; both frames equal.
        assert_eq!(p[2 * dim], 28.0);
        assert_eq!(p[2 * dim + 14 * 14], 28.0);
        // Patch 4 is unit 1's first: x 28.
        assert_eq!(p[4 * dim + 1], 29.0);
    }

    #[test]
    fn config_reads_both_spellings() {
        let c = ProcessorConfig::from_json(&serde_json::json!({"min_pixels": 100, "max_pixels": 1000})).unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (100, 1000));
        let c =
            ProcessorConfig::from_json(&serde_json::json!({"size": {"shortest_edge": 5, "longest_edge": 9}})).unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (5, 9));
    }
}
