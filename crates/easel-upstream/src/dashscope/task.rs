//! DashScope's async task protocol: `text2image/image-synthesis` and `image2image/image-synthesis`.
//!
//! A task is submitted with `X-DashScope-Async: enable`, then polled at `GET /api/v1/tasks/{id}`
//! with a growing delay until it ends. Transient poll failures are retried without resubmitting
//! (DashScope asks for that; a resubmit would bill twice). If the call is dropped before the task
//! ends (the job was cancelled: the client left or its Easel task was canceled; or the target's
//! timeout fired), a guard asks DashScope to cancel the task (`POST /api/v1/tasks/{id}/cancel`),
//! so abandoned work stops billing as early as the provider allows. DashScope cancels only
//! PENDING tasks, so the cancel is sent only while the task was last seen PENDING; it is spawned,
//! best effort with a short timeout, and never delays the cancellation itself.

use std::sync::Arc;
use std::time::Duration;

use easel_core::BackendError;
use easel_core::backend::{BackendCall, BackendOutput};
use serde_json::{Map, Value, json};

use super::{DashScopeTarget, next_delay, send};
use crate::http::{Failure, Next};
use crate::media::data_url;
use crate::provider::Provider;

const TEXT2IMAGE: &str = "/api/v1/services/aigc/text2image/image-synthesis";
const IMAGE2IMAGE: &str = "/api/v1/services/aigc/image2image/image-synthesis";
/// Consecutive failed polls tolerated before giving up on the task.
const POLL_ERRORS: u32 = 5;

pub async fn text2image(t: &DashScopeTarget, call: &BackendCall) -> Result<BackendOutput, Failure> {
    let mut input = Map::new();
    input.insert("prompt".into(), json!(call.prompt));
    if let Some(neg) = &call.options.extensions.negative_prompt {
        input.insert("negative_prompt".into(), json!(neg));
    }
    let body = json!({ "model": t.model, "input": input, "parameters": t.parameters(call, false) });
    run(t, TEXT2IMAGE, body).await
}

pub async fn image2image(t: &DashScopeTarget, call: &BackendCall) -> Result<BackendOutput, Failure> {
    let mut input = Map::new();
    input.insert("prompt".into(), json!(call.prompt));
    if t.family.edit_function {
        input.insert("function".into(), json!("description_edit"));
        let first = call.images.first().ok_or_else(|| {
            Failure::new(BackendError::invalid(Some("image".to_string()), "An edit needs an image."), Next::Stop)
        })?;
        input.insert("base_image_url".into(), json!(data_url(first)));
    } else {
        input.insert("images".into(), Value::Array(call.images.iter().map(|i| json!(data_url(i))).collect()));
    }
    if let Some(neg) = &call.options.extensions.negative_prompt {
        input.insert("negative_prompt".into(), json!(neg));
    }
    let body = json!({ "model": t.model, "input": input, "parameters": t.parameters(call, false) });
    run(t, IMAGE2IMAGE, body).await
}

/// How long the best-effort cancel request may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Cancels the task upstream on drop while it is armed and was last seen PENDING.
struct TaskGuard {
    provider: Arc<Provider>,
    task_id: String,
    armed: bool,
    /// The last status seen was PENDING (the submit answers PENDING): DashScope cancels only those.
    pending: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (id, task) = (self.provider.id.as_str(), self.task_id.as_str());
        if !self.pending {
            tracing::debug!(
                provider = id,
                task,
                "abandoning a running DashScope task (only pending ones can be cancelled)"
            );
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::info!(provider = id, task, "abandoning a pending DashScope task; asking for its cancellation");
        runtime.spawn(cancel(Arc::clone(&self.provider), self.task_id.clone()));
    }
}

/// `POST /api/v1/tasks/{id}/cancel`, once; the answer is only logged (a task that started
/// running meanwhile answers an error).
async fn cancel(provider: Arc<Provider>, task_id: String) {
    let request = provider.post(&format!("/api/v1/tasks/{task_id}/cancel")).timeout(CANCEL_TIMEOUT);
    match send(&provider, request).await {
        Ok(_) => tracing::info!(provider = %provider.id, task = %task_id, "DashScope cancelled the task"),
        Err(f) => {
            tracing::info!(provider = %provider.id, task = %task_id, error = %f.error, "DashScope did not cancel the task")
        }
    }
}

async fn run(t: &DashScopeTarget, path: &str, body: Value) -> Result<BackendOutput, Failure> {
    let p = &t.provider;
    let id = p.id.as_str();
    let submitted = send(p, p.post(path).header("X-DashScope-Async", "enable").json(&body)).await?;
    let output = submitted.output.unwrap_or_default();
    let Some(task_id) = output.task_id.filter(|t| !t.is_empty()) else {
        return Err(Failure::protocol(format!("The upstream provider '{id}' accepted the task without a task_id.")));
    };
    let mut guard = TaskGuard { provider: Arc::clone(p), task_id: task_id.clone(), armed: true, pending: true };
    let poll_path = format!("/api/v1/tasks/{task_id}");
    let mut delay = p.poll_interval;
    let mut errors = 0;
    loop {
        tokio::time::sleep(delay).await;
        delay = next_delay(delay, p.poll_max_interval);
        let polled = match send(p, p.get(&poll_path)).await {
            Ok(polled) => polled,
            Err(f) if f.next == Next::Retry && errors < POLL_ERRORS => {
                errors += 1;
                tracing::debug!(provider = id, task = %task_id, error = %f.error, "task poll failed; polling again");
                continue;
            }
            Err(f) => return Err(f),
        };
        errors = 0;
        let output = polled.output.unwrap_or_default();
        let status = output.task_status.as_deref().unwrap_or("UNKNOWN");
        guard.pending = status == "PENDING";
        match status {
            "PENDING" | "RUNNING" | "SUSPENDED" => continue,
            _ => guard.armed = false,
        }
        return match status {
            "SUCCEEDED" => {
                let mut links = Vec::new();
                let mut item_errors = Vec::new();
                let mut revised = None;
                for item in output.results.unwrap_or_default() {
                    match item.url.filter(|u| !u.is_empty()) {
                        Some(url) => {
                            links.push(url);
                            if revised.is_none() {
                                revised = item.actual_prompt.filter(|p| !p.is_empty());
                            }
                        }
                        None => item_errors.push((item.code.unwrap_or_default(), item.message.unwrap_or_default())),
                    }
                }
                let count = polled.usage.and_then(|u| u.image_count);
                t.collect(links, item_errors, revised, count).await
            }
            "FAILED" => Err(super::error(
                id,
                None,
                &Default::default(),
                output.code.as_deref().unwrap_or("InternalError"),
                output.message.as_deref().unwrap_or("the task failed"),
            )),
            "CANCELED" => Err(Failure::new(
                BackendError::Upstream {
                    status: None,
                    message: format!("The upstream provider '{id}' cancelled the task."),
                },
                Next::Fallback,
            )),
            _ => Err(Failure::new(
                BackendError::Upstream {
                    status: None,
                    message: format!(
                        "The upstream provider '{id}' no longer knows the task (status {status}: expired or unknown)."
                    ),
                },
                Next::Fallback,
            )),
        };
    }
}
