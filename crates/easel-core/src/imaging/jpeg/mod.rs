//! Easel's baseline JPEG encoder: 4:2:0 YCbCr, the IJG quantisation tables scaled by quality as
//! libjpeg scales them, the standard Huffman tables, a JFIF header. The output is what
//! libjpeg-turbo (and so Pillow) writes at the same quality, to within rounding.
//!
//! Why our own: the build must need nothing beyond cargo and a C compiler (no cmake, no nasm),
//! and the pure-Rust `jpeg-encoder` it replaced took about three times Pillow's CPU time; this
//! one takes about four fifths of Pillow's CPU on a Zen 5, at libjpeg-turbo's PSNR with files
//! 0.8 % smaller (bench/pixels.md).
//! This one is safe Rust written for the compiler's vectoriser and for a fast entropy coder:
//! colour conversion and chroma averaging on whole rows in fixed point ([`color`]), a float AAN DCT
//! with quantisation by reciprocals ([`dct`]), and a Huffman coder with a 64-bit bit buffer and a
//! non-zero-coefficient bitmask ([`huffman`]). Work goes one 16-row strip at a time, so the
//! planes stay in cache.
//!
//! Two parts also run as AVX2 where the CPU has it, picked at run time through `pulp` (a release
//! build targets baseline x86-64): the colour conversion, compiled a second time for AVX2
//! ([`color::convert_pair`], about 15 % off the whole encode), and the DCT, written out in AVX2
//! intrinsics ([`dct::transform_strip`], 12 % more). A strip's blocks are all transformed first,
//! then coded, so the DCT runs in one AVX2 pass.

mod color;
mod dct;
mod huffman;
mod tables;
#[cfg(test)]
mod tests;

use dct::Quantizer;
use huffman::{BitWriter, CodeTable};
use tables::{CHROMA_AC, CHROMA_DC, HuffmanSpec, LUMA_AC, LUMA_DC, NATURAL};

/// How the pixels passed to [`encode`] are laid out: 8 bits a channel, rows packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Gray,
    Rgb,
    /// Alpha is ignored: callers flatten transparent images first.
    Rgba,
}

impl Layout {
    fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Gray => 1,
            Self::Rgb => 3,
            Self::Rgba => 4,
        }
    }
}

