//! Where each part of a flow model (FLUX.1, Qwen-Image) lives between uses, so a model larger
//! than its `memory_budget_mib` still runs.
//!
//! A model is text encoders (used once per request, before the loop), a denoiser (every step)
//! and a VAE (at the end). With no budget, or when the whole model fits it, every part is
//! [`Placement::Resident`]: loaded at startup and kept. When it does not fit, the text encoders
//! and the denoiser are [`Placement::OnUse`]: built on the device when a request needs them and
//! dropped after, so only one of them is there at a time (diffusers' `enable_model_cpu_offload`);
//! the VAE, small, stays. On a GPU the parts kept off it wait in host memory and are copied in
//! for each use (FLUX.1-dev in bf16: 9.5 GB of T5, then 23.8 GB of transformer, through a
//! 24 GB card); on the CPU, where host memory *is* the budget, they are read again from their
//! files. Keeping only the text encoders off the device would save nothing: they run while the
//! denoiser would be resident, so the peak would be the whole model again.
//!
//! The plan is made from the safetensors headers (every tensor's shape, in the dtype the part
//! runs in), before any weight is read, and a model whose largest part with the VAE is still
//! over the budget fails at load naming the parts and their sizes. Parts kept off the device are
//! checked at load all the same: built once against their files' headers (names and shapes, no
//! data read), so a broken folder fails at startup, not at the first request.

use std::ops::Deref;
use std::path::PathBuf;

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::weights::{HostTensors, bytes_in, checker, var_builder_files};

/// Where a part lives between uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Loaded at startup and kept on the device.
    Resident,
    /// Built on the device for each use and dropped after it.
    OnUse,
}

/// What a part does in a request, which decides when it is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Before the loop, once per request (text encoders, the vision tower).
    Text,
    /// At every step.
    Denoiser,
    /// At the end (and for partial images and edit sources): always resident.
    Decoder,
}

/// One part of a model as the plan sees it.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: &'static str,
    pub role: Role,
    /// Its weights in the dtype it runs in.
    pub bytes: u64,
}

impl Part {
    /// The part whose weights are `files`, run in `dtype`.
    pub fn new(name: &'static str, role: Role, files: &[PathBuf], dtype: DType) -> Result<Self> {
        Self::of(name, role, files, dtype, &|_| true)
    }

    /// The part made of the tensors of `files` that `keep` takes (files shared by two parts).
    pub fn of(
        name: &'static str,
        role: Role,
        files: &[PathBuf],
        dtype: DType,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Self> {
        Ok(Self { name, role, bytes: bytes_in(files, dtype, keep)? })
    }
}

/// Each part's placement under a memory budget.
#[derive(Debug)]
pub struct Plan {
    parts: Vec<(Part, Placement)>,
}

const MIB: u64 = 1024 * 1024;

impl Plan {
    /// All parts resident when there is no budget or they fit it; otherwise the text parts and
    /// the denoiser on use. Fails when even that peak (the larger of the text parts together
    /// and the denoiser, plus the resident rest) is over the budget.
    pub fn new(parts: Vec<Part>, budget: Option<u64>) -> Result<Self> {
        let total: u64 = parts.iter().map(|p| p.bytes).sum();
        let Some(budget) = budget.filter(|b| total > *b) else {
            return Ok(Self { parts: parts.into_iter().map(|p| (p, Placement::Resident)).collect() });
        };
        let sum = |role| parts.iter().filter(|p| p.role == role).map(|p| p.bytes).sum::<u64>();
        let (text, denoiser, rest) = (sum(Role::Text), sum(Role::Denoiser), sum(Role::Decoder));
        let peak = text.max(denoiser) + rest;
        if peak > budget {
            let list: Vec<String> = parts.iter().map(|p| format!("{} {} MiB", p.name, p.bytes.div_ceil(MIB))).collect();
            bail!(
                "the weights need about {} MiB ({}), and {} MiB even with the text encoders and the denoiser on the device one at a time: over memory_budget_mib = {}",
                total.div_ceil(MIB),
                list.join(", "),
                peak.div_ceil(MIB),
                budget / MIB
            );
        }
        let placed = |p: Part| {
            let at = if p.role == Role::Decoder { Placement::Resident } else { Placement::OnUse };
            (p, at)
        };
        Ok(Self { parts: parts.into_iter().map(placed).collect() })
    }

    /// The placement of the part named `name` (resident for a name the plan does not know).
    pub fn placement(&self, name: &str) -> Placement {
        self.parts.iter().find(|(p, _)| p.name == name).map_or(Placement::Resident, |(_, at)| *at)
    }

    /// Whether any part is kept off the device between uses.
    pub fn offloads(&self) -> bool {
        self.parts.iter().any(|(_, at)| *at == Placement::OnUse)
    }

