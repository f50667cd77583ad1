//! The API side of tasks: accepting one (every check of the synchronous route first) and
//! canceling one; and what both sides share to end a task: settling its quota once and deleting
//! its inputs.

use std::time::Instant;

use easel_core::error::{BackendError, CoreError, InvalidCode};
use easel_core::request::ImageRequest;
use easel_core::types::ResponseFormat;
use easel_wire::response::ImagesResponse;

use super::request::{StoredRequest, blob_key};
use super::{TaskError, TaskStatus, TaskView, owner};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::handlers::deliver::Ledger;
use crate::handlers::quota::{self, Hold, RateHeaders};
use crate::state::AppState;
use crate::storage::limits::Reservation;
use crate::storage::now;
use crate::storage::tasks::{self as rows, CancelRequest, NewTask, Outcome};

pub(super) async fn submit(
    state: &AppState,
    caller: &Caller,
    mut request: ImageRequest,
    rate: &mut RateHeaders,
) -> ApiResult<TaskView> {
    if request.stream {
        return Err(CoreError::invalid(
            "stream",
            InvalidCode::InvalidValue,
            "An async task cannot stream: send either `stream: true` or `Prefer: respond-async`, not both.",
        )
        .into());
    }
    // A task's images wait for the client to come back for them: hosted, unless it asked for
    // base64 itself.
    request.response_format.get_or_insert(ResponseFormat::Url);
    let operation = request.operation;
    let model = state.service.resolve(operation, request.model.as_deref())?;
    caller.check_model(&model.id)?;
    let ledger = Ledger::new(state, caller, operation, &model, request.options.user.clone(), Instant::now());
    let job = match state.service.prepare(request.clone(), model).await {
        Ok(job) => job,
        Err(e) => return Err(ledger.failed(e.into()).await),
    };
    let hold = match quota::reserve(state, caller, &job, rate).await {
        Ok(hold) => hold,
        Err(e) => return Err(ledger.failed(e).await),
    };
    let id = uuid::Uuid::now_v7().to_string();
    let stored = StoredRequest::new(&request, &job.model.id);
    let task = NewTask {
        id: id.clone(),
        owner: owner(caller),
        operation: operation.as_str().to_string(),
        model: job.model.id.clone(),
        image_count: job.n,
        request: serde_json::to_string(&stored).map_err(anyhow::Error::from)?,
        reservation: hold.as_ref().map(|h| h.reservation().to_json()),
        created_at: now(),
    };
    if let Err(e) = store(state, &task, &stored, StoredRequest::inputs(&job)).await {
        if let Some(hold) = hold {
            hold.settle(&Err(ApiError::Internal(anyhow::anyhow!("the task was not stored")))).await;
        }
        return Err(ApiError::Internal(e.context("storing a task")));
    }
    metrics::counter!("easel_tasks_submitted_total", "model" => task.model.clone()).increment(1);
    state.tasks.submitted.notify_one();
    Ok(TaskView {
        id,
        status: TaskStatus::Queued,
        operation,
        model: task.model,
        image_count: task.image_count,
        created_at: task.created_at,
        started_at: None,
        finished_at: None,
        progress: None,
        result: None,
        error: None,
    })
}

/// The inputs first, then the row: a row exists only once everything it names does.
async fn store(
    state: &AppState,
    task: &NewTask,
    stored: &StoredRequest,
    inputs: Vec<bytes::Bytes>,
) -> anyhow::Result<()> {
    for (index, bytes) in inputs.into_iter().enumerate() {
        if let Err(e) = state.blobs.put(&blob_key(&task.id, index), bytes).await {
            delete_inputs(state, &task.id, index).await;
            return Err(e);
        }
    }
    if let Err(e) = rows::insert(&state.db, task).await {
        delete_inputs(state, &task.id, stored.input_count()).await;
        return Err(e);
    }
    Ok(())
}

pub(super) async fn cancel(state: &AppState, caller: &Caller, id: &str) -> ApiResult<TaskView> {
    let owner = owner(caller);
    let outcome = Outcome::now(state, TaskStatus::Canceled, None, Some(canceled_error()));
    match rows::request_cancel(&state.db, &owner, id, &outcome).await? {
        CancelRequest::Canceled(ended) => {
            tracing::info!(task = id, "task canceled before it ran");
            settle(state, id, &ended.owner, ended.reservation.as_deref(), &Err(BackendError::Cancelled.into())).await;
            delete_inputs_of(state, id, &ended.request).await;
        }
        // Stopped at once if it runs here; otherwise its worker reads the flag with its lease.
        CancelRequest::Flagged => state.tasks.cancel(id),
        CancelRequest::Neither => {
            let task = super::get(state, caller, id).await?;
            return Err(ApiError::TaskFinished { id: task.id, status: task.status.as_str() });
        }
    }
    super::get(state, caller, id).await
}

/// The error a canceled task carries: the synchronous route's `request_cancelled`.
pub(super) fn canceled_error() -> TaskError {
    TaskError::from_api(&BackendError::Cancelled.into())
}

impl Outcome {
    /// A final status reached now; the task expires with the images it hosted.
    pub(super) fn now(state: &AppState, status: TaskStatus, result: Option<String>, error: Option<TaskError>) -> Self {
        let finished_at = now();
        Self { status, result, error, finished_at, expires_at: finished_at + state.url_ttl_secs }
    }
}

/// Charges `owner`'s quota for what `result` delivered and lets go of the rest of the
/// reservation made at submit. Done before the final status is written where the worker can, so
/// a client that sees the task finished also sees its quota settled; a second settle (a run that
/// lost its lease) releases nothing twice.
pub(super) async fn settle(
    state: &AppState,
    id: &str,
    owner: &str,
    reservation: Option<&str>,
    result: &ApiResult<ImagesResponse>,
) {
    let Some(json) = reservation else { return };
    if owner.is_empty() {
        return;
    }
    match Reservation::from_json(json) {
        Ok(reservation) => Hold::resume(state, owner.to_string(), reservation).settle(result).await,
        // The sweep releases it when it expires.
        Err(e) => tracing::error!(error = %e, task = id, "a task's quota reservation is unreadable"),
    }
}

/// Deletes the input images of a task that has ended (`request` names them).
pub(super) async fn delete_inputs_of(state: &AppState, id: &str, request: &str) {
    let inputs = serde_json::from_str::<StoredRequest>(request).map_or(0, |r| r.input_count());
    delete_inputs(state, id, inputs).await;
}

async fn delete_inputs(state: &AppState, id: &str, count: usize) {
    for index in 0..count {
        let key = blob_key(id, index);
        if let Err(e) = state.blobs.delete(&key).await {
            tracing::warn!(error = %e, key, "could not delete a task's input image");
        }
    }
}
