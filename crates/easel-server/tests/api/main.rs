//! Easel's HTTP integration tests: one binary (faster to link), one module per area. Every test
//! starts the real server on port 0 with a fresh data directory (`helpers::spawn_app`).

mod auth;
mod backend;
mod cluster;
mod conformance;
mod deploy;
mod edits;
mod errors;
mod faults;
mod generations;
mod helpers;
mod hosted;
mod limits;
mod local;
mod matrix;
mod models;
mod operations;
mod sdk;
mod storage;
mod streaming;
mod upstream;
mod usage;
mod variations;
