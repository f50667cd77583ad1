//! Samplers: Euler, Euler ancestral, DPM++ 2M (Karras sigmas) and DDIM.
//!
//! Owned here rather than taken from candle because candle's Euler ancestral draws its own noise
//! (unseedable on CPU) and it has no DPM++. The Euler family works in k-diffusion form
//! (`x = x0 + σ·ε`, model input `x / sqrt(σ²+1)`); DDIM works on the variance-preserving sample.
//! Every `step` also returns the predicted clean latent, which the pipeline decodes for previews.
//! Noise for ancestral steps comes from the caller, i.e. from Easel's seeded host RNG.

use anyhow::{Result, bail};
use candle_core::Tensor;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    #[serde(alias = "euler_a")]
    EulerAncestral,
    Euler,
    Ddim,
    #[serde(rename = "dpmpp_2m_karras", alias = "dpm++_2m_karras")]
    DpmPp2mKarras,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// The training noise schedule, as read from `scheduler/scheduler_config.json`.
#[derive(Debug, Clone)]
pub struct TrainSchedule {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub scaled_linear: bool,
    pub prediction: Prediction,
    pub spacing: Spacing,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
}

impl TrainSchedule {
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let f = |k: &str, d: f64| v.get(k).and_then(|x| x.as_f64()).unwrap_or(d);
        let s = |k: &str, d: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or(d).to_string();
        let prediction = match s("prediction_type", "epsilon").as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            other => bail!("scheduler_config.json: unsupported prediction_type '{other}'"),
        };
        let spacing = match s("timestep_spacing", "leading").as_str() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => bail!("scheduler_config.json: unsupported timestep_spacing '{other}'"),
        };
        let scaled_linear = match s("beta_schedule", "scaled_linear").as_str() {
            "scaled_linear" => true,
            "linear" => false,
            other => bail!("scheduler_config.json: unsupported beta_schedule '{other}'"),
        };
        Ok(Self {
            num_train_timesteps: f("num_train_timesteps", 1000.0) as usize,
            beta_start: f("beta_start", 0.00085),
            beta_end: f("beta_end", 0.012),
            scaled_linear,
            prediction,
            spacing,
            steps_offset: f("steps_offset", 0.0) as usize,
            set_alpha_to_one: v.get("set_alpha_to_one").and_then(|x| x.as_bool()).unwrap_or(false),
        })
    }

    fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let mut acc = 1.0;
        (0..n)
            .map(|i| {
                let frac = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
                let beta = if self.scaled_linear {
                    let (a, b) = (self.beta_start.sqrt(), self.beta_end.sqrt());
                    (a + (b - a) * frac).powi(2)
                } else {
                    self.beta_start + (self.beta_end - self.beta_start) * frac
                };
                acc *= 1.0 - beta;
                acc
            })
            .collect()
    }

    /// Inference timesteps (descending) for `steps` steps, as diffusers spaces them.
    fn timesteps(&self, steps: usize) -> Vec<f64> {
        let t = self.num_train_timesteps as f64;
        let n = steps as f64;
        match self.spacing {
            Spacing::Linspace => {
                (0..steps).map(|i| if steps > 1 { (t - 1.0) * i as f64 / (n - 1.0) } else { 0.0 }).rev().collect()
            }
            Spacing::Leading => {
                let ratio = (self.num_train_timesteps / steps.max(1)) as f64;
                (0..steps).map(|i| (i as f64 * ratio).round() + self.steps_offset as f64).rev().collect()
            }
            Spacing::Trailing => {
                let ratio = t / n;
                (0..steps).map(|i| (t - i as f64 * ratio).round() - 1.0).collect()
            }
        }
    }
}

/// What one step produced.
pub struct Stepped {
    pub latents: Tensor,
    /// The model's current estimate of the clean latent.
    pub x0: Tensor,
}

/// A sampler prepared for a number of steps.
pub struct Scheduler {
    kind: SchedulerKind,
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// σ per step plus a final 0 (Euler family).
    sigmas: Vec<f64>,
    /// ᾱ per step plus the final ᾱ (DDIM).
    alphas: Vec<f64>,
    init_sigma: f64,
    old_x0: Option<Tensor>,
}

