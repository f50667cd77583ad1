//! Native local diffusion on candle: Stable Diffusion 1.5, 2.1, SD-Turbo, SDXL, SDXL-Turbo and
//! their inpainting variants, and the flow-matching transformers FLUX.1 (schnell, dev) and
//! Qwen-Image(-Edit), behind Easel's [`easel_core::backend::ImageBackend`] seam.
//!
//! - [`build`] turns a `[[models]]` entry into a backend; the weights load on its worker thread.
//! - [`cli`] is `easel models create-random | list`.
//! - Model code: [`clip`] (text encoders), [`unet`] (with SDXL micro-conditioning), [`vae`],
//!   [`taesd`] (the optional tiny autoencoder);
//!   [`model`] loads a diffusers-layout folder; [`pipeline`] runs one batch; [`scheduler`] and
//!   [`noise`] make sampling reproducible from a seed; [`worker`] and [`backend`] serve it.
//! - [`flow`] holds what the flow families share (scheduler, packing, RoPE, norms, attention);
//!   [`flux`] is FLUX.1; [`loaded`] is the one place that dispatches on the family's kind.
//!
//! `docs/architecture.md` is the map of the whole workspace: which crate depends on which, the
//! file that parses, validates, plans, executes and delivers each field, and the error table.

pub mod attention;
pub mod backend;
pub mod blocks;
pub mod cli;
pub mod clip;
pub mod config;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod embedder;
pub mod exp;
pub mod family;
pub mod flow;
pub mod flux;
mod gemm;
pub mod loaded;
pub mod model;
pub mod noise;
pub mod ops;
pub mod pipeline;
pub mod placement;
pub mod profile;
pub mod qwen;
pub mod random;
pub mod scheduler;
pub mod taesd;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;
pub mod winograd;
pub mod worker;

use std::sync::Arc;

use anyhow::Context;
use easel_core::backend::SharedBackend;

pub use backend::LocalBackend;
pub use config::LocalConfig;
pub use family::Family;

/// Checks model `id`'s `[[models]]` options without serving it: the options resolve against the
/// family, and the folder's configs and tokenizers parse and its weights files exist. No tensor
/// is read and no thread started (`easel serve --check-config`).
pub fn check(id: &str, options: &serde_json::Value) -> anyhow::Result<()> {
    let cfg = LocalConfig::from_options(options).with_context(|| format!("model '{id}': invalid local options"))?;
    let resolved = cfg.resolve().with_context(|| format!("model '{id}'"))?;
    loaded::check_layout(&resolved.path, resolved.family).with_context(|| format!("model '{id}'"))?;
    if let Some(dir) = &resolved.tiny_vae {
        taesd::TinyVaeLayout::read(dir).with_context(|| format!("model '{id}': tiny_vae"))?;
    }
    Ok(())
}

/// Builds the local backend for model `id` from its `[[models]]` options (the table without `id`
/// and `backend`). Returns at once; the weights load on the worker thread and `readiness()`
/// reports "loading" or the load error until the model is ready.
pub fn build(id: &str, options: &serde_json::Value) -> anyhow::Result<SharedBackend> {
    let cfg = LocalConfig::from_options(options).with_context(|| format!("model '{id}': invalid local options"))?;
    let resolved = cfg.resolve().with_context(|| format!("model '{id}'"))?;
    if resolved.path.join(random::INFO_FILE).is_file() {
        tracing::warn!(
            model = id,
            path = %resolved.path.display(),
            "THIS MODEL HAS RANDOM WEIGHTS (made by `easel models create-random`): it makes noise, not images"
        );
    }
    if resolved.decoder == pipeline::Decoder::Taesd {
        tracing::warn!(
            model = id,
            "decoder = \"taesd\": final images come from the tiny autoencoder, faster but lower quality than the VAE's"
        );
    }
    Ok(Arc::new(LocalBackend::start(id, resolved)?))
}
