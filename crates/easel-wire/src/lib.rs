//! The Images API as it travels on the wire.
//!
//! Inbound, [`request`] parses every dialect Easel accepts (OpenAI JSON generations, multipart
//! and JSON edits, multipart variations, the Qwen `input.messages` shape, the IG1 JSON edit body)
//! into one [`easel_types::request::ImageRequest`]; outbound, [`response`], [`events`] and [`error`]
//! are the bodies clients parse. No I/O happens here: the server collects bytes and parts, this
//! crate only reads them, so every dialect can be tested without a socket.
//!
//! `docs/architecture.md` is the map of the whole workspace: which crate depends on which, the
//! file that parses, validates, plans, executes and delivers each field, and the error table.

pub mod dashscope;
pub mod error;
pub mod events;
pub mod request;
pub mod response;
