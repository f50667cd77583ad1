//! 2×2 latent packing: `[B, C, H, W]` latents ↔ `[B, (H/2)·(W/2), 4C]` tokens, feature index
//! `c·4 + dy·2 + dx`, tokens in row-major order over the packed grid (diffusers' `_pack_latents`).

use anyhow::{Result, ensure};
use candle_core::Tensor;

/// `[B, C, H, W]` → `[B, (H/2)(W/2), 4C]`; H and W must be even.
pub fn pack(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    ensure!(h.is_multiple_of(2) && w.is_multiple_of(2), "latents of {h}x{w} cannot be packed 2x2");
    let x = latents.reshape((b, c, h / 2, 2, w / 2, 2))?.permute((0, 2, 4, 1, 3, 5))?;
    Ok(x.contiguous()?.reshape((b, (h / 2) * (w / 2), c * 4))?)
}

/// `[B, (h/2)(w/2), 4C]` → `[B, C, h, w]`, the inverse of [`pack`] (`h`, `w`: latent size).
pub fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, f) = tokens.dims3()?;
    ensure!(
        h.is_multiple_of(2) && w.is_multiple_of(2) && n == (h / 2) * (w / 2) && f.is_multiple_of(4),
        "cannot unpack {n}x{f} tokens to {h}x{w}"
    );
    let c = f / 4;
    let x = tokens.reshape((b, h / 2, w / 2, c, 2, 2))?.permute((0, 3, 1, 4, 2, 5))?;
    Ok(x.contiguous()?.reshape((b, c, h, w))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn feature_order_is_c4_dy2_dx() {
        let dev = Device::Cpu;
        // Value = c*100 + y*10 + x.
        let data: Vec<f32> =
            (0..2).flat_map(|c| (0..4).flat_map(move |y| (0..4).map(move |x| (c * 100 + y * 10 + x) as f32))).collect();
        let lat = Tensor::from_vec(data, (1, 2, 4, 4), &dev).unwrap();
        let p = pack(&lat).unwrap();
        assert_eq!(p.dims(), &[1, 4, 8]);
        // Token 1 = packed row 0, column 1 (pixels x 2..3); feature 4 + 2 = c 1, dy 1, dx 0.
        let t: Vec<Vec<f32>> = p.get(0).unwrap().to_vec2().unwrap();
        assert_eq!(t[1][0], 2.0);
        assert_eq!(t[1][6], 112.0);
        assert_eq!(t[2][3], 31.0);
        let back = unpack(&p, 4, 4).unwrap();
        let diff = (back - &lat).unwrap().abs().unwrap().sum_all().unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
