//! Durable image tasks: a request accepted now, run later by any node, polled by id.
//!
//! A long generation outlives the 60–100 s after which proxies cut connections, so a client may
//! hand the work over and poll (`Prefer: respond-async` on the OpenAI routes, DashScope's own
//! submit-and-poll routes). Everything that can refuse a request happens before the task exists,
//! in [`submit`]: the model is resolved and allowed, the job is prepared (every check, every input
//! fetched and probed) and the quota reserved, so a bad request still gets its 4xx at once.
//!
//! The task then lives in the database (`storage::tasks`), its input images in the blob store,
//! so it survives a restart and any node sharing the database may run it. A worker
//! ([`runner`]) claims one queued task at a time under a lease it renews while the task runs;
//! the claim is one statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL, a conditional `UPDATE`
//! on SQLite), so no task runs twice. A task whose lease runs out (its worker died) is queued
//! again once or failed (`[tasks] retry_running`). Cancelling sets a flag in the row that the
//! worker reads with each renewal (and, on the node running it, cancels the job at once).
//!
//! Usage and quotas are those of the synchronous route: the reservation made at submit is kept
//! in the row and settled once, by whichever node finishes the task. A finished task's result
//! expires with its hosted images.
//!
//! The route handlers (`handlers::tasks` for OpenAI's shapes, the DashScope routes for theirs)
//! only render [`TaskView`]s; they call [`submit`], [`get`], [`list`] and [`cancel`].

pub mod request;
pub mod runner;
mod submit;

pub use runner::Settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use easel_core::request::ImageRequest;
use easel_core::types::Operation;
use easel_wire::response::ImagesResponse;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::handlers::quota::RateHeaders;
use crate::state::AppState;

/// Where a task stands. `Succeeded`, `Failed` and `Canceled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl TaskStatus {
    pub const ALL: [Self; 5] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Canceled];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub const fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// Denoising steps done out of the total, for models that report them (local models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u32,
    pub total: u32,
}

/// Why a task failed: the HTTP status and the parts of the OpenAI error envelope the
/// synchronous route would have answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`.
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub param: Option<String>,
}

impl TaskError {
    /// The error as the synchronous route would have sent it.
    pub fn from_api(error: &ApiError) -> Self {
        let parts = error.parts();
        Self {
            status: parts.status.as_u16(),
            message: parts.message,
            kind: parts.kind.to_string(),
            code: parts.code.map(|c| c.as_str().to_string()),
            param: parts.param,
        }
    }
}

/// One task as a caller sees it; the handlers render it in their API's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    /// A UUIDv7: ids sort by creation time.
    pub id: String,
    pub status: TaskStatus,
    pub operation: Operation,
    /// The model id the request resolved to.
    pub model: String,
    /// The images asked for (`n`); the result holds those delivered.
    pub image_count: u32,
    /// Unix seconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// While running, for models that report steps.
    pub progress: Option<Progress>,
    /// When `Succeeded`: the images response the synchronous route would have returned.
    pub result: Option<ImagesResponse>,
    /// When `Failed` (and `Canceled`, with `request_cancelled`).
    pub error: Option<TaskError>,
}

/// Which of a caller's tasks [`list`] returns: newest first, at most `limit`, those created
/// before the task `after` (the cursor: the last id of the previous page, for OpenAI's shape),
/// skipping `offset` (page numbers, for DashScope's), of this status and model, created in
/// `created_from..=created_to`. `count` asks for the number of matches too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<TaskStatus>,
    pub limit: u32,
    pub after: Option<String>,
    pub offset: u64,
    /// The model id the request resolved to.
    pub model: Option<String>,
    /// Unix seconds, inclusive.
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    pub count: bool,
}

impl ListQuery {
    pub const DEFAULT_LIMIT: u32 = 20;
    pub const MAX_LIMIT: u32 = 100;
}

/// A page of tasks; `has_more` says whether a next page exists; `total` is the number of tasks
/// matching the query on all pages, when it asked for it (`count`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    pub has_more: bool,
    pub total: Option<u64>,
}

/// This node's tasks in hand: the cancellation of each task it runs (so a cancel that arrives
/// here stops the job at once) and the bell that wakes its workers when a task is submitted.
#[derive(Debug, Default)]
pub struct Local {
    running: Mutex<HashMap<String, CancellationToken>>,
    pub(crate) submitted: Notify,
}

impl Local {
    pub(crate) fn track(&self, id: &str, cancel: CancellationToken) {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_string(), cancel);
    }

    pub(crate) fn untrack(&self, id: &str) {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    fn cancel(&self, id: &str) {
        if let Some(token) = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id) {
            token.cancel();
        }
    }
}

/// Shared handle to [`Local`], kept in the application state.
pub type LocalTasks = Arc<Local>;

/// Validates `request` for `caller` exactly as the synchronous route would (resolve, allow,
/// prepare, reserve quota; failures are recorded in the ledger and returned as they would be
/// there), then stores it as a queued task and returns it. The caller's requests per minute are
/// the handler's to count first (`quota::admit`), as on the synchronous route. `rate` collects
/// the `x-ratelimit-*` standings for the 202.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    request: ImageRequest,
    rate: &mut RateHeaders,
) -> ApiResult<TaskView> {
    submit::submit(state, caller, request, rate).await
}

/// The caller's task `id`; another key's task, an unknown id and an expired task are all
/// [`ApiError::TaskNotFound`].
pub async fn get(state: &AppState, caller: &Caller, id: &str) -> ApiResult<TaskView> {
    let found = crate::storage::tasks::get(&state.db, &owner(caller), id, crate::storage::now()).await?;
    found.ok_or_else(|| ApiError::TaskNotFound(id.to_string()))
}

/// The caller's tasks, newest first.
pub async fn list(state: &AppState, caller: &Caller, query: &ListQuery) -> ApiResult<TaskPage> {
    let limit = query.limit.clamp(1, ListQuery::MAX_LIMIT);
    let query = ListQuery { limit, ..query.clone() };
    Ok(crate::storage::tasks::list(&state.db, &owner(caller), &query, crate::storage::now()).await?)
}

/// Cancels the caller's task: a queued task is canceled at once (its quota released); a running
/// one is flagged and its worker stops it between steps, wherever it runs. Returns the task as it
/// stands after the request. A finished task is [`ApiError::TaskFinished`] (409).
pub async fn cancel(state: &AppState, caller: &Caller, id: &str) -> ApiResult<TaskView> {
    submit::cancel(state, caller, id).await
}

/// The owner column of a caller's tasks: its key id, or empty for an open server's callers.
pub(crate) fn owner(caller: &Caller) -> String {
    caller.key_id().unwrap_or_default()
}
