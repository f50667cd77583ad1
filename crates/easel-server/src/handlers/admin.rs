//! The admin API, for admin keys only (an open keyless server counts as admin): keys with their
//! limits (`/admin/v1/keys`) and usage reports (`/admin/v1/usage`). `easel keys` and `easel
//! usage` do the same from the command line. Bodies and queries are checked like the Images
//! API's, and errors name the field.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use easel_core::error::{CoreError, InvalidCode};
use easel_wire::request::from_value;
use serde_json::{Value, json};

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract;
use crate::state::AppState;
use crate::storage::keys::{KeyRecord, KeySettings};
use crate::storage::reports::{self, Filter, GroupBy, parse_time};

/// A key as the admin API shows it (never its secret, which exists only at creation).
fn key_json(key: &KeyRecord) -> Value {
    let mut value = serde_json::to_value(key).unwrap_or_default();
    value["object"] = json!("api_key");
    value
}

fn settings(body: &Bytes) -> ApiResult<KeySettings> {
    let value: Value = serde_json::from_slice(body).map_err(|e| CoreError::InvalidRequest {
        param: None,
        code: InvalidCode::InvalidJson,
        message: format!("The request body is not valid JSON ({e})."),
    })?;
    Ok(from_value(value, "")?)
}

/// A settings error (an empty name, a negative expiry) names its field: `field: message`.
fn invalid(e: anyhow::Error) -> ApiError {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((field, _)) if !field.contains(' ') => CoreError::invalid_value(field, text.clone()).into(),
        _ => ApiError::Internal(e),
    }
}

pub async fn list_keys(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<Value>> {
    let keys = state.keys.list().await?;
    Ok(Json(json!({"object": "list", "data": keys.iter().map(key_json).collect::<Vec<_>>()})))
}

pub async fn create_key(
    State(state): State<AppState>,
    _admin: Admin,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let settings = settings(&extract::bytes(body, &state)?)?;
    if settings.name.is_none() {
        return Err(CoreError::missing("name").into());
    }
    let key = state.keys.create(settings).await.map_err(invalid)?;
    let mut body = key_json(&key.record);
    body["key"] = json!(key.plaintext);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn get_key(
    State(state): State<AppState>,
    _admin: Admin,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = extract::segment(path, &uri);
    let key = state.keys.get(&id).await?.ok_or(ApiError::KeyNotFound(id))?;
    Ok(Json(key_json(&key)))
}

pub async fn update_key(
    State(state): State<AppState>,
    _admin: Admin,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = extract::segment(path, &uri);
    let settings = settings(&extract::bytes(body, &state)?)?;
    let key = state.keys.update(&id, settings).await.map_err(invalid)?.ok_or(ApiError::KeyNotFound(id))?;
    Ok(Json(key_json(&key)))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    _admin: Admin,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = extract::segment(path, &uri);
    if !state.keys.revoke(&id).await? {
        return Err(ApiError::KeyNotFound(id));
    }
    Ok(Json(json!({"id": id, "object": "api_key", "revoked": true})))
}

/// `GET /admin/v1/usage?key=&model=&since=&until=&by=model|key|day`.
pub async fn usage(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let mut filter = Filter::default();
    let mut by = GroupBy::Model;
    for (name, value) in query {
        let time = |v: &str| parse_time(v).map_err(|m| CoreError::invalid_value(name.clone(), m));
        match name.as_str() {
            "key" => filter.key = Some(value),
            "model" => filter.model = Some(value),
            "since" => filter.since = Some(time(&value)?),
            "until" => filter.until = Some(time(&value)?),
            "by" => {
                by = serde_json::from_value(json!(value)).map_err(|_| {
                    CoreError::invalid_value(
                        "by",
                        format!("Invalid value: '{value}'. Supported values are: 'model', 'key', and 'day'."),
                    )
                })?;
            }
            _ => {
                return Err(CoreError::unknown_parameter(&name).into());
            }
        }
    }
    let rows = reports::usage(&state.db, &filter, by).await?;
    Ok(Json(json!({"object": "list", "by": by, "data": rows})))
}
