//! Round trips through the `image` crate's decoder (zune-jpeg): the file must parse, have the
//! right size, and come back close to the source.

use super::*;

fn encoded(pixels: &[u8], layout: Layout, width: u32, height: u32, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    encode(pixels, layout, width, height, quality, &mut out).unwrap();
    out
}

fn decoded(jpeg: &[u8], width: u32, height: u32) -> Vec<u8> {
    let image = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((image.width(), image.height()), (width, height));
    image.into_rgb8().into_raw()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let squared: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    let mse = squared / a.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0 * 255.0 / mse).log10() }
}

/// Smooth gradients and waves with a little noise, like the benchmark's input.
fn photo_like(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x1234_5678u32;
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 9) as f32 - 4.0;
            let (xf, yf) = (x as f32, y as f32);
            let r = 90.0 + xf / 3.0 + 30.0 * (yf / 17.0).sin() + noise;
            let g = 60.0 + yf / 3.0 + 30.0 * (xf / 23.0).cos() + noise;
            let b = 128.0 + 60.0 * ((xf + yf) / 29.0).sin() + noise;
            pixels.extend([r, g, b].map(|c| c.clamp(0.0, 255.0) as u8));
        }
    }
    pixels
}

/// Flat areas with hard edges in luma and in chroma: the hardest case for 8×8 blocks and 4:2:0.
fn flat_and_edges(width: u32, height: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            pixels.extend(match ((x / 40) + (y / 24)) % 4 {
                0 => [250, 250, 250],
                1 => [20, 20, 20],
                2 => [200, 40, 40],
                _ => [40, 90, 200],
            });
        }
    }
    pixels
}

#[test]
fn photo_like_images_come_back_close() {
    let (w, h) = (256, 192);
    let source = photo_like(w, h);
    let jpeg = encoded(&source, Layout::Rgb, w, h, 90);
    let q90 = psnr(&source, &decoded(&jpeg, w, h));
    assert!(q90 > 38.0, "{q90:.2} dB");
    let small = encoded(&source, Layout::Rgb, w, h, 50);
    let q50 = psnr(&source, &decoded(&small, w, h));
    assert!(q50 > 33.0 && q50 < q90, "{q50:.2} dB");
    assert!(small.len() < jpeg.len() * 2 / 3, "{} vs {}", small.len(), jpeg.len());
    let best = encoded(&source, Layout::Rgb, w, h, 100);
    assert!(psnr(&source, &decoded(&best, w, h)) > q90 + 2.0);
}

#[test]
fn flat_areas_and_hard_edges_come_back_close() {
    let (w, h) = (200, 120);
    let source = flat_and_edges(w, h);
    let back = decoded(&encoded(&source, Layout::Rgb, w, h, 90), w, h);
    let db = psnr(&source, &back);
    assert!(db > 30.0, "{db:.2} dB");
    // Inside a flat area, away from edges, the colour is exact to within rounding.
    let at = |x: u32, y: u32| &back[((y * w + x) * 3) as usize..][..3];
    for (x, y, colour) in
        [(20, 12, [250, 250, 250]), (60, 12, [20, 20, 20]), (100, 12, [200, 40, 40]), (140, 12, [40, 90, 200])]
    {
        for (got, want) in at(x, y).iter().zip(colour) {
            assert!(got.abs_diff(want) <= 3, "({x}, {y}): {:?} vs {colour:?}", at(x, y));
        }
    }
}

#[test]
fn odd_sizes_round_trip() {
    for (w, h) in [(1, 1), (17, 9), (9, 17), (1023, 7), (7, 1023), (16, 16), (33, 1)] {
        let source = photo_like(w, h);
        let back = decoded(&encoded(&source, Layout::Rgb, w, h, 90), w, h);
        let db = psnr(&source, &back);
        assert!(db > 33.0, "{w}x{h}: {db:.2} dB");
    }
    // One pixel of each primary survives on its own.
    for colour in [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]] {
        let back = decoded(&encoded(&colour, Layout::Rgb, 1, 1, 90), 1, 1);
        for (got, want) in back.iter().zip(colour) {
            assert!(got.abs_diff(want) <= 4, "{back:?} vs {colour:?}");
        }
    }
}

