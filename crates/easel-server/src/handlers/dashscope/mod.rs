//! DashScope's own routes, so clients written for Alibaba's API (the `dashscope` SDKs, wanx and
//! Qwen-Image integrations) use Easel by changing only their base URL:
//!
//! | route | handler |
//! |---|---|
//! | `POST /api/v1/services/aigc/multimodal-generation/generation` (sync) | [`generation`] |
//! | `POST /api/v1/services/aigc/text2image/image-synthesis` (`X-DashScope-Async: enable`) | [`tasks::text2image`] |
//! | `POST /api/v1/services/aigc/image2image/image-synthesis` (`X-DashScope-Async: enable`) | [`tasks::image2image`] |
//! | `GET /api/v1/tasks/{task_id}`, `POST /api/v1/tasks/{task_id}/cancel` | [`tasks::get`], [`tasks::cancel`] |
//! | `GET /api/v1/tasks` (the caller's tasks, a page at a time) | [`tasks::list`] |
//!
//! They serve the same models, keys, limits, usage and hosted URLs as the OpenAI routes: the
//! bodies are read by `easel_wire::dashscope`, the sync call takes the OpenAI routes' path
//! (resolve, prepare, reserve, run, deliver through the one ledger), the async ones are tasks of
//! the task engine (`crate::tasks`). Only the shapes differ: DashScope's bodies and its error body
//! with its codes ([`error`]), `Authorization: Bearer` refused as `InvalidApiKey`.

pub mod error;
pub mod generation;
pub mod tasks;

use axum::http::HeaderMap;

use crate::auth::Caller;
use crate::state::AppState;
pub use error::DashScopeError;

/// The request's id (`x-request-id`, set for every request), DashScope's `request_id`.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string)
}

/// The caller, or DashScope's `InvalidApiKey`.
async fn caller(state: &AppState, headers: &HeaderMap, request_id: &str) -> Result<Caller, DashScopeError> {
    Caller::from_headers(headers, state).await.map_err(|e| DashScopeError::from_api(e, request_id))
}
