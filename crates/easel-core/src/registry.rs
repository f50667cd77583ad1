//! Models by id, built from config at startup and read-only afterwards.

use std::sync::Arc;

use crate::backend::SharedBackend;
use crate::types::{Operation, ResponseFormat};

/// One servable model.
#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    pub backend: SharedBackend,
    /// Unix seconds, for `GET /v1/models`.
    pub created: i64,
    pub owned_by: String,
    /// What this model does when a request does not say (`[[models]]` keys).
    pub defaults: ModelDefaults,
}

/// Per-model defaults from its `[[models]]` entry; each falls back to the server-wide one, and a
/// request's own value wins over both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelDefaults {
    /// `response_format` (OpenAI's default is `url` for DALL·E models, `b64_json` for GPT image).
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: Vec<Arc<Model>>,
    default_model: Option<String>,
}

impl ModelRegistry {
    pub fn new(default_model: Option<String>) -> Self {
        Self { models: Vec::new(), default_model }
    }

    /// Adds a model; ids are unique.
    pub fn insert(&mut self, model: Model) -> anyhow::Result<()> {
        anyhow::ensure!(self.get(&model.id).is_none(), "model '{}' is configured twice", model.id);
        self.models.push(Arc::new(model));
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Model>> {
        self.models.iter().find(|m| m.id == id).cloned()
    }

    pub fn all(&self) -> &[Arc<Model>] {
        &self.models
    }

    /// The model for a request that names none: the configured default, else the first model
    /// that serves the operation.
    pub fn default_for(&self, operation: Operation) -> Option<Arc<Model>> {
        match &self.default_model {
            Some(id) => self.get(id),
            None => self.models.iter().find(|m| m.backend.capabilities().supports(operation)).cloned(),
        }
    }
}
