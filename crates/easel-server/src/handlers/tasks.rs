//! `GET /v1/tasks`, `GET /v1/tasks/{id}`, `POST /v1/tasks/{id}/cancel`, and the 202 that
//! `Prefer: respond-async` gets on the image routes: the OpenAI-style shape of
//! [`crate::tasks::TaskView`]. The tasks themselves are [`crate::tasks`]'s.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{HeaderMap, LOCATION};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use easel_core::error::{CoreError, InvalidCode};
use easel_core::range::IntRange;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract;
use crate::state::AppState;
use crate::tasks::{self, ListQuery, TaskStatus, TaskView};

/// Whether the request asked to be answered at once with a task (RFC 7240 `Prefer`).
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|preference| preference.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("respond-async"))
}

/// The 202 for a task just submitted: the task, `Location` where to poll it, and
/// `Preference-Applied`.
pub fn accepted(task: &TaskView) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(task_json(task))).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tasks/{}", task.id)) {
        headers.insert(LOCATION, location);
    }
    headers.insert("preference-applied", HeaderValue::from_static("respond-async"));
    response
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult<Json<Value>> {
    let id = extract::segment(path, &uri);
    Ok(Json(task_json(&tasks::get(&state, &caller, &id).await?)))
}

/// `POST /v1/tasks/{id}/cancel`: `uri` ends in `/cancel`, so the id is taken from the path.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult<Json<Value>> {
    let id = path.map_or_else(
        |_| uri.path().trim_end_matches("/cancel").rsplit('/').next().unwrap_or_default().to_string(),
        |Path(id)| id,
    );
    Ok(Json(task_json(&tasks::cancel(&state, &caller, &id).await?)))
}

/// `GET /v1/tasks?status=&limit=&after=`: the caller's tasks, newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(params) = params.map_err(|e| {
        CoreError::invalid_value("query", format!("The query string could not be read: {}.", e.body_text()))
    })?;
    let query = list_query(params)?;
    let page = tasks::list(&state, &caller, &query).await?;
    let data: Vec<Value> = page.tasks.iter().map(task_json).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": page.tasks.first().map(|t| t.id.clone()),
        "last_id": page.tasks.last().map(|t| t.id.clone()),
        "has_more": page.has_more,
    })))
}

fn list_query(params: HashMap<String, String>) -> ApiResult<ListQuery> {
    let mut query = ListQuery { limit: ListQuery::DEFAULT_LIMIT, ..ListQuery::default() };
    for (name, value) in params {
        match name.as_str() {
            "status" => {
                query.status = Some(TaskStatus::parse(&value).ok_or_else(|| {
                    let names: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                    CoreError::invalid_value(
                        "status",
                        format!(
                            "Invalid value: '{value}'. Supported values are: {}.",
                            easel_core::types::quote_list(&names)
                        ),
                    )
                })?);
            }
            "limit" => {
                let limit: i64 = value.trim().parse().map_err(|_| {
                    CoreError::invalid(
                        "limit",
                        InvalidCode::InvalidType,
                        format!("Invalid type for 'limit': '{value}' is not an integer."),
                    )
                })?;
                query.limit = IntRange::new(1, i64::from(ListQuery::MAX_LIMIT)).check("limit", limit)? as u32;
            }
            "after" => query.after = Some(value),
            _ => {
                return Err(CoreError::unknown_parameter(&name).into());
            }
        }
    }
    Ok(query)
}

/// A task in OpenAI's style: `object: "image.task"`, the images response under `result`, the
/// error envelope's body under `error`.
pub fn task_json(task: &TaskView) -> Value {
    let mut value = json!({
        "id": task.id,
        "object": "image.task",
        "status": task.status.as_str(),
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "model": task.model,
        "operation": task.operation.as_str(),
        "n": task.image_count,
    });
    if let Some(progress) = task.progress {
        value["progress"] = json!({"steps_done": progress.done, "steps_total": progress.total});
    }
    if let Some(result) = &task.result {
        value["result"] = serde_json::to_value(result).unwrap_or_default();
    }
    if let Some(error) = &task.error {
        value["error"] =
            json!({"message": error.message, "type": error.kind, "param": error.param, "code": error.code});
    }
    value
}