impl Scheduler {
    pub fn new(kind: SchedulerKind, train: &TrainSchedule, steps: usize) -> Result<Self> {
        if steps == 0 {
            bail!("at least one step is needed");
        }
        let ac = train.alphas_cumprod();
        let all_sigmas: Vec<f64> = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let mut timesteps = train.timesteps(steps);
        let interp = |t: f64| {
            let lo = t.floor().clamp(0.0, (all_sigmas.len() - 1) as f64) as usize;
            let hi = (lo + 1).min(all_sigmas.len() - 1);
            let w = t - lo as f64;
            all_sigmas[lo] * (1.0 - w) + all_sigmas[hi] * w
        };
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t)).collect();
        if kind == SchedulerKind::DpmPp2mKarras {
            // As diffusers' DPMSolverMultistep with Karras sigmas: the whole training range,
            // model timesteps rounded to integers.
            let (smax, smin) = (all_sigmas[all_sigmas.len() - 1], all_sigmas[0]);
            let rho = 7.0;
            let (a, b) = (smax.powf(1.0 / rho), smin.powf(1.0 / rho));
            let ramp = |i: usize| {
                if steps > 1 { i as f64 / (steps - 1) as f64 } else { 0.0 }
            };
            sigmas = (0..steps).map(|i| (a + ramp(i) * (b - a)).powf(rho)).collect();
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &all_sigmas).round()).collect();
        }
        sigmas.push(0.0);
        let final_alpha = if train.set_alpha_to_one { 1.0 } else { ac[0] };
        let mut alphas: Vec<f64> = timesteps.iter().map(|&t| ac[(t.round() as usize).min(ac.len() - 1)]).collect();
        alphas.push(final_alpha);
        let init_sigma = match kind {
            SchedulerKind::Ddim => 1.0,
            // DPM-Solver works on the variance-preserving sample with unit initial noise.
            SchedulerKind::DpmPp2mKarras => (sigmas[0].powi(2) + 1.0).sqrt(),
            _ if train.spacing == Spacing::Leading => (sigmas[0].powi(2) + 1.0).sqrt(),
            _ => sigmas[0],
        };
        Ok(Self { kind, prediction: train.prediction, timesteps, sigmas, alphas, init_sigma, old_x0: None })
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn init_noise_sigma(&self) -> f64 {
        self.init_sigma
    }

    /// Whether `step` consumes fresh noise (ancestral sampling).
    pub fn needs_noise(&self) -> bool {
        self.kind == SchedulerKind::EulerAncestral
    }

    pub fn scale_model_input(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        Ok(match self.kind {
            SchedulerKind::Ddim => x.clone(),
            _ => (x / (self.sigmas[i].powi(2) + 1.0).sqrt())?,
        })
    }

    /// Noises a clean latent to the level of step `i` (`i == steps` means no noise).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok(match self.kind {
            SchedulerKind::Ddim => {
                let a = self.alphas[i];
                ((x0 * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?
            }
            _ => (x0 + (noise * self.sigmas[i])?)?,
        })
    }

    /// One denoising step from step `i` to `i + 1`.
    pub fn step(&mut self, out: &Tensor, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Stepped> {
        match self.kind {
            SchedulerKind::Ddim => self.ddim(out, i, x),
            _ => self.euler_family(out, i, x, noise),
        }
    }

    fn ddim(&self, out: &Tensor, i: usize, x: &Tensor) -> Result<Stepped> {
        let (a, a_prev) = (self.alphas[i], self.alphas[i + 1]);
        let (sa, s1a) = (a.sqrt(), (1.0 - a).sqrt());
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => (((x - (out * s1a)?)? / sa)?, out.clone()),
            Prediction::VPrediction => (((x * sa)? - (out * s1a)?)?, ((out * sa)? + (x * s1a)?)?),
            Prediction::Sample => (out.clone(), ((x - (out * sa)?)? / s1a)?),
        };
        let latents = ((&x0 * a_prev.sqrt())? + (&eps * (1.0 - a_prev).sqrt())?)?;
        Ok(Stepped { latents, x0 })
    }

    fn euler_family(&mut self, out: &Tensor, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Stepped> {
        let (s, s_next) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = match self.prediction {
            Prediction::Epsilon => (x - (out * s)?)?,
            Prediction::VPrediction => ((x / (s * s + 1.0))? - (out * (s / (s * s + 1.0).sqrt()))?)?,
            Prediction::Sample => out.clone(),
        };
        let latents = match self.kind {
            SchedulerKind::Euler => {
                let d = ((x - &x0)? / s)?;
                (x + (d * (s_next - s))?)?
            }
            SchedulerKind::EulerAncestral => {
                let up = if s_next > 0.0 { (s_next.powi(2) * (s * s - s_next.powi(2)) / (s * s)).sqrt() } else { 0.0 };
                let down = (s_next.powi(2) - up * up).max(0.0).sqrt();
                let d = ((x - &x0)? / s)?;
                let moved = (x + (d * (down - s))?)?;
                match noise {
                    Some(n) if up > 0.0 => (moved + (n * up)?)?,
                    None if up > 0.0 => bail!("Euler ancestral needs injected noise"),
                    _ => moved,
                }
            }
            SchedulerKind::DpmPp2mKarras => {
                let latents = if s_next == 0.0 {
                    x0.clone()
                } else {
                    let (t, t_next) = (-s.ln(), -s_next.ln());
                    let h = t_next - t;
                    let denoised = match (&self.old_x0, i) {
                        (Some(old), 1..) => {
                            let h_last = t + self.sigmas[i - 1].ln();
                            let r = h_last / h;
                            ((&x0 * (1.0 + 1.0 / (2.0 * r)))? - (old * (1.0 / (2.0 * r)))?)?
                        }
                        _ => x0.clone(),
                    };
                    ((x * (s_next / s))? - (denoised * (-h).exp_m1())?)?
                };
                self.old_x0 = Some(x0.clone());
                latents
            }
            SchedulerKind::Ddim => unreachable!("DDIM has its own step"),
        };
        Ok(Stepped { latents, x0 })
    }
}

