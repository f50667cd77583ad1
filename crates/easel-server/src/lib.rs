//! The Easel server: HTTP, storage, keys, usage, configuration and the command line.
//!
//! # Layout
//! - [`startup`]: [`startup::Application`], built from a [`config::Config`] and run until stopped.
//! - [`routes`]: the route table; [`handlers`]: one module per resource.
//! - [`extract`] and [`auth`]: reading bodies and callers, rejecting in OpenAI's error shape.
//! - [`error`]: the single table from errors to HTTP statuses and OpenAI error types and codes.
//! - [`lanes`]: the threads that serve HTTP connections, one single-threaded runtime each.
//! - [`observe`], [`drain`], [`telemetry`]: the layer every request passes (metrics, draining),
//!   request ids in logs, `/metrics`; [`body_timeout`]: a stalled request body's timeout.
//! - [`storage`]: the database (keys, usage, image records), blobs and signed URLs.
//! - [`tasks`]: durable async image tasks (submit, poll, cancel), run by any node.
//! - [`backends`]: the model registry from `[[models]]`.
//! - [`openapi`]: `GET /openapi.json` (the OpenAPI document, derived with utoipa) and `/docs`.
//! - [`cli`]: the `easel` command line; `main.rs` only calls it. [`hub`]: model downloads.
//!
//! `docs/architecture.md` is the map of the whole workspace: which crate depends on which, the
//! file that parses, validates, plans, executes and delivers each field, and the error table.

pub mod auth;
pub mod backends;
pub mod body_timeout;
pub mod cli;
pub mod config;
pub mod drain;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod hub;
pub mod lanes;
pub mod observe;
pub mod openapi;
pub mod routes;
pub mod startup;
pub mod state;
pub mod storage;
pub mod tasks;
pub mod telemetry;
