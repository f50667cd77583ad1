//! The image service: from a dialect-free request to delivered images.
//!
//! [`ImageService::resolve`] finds the model, [`ImageService::prepare`] checks the request against
//! its [`Capabilities`](crate::backend::Capabilities) before any compute or money is spent (every
//! range and model-specific rule is checked there, once); [`ImageService::run`] decodes what must
//! be decoded once per job, calls the backend and fills what it lacks: n fan-out with bounded
//! concurrency, generating at a native size and resizing, transcoding, compositing masks,
//! flattening backgrounds. `docs/architecture.md` has the table of gaps filled.

mod execute;
mod postprocess;
mod prepare;

use std::sync::Arc;

use crate::fetch::ImageFetcher;
use crate::imaging::EncodeSettings;
use crate::registry::ModelRegistry;
use crate::types::ResponseFormat;

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// `response_format` when the request names none.
    pub default_response_format: ResponseFormat,
    /// The most input images an edit may carry, whatever the model (OpenAI: 16).
    pub max_input_images: usize,
    /// The most pixels an input image may have.
    pub max_input_pixels: u64,
    /// Backend calls in flight at once when `n` is fanned out.
    pub fan_out: usize,
    pub encode: EncodeSettings,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            default_response_format: ResponseFormat::B64Json,
            max_input_images: crate::limits::MAX_INPUT_IMAGES,
            max_input_pixels: crate::limits::MAX_INPUT_PIXELS,
            fan_out: 4,
            encode: EncodeSettings::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageService {
    registry: Arc<ModelRegistry>,
    fetcher: ImageFetcher,
    settings: ServiceSettings,
}

impl ImageService {
    pub fn new(registry: Arc<ModelRegistry>, fetcher: ImageFetcher, settings: ServiceSettings) -> Self {
        Self { registry, fetcher, settings }
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }
}

/// Runs CPU-bound work on the blocking pool; a panic there becomes an internal error.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow::anyhow!("pixel work failed: {e}"))
}
