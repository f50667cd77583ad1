//! The one dispatch point between the worker and the model code of each family [`Kind`]: load a
//! folder, check a folder without loading it, run one batch. The worker, the backend, `--check-config`
//! and the tools treat every family alike through it; the SD, FLUX and Qwen code stay apart.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use image::DynamicImage;

use crate::family::{Family, Kind};
use crate::flux::{FluxLayout, FluxModel};
use crate::model::{Layout, Model};
use crate::pipeline::{Generate, Hooks, RunError};

/// A model of any family, loaded and ready to run.
pub enum Loaded {
    Sd(Box<Model>),
    Flux(Box<FluxModel>),
    Qwen(Box<crate::qwen::QwenModel>),
}

impl Loaded {
    /// Reads a folder's weights for `family` (a bad folder fails naming the file or tensor);
    /// `preset` replaces the folder's scheduler config (Qwen families only); `budget` (bytes,
    /// `memory_budget_mib`) is what the weights must fit, the flow families' parts placed to fit
    /// it ([`crate::placement`]).
    pub fn load(
        root: &Path,
        family: Family,
        device: &Device,
        dtype: DType,
        preset: Option<crate::qwen::FlowPreset>,
        budget: Option<u64>,
    ) -> Result<Self> {
        Ok(match family.kind() {
            Kind::Sd => Self::Sd(Box::new(Model::load(root, family, device, dtype, budget)?)),
            Kind::Flux => Self::Flux(Box::new(FluxModel::load(root, family, device, dtype, budget)?)),
            Kind::Qwen => {
                Self::Qwen(Box::new(crate::qwen::QwenModel::load(root, family, device, dtype, preset, budget)?))
            }
        })
    }

    /// Bytes of weights on the device while the loop runs: what a batch's activations share the
    /// memory budget with.
    pub fn denoising_bytes(&self) -> u64 {
        match self {
            Self::Sd(m) => m.weights_bytes,
            Self::Flux(m) => m.denoising_bytes,
            Self::Qwen(m) => m.denoising_bytes,
        }
    }

    /// Runs one batch (one image per seed of `g`).
    pub fn run(&self, g: &Generate, hooks: Hooks<'_>) -> Result<Vec<DynamicImage>, RunError> {
        match self {
            Self::Sd(m) => crate::pipeline::run(m, g, hooks),
            Self::Flux(m) => crate::flux::pipeline::run(m, g, hooks),
            Self::Qwen(m) if m.family == Family::QwenImageEdit => crate::qwen::edit::run(m, g, hooks),
            Self::Qwen(m) => crate::qwen::pipeline::run(m, g, hooks),
        }
    }
}

/// Checks a folder for `family` from its small files (configs parse and agree, weights files and
/// tokenizers exist), reading no tensor: what `easel serve --check-config` runs.
pub fn check_layout(root: &Path, family: Family) -> Result<()> {
    match family.kind() {
        Kind::Sd => Layout::read(root, family).map(drop),
        Kind::Flux => FluxLayout::read(root, family).map(drop),
        Kind::Qwen => crate::qwen::QwenLayout::read(root, family).map(drop),
    }
}
