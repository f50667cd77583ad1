//! The layer every request passes: it refuses new work while the server drains, counts the
//! request in flight, and records the HTTP metrics (route, method, status and, for image
//! requests, the model, which the handler leaves in the response's extensions).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The model an image request used, for the metrics' `model` label.
#[derive(Debug, Clone)]
pub struct ModelLabel(pub String);

/// Paths that answer while draining: liveness, readiness (which then says "draining") and the
/// scrape of the last numbers.
const ALWAYS: &[&str] = &["/healthz", "/readyz", "/metrics"];

pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let method = request.method().to_string();
    let guard = state.drain.enter();
    let response = match guard {
        Some(guard) => {
            request.extensions_mut().insert(guard);
            next.run(request).await
        }
        None if ALWAYS.contains(&request.uri().path()) => next.run(request).await,
        None => ApiError::ShuttingDown.into_response(),
    };
    let model = response.extensions().get::<ModelLabel>().map_or_else(String::new, |m| m.0.clone());
    let status = response.status().as_u16().to_string();
    metrics::counter!("easel_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status, "model" => model)
        .increment(1);
    metrics::histogram!("easel_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
