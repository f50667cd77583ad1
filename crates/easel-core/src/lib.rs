//! Easel's domain, independent of any transport or inference engine.
//!
//! # Layout
//! - [`types`], [`request`], [`range`], [`limits`], [`error`]: the data, from the `easel-types`
//!   crate (re-exported here under the same names). Values are built by parsers, so nothing past
//!   the edge holds an unchecked string.
//! - [`backend`]: the seam between the core and whatever makes pixels ([`backend::ImageBackend`]),
//!   with [`backend::Capabilities`] saying what a backend does natively.
//! - [`registry`]: models by id, built from config at startup.
//! - [`service`]: turns a request into a [`job::ImageJob`] against a model's capabilities, calls
//!   the backend and fills every gap (n fan-out, sizes, formats, masks, background).
//! - [`imaging`]: pixel work (sniffing, codecs, resizing, mask compositing), run on the blocking pool.
//! - [`usage`]: token accounting in OpenAI's image usage shape.
//! - [`client`]: an HTTP client per thread, so pooled upstream connections stay on the thread that serves.
//! - [`memory`]: how much freed memory the process keeps for reuse (glibc's malloc), set by `easel serve` and by a local model's worker.
//! - [`fetch`]: downloads of image URLs, only from allow-listed hosts. It lives in the core, not
//!   the server, because the service fetches input images while it prepares a job (before any
//!   backend is called), and upstream backends reuse it for providers that answer with links.
//!
//! `docs/architecture.md` is the map: the crates, the path of a request, the error table.

pub mod backend;
pub mod client;
pub mod fetch;
pub mod imaging;
pub mod job;
pub mod memory;
pub mod registry;
pub mod service;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod usage;

pub use easel_types::{base64, error, limits, range, request, types};
pub use error::{BackendError, CoreError};
