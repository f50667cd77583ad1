//! Easel's data, shared by every layer and dependent on none of them.
//!
//! This crate builds with serde alone (no async runtime, HTTP client, image codec or tokenizer),
//! so the wire crate, which only reads bodies into these types, stays light and fast to build.
//! `easel-core` re-exports every module here under the same name, so the rest of the workspace
//! writes `easel_core::types::ImageSize` and never needs to know about the split.
//!
//! - [`types`]: validated values (`ImageSize`, `OutputFormat`, `Quality`, ...), each with one parser.
//! - [`request`]: [`request::ImageRequest`], what a client asked for whatever its dialect, and
//!   [`request::Options`], the options carried unchanged from the request to the backend.
//! - [`range`]: numeric ranges with OpenAI's error messages; [`limits`]: the API's own limits.
//! - [`error`]: the problems each layer can name; the HTTP meaning lives in the server crate.
//! - [`usage`]: token counts in OpenAI's usage shape.
//! - [`sniff`]: image formats from magic bytes.
//! - [`base64`]: base64 text shared as `Bytes`, and an image's bytes held raw or as that text.
//!
//! See `docs/architecture.md` for where each field is parsed, validated, planned, executed and
//! delivered.

pub mod base64;
pub mod error;
pub mod limits;
pub mod range;
pub mod request;
pub mod sniff;
pub mod types;
pub mod usage;

pub use error::{BackendError, CoreError};
