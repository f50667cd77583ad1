//! `GET /metrics`: Prometheus' text format. On the main listener it needs an API key like every
//! other route (open while the server runs keyless); `[metrics] bind` serves it alone on a
//! private address without one.

use axum::http::header;
use axum::response::IntoResponse;

use crate::auth::Caller;

pub async fn get(_caller: Caller) -> impl IntoResponse {
    render().await
}

/// The handler of the private metrics listener.
pub async fn render() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::telemetry::render())
}
