//! The model registry, built from `[[models]]`: each entry's `backend` names the kind of
//! backend that serves it and the rest of the table is that backend's own configuration.

use easel_core::backend::SharedBackend;
use easel_core::registry::{Model, ModelRegistry};

use crate::config::{Config, ModelConfig};
use crate::storage::now;

/// Builds every configured model, then adds `extra` (models built in code, as tests do).
pub fn build_registry(config: &Config, extra: Vec<Model>) -> anyhow::Result<ModelRegistry> {
    let mut registry = ModelRegistry::new(config.server.default_model.clone());
    let created = now();
    for entry in &config.models {
        let backend = build_backend(entry)?;
        registry.insert(Model { id: entry.id.clone(), backend, created, owned_by: "easel".into() })?;
    }
    for model in extra {
        registry.insert(model)?;
    }
    Ok(registry)
}

fn build_backend(entry: &ModelConfig) -> anyhow::Result<SharedBackend> {
    anyhow::bail!("model '{}': unknown backend '{}'", entry.id, entry.backend)
}

/// Pure checks of every `[[models]]` entry, for `--check-config`.
pub fn check(config: &Config) -> anyhow::Result<()> {
    for entry in &config.models {
        anyhow::bail!("model '{}': unknown backend '{}'", entry.id, entry.backend);
    }
    Ok(())
}
