//! Easel's domain, independent of any transport or inference engine.
//!
//! # Layout
//! - [`types`]: validated values (`ImageSize`, `OutputFormat`, `Quality`, ...). Each is built by a
//!   parser, so nothing past the edge holds an unchecked string.
//! - [`request`]: [`request::ImageRequest`], what a client asked for once its dialect is parsed;
//!   the same for every inbound dialect.
//! - [`backend`]: the seam between the core and whatever makes pixels ([`backend::ImageBackend`]),
//!   with [`backend::Capabilities`] saying what a backend does natively.
//! - [`registry`]: models by id, built from config at startup.
//! - [`service`]: turns a request into a [`job::ImageJob`] against a model's capabilities, calls
//!   the backend and fills every gap (n fan-out, sizes, formats, masks, background).
//! - [`imaging`]: pixel work (sniffing, codecs, resizing, mask compositing), run on the blocking pool.
//! - [`usage`]: token accounting in OpenAI's image usage shape.
//! - [`fetch`]: downloads of image URLs, only from allow-listed hosts.
//! - [`error`]: the errors each layer can raise; the HTTP meaning lives in the server crate.

pub mod backend;
pub mod error;
pub mod fetch;
pub mod imaging;
pub mod job;
pub mod registry;
pub mod request;
pub mod service;
pub mod types;
pub mod usage;

pub use error::{BackendError, CoreError};
