//! The route table: paths to handlers, nothing else. Layers and state are added in
//! [`crate::startup`].

use axum::Router;
use axum::routing::{get, post};

use crate::handlers::{admin, dashscope, files, health, images, metrics, models, playground, tasks};
use crate::openapi;
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
        .route("/api/v1/services/aigc/multimodal-generation/generation", post(dashscope::generation::generation))
        .route("/api/v1/services/aigc/text2image/image-synthesis", post(dashscope::tasks::text2image))
        .route("/api/v1/services/aigc/image2image/image-synthesis", post(dashscope::tasks::image2image))
        .route("/api/v1/tasks", get(dashscope::tasks::list))
        .route("/api/v1/tasks/{task_id}", get(dashscope::tasks::get))
        .route("/api/v1/tasks/{task_id}/cancel", post(dashscope::tasks::cancel))
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/openapi.json", get(openapi::json))
        .route("/docs", get(openapi::page))
        .route("/docs/{file}", get(openapi::asset))
        .merge(health())
}

/// The web playground (`[server] playground`): the page at `/` and its embedded assets.
pub fn playground() -> Router<AppState> {
    Router::new().route("/", get(playground::index)).route("/playground/{file}", get(playground::asset))
}

/// `/healthz` and `/readyz`: all a `worker` node serves besides `/metrics`.
pub fn health() -> Router<AppState> {
    Router::new().route("/healthz", get(health::healthz)).route("/readyz", get(health::readyz))
}

/// `/metrics` on the main listener (behind an API key).
pub fn metrics() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics::get))
}

/// `/metrics` alone, for the private metrics listener.
pub fn private_metrics() -> Router {
    Router::new().route("/metrics", get(metrics::render))
}
