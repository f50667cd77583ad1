//! The model registry, built from `[[models]]`: each entry's `backend` names the kind of backend
//! that serves it (`local` for diffusion on this machine, `upstream` for providers in
//! `[[providers]]`), and the rest of the table is that backend's own configuration. Any model whose id ends in `-pe` (or with `prompt_enhance = true`)
//! is wrapped by the prompt enhancer of `[prompt_enhancer]`.

use std::sync::Arc;
use std::time::Duration;

use easel_core::backend::SharedBackend;
use easel_core::fetch::{HostPattern, ImageFetcher};
use easel_core::registry::{Model, ModelDefaults, ModelRegistry};
use easel_core::service::{ImageService, ServiceSettings};
use easel_upstream::Gateway;
use serde_json::Value;

use crate::config::{Config, ModelConfig};
use crate::storage::now;

/// How long one input image download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The image service a config describes: its models (see [`build_registry`]), the fetcher for
/// input URLs and the service settings. The server and the in-process CLI build it alike.
pub async fn build_service(
    config: &Config,
    extra: Vec<Model>,
    allow_image_hosts: Vec<HostPattern>,
    settings: ServiceSettings,
) -> anyhow::Result<ImageService> {
    let registry = build_registry(config, extra).await?;
    let fetcher = ImageFetcher::new(allow_image_hosts, config.server.max_download_bytes, FETCH_TIMEOUT)?;
    Ok(ImageService::new(Arc::new(registry), fetcher, settings))
}

/// Builds every configured model, then adds `extra` (models built in code, as tests do). Other
/// Easel nodes (`kind = "easel"` providers) are asked for their models' capabilities first.
pub async fn build_registry(config: &Config, extra: Vec<Model>) -> anyhow::Result<ModelRegistry> {
    let gateway = Gateway::from_config(&config.providers, config.prompt_enhancer.as_ref())?;
    gateway.discover().await;
    let mut registry = ModelRegistry::new(config.server.default_model.clone());
    let created = now();
    for entry in &config.models {
        let backend = build_backend(entry, &gateway)?;
        let defaults = ModelDefaults { response_format: entry.response_format };
        registry.insert(Model { id: entry.id.clone(), backend, created, owned_by: "easel".into(), defaults })?;
    }
    for model in extra {
        registry.insert(model)?;
    }
    Ok(registry)
}

fn build_backend(entry: &ModelConfig, gateway: &Gateway) -> anyhow::Result<SharedBackend> {
    let options = Value::Object(entry.options.clone());
    let backend = match entry.backend.as_str() {
        "upstream" => gateway.build_model(&entry.id, &options)?,
        "local" => easel_diffusion::build(&entry.id, &local_options(entry))?,
        other => anyhow::bail!(unknown_backend(&entry.id, other)),
    };
    if Gateway::wants_enhancement(&entry.id, &options) {
        return gateway.enhance(&entry.id, backend, &options);
    }
    Ok(backend)
}

/// Checks every `[[providers]]` and `[[models]]` entry as far as can be done without serving,
/// for `easel serve --check-config`: local models resolve their options and read their folder's
/// configs (no weights, no worker thread); upstream models build their routing table, which is
/// plain data (no connection is made), and every `-pe` model finds the prompt enhancer.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let gateway = Gateway::from_config(&config.providers, config.prompt_enhancer.as_ref())?;
    for entry in &config.models {
        let options = Value::Object(entry.options.clone());
        match entry.backend.as_str() {
            "upstream" => drop(gateway.build_model(&entry.id, &options)?),
            "local" => easel_diffusion::check(&entry.id, &local_options(entry))?,
            other => anyhow::bail!(unknown_backend(&entry.id, other)),
        }
        if Gateway::wants_enhancement(&entry.id, &options) {
            gateway.check_enhancement(&entry.id, &options)?;
        }
    }
    Ok(())
}

/// A local model's own options: `prompt_enhance` belongs to the wrapper, not the local backend.
fn local_options(entry: &ModelConfig) -> Value {
    let mut local = entry.options.clone();
    local.remove("prompt_enhance");
    Value::Object(local)
}

fn unknown_backend(id: &str, backend: &str) -> String {
    format!("model '{id}': unknown backend '{backend}' (expected \"local\" or \"upstream\")")
}
