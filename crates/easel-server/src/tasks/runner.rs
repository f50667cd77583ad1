//! The worker side of tasks, on nodes whose role runs them (`worker`, `all`): claim a queued
//! task, run it under a lease, end it.
//!
//! Each of `concurrency` loops claims one task at a time. While the task runs a keeper renews its
//! lease every third of the lease time and reads the cancel flag; a flag (or a cancel on this
//! node) cancels the job's token, which a local model checks between steps. A keeper that finds
//! its lease gone (it ran out while the node stalled, and the task was queued again) cancels the
//! job and the run ends without touching the task. A maintenance loop, on every worker node,
//! queues again (once, with `retry_running`) or fails the tasks whose lease ran out, and deletes
//! finished tasks once their results expire.
//!
//! The job runs exactly as on the synchronous route: the stored request is prepared again (the
//! same checks on the same values, and the inputs kept at submit), run, and delivered through the
//! same ledger, so usage rows and hosted images are the same; the quota reserved at submit is
//! settled when the task reaches its final status, which happens once whatever node gets there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use easel_core::error::BackendError;
use easel_core::job::{JobContext, Steps};
use easel_wire::response::ImagesResponse;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::request::StoredRequest;
use super::submit::{canceled_error, delete_inputs_of, settle};
use super::{Progress, TaskError, TaskStatus};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::handlers::deliver::Ledger;
use crate::state::AppState;
use crate::storage::now;
use crate::storage::tasks::{self as rows, Claimed, Outcome, Renewal};

/// How this node runs tasks (`[tasks]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tasks run at once.
    pub concurrency: usize,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// Whether a task whose lease ran out runs once more (otherwise it fails).
    pub retry_running: bool,
    /// How often idle workers look for queued tasks, and the maintenance loop runs.
    pub poll: Duration,
}

impl Settings {
    /// Runs a task may have: one, or two when a run cut short is retried.
    fn max_attempts(&self) -> i64 {
        if self.retry_running { 2 } else { 1 }
    }

    fn lease_secs(&self) -> i64 {
        self.lease.as_secs().max(1) as i64
    }
}

/// Starts the workers and the maintenance loop; they stop claiming when `stop` is cancelled or
/// the node drains, and a task already running finishes (the drain waits for it).
pub fn spawn(state: AppState, settings: Settings, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut loops = JoinSet::new();
        for _ in 0..settings.concurrency.max(1) {
            loops.spawn(work(state.clone(), settings.clone(), stop.clone()));
        }
        loops.spawn(maintain(state, settings, stop));
        while loops.join_next().await.is_some() {}
    })
}

