//! One JPEG encoder, quality 90, 4:2:0, on the same 1024x1024 photo-like image as
//! `crates/easel-core/benches/pixels.rs`: `jpeg-candidates ENCODER ITERATIONS` prints wall and
//! CPU milliseconds per image and the bytes; `jpeg-candidates write DIR` writes the input as PPM
//! (for Pillow) and each encoder's output.
//!
//! Encoders: `easel` (Easel's own, `crates/easel-core/src/imaging/jpeg`, compiled into this
//! crate from its source), `jpeg-encoder` (pure Rust with AVX2), `mozjpeg-fastest` (mozjpeg's
//! libjpeg-turbo-compatible settings: baseline, standard Huffman tables, no trellis) and
//! `mozjpeg-default` (progressive, trellis quantisation, optimised tables).

use std::time::Instant;

#[path = "../../../crates/easel-core/src/imaging/jpeg/mod.rs"]
#[allow(dead_code)]
mod easel;

fn photo_like(size: u32) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    let mut v = Vec::with_capacity((size * size * 3) as usize);
    for y in 0..size {
        for x in 0..size {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 17) as f32 - 8.0;
            let (xf, yf) = (x as f32, y as f32);
            let r = xf / 4.5 + 30.0 * (yf / 17.0).sin() + noise;
            let g = yf / 4.5 + 30.0 * (xf / 23.0).cos() + noise;
            let b = (xf + yf) / 9.0 + 40.0 * ((xf * yf).sqrt() / 31.0).sin() + noise;
            v.extend([r.clamp(0.0, 255.0) as u8, g.clamp(0.0, 255.0) as u8, b.clamp(0.0, 255.0) as u8]);
        }
    }
    v
}

fn easel(px: &[u8], edge: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(px.len() / 3);
    easel::encode(px, easel::Layout::Rgb, edge, edge, 90, &mut out).unwrap();
    out
}

fn jpeg_encoder(px: &[u8], edge: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(px.len() / 3);
    let mut e = jpeg_encoder::Encoder::new(&mut out, 90);
    e.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    e.encode(px, edge, edge, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

fn mozjpeg(px: &[u8], edge: usize, fastest: bool) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    if fastest {
        c.set_fastest_defaults();
    }
    c.set_size(edge, edge);
    c.set_quality(90.0);
    let mut c = c.start_compress(Vec::with_capacity(px.len() / 3)).unwrap();
    c.write_scanlines(px).unwrap();
    c.finish().unwrap()
}

fn encode(name: &str, px: &[u8], edge: u32) -> Vec<u8> {
    match name {
        "easel" => easel(px, edge),
        "jpeg-encoder" => jpeg_encoder(px, edge as u16),
        "mozjpeg-fastest" => mozjpeg(px, edge as usize, true),
        "mozjpeg-default" => mozjpeg(px, edge as usize, false),
        other => panic!("unknown encoder {other}"),
    }
}

/// CPU seconds of this process so far, from /proc/self/schedstat (Linux; nanoseconds, where
/// /proc/self/stat counts 10 ms ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/schedstat").unwrap();
    stat.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let edge = 1024;
    let px = photo_like(edge);
    if args[1] == "write" {
        let dir = &args[2];
        let mut ppm = format!("P6\n{edge} {edge}\n255\n").into_bytes();
        ppm.extend_from_slice(&px);
        std::fs::write(format!("{dir}/input.ppm"), ppm).unwrap();
        for name in ["easel", "jpeg-encoder", "mozjpeg-fastest", "mozjpeg-default"] {
            std::fs::write(format!("{dir}/{name}.jpg"), encode(name, &px, edge)).unwrap();
        }
        return;
    }
    let (name, iterations): (&str, usize) = (&args[1], args[2].parse().unwrap());
    encode(name, &px, edge);
    let (cpu, start) = (cpu_seconds(), Instant::now());
    let mut bytes = 0;
    for _ in 0..iterations {
        bytes = encode(name, &px, edge).len();
    }
    let per = |s: f64| s * 1000.0 / iterations as f64;
    println!(
        "{name:<16} wall {:>7.2} ms  cpu {:>7.2} ms  {bytes} bytes",
        per(start.elapsed().as_secs_f64()),
        per(cpu_seconds() - cpu)
    );
}
