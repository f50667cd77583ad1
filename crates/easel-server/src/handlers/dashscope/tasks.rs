//! DashScope's async routes, on the task engine (`crate::tasks`): submit with
//! `X-DashScope-Async: enable` (`text2image` and `image2image` `image-synthesis`), poll at
//! `GET /api/v1/tasks/{task_id}`, cancel at `POST /api/v1/tasks/{task_id}/cancel`. The engine
//! keeps, runs and accounts the task; this module renders it as DashScope does: statuses
//! `PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED`, `CANCELED`, the images in `output.results[].url`,
//! `usage.image_count` (the images delivered), `task_metrics`, times as
//! `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
//!
//! A submit without the async header is refused as DashScope refuses it (these routes are
//! async only). A task belongs to the key that made it; another key's task, an unknown id and
//! an expired task are all 404 `NotFound`. Cancelling a finished task is DashScope's
//! `UnsupportedOperation`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use easel_wire::dashscope::error::Code as DashCode;
use easel_wire::dashscope::request::{Route, parse};
use easel_wire::dashscope::response::{
    Canceled, Submitted, SubmittedOutput, TaskBody, TaskMetrics, TaskOutput, TaskResult, TaskStatus as DashStatus,
    TaskUsage,
};

use super::error::{code_for, message};
use super::{DashScopeError, caller, request_id};
use crate::extract;
use crate::handlers::quota::{self, RateHeaders};
use crate::observe::ModelLabel;
use crate::state::AppState;
use crate::tasks::{self as engine, TaskStatus, TaskView};

/// Whether the call asked for DashScope's async mode.
pub(super) fn async_enabled(headers: &HeaderMap) -> bool {
    headers.get("x-dashscope-async").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("enable"))
}

pub async fn text2image(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    submit(state, Route::Text2Image, headers, body).await
}

pub async fn image2image(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    submit(state, Route::Image2Image, headers, body).await
}

