//! The route table: paths to handlers, nothing else. Layers and state are added in
//! [`crate::startup`].

use axum::Router;
use axum::routing::{get, post};

use crate::handlers::{files, health, images, models};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images/generations", post(images::generations))
        .route("/v1/images/edits", post(images::edits))
        .route("/v1/images/variations", post(images::variations))
        .route("/v1/images/files/{name}", get(files::get))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
}