/// Why an image cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// JPEG sizes are 1 to 65,535 on each side.
    Size { width: u32, height: u32 },
    /// The buffer does not hold `width × height` pixels of the layout.
    Length { expected: usize, actual: usize },
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Size { width, height } => write!(f, "JPEG cannot hold a {width}x{height} image (1 to 65535 a side)"),
            Self::Length { expected, actual } => write!(f, "expected {expected} bytes of pixels, got {actual}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends `pixels` (`width × height`, laid out as `layout`) to `out` as a baseline JFIF file of
/// `quality` (1-100, clamped), 4:2:0.
pub fn encode(
    pixels: &[u8],
    layout: Layout,
    width: u32,
    height: u32,
    quality: u8,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let size_error = EncodeError::Size { width, height };
    let (w, h) =
        (u16::try_from(width).map_err(|_| size_error.clone())?, u16::try_from(height).map_err(|_| size_error.clone())?);
    if w == 0 || h == 0 {
        return Err(size_error);
    }
    let expected = usize::from(w) * usize::from(h) * layout.bytes_per_pixel();
    if pixels.len() != expected {
        return Err(EncodeError::Length { expected, actual: pixels.len() });
    }
    let quant = tables::quant_tables(quality);
    write_headers(out, w, h, &quant);
    let image = Image { pixels, width: usize::from(w), height: usize::from(h) };
    match layout {
        Layout::Gray => scan::<1>(&image, &quant, out),
        Layout::Rgb => scan::<3>(&image, &quant, out),
        Layout::Rgba => scan::<4>(&image, &quant, out),
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    Ok(())
}

struct Image<'a> {
    pixels: &'a [u8],
    width: usize,
    height: usize,
}

/// The entropy-coded segment: one 16-row strip of MCUs at a time (four luma blocks, then one Cb
/// and one Cr), edges extended by repeating the last column and row as libjpeg does.
fn scan<const N: usize>(image: &Image, quant: &[[u8; 64]; 2], out: &mut Vec<u8>) {
    let (width, height) = (image.width, image.height);
    let padded = width.div_ceil(16) * 16;
    let half = padded / 2;
    // Pixel pairs up to `even` convert straight from the image; the rest of the padded width
    // from a copy with the last pixel repeated.
    let even = width & !1;
    let mut edge = [vec![0u8; (padded - even) * N], vec![0u8; (padded - even) * N]];
    let mut luma = vec![0u8; 16 * padded];
    let [mut cb, mut cr] = [vec![0u8; 8 * half], vec![0u8; 8 * half]];
    let quantizers = [Quantizer::new(&quant[0]), Quantizer::new(&quant[1])];
    let (luma_dc, luma_ac) = (CodeTable::new(&LUMA_DC), CodeTable::new(&LUMA_AC));
    let (chroma_dc, chroma_ac) = (CodeTable::new(&CHROMA_DC), CodeTable::new(&CHROMA_AC));
    let mut previous_dc = [0i16; 3];
    // One strip's blocks, transformed in one pass, then coded.
    let mut blocks = vec![[0i16; 64]; padded / 16 * 6];
    out.reserve(width * height / 2);
    let mut writer = BitWriter::new(out);

    for strip in 0..height.div_ceil(16) {
        for pair in 0..8 {
            let rows = [0, 1].map(|r| {
                let at = (strip * 16 + pair * 2 + r).min(height - 1) * width * N;
                &image.pixels[at..][..width * N]
            });
            let (y_top, y_bottom) = luma[pair * 2 * padded..][..2 * padded].split_at_mut(padded);
            let (cb, cr) = (&mut cb[pair * half..][..half], &mut cr[pair * half..][..half]);
            let [top, bottom] = rows.map(|row| &row[..even * N]);
            color::convert_pair::<N>(top, bottom, y_top, y_bottom, cb, cr);
            if even < padded {
                for (copy, row) in edge.iter_mut().zip(rows) {
                    let (tail, last) = (&row[even * N..], &row[(width - 1) * N..]);
                    copy[..tail.len()].copy_from_slice(tail);
                    copy[tail.len()..].chunks_exact_mut(N).for_each(|p| p.copy_from_slice(last));
                }
                let (y_top, y_bottom) = (&mut y_top[even..], &mut y_bottom[even..]);
                color::convert_pair::<N>(&edge[0], &edge[1], y_top, y_bottom, &mut cb[even / 2..], &mut cr[even / 2..]);
            }
        }
        dct::transform_strip(&luma, &cb, &cr, padded, &quantizers, &mut blocks);
        for mcu in blocks.chunks_exact(6) {
            for block in &mcu[..4] {
                writer.block(block, &mut previous_dc[0], &luma_dc, &luma_ac);
            }
            for (block, previous) in mcu[4..].iter().zip(&mut previous_dc[1..]) {
                writer.block(block, previous, &chroma_dc, &chroma_ac);
            }
        }
    }
    writer.finish();
}

fn write_headers(out: &mut Vec<u8>, width: u16, height: u16, quant: &[[u8; 64]; 2]) {
    out.extend_from_slice(&[0xFF, 0xD8]);
    // JFIF 1.01, no density units, 1:1 pixels, no thumbnail.
    segment(out, 0xE0, &[b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]);
    let mut dqt = Vec::with_capacity(130);
    for (id, table) in (0u8..).zip(quant) {
        dqt.push(id); // 8-bit entries
        dqt.extend(NATURAL.iter().map(|&n| table[usize::from(n)]));
    }
    segment(out, 0xDB, &dqt);
    let [hh, hl] = height.to_be_bytes();
    let [wh, wl] = width.to_be_bytes();
    // Baseline, 8 bits, three components: Y sampled 2×2 with table 0, Cb and Cr 1×1 with table 1.
    segment(out, 0xC0, &[8, hh, hl, wh, wl, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    let mut dht = Vec::with_capacity(432);
    for (class_id, spec) in [(0x00, &LUMA_DC), (0x10, &LUMA_AC), (0x01, &CHROMA_DC), (0x11, &CHROMA_AC)] {
        huffman_table(&mut dht, class_id, spec);
    }
    segment(out, 0xC4, &dht);
    // All three components, Y with tables 0, Cb and Cr with tables 1; spectral 0-63, no
    // approximation.
    segment(out, 0xDA, &[3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
}

fn huffman_table(out: &mut Vec<u8>, class_id: u8, spec: &HuffmanSpec) {
    out.push(class_id);
    out.extend_from_slice(&spec.counts);
    out.extend_from_slice(spec.symbols);
}

fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(body);
}