#[test]
fn gray_and_rgba_inputs_code_the_same_pixels() {
    let (w, h) = (70, 45);
    let rgb = photo_like(w, h);
    let rgba: Vec<u8> = rgb.chunks_exact(3).enumerate().flat_map(|(i, p)| [p[0], p[1], p[2], i as u8]).collect();
    // Alpha is ignored: the very same file.
    assert_eq!(encoded(&rgba, Layout::Rgba, w, h, 85), encoded(&rgb, Layout::Rgb, w, h, 85));
    let gray: Vec<u8> = rgb.chunks_exact(3).map(|p| p[1]).collect();
    let as_rgb: Vec<u8> = gray.iter().flat_map(|&g| [g; 3]).collect();
    assert_eq!(encoded(&gray, Layout::Gray, w, h, 85), encoded(&as_rgb, Layout::Rgb, w, h, 85));
    let back = decoded(&encoded(&gray, Layout::Gray, w, h, 85), w, h);
    assert!(psnr(&as_rgb, &back) > 35.0);
}

#[test]
fn the_file_is_baseline_jfif_with_libjpegs_tables() {
    let jpeg = encoded(&photo_like(40, 24), Layout::Rgb, 40, 24, 90);
    assert_eq!(jpeg[..4], [0xFF, 0xD8, 0xFF, 0xE0]);
    assert_eq!(&jpeg[6..11], b"JFIF\0");
    assert_eq!(jpeg[jpeg.len() - 2..], [0xFF, 0xD9]);
    let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    assert_eq!(jpeg[sof + 4..sof + 10], [8, 0, 24, 0, 40, 3]);
    // Quality 90 is scale 20: libjpeg's luma table starts 3 2 2 3 (zigzag), chroma 3 4 4 5.
    let dqt = jpeg.windows(2).position(|m| m == [0xFF, 0xDB]).unwrap();
    assert_eq!(jpeg[dqt + 4..dqt + 9], [0, 3, 2, 2, 3]);
    assert_eq!(jpeg[dqt + 69..dqt + 74], [1, 3, 4, 4, 5]);
    assert_eq!(tables::quant_tables(50)[0][..8], [16, 11, 10, 16, 24, 40, 51, 61]);
    assert_eq!(tables::quant_tables(100), [[1; 64]; 2]);
    assert_eq!(tables::quant_tables(1), [[255; 64]; 2]);
    assert_eq!(tables::quant_tables(0), tables::quant_tables(1));
}

#[test]
fn ff_bytes_in_the_scan_are_stuffed() {
    // Gray noise at quality 100 codes into long runs of varied bits, where 0xFF bytes are common.
    let (w, h) = (64, 64);
    let mut state = 99u32;
    let noise: Vec<u8> = (0..w * h)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    let jpeg = encoded(&noise, Layout::Gray, w, h, 100);
    let sos = jpeg.windows(2).position(|m| m == [0xFF, 0xDA]).unwrap();
    let scan = &jpeg[sos + 14..jpeg.len() - 2];
    let ff = scan.iter().filter(|&&b| b == 0xFF).count();
    assert!(ff > 10, "{ff} 0xFF bytes");
    assert!(scan.windows(2).filter(|p| p[0] == 0xFF).all(|p| p[1] == 0x00), "an unstuffed 0xFF in the scan");
    assert!(scan.last() != Some(&0xFF));
    let gray: Vec<u8> = decoded(&jpeg, w, h).chunks_exact(3).map(|p| p[1]).collect();
    let db = psnr(&noise, &gray);
    assert!(db > 40.0, "{db:.2} dB");
}

#[test]
fn impossible_sizes_and_short_buffers_are_errors() {
    let mut out = Vec::new();
    assert_eq!(encode(&[], Layout::Rgb, 0, 5, 90, &mut out), Err(EncodeError::Size { width: 0, height: 5 }));
    assert_eq!(encode(&[], Layout::Rgb, 70_000, 1, 90, &mut out), Err(EncodeError::Size { width: 70_000, height: 1 }));
    assert_eq!(
        encode(&[0; 11], Layout::Rgb, 2, 2, 90, &mut out),
        Err(EncodeError::Length { expected: 12, actual: 11 })
    );
    assert!(out.is_empty());
}
