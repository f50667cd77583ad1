//! Pixel work on a 1024x1024 image through Easel's own code paths, for `bench/pixels.sh`, which
//! runs Pillow on the same input in the same run and prints both side by side.
//!
//! Usage: `cargo bench -p easel-core --bench pixels -- OUT_DIR`. Writes `OUT_DIR/input.png` (a
//! deterministic photo-like image: gradients, waves and noise), `OUT_DIR/mask.png`, and prints
//! one JSON object of median milliseconds per operation.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use easel_core::imaging::{self, EncodeSettings};
use easel_core::types::{ImageSize, OutputFormat};
use image::{DynamicImage, Rgb, RgbImage, Rgba, RgbaImage};

fn photo_like(size: u32) -> RgbImage {
    let mut state: u32 = 0x1234_5678;
    RgbImage::from_fn(size, size, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 17) as f32 - 8.0;
        let (xf, yf) = (x as f32, y as f32);
        let r = xf / 4.5 + 30.0 * (yf / 17.0).sin() + noise;
        let g = yf / 4.5 + 30.0 * (xf / 23.0).cos() + noise;
        let b = (xf + yf) / 9.0 + 40.0 * ((xf * yf).sqrt() / 31.0).sin() + noise;
        Rgb([r.clamp(0.0, 255.0) as u8, g.clamp(0.0, 255.0) as u8, b.clamp(0.0, 255.0) as u8])
    })
}

/// Median wall time of `runs` calls, in milliseconds.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[runs / 2]
}

fn main() {
    let out = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_else(|| "target/bench-pixels".into());
    std::fs::create_dir_all(&out).unwrap();
    let settings = EncodeSettings::default();
    let image = DynamicImage::ImageRgb8(photo_like(1024));
    let png = imaging::encode(&image, OutputFormat::Png, None, &settings).unwrap();
    std::fs::write(format!("{out}/input.png"), &png).unwrap();
    let mask = DynamicImage::ImageRgba8(RgbaImage::from_fn(1024, 1024, |x, y| {
        Rgba([0, 0, 0, if (x / 128 + y / 128) % 2 == 0 { 255 } else { 0 }])
    }));
    std::fs::write(format!("{out}/mask.png"), imaging::encode(&mask, OutputFormat::Png, None, &settings).unwrap())
        .unwrap();
    let generated = DynamicImage::ImageRgb8(RgbImage::from_pixel(1024, 1024, Rgb([10, 200, 30])));
    let b64 = STANDARD.encode(&png);

    let runs = 15;
    let results = [
        ("b64_decode_png", time(runs, || imaging::decode(&STANDARD.decode(&b64).unwrap(), u64::MAX).unwrap())),
        ("png_encode", time(runs, || imaging::encode(&image, OutputFormat::Png, None, &settings).unwrap())),
        ("webp_q80", time(runs, || imaging::encode(&image, OutputFormat::Webp, Some(80), &settings).unwrap())),
        ("jpeg_q90", time(runs, || imaging::encode(&image, OutputFormat::Jpeg, Some(90), &settings).unwrap())),
        ("lanczos_512", time(runs, || imaging::resize_exact(&image, ImageSize::new(512, 512)).unwrap())),
        ("mask_composite", time(runs, || imaging::apply_mask(&generated, &image, &mask))),
    ];
    let sizes = [
        ("png_bytes", png.len()),
        ("webp_q80_bytes", imaging::encode(&image, OutputFormat::Webp, Some(80), &settings).unwrap().len()),
        ("jpeg_q90_bytes", imaging::encode(&image, OutputFormat::Jpeg, Some(90), &settings).unwrap().len()),
    ];
    let mut json = serde_json::Map::new();
    for (name, ms) in results {
        json.insert(name.into(), serde_json::json!((ms * 100.0).round() / 100.0));
    }
    for (name, bytes) in sizes {
        json.insert(name.into(), serde_json::json!(bytes));
    }
    println!("{}", serde_json::Value::Object(json));
}
