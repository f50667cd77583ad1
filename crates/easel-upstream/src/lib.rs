//! Easel's upstream providers: models served by someone else's API.
//!
//! A `[[models]]` entry with `backend = "upstream"` becomes one [`easel_core::backend::ImageBackend`]
//! that routes each call over an ordered list of targets (a provider and its model name), with
//! retries, a circuit breaker per target and fallback. Each target speaks one protocol:
//! - [`openai`]: OpenAI and OpenAI-compatible services (and other Easel nodes), shaped by a quirk
//!   [`profile`] that says what the service accepts and returns;
//! - [`dashscope`]: Alibaba DashScope's native image APIs (async tasks, sync multimodal,
//!   image2image).
//!
//! Whatever a provider lacks (n per call, sizes, formats, masks) is declared in the backend's
//! `Capabilities` and filled by the core; this crate only turns a `BackendCall` into provider
//! requests and provider answers into encoded image bytes. [`enhance`] wraps any backend with an
//! LLM prompt rewrite. [`Gateway`] builds all of it from config.
//!
//! # Layout
//! - [`config`]: the TOML tables, as serde types that reject unknown keys.
//! - [`gateway`]: providers by id; builds model backends and prompt-enhanced wrappers.
//! - [`router`]: the backend a model gets: target order, weights, retries, breaker, fallback.
//! - [`resilience`]: backoff with jitter, `Retry-After`, the circuit breaker.
//! - [`http`]: sending a request and classifying what went wrong.
//! - [`media`]: data URLs, base64 and downloaded result images.
//! - [`node`]: the `capabilities` an Easel node publishes per model, and reading them from one.
//! - `testing` (feature `testing`): fake providers on loopback, for this crate's tests and the
//!   server's.
//!
//! `docs/architecture.md` is the map of the whole workspace: which crate depends on which, the
//! file that parses, validates, plans, executes and delivers each field, and the error table.

pub mod config;
pub mod dashscope;
pub mod enhance;
pub mod gateway;
pub mod http;
pub mod media;
pub mod node;
pub mod openai;
pub mod profile;
pub mod provider;
pub mod resilience;
pub mod router;
#[cfg(feature = "testing")]
pub mod testing;

pub use gateway::Gateway;
