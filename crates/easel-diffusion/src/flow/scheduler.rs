//! diffusers' `FlowMatchEulerDiscreteScheduler` as FLUX.1 and Qwen-Image use it.
//!
//! The pipelines pass `sigmas = linspace(1, 1/N, N)`; the scheduler shifts them either by the
//! image's sequence length (`use_dynamic_shifting`: exponential or linear in `mu`, and then
//! `shift` is ignored) or by the static `shift`, optionally stretches them so the last one is
//! `shift_terminal`, and appends 0. diffusers does this in numpy float32 (the linspace is
//! float64, cast once; Python floats are weak scalars), and so does this file, so the sigmas agree
//! to the bit. Timesteps are σ·1000; the pipelines hand the transformer `t/1000` (a rounding of
//! σ, not σ itself), which [`FlowSchedule::model_t`] reproduces. The Euler step runs in f32
//! whatever the model dtype and is cast back to the velocity's dtype.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use serde_json::Value;

/// How the sigmas bend with the image's sequence length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeShift {
    /// `e^μ / (e^μ + (1/σ − 1))`.
    Exponential,
    /// `μ / (μ + (1/σ − 1))`.
    Linear,
}

/// `scheduler/scheduler_config.json`, the fields these pipelines read.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub shift_terminal: Option<f64>,
    pub time_shift: TimeShift,
}

impl Default for FlowConfig {
    /// diffusers' constructor defaults.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            shift_terminal: None,
            time_shift: TimeShift::Exponential,
        }
    }
}

impl FlowConfig {
    /// Reads the config; absent fields take diffusers' defaults, options it has that change the
    /// schedule in ways not implemented here (Karras/exponential/beta sigmas, inverted sigmas,
    /// stochastic sampling) are refused by name.
    pub fn from_json(v: &Value) -> Result<Self> {
        let d = Self::default();
        let f = |k: &str, def: f64| -> Result<f64> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(def),
                Some(x) => x.as_f64().with_context(|| format!("scheduler config: `{k}` is not a number")),
            }
        };
        let u = |k: &str, def: usize| -> Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(def),
                Some(x) => {
                    x.as_u64().map(|x| x as usize).with_context(|| format!("scheduler config: `{k}` is not an integer"))
                }
            }
        };
        for flag in
            ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"]
        {
            if v.get(flag).and_then(Value::as_bool) == Some(true) {
                bail!("scheduler config: `{flag}` is not supported");
            }
        }
        let time_shift = match v.get("time_shift_type").and_then(Value::as_str) {
            None | Some("exponential") => TimeShift::Exponential,
            Some("linear") => TimeShift::Linear,
            Some(other) => bail!("scheduler config: time_shift_type '{other}' is neither 'exponential' nor 'linear'"),
        };
        let terminal = match v.get("shift_terminal") {
            None | Some(Value::Null) => None,
            Some(x) => Some(x.as_f64().context("scheduler config: `shift_terminal` is not a number")?),
        };
        let cfg = Self {
            num_train_timesteps: u("num_train_timesteps", d.num_train_timesteps)?,
            shift: f("shift", d.shift)?,
            use_dynamic_shifting: v.get("use_dynamic_shifting").and_then(Value::as_bool).unwrap_or(false),
            base_shift: f("base_shift", d.base_shift)?,
            max_shift: f("max_shift", d.max_shift)?,
            base_image_seq_len: u("base_image_seq_len", d.base_image_seq_len)?,
            max_image_seq_len: u("max_image_seq_len", d.max_image_seq_len)?,
            // diffusers tests `if shift_terminal:`, so 0 means none.
            shift_terminal: terminal.filter(|t| *t != 0.0),
            time_shift,
        };
        if cfg.num_train_timesteps == 0 || cfg.shift <= 0.0 {
            bail!("scheduler config: num_train_timesteps and shift must be positive");
        }
        if cfg.max_image_seq_len == cfg.base_image_seq_len {
            bail!("scheduler config: max_image_seq_len must differ from base_image_seq_len");
        }
        if cfg.shift_terminal.is_some_and(|t| !(0.0..1.0).contains(&t)) {
            bail!("scheduler config: shift_terminal must be in [0, 1)");
        }
        Ok(cfg)
    }

    /// The pipelines' `calculate_shift`: linear in the packed image sequence length, unclamped.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift) / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }
}

