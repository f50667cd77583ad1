//! Seeded Gaussian noise drawn on the host.
//!
//! candle's CPU RNG cannot be seeded and its CUDA RNG is per-device global state, so every noise
//! tensor comes from here: one ChaCha stream per image, seeded from the request seed plus the
//! image's index. The initial latent is drawn first, then one tensor per ancestral step, so an
//! image is the same whether it was made alone or in a batch, on CPU or GPU.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub struct NoiseStream {
    rng: ChaCha8Rng,
}

impl NoiseStream {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn normal(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| StandardNormal.sample(&mut self.rng)).collect()
    }
}

/// A batch of per-image noise streams.
pub struct BatchNoise {
    streams: Vec<NoiseStream>,
}

impl BatchNoise {
    pub fn new(seeds: &[u64]) -> Self {
        Self { streams: seeds.iter().map(|&s| NoiseStream::new(s)).collect() }
    }

    /// One `(batch, c, h, w)` tensor, image `i` drawn from stream `i`.
    pub fn draw(&mut self, (c, h, w): (usize, usize, usize), device: &Device) -> candle_core::Result<Tensor> {
        let b = self.streams.len();
        let mut data = Vec::with_capacity(b * c * h * w);
        for s in &mut self.streams {
            data.extend(s.normal(c * h * w));
        }
        Tensor::from_vec(data, (b, c, h, w), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent_of_batching() {
        let dev = Device::Cpu;
        let alone = BatchNoise::new(&[8]).draw((4, 2, 2), &dev).unwrap();
        let batch = BatchNoise::new(&[7, 8]).draw((4, 2, 2), &dev).unwrap();
        let a: Vec<f32> = alone.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = batch.get(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
        let c: Vec<f32> = batch.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_ne!(a, c);
    }
}
