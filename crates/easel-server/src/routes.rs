//! The route table: paths to handlers, nothing else. Layers and state are added in
//! [`crate::startup`].

use axum::Router;
use axum::routing::{get, post};

use crate::handlers::{admin, files, health, images, metrics, models};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images/generations", post(images::generations))
        .route("/v1/images/edits", post(images::edits))
        .route("/v1/images/variations", post(images::variations))
        .route("/v1/images/files/{name}", get(files::get))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/admin/v1/keys", get(admin::list_keys).post(admin::create_key))
        .route("/admin/v1/keys/{id}", get(admin::get_key).patch(admin::update_key).delete(admin::revoke_key))
        .route("/admin/v1/usage", get(admin::usage))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
}

/// `/metrics` on the main listener (behind an API key).
pub fn metrics() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics::get))
}

/// `/metrics` alone, for the private metrics listener.
pub fn private_metrics() -> Router {
    Router::new().route("/metrics", get(metrics::render))
}