/// The sigmas and timesteps of one run.
#[derive(Debug, Clone)]
pub struct FlowSchedule {
    /// `steps + 1` values, the last 0.
    sigmas: Vec<f32>,
    /// σ·1000, one per step.
    timesteps: Vec<f32>,
}

impl FlowSchedule {
    /// The schedule diffusers' pipelines make for `steps` steps (`mu` is used only with dynamic
    /// shifting).
    pub fn new(cfg: &FlowConfig, steps: usize, mu: f64) -> Self {
        let n = steps.max(1);
        // np.linspace(1.0, 1/n, n) in float64, then `.astype(np.float32)`.
        let (start, stop) = (1.0f64, 1.0 / n as f64);
        let base: Vec<f64> = (0..n)
            .map(|i| {
                if n == 1 {
                    start
                } else if i == n - 1 {
                    stop
                } else {
                    start + (stop - start) / (n - 1) as f64 * i as f64
                }
            })
            .collect();
        Self::from_sigmas(cfg, &base, mu)
    }

    /// From custom sigmas (before shifting), as `set_timesteps(sigmas=…)`.
    pub fn from_sigmas(cfg: &FlowConfig, base: &[f64], mu: f64) -> Self {
        let mut sigmas: Vec<f32> = base.iter().map(|&s| s as f32).collect();
        for s in &mut sigmas {
            *s = if cfg.use_dynamic_shifting {
                let one = 1.0f32 / *s - 1.0;
                match cfg.time_shift {
                    TimeShift::Exponential => {
                        let e = mu.exp() as f32;
                        e / (e + one)
                    }
                    TimeShift::Linear => {
                        let m = mu as f32;
                        m / (m + one)
                    }
                }
            } else {
                let (k, k1) = (cfg.shift as f32, (cfg.shift - 1.0) as f32);
                k * *s / (1.0 + k1 * *s)
            };
        }
        if let (Some(term), Some(&last)) = (cfg.shift_terminal, sigmas.last()) {
            let scale = (1.0 - last) / ((1.0 - term) as f32);
            for s in &mut sigmas {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
        let train = cfg.num_train_timesteps as f32;
        let timesteps = sigmas.iter().map(|s| s * train).collect();
        sigmas.push(0.0);
        Self { sigmas, timesteps }
    }

    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// What the pipelines pass the transformer at step `i`: `t / 1000` in f32.
    pub fn model_t(&self, i: usize) -> f32 {
        self.timesteps[i] / 1000.0
    }

    /// The first step an img2img edit of `strength` runs (diffusers' `get_timesteps`:
    /// `int(N − min(N·s, N))`), so that at least one step runs for any strength above 0.
    pub fn start_for_strength(&self, strength: f64) -> usize {
        let n = self.steps() as f64;
        let init = (n * strength).min(n);
        ((n - init).max(0.0) as usize).min(self.steps().saturating_sub(1))
    }

    /// One Euler step from step `i`: `x + (σ_{i+1} − σ_i)·v` in f32, in the velocity's dtype.
    pub fn step(&self, latents: &Tensor, velocity: &Tensor, i: usize) -> Result<Tensor> {
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        let x = latents.to_dtype(DType::F32)?;
        let v = velocity.to_dtype(DType::F32)?;
        Ok((x + (v * f64::from(dt))?)?.to_dtype(velocity.dtype())?)
    }

    /// The clean image the velocity predicts at step `i`: `x − σ_i·v` (for previews).
    pub fn x0(&self, latents: &Tensor, velocity: &Tensor, i: usize) -> Result<Tensor> {
        let x = latents.to_dtype(DType::F32)?;
        let v = velocity.to_dtype(DType::F32)?;
        Ok((x - (v * f64::from(self.sigmas[i]))?)?)
    }

    /// The forward process to step `i`: `σ_i·noise + (1 − σ_i)·x0` (diffusers' `scale_noise`).
    pub fn scale_noise(&self, x0: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let s = f64::from(self.sigmas[i]);
        Ok(((noise * s)? + (x0 * (1.0 - s))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn schnell_four_steps_are_evenly_spaced() {
        let cfg = FlowConfig::from_json(&serde_json::json!({"shift": 1.0, "use_dynamic_shifting": false})).unwrap();
        let s = FlowSchedule::new(&cfg, 4, cfg.mu(4096));
        close(s.sigmas(), &[1.0, 0.75, 0.5, 0.25, 0.0], 0.0);
        close(s.timesteps(), &[1000.0, 750.0, 500.0, 250.0], 0.0);
    }

    #[test]
    fn dev_shift_at_1024_matches_the_reference_numbers() {
        let cfg = FlowConfig::from_json(&serde_json::json!({
            "shift": 3.0, "use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 1.15,
            "base_image_seq_len": 256, "max_image_seq_len": 4096
        }))
        .unwrap();
        let mu = cfg.mu(4096);
        assert!((mu - 1.15).abs() < 1e-12);
        let s = FlowSchedule::new(&cfg, 28, mu);
        // new-families.md §1.6: 1, .9884, .9762 … .1955, .1047, 0.
        close(&s.sigmas()[..3], &[1.0, 0.9884, 0.9762], 1e-4);
        close(&s.sigmas()[26..], &[0.1955, 0.1047, 0.0], 1e-4);
    }

    #[test]
    fn qwen_terminal_shift_ends_at_002() {
        let cfg = FlowConfig::from_json(&serde_json::json!({
            "shift": 1.0, "use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 0.9,
            "base_image_seq_len": 256, "max_image_seq_len": 8192, "shift_terminal": 0.02,
            "time_shift_type": "exponential"
        }))
        .unwrap();
        let s = FlowSchedule::new(&cfg, 50, cfg.mu(4096));
        assert!((cfg.mu(4096) - 0.6935).abs() < 1e-4);
        close(&s.sigmas()[49..], &[0.02, 0.0], 1e-6);
        close(&s.sigmas()[..3], &[1.0, 0.9897, 0.9792], 1e-4);
    }

    #[test]
    fn lightning_fixed_shift() {
        let ln3 = 3f64.ln();
        let cfg = FlowConfig::from_json(&serde_json::json!({
            "use_dynamic_shifting": true, "base_shift": ln3, "max_shift": ln3,
            "base_image_seq_len": 256, "max_image_seq_len": 8192
        }))
        .unwrap();
        let s = FlowSchedule::new(&cfg, 4, cfg.mu(1024));
        close(s.sigmas(), &[1.0, 0.9, 0.75, 0.5, 0.0], 1e-6);
    }

    #[test]
    fn strength_picks_diffusers_start() {
        let s = FlowSchedule::new(&FlowConfig::default(), 4, 0.0);
        assert_eq!(s.start_for_strength(1.0), 0);
        assert_eq!(s.start_for_strength(0.8), 0);
        assert_eq!(s.start_for_strength(0.5), 2);
        assert_eq!(s.start_for_strength(0.01), 3);
    }

    /// diffusers 0.42.1: FLUX-dev's scheduler at μ 1.15, 28 steps, `FluxImg2ImgPipeline.get_timesteps`
    /// and `scale_noise(x0 = 1, noise = 2)` at the first step left.
    #[test]
    fn img2img_start_and_noising_match_diffusers() {
        let cfg = FlowConfig::from_json(&serde_json::json!({
            "shift": 3.0, "use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 1.15,
            "base_image_seq_len": 256, "max_image_seq_len": 4096
        }))
        .unwrap();
        let s = FlowSchedule::new(&cfg, 28, 1.15);
        let dev = candle_core::Device::Cpu;
        let (x0, noise) = (Tensor::new(&[1f32], &dev).unwrap(), Tensor::new(&[2f32], &dev).unwrap());
        for (strength, start, sigma, noised) in [
            (0.3, 19, 0.599_356_7_f32, 1.599_356_6_f32),
            (0.6, 11, 0.829_956_4, 1.829_956_4),
            (0.75, 7, 0.904_530_8, 1.904_530_8),
        ] {
            assert_eq!(s.start_for_strength(strength), start, "strength {strength}");
            assert!((s.sigmas()[start] - sigma).abs() < 1e-7, "strength {strength}: {}", s.sigmas()[start]);
            let y: Vec<f32> = s.scale_noise(&x0, &noise, start).unwrap().to_vec1().unwrap();
            assert!((y[0] - noised).abs() < 1e-6, "strength {strength}: {y:?}");
        }
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        let e = FlowConfig::from_json(&serde_json::json!({"use_karras_sigmas": true})).unwrap_err();
        assert!(e.to_string().contains("use_karras_sigmas"));
    }
}