    /// Bytes of weights on the device while the loop runs: what activations must fit beside.
    pub fn denoising_bytes(&self) -> u64 {
        let on_device = |(p, at): &&(Part, Placement)| *at == Placement::Resident || p.role == Role::Denoiser;
        self.parts.iter().filter(on_device).map(|(p, _)| p.bytes).sum()
    }
}

/// The weights files of one or more parts, with the dtype and device they run in; for parts on
/// use on a GPU, also their host copy (read once, shared by the parts built from these files).
#[derive(Clone)]
pub struct Weights {
    files: Vec<PathBuf>,
    dtype: DType,
    device: Device,
    placement: Placement,
    host: Option<HostTensors>,
}

impl Weights {
    pub fn new(files: &[PathBuf], dtype: DType, device: &Device, placement: Placement) -> Result<Self> {
        let host = match placement {
            Placement::OnUse if !device.is_cpu() => Some(HostTensors::read(files, dtype)?),
            _ => None,
        };
        Ok(Self { files: files.to_vec(), dtype, device: device.clone(), placement, host })
    }

    fn var_builder(&self) -> Result<VarBuilder<'static>> {
        match &self.host {
            Some(host) => Ok(host.var_builder(self.dtype, &self.device)),
            None => var_builder_files(&self.files, self.dtype, &self.device),
        }
    }
}

type Build<T> = Box<dyn Fn(VarBuilder<'static>) -> Result<T> + Send + Sync>;

/// A model part: loaded, or built for each use ([`Placed::get`]).
pub struct Placed<T>(Inner<T>);

enum Inner<T> {
    Resident(T),
    OnUse(Weights, Build<T>),
}

impl<T> Placed<T> {
    /// The part `build` makes from `weights`, placed as `weights` says. A part on use is built
    /// once here against the files' headers (no data), so a missing or misshapen tensor fails
    /// now, naming it.
    pub fn new(
        weights: &Weights,
        build: impl Fn(VarBuilder<'static>) -> Result<T> + Send + Sync + 'static,
    ) -> Result<Self> {
        match weights.placement {
            Placement::Resident => Ok(Self(Inner::Resident(build(weights.var_builder()?)?))),
            Placement::OnUse => {
                drop(build(checker(&weights.files, weights.dtype)?)?);
                Ok(Self(Inner::OnUse(weights.clone(), Box::new(build))))
            }
        }
    }

    pub fn is_resident(&self) -> bool {
        matches!(self.0, Inner::Resident(_))
    }

    /// The part on the device: borrowed when resident, built now (and dropped with the
    /// returned value) when on use.
    pub fn get(&self) -> Result<Held<'_, T>> {
        match &self.0 {
            Inner::Resident(part) => Ok(Held::Borrowed(part)),
            Inner::OnUse(weights, build) => Ok(Held::Owned(build(weights.var_builder()?)?)),
        }
    }
}

/// A part ready to run; an on-use part leaves the device when this is dropped.
pub enum Held<'a, T> {
    Borrowed(&'a T),
    Owned(T),
}

impl<T> Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Self::Borrowed(t) => t,
            Self::Owned(t) => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<Part> {
        // FLUX.1-dev in bf16: CLIP-L (f32), T5-XXL, the transformer, the VAE.
        let gb = |g: f64| (g * 1e9) as u64;
        vec![
            Part { name: "text_encoder", role: Role::Text, bytes: gb(0.49) },
            Part { name: "text_encoder_2", role: Role::Text, bytes: gb(9.52) },
            Part { name: "transformer", role: Role::Denoiser, bytes: gb(23.8) },
            Part { name: "vae", role: Role::Decoder, bytes: gb(0.17) },
        ]
    }

    #[test]
    fn everything_stays_when_it_fits_or_no_budget_is_set() {
        for budget in [None, Some(40 * 1024 * MIB)] {
            let plan = Plan::new(parts(), budget).unwrap();
            assert!(!plan.offloads());
            assert_eq!(plan.placement("text_encoder_2"), Placement::Resident);
            assert_eq!(plan.denoising_bytes(), parts().iter().map(|p| p.bytes).sum::<u64>());
        }
    }

    #[test]
    fn flux_dev_in_bf16_goes_through_a_24_gib_card_one_part_at_a_time() {
        let plan = Plan::new(parts(), Some(23 * 1024 * MIB)).unwrap();
        assert!(plan.offloads());
        for (name, at) in [
            ("text_encoder", Placement::OnUse),
            ("text_encoder_2", Placement::OnUse),
            ("transformer", Placement::OnUse),
            ("vae", Placement::Resident),
        ] {
            assert_eq!(plan.placement(name), at, "{name}");
        }
        // While the loop runs: the transformer and the VAE, not T5.
        assert_eq!(plan.denoising_bytes(), parts()[2].bytes + parts()[3].bytes);
    }

    #[test]
    fn a_budget_under_the_largest_part_fails_naming_the_parts() {
        let err = Plan::new(parts(), Some(16 * 1024 * MIB)).unwrap_err().to_string();
        assert!(err.contains("transformer 22698 MiB"), "{err}");
        assert!(err.contains("memory_budget_mib = 16384"), "{err}");
    }
}