async fn work(state: AppState, settings: Settings, stop: CancellationToken) {
    loop {
        if stop.is_cancelled() || state.drain.is_draining() {
            return;
        }
        let lease = uuid::Uuid::now_v7().to_string();
        let at = now();
        match rows::claim(&state.db, &lease, at + settings.lease_secs(), at).await {
            Ok(Some(task)) => {
                let Some(in_flight) = state.drain.enter() else {
                    // Claimed as the drain began: back to the queue for another node.
                    if let Err(e) = rows::requeue(&state.db, &task.id, &task.lease).await {
                        tracing::warn!(error = %e, task = %task.id, "could not give a task back; its lease will run out");
                    }
                    return;
                };
                let span = tracing::info_span!("task", id = %task.id, attempt = task.attempts);
                run(&state, &settings, task).instrument(span).await;
                drop(in_flight);
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not claim a task; will retry"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = state.tasks.submitted.notified() => {}
            () = tokio::time::sleep(settings.poll) => {}
        }
    }
}

/// Runs one claimed task to its end (or until its lease is lost).
async fn run(state: &AppState, settings: &Settings, task: Claimed) {
    tracing::info!("task started");
    let cancel = CancellationToken::new();
    state.tasks.track(&task.id, cancel.clone());
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = tokio::spawn(keep_lease(state.clone(), task.clone(), settings.clone(), cancel.clone(), lost.clone()));
    let (progress, latest) = watch::channel(None);
    let progress_writer = tokio::spawn(write_progress(state.clone(), task.clone(), latest.clone()));
    let steps = Steps::new(move |done, total| {
        progress.send_replace(Some(Progress { done, total }));
    });
    // In its own task, so a panic fails the task instead of the worker loop.
    let job = execute(state.clone(), task.clone(), cancel.clone());
    let result = tokio::spawn(steps.scope(job).in_current_span())
        .await
        .unwrap_or_else(|e| Err(ApiError::Internal(anyhow::anyhow!("a task panicked: {e}"))));
    keeper.abort();
    // The last steps reported are written before the task ends, so a finished task shows them.
    progress_writer.abort();
    let last = *latest.borrow();
    if let Some(last) = last
        && let Err(e) = rows::progress(&state.db, &task.id, &task.lease, last).await
    {
        tracing::warn!(error = %e, "could not record a task's progress");
    }
    state.tasks.untrack(&task.id);
    if lost.load(Ordering::SeqCst) {
        tracing::warn!("the task's lease ran out while it ran; it is another run's now");
        return;
    }
    let outcome = match &result {
        Ok(response) => match serde_json::to_string(response) {
            Ok(json) => Outcome::now(state, TaskStatus::Succeeded, Some(json), None),
            Err(e) => {
                let error = ApiError::Internal(anyhow::Error::from(e).context("serializing a task's result"));
                error.log();
                Outcome::now(state, TaskStatus::Failed, None, Some(TaskError::from_api(&error)))
            }
        },
        Err(_) if cancel.is_cancelled() => Outcome::now(state, TaskStatus::Canceled, None, Some(canceled_error())),
        Err(error) => {
            error.log();
            Outcome::now(state, TaskStatus::Failed, None, Some(TaskError::from_api(error)))
        }
    };
    finish(state, &task, &outcome, &result).await;
}

async fn finish(state: &AppState, task: &Claimed, outcome: &Outcome, result: &ApiResult<ImagesResponse>) {
    settle(state, &task.id, &task.owner, task.reservation.as_deref(), result).await;
    match rows::finish(&state.db, &task.id, &task.lease, outcome).await {
        Ok(Some(ended)) => {
            tracing::info!(status = outcome.status.as_str(), "task finished");
            metrics::counter!("easel_tasks_finished_total", "status" => outcome.status.as_str()).increment(1);
            delete_inputs_of(state, &task.id, &ended.request).await;
        }
        Ok(None) => tracing::warn!("the task's lease was lost before it could finish"),
        // The lease runs out and the task is retried or failed by the maintenance loop.
        Err(e) => tracing::error!(error = %e, "could not record a task's end"),
    }
}

/// The job of `task`, as the synchronous route runs it.
async fn execute(state: AppState, task: Claimed, cancel: CancellationToken) -> ApiResult<ImagesResponse> {
    let stored: StoredRequest =
        serde_json::from_str(&task.request).map_err(|e| anyhow::anyhow!("a task's request is unreadable: {e}"))?;
    let request = stored.load(&task.id, &state.blobs).await?;
    let caller = match task.owner.as_str() {
        "" => Caller::Open,
        key => Caller::Key(
            state.keys.get(key).await?.ok_or_else(|| anyhow::anyhow!("the task's key '{key}' no longer exists"))?,
        ),
    };
    let model = state.service.resolve(stored.operation, Some(&stored.model))?;
    let ledger = Ledger::new(&state, &caller, stored.operation, &model, stored.options.user.clone(), Instant::now());
    // Run again after its worker died between delivering and ending the task, the task keeps
    // the usage row of its first delivery.
    let ledger = match uuid::Uuid::parse_str(&task.id) {
        Ok(id) => ledger.once_as(id),
        Err(_) => ledger,
    };
    let job = match state.service.prepare(request, model).await {
        Ok(job) => job,
        Err(e) => return Err(ledger.failed(e.into()).await),
    };
    match state.service.run(&job, JobContext { cancel, partials: None }).await {
        Ok(output) => ledger.deliver(&job, output).await,
        Err(e) => Err(ledger.failed(e.into()).await),
    }
}

/// Writes the steps a running task reports as they change; a write in progress coalesces the
/// reports that arrive meanwhile.
async fn write_progress(state: AppState, task: Claimed, mut latest: watch::Receiver<Option<Progress>>) {
    while latest.changed().await.is_ok() {
        let Some(progress) = *latest.borrow_and_update() else { continue };
        if let Err(e) = rows::progress(&state.db, &task.id, &task.lease, progress).await {
            tracing::warn!(error = %e, "could not record a task's progress");
        }
    }
}

/// Renews the lease every third of its time until aborted; cancels the job when the owner asked
/// to or when the lease is lost.
async fn keep_lease(
    state: AppState,
    task: Claimed,
    settings: Settings,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let every = (settings.lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match rows::renew(&state.db, &task.id, &task.lease, now() + settings.lease_secs()).await {
            Ok(Renewal::Held { cancel: true }) => cancel.cancel(),
            Ok(Renewal::Held { cancel: false }) => {}
            Ok(Renewal::Lost) => {
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, task = %task.id, "could not renew a task's lease; will retry"),
        }
    }
}

/// Queues again or ends the tasks whose lease ran out, and deletes expired tasks, every `poll`.
async fn maintain(state: AppState, settings: Settings, stop: CancellationToken) {
    loop {
        if let Err(e) = expire_leases(&state, &settings).await {
            tracing::warn!(error = %e, "could not check task leases; will retry");
        }
        if let Err(e) = purge(&state).await {
            tracing::warn!(error = %e, "could not delete expired tasks; will retry");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.poll) => {}
        }
    }
}

/// Handles every task whose lease ran out: its worker stopped (died, or stalled past the lease).
pub async fn expire_leases(state: &AppState, settings: &Settings) -> anyhow::Result<()> {
    for expired in rows::expired_leases(&state.db, now(), 100).await? {
        if !expired.cancel_requested && expired.attempts < settings.max_attempts() {
            if rows::requeue(&state.db, &expired.id, &expired.lease).await? {
                tracing::warn!(task = %expired.id, "a task's worker stopped; the task is queued again");
                state.tasks.submitted.notify_one();
            }
            continue;
        }
        let (outcome, error) = if expired.cancel_requested {
            let error = ApiError::from(BackendError::Cancelled);
            (Outcome::now(state, TaskStatus::Canceled, None, Some(TaskError::from_api(&error))), error)
        } else {
            let error = ApiError::Internal(anyhow::anyhow!("the worker running the task stopped before it finished"));
            (Outcome::now(state, TaskStatus::Failed, None, Some(TaskError::from_api(&error))), error)
        };
        settle(state, &expired.id, &expired.owner, expired.reservation.as_deref(), &Err(error)).await;
        if let Some(ended) = rows::finish(&state.db, &expired.id, &expired.lease, &outcome).await? {
            tracing::warn!(task = %expired.id, status = outcome.status.as_str(), "a task's worker stopped; the task is ended");
            delete_inputs_of(state, &expired.id, &ended.request).await;
        }
    }
    Ok(())
}

/// Deletes finished tasks whose results have expired.
async fn purge(state: &AppState) -> anyhow::Result<()> {
    for id in rows::expired_tasks(&state.db, now(), 500).await? {
        rows::delete(&state.db, &id).await?;
    }
    Ok(())
}