/// The (fractional) training timestep whose σ is `sigma`, interpolating in log σ.
fn sigma_to_t(sigma: f64, all: &[f64]) -> f64 {
    let ls = sigma.max(1e-10).ln();
    let logs: Vec<f64> = all.iter().map(|s| s.ln()).collect();
    let hi = logs.iter().position(|&l| l >= ls).unwrap_or(logs.len() - 1).max(1);
    let lo = hi - 1;
    let w = ((logs[lo] - ls) / (logs[lo] - logs[hi])).clamp(0.0, 1.0);
    lo as f64 * (1.0 - w) + hi as f64 * w
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn train(spacing: &str) -> TrainSchedule {
        TrainSchedule::from_json(
            &serde_json::json!({"timestep_spacing": spacing, "steps_offset": 1, "set_alpha_to_one": true}),
        )
        .unwrap()
    }

    #[test]
    fn spacings_match_diffusers() {
        assert_eq!(train("trailing").timesteps(1), vec![999.0]);
        assert_eq!(train("trailing").timesteps(4), vec![999.0, 749.0, 499.0, 249.0]);
        assert_eq!(train("leading").timesteps(4), vec![751.0, 501.0, 251.0, 1.0]);
        assert_eq!(train("linspace").timesteps(3), vec![999.0, 499.5, 0.0]);
    }

    #[test]
    fn karras_sigmas_are_monotone_and_end_at_zero() {
        let s = Scheduler::new(SchedulerKind::DpmPp2mKarras, &train("leading"), 8).unwrap();
        assert!(s.sigmas.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
        assert!(s.timesteps.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn a_perfect_model_lands_on_x0() {
        // With ε-prediction and the true noise, every sampler must end on the clean latent.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let noise = Tensor::new(&[1.0f32, 0.3, -0.7], &dev).unwrap();
        for kind in
            [SchedulerKind::Euler, SchedulerKind::Ddim, SchedulerKind::DpmPp2mKarras, SchedulerKind::EulerAncestral]
        {
            let mut s = Scheduler::new(kind, &train("trailing"), 4).unwrap();
            let mut x = s.add_noise(&x0, &noise, 0).unwrap();
            for i in 0..4 {
                // The exact ε for the current x given the known x0.
                let eps = match kind {
                    SchedulerKind::Ddim => {
                        let a = s.alphas[i];
                        ((&x - (&x0 * a.sqrt()).unwrap()).unwrap() / (1.0 - a).sqrt()).unwrap()
                    }
                    _ => ((&x - &x0).unwrap() / s.sigmas[i]).unwrap(),
                };
                let fresh = noise.clone();
                x = s.step(&eps, i, &x, Some(&fresh)).unwrap().latents;
            }
            let err: f32 = (&x - &x0).unwrap().abs().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(err < 1e-2, "{kind:?} ended {err} away from x0");
        }
    }
}
