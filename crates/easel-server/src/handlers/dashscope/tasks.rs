//! DashScope's async routes, on the task engine (`crate::tasks`): submit with
//! `X-DashScope-Async: enable` (`text2image` and `image2image` `image-synthesis`), poll at
//! `GET /api/v1/tasks/{task_id}`, cancel at `POST /api/v1/tasks/{task_id}/cancel`, list at
//! `GET /api/v1/tasks`. The engine keeps, runs and accounts the task; this module renders it as
//! DashScope does: statuses `PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED`, `CANCELED`, the images
//! in `output.results[].url`, `usage.image_count` (the images delivered), `task_metrics`, times
//! as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
//!
//! A submit without the async header is refused as DashScope refuses it (these routes are
//! async only). A task belongs to the key that made it; another key's task, an unknown id and
//! an expired task are all 404 `NotFound`. Cancelling a finished task is DashScope's
//! `UnsupportedOperation`.
//!
//! The list (what the SDKs' `ImageSynthesis.list` calls) takes DashScope's query parameters
//! `page_no` (from 1, default 1), `page_size` (1–100, default 10), `status`, `model_name` (the
//! model id the task resolved to), `start_time` and `end_time` (`YYYYMMDDhhmmss`, UTC,
//! inclusive, on the submit time); anything else is refused or ignored as
//! `[server] unknown_params` says (`api_key_id` and `region` name things Easel does not have:
//! a key sees only its own tasks). A bad value is `InvalidParameter` naming the parameter. Each
//! task of `data` has `task_id`, `status`, `model_name`, and `gmt_create`, `start_time`,
//! `end_time` in Unix milliseconds (the last two once reached); DashScope's account fields
//! (`api_key_id`, `caller_uid`, `region`, `user_api_unique_key`) and the submitting
//! `request_id` are not kept, so not sent.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use easel_core::error::{CoreError, InvalidCode};
use easel_core::range::IntRange;
use easel_wire::dashscope::error::Code as DashCode;
use easel_wire::dashscope::request::{Route, parse};
use easel_wire::dashscope::response::{
    Canceled, Submitted, SubmittedOutput, TaskBody, TaskList, TaskMetrics, TaskOutput, TaskResult,
    TaskStatus as DashStatus, TaskSummary, TaskUsage,
};
use easel_wire::request::UnknownParams;
use serde::Deserialize;
use serde::de::value::{Error as ValueError, StrDeserializer};

use super::error::{code_for, message};
use super::{DashScopeError, caller, request_id};
use crate::error::{ApiError, ApiResult};
use crate::extract;
use crate::handlers::quota::{self, RateHeaders};
use crate::observe::ModelLabel;
use crate::state::AppState;
use crate::tasks::{self as engine, ListQuery, TaskStatus, TaskView};

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

/// `GET /api/v1/tasks`: a page of the caller's tasks, newest first.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let id = request_id(&headers);
    let result = async {
        let caller = caller(&state, &headers, &id).await?;
        let page = async {
            let Query(params) = params.map_err(|e| {
                CoreError::invalid_value("query", format!("The query string could not be read: {}.", e.body_text()))
            })?;
            let (query, page_no) = list_query(params, state.unknown_params)?;
            Ok(list_body(&engine::list(&state, &caller, &query).await?, &query, page_no, id.clone()))
        };
        page.await.map_err(|e: ApiError| DashScopeError::from_api(e, &id))
    }
    .await;
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

const DEFAULT_PAGE_SIZE: u32 = 10;

/// The engine's query for DashScope's parameters, and the page number asked for.
fn list_query(params: HashMap<String, String>, unknown: UnknownParams) -> ApiResult<(ListQuery, u32)> {
    let mut query = ListQuery { limit: DEFAULT_PAGE_SIZE, count: true, ..ListQuery::default() };
    let mut page_no = 1;
    for (name, value) in params {
        match name.as_str() {
            "page_no" => page_no = integer(&name, &value, IntRange::new(1, i64::from(u32::MAX)))? as u32,
            "page_size" => {
                query.limit = integer(&name, &value, IntRange::new(1, i64::from(ListQuery::MAX_LIMIT)))? as u32;
            }
            "status" => query.status = Some(status_named(&value)?),
            "model_name" => query.model = Some(value),
            "start_time" => query.created_from = Some(time_param(&name, &value)?),
            "end_time" => query.created_to = Some(time_param(&name, &value)?),
            _ if unknown == UnknownParams::Ignore => {}
            _ => {
                return Err(CoreError::unknown_parameter(&name).into());
            }
        }
    }
    query.offset = u64::from(page_no - 1) * u64::from(query.limit);
    Ok((query, page_no))
}

fn integer(name: &str, value: &str, range: IntRange) -> ApiResult<i64> {
    let number: i64 = value.trim().parse().map_err(|_| {
        CoreError::invalid(
            name,
            InvalidCode::InvalidType,
            format!("Invalid type for '{name}': '{value}' is not an integer."),
        )
    })?;
    Ok(range.check(name, number)?)
}

/// The engine's status for DashScope's name of it (`UNKNOWN` is no task's).
fn status_named(text: &str) -> ApiResult<TaskStatus> {
    let named = DashStatus::deserialize(StrDeserializer::<ValueError>::new(text)).ok();
    let found: Option<TaskStatus> = TaskStatus::ALL.into_iter().find(|s| Some(status(*s)) == named);
    found.ok_or_else(|| {
        let names: Vec<String> = TaskStatus::ALL
            .iter()
            .filter_map(|s| serde_json::to_value(status(*s)).ok()?.as_str().map(str::to_string))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        CoreError::invalid_value(
            "status",
            format!("Invalid value: '{text}'. Supported values are: {}.", easel_core::types::quote_list(&names)),
        )
        .into()
    })
}

/// `YYYYMMDDhhmmss` (UTC) as Unix seconds.
fn time_param(name: &str, value: &str) -> ApiResult<i64> {
    let at = chrono::NaiveDateTime::parse_from_str(value, "%Y%m%d%H%M%S").map_err(|_| {
        CoreError::invalid_value(
            name,
            format!("Invalid value for '{name}': '{value}' is not a time as YYYYMMDDhhmmss (UTC)."),
        )
    })?;
    Ok(at.and_utc().timestamp())
}

/// The list answer for one page of the query.
fn list_body(page: &engine::TaskPage, query: &ListQuery, page_no: u32, request_id: String) -> TaskList {
    let total = page.total.unwrap_or_default();
    let millis = |secs: i64| secs.saturating_mul(1000);
    TaskList {
        request_id,
        data: page
            .tasks
            .iter()
            .map(|task| TaskSummary {
                task_id: task.id.clone(),
                status: status(task.status),
                model_name: task.model.clone(),
                gmt_create: millis(task.created_at),
                start_time: task.started_at.map(millis),
                end_time: task.finished_at.map(millis),
            })
            .collect(),
        total,
        total_page: total.div_ceil(u64::from(query.limit)),
        page_no,
        page_size: query.limit,
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