async fn submit(state: AppState, route: Route, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let id = request_id(&headers);
    let caller = match caller(&state, &headers, &id).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if !async_enabled(&headers) {
        return DashScopeError::refused(
            DashCode::AccessDenied,
            "current user api does not support synchronous calls",
            &id,
        )
        .into_response();
    }
    let mut rate = RateHeaders::default();
    let result = async {
        quota::admit(&state, &caller, &mut rate).await?;
        let body = extract::bytes(body, &state)?;
        let request = parse(route, &body, state.unknown_params)?;
        engine::submit(&state, &caller, request, &mut rate).await
    }
    .await;
    let mut response = match result {
        Ok(task) => {
            let output = SubmittedOutput { task_id: task.id.clone(), task_status: status(task.status) };
            let mut response = axum::Json(Submitted { output, request_id: id }).into_response();
            response.extensions_mut().insert(ModelLabel(task.model));
            response
        }
        Err(e) => DashScopeError::from_api(e, &id).into_response(),
    };
    rate.apply(response.headers_mut());
    response
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    task_id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = request_id(&headers);
    let task_id = extract::segment(task_id, &uri);
    let result = async {
        let caller = caller(&state, &headers, &id).await?;
        engine::get(&state, &caller, &task_id).await.map_err(|e| DashScopeError::from_api(e, &id))
    }
    .await;
    match result {
        Ok(task) => axum::Json(body(&task, id)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    task_id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = request_id(&headers);
    // The id is the segment before `/cancel`.
    let task_id = task_id.map_or_else(
        |_| uri.path().trim_end_matches("/cancel").rsplit('/').next().unwrap_or_default().to_string(),
        |Path(task_id)| task_id,
    );
    let result = async {
        let caller = caller(&state, &headers, &id).await?;
        engine::cancel(&state, &caller, &task_id).await.map_err(|e| DashScopeError::from_api(e, &id))
    }
    .await;
    match result {
        Ok(_) => axum::Json(Canceled { request_id: id }).into_response(),
        Err(e) => e.into_response(),
    }
}

fn status(status: TaskStatus) -> DashStatus {
    match status {
        TaskStatus::Queued => DashStatus::Pending,
        TaskStatus::Running => DashStatus::Running,
        TaskStatus::Succeeded => DashStatus::Succeeded,
        TaskStatus::Failed => DashStatus::Failed,
        TaskStatus::Canceled => DashStatus::Canceled,
    }
}

/// DashScope's time format, in UTC.
fn time(secs: Option<i64>) -> Option<String> {
    let at = chrono::DateTime::from_timestamp(secs?, 0)?;
    Some(at.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
}

/// The poll answer for `task`.
fn body(task: &TaskView, request_id: String) -> TaskBody {
    let results: Option<Vec<TaskResult>> = task.result.as_ref().map(|r| {
        r.data.iter().map(|d| TaskResult { url: d.url.clone(), actual_prompt: d.revised_prompt.clone() }).collect()
    });
    let delivered = results.as_ref().map_or(0, |r| r.len() as u32);
    let failed = match task.status {
        TaskStatus::Failed => task.image_count,
        TaskStatus::Succeeded => task.image_count.saturating_sub(delivered),
        _ => 0,
    };
    let error = task.error.as_ref().filter(|_| task.status == TaskStatus::Failed);
    TaskBody {
        request_id,
        output: TaskOutput {
            task_id: task.id.clone(),
            task_status: status(task.status),
            submit_time: time(Some(task.created_at)),
            scheduled_time: time(task.started_at),
            end_time: time(task.finished_at),
            results: results.filter(|_| task.status == TaskStatus::Succeeded),
            task_metrics: Some(TaskMetrics { total: task.image_count, succeeded: delivered, failed }),
            code: error.map(|e| code_for(e.status, e.code.as_deref(), e.param.as_deref()).as_str().to_string()),
            message: error.map(|e| message(e.message.clone(), e.param.as_deref())),
        },
        usage: (task.status == TaskStatus::Succeeded).then_some(TaskUsage { image_count: delivered }),
    }
}

#[cfg(test)]
mod tests {
    use easel_core::types::Operation;
    use easel_wire::response::{ImageData, ImagesResponse};
    use serde_json::json;

    use super::*;
    use crate::tasks::TaskError;

    fn task(status: TaskStatus) -> TaskView {
        TaskView {
            id: "t-1".into(),
            status,
            operation: Operation::Generate,
            model: "m".into(),
            image_count: 2,
            created_at: 1_758_665_650,
            started_at: Some(1_758_665_651),
            finished_at: None,
            progress: None,
            result: None,
            error: None,
        }
    }

    #[test]
    fn a_pending_task() {
        let body = serde_json::to_value(body(&task(TaskStatus::Queued), "r".into())).unwrap();
        assert_eq!(
            body,
            json!({"request_id": "r", "output": {"task_id": "t-1", "task_status": "PENDING",
                   "submit_time": "2025-09-23 22:14:10.000", "scheduled_time": "2025-09-23 22:14:11.000",
                   "task_metrics": {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 0}}})
        );
    }

    /// One of two images delivered: SUCCEEDED, as DashScope counts a partly made task.
    #[test]
    fn a_task_that_made_some_images() {
        let mut done = task(TaskStatus::Succeeded);
        let image = ImageData { url: Some("http://e/a.png".into()), ..ImageData::default() };
        done.result = Some(ImagesResponse {
            created: 0,
            data: vec![image],
            background: None,
            output_format: None,
            quality: None,
            size: None,
            usage: None,
        });
        let body = serde_json::to_value(body(&done, "r".into())).unwrap();
        assert_eq!(body["output"]["results"], json!([{"url": "http://e/a.png"}]));
        assert_eq!(body["output"]["task_metrics"], json!({"TOTAL": 2, "SUCCEEDED": 1, "FAILED": 1}));
        assert_eq!(body["usage"], json!({"image_count": 1}));
    }

    #[test]
    fn a_failed_task_carries_dashscope_code() {
        let mut failed = task(TaskStatus::Failed);
        failed.error = Some(TaskError {
            status: 400,
            message: "refused".into(),
            kind: "invalid_request_error".into(),
            code: Some("content_policy_violation".into()),
            param: None,
        });
        let body = serde_json::to_value(body(&failed, "r".into())).unwrap();
        assert_eq!(body["output"]["task_status"], "FAILED");
        assert_eq!(body["output"]["code"], "DataInspectionFailed");
        assert_eq!(body["output"]["message"], "refused");
        assert_eq!(body["output"]["task_metrics"], json!({"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 2}));
        assert!(body.get("usage").is_none());
    }
}
