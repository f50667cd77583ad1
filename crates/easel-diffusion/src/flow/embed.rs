//! The sinusoidal timestep embedding of the flow transformers (their MLP embedders are
//! [`crate::embedder`]).

use anyhow::Result;
use candle_core::{Device, Tensor};

/// diffusers' `get_timestep_embedding` with `flip_sin_to_cos=True`, `downscale_freq_shift=0`,
/// max period 10⁴: `[cos(a) | sin(a)]` with `a_i = (t·e^{−ln(10⁴)·i/half})·scale`, in f32 as
/// torch computes it. FLUX passes `t·1000` and scale 1; Qwen passes σ and scale 1000.
pub fn timestep_embedding(t: &[f32], dim: usize, scale: f32, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let ln = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((ln * i as f32) / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &tv in t {
        let args: Vec<f32> = freqs.iter().map(|f| (tv * f) * scale).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
        if !dim.is_multiple_of(2) {
            out.push(0.0);
        }
    }
    Ok(Tensor::from_vec(out, (t.len(), dim), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cos_comes_first() {
        let e: Vec<Vec<f32>> = timestep_embedding(&[0.0, 1.0], 4, 1.0, &Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(e[0], vec![1.0, 1.0, 0.0, 0.0]);
        // Frequencies 1 and 1e-2.
        assert!((e[1][0] - 1f32.cos()).abs() < 1e-7 && (e[1][3] - 0.01f32.sin()).abs() < 1e-7);
    }
}
