//! DashScope's async task protocol: `text2image/image-synthesis` and `image2image/image-synthesis`.
//!
//! A task is submitted with `X-DashScope-Async: enable`, then polled at `GET /api/v1/tasks/{id}`
//! with a growing delay until it ends. Transient poll failures are retried without resubmitting
//! (DashScope asks for that; a resubmit would bill twice). If the call is dropped before the task
//! ends (the client left, or the target's timeout fired), a guard asks DashScope to cancel the
//! task, so abandoned work stops as early as the provider allows.

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

/// Cancels the task on drop unless disarmed.
struct TaskGuard {
    provider: Arc<Provider>,
    task_id: String,
    armed: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let provider = Arc::clone(&self.provider);
        let path = format!("/api/v1/tasks/{}/cancel", self.task_id);
        tracing::info!(provider = %provider.id, task = %self.task_id, "abandoning a DashScope task; asking for its cancellation");
        runtime.spawn(async move {
            let request = provider.post(&path).timeout(Duration::from_secs(5));
            if let Err(e) = request.send().await {
                tracing::debug!(provider = %provider.id, error = %e, "task cancellation request failed");
            }
        });
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
    let mut guard = TaskGuard { provider: Arc::clone(p), task_id: task_id.clone(), armed: true };
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
