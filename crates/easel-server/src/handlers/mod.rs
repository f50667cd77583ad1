//! One module per resource; the paths live in [`crate::routes`].

pub mod admin;
pub mod dashscope;
pub mod deliver;
pub mod files;
pub mod health;
pub mod images;
pub mod metrics;
pub mod models;
pub mod playground;
pub mod quota;
pub mod stream;
pub mod tasks;
