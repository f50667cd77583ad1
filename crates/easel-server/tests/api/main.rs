//! Easel's HTTP integration tests: one binary (faster to link), one module per area. Every test
//! starts the real server on port 0 with a fresh data directory (`helpers::spawn_app`).

mod auth;
mod backend;
mod browser;
mod cli;
mod cluster;
mod conformance;
mod contract;
mod crash;
mod dashscope_routes;
mod deploy;
mod edits;
mod errors;
mod faults;
mod generations;
mod helpers;
mod hosted;
mod limits;
mod local;
mod local_flux;
mod local_qwen;
mod local_qwen_edit;
mod matrix;
mod models;
mod openapi;
mod operations;
mod sdk;
mod storage;
mod streaming;
mod taesd;
mod tasks;
mod upstream;
mod upstream_faults;
mod usage;
mod variations;
