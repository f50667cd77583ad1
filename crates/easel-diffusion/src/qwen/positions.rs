//! Qwen-Image's RoPE positions and tables (`QwenEmbedRope` with `scale_rope=True`).
//!
//! Each token has a (frame, row, column) position. Image `i` of the sequence (0 the target, 1..
//! the condition images of an edit) is frame `i`; its rows and columns are centred on zero (an
//! `h`-row grid runs `−(h − h/2) … h/2 − 1`). Text token `k` sits at `m + k` on all three axes,
//! `m` the largest half-edge of any image. The tables are computed in f32 as diffusers computes
//! them (frequencies, angles, cos and sin), unlike FLUX's f64 frequencies; the rotation is
//! [`crate::flow::rope`]'s interleaved pairs.

use anyhow::Result;
use candle_core::Device;

use crate::flow::rope::Rope;

/// RoPE base, fixed in diffusers.
const THETA: f32 = 10000.0;

/// One image of the sequence in packed tokens: frames, rows, columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub frames: usize,
    pub rows: usize,
    pub cols: usize,
}

impl ImageShape {
    pub fn tokens(self) -> usize {
        self.frames * self.rows * self.cols
    }
}

/// Positions `(frame, row, column)` of the image tokens (images in order) and then of `text_len`
/// text tokens, as `QwenEmbedRope` with `scale_rope=True` gives them.
pub fn rope_ids(shapes: &[ImageShape], text_len: usize) -> (Vec<[f32; 3]>, Vec<[f32; 3]>) {
    let mut image = Vec::with_capacity(shapes.iter().map(|s| s.tokens()).sum());
    let mut m = 0;
    for (index, s) in shapes.iter().enumerate() {
        let (top, left) = ((s.rows - s.rows / 2) as f32, (s.cols - s.cols / 2) as f32);
        for f in 0..s.frames {
            for r in 0..s.rows {
                for c in 0..s.cols {
                    image.push([(index + f) as f32, r as f32 - top, c as f32 - left]);
                }
            }
        }
        m = m.max(s.rows / 2).max(s.cols / 2);
    }
    let text = (0..text_len).map(|k| [(m + k) as f32; 3]).collect();
    (image, text)
}

/// RoPE tables as `QwenEmbedRope` makes them: everything in f32 (`1/θ^(2j/d)`, the angle
/// `pos·freq`, its cos and sin), unlike FLUX's f64 frequencies.
pub fn qwen_rope(ids: &[[f32; 3]], axes: &[usize], dev: &Device) -> Result<Rope> {
    let freqs: Vec<Vec<f32>> =
        axes.iter().map(|&d| (0..d / 2).map(|j| 1.0 / THETA.powf((2 * j) as f32 / d as f32)).collect()).collect();
    let half = axes.iter().sum::<usize>() / 2;
    let mut cos = Vec::with_capacity(ids.len() * half);
    let mut sin = Vec::with_capacity(ids.len() * half);
    for row in ids {
        for (axis, fs) in freqs.iter().enumerate() {
            for f in fs {
                let a = row[axis] * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    Rope::from_tables(cos, sin, ids.len(), half, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_positions_are_centred_and_text_follows_the_largest_half_edge() {
        let shapes = [ImageShape { frames: 1, rows: 4, cols: 6 }, ImageShape { frames: 1, rows: 2, cols: 2 }];
        let (img, txt) = rope_ids(&shapes, 2);
        assert_eq!(img.len(), 24 + 4);
        assert_eq!(img[0], [0.0, -2.0, -3.0]);
        assert_eq!(img[23], [0.0, 1.0, 2.0]);
        // The second image (a condition) is frame 1, centred on its own grid.
        assert_eq!(img[24], [1.0, -1.0, -1.0]);
        assert_eq!(img[27], [1.0, 0.0, 0.0]);
        // max(h/2, w/2) over the images = 3.
        assert_eq!(txt, vec![[3.0; 3], [4.0; 3]]);
        // Odd edges put the extra position on the negative side, as diffusers does.
        let (img, _) = rope_ids(&[ImageShape { frames: 1, rows: 3, cols: 1 }], 0);
        assert_eq!(img.iter().map(|p| p[1]).collect::<Vec<_>>(), vec![-2.0, -1.0, 0.0]);
    }
}
