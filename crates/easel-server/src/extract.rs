//! Reading a request body into an [`ImageRequest`], rejecting in OpenAI's error shape.
//!
//! The content type picks the parser: `application/json` (or none) → JSON dialects,
//! `multipart/form-data` → multipart; anything else is a 415. axum's own rejections (body over
//! the limit, a malformed multipart stream) become 413 and 400 envelopes, never plain text.

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, Multipart, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, Uri};
use bytes::Bytes;
use easel_core::error::{CoreError, InvalidCode};
use easel_core::request::ImageRequest;
use easel_core::types::Operation;
use easel_wire::request::{self, FormPart};

use crate::error::ApiError;
use crate::state::AppState;

pub async fn image_request(operation: Operation, state: &AppState, request: Request) -> Result<ImageRequest, ApiError> {
    let content_type =
        request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim().to_string();
    let multipart_allowed = operation != Operation::Generate;
    if essence.is_empty() || essence == "application/json" || essence.ends_with("+json") {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| body_error(e.status(), state, InvalidCode::InvalidJson, e.body_text()))?;
        Ok(request::parse_json(operation, &body, state.unknown_params)?)
    } else if essence == "multipart/form-data" && multipart_allowed {
        let multipart = Multipart::from_request(request, state)
            .await
            .map_err(|e| body_error(e.status(), state, InvalidCode::InvalidMultipart, e.body_text()))?;
        let parts = read_parts(multipart, state).await?;
        Ok(request::parse_multipart(operation, parts, state.unknown_params)?)
    } else {
        let accepted = if multipart_allowed { "application/json or multipart/form-data" } else { "application/json" };
        Err(ApiError::UnsupportedMediaType(format!(
            "Unsupported Content-Type '{content_type}': this endpoint accepts {accepted}."
        )))
    }
}

async fn read_parts(mut multipart: Multipart, state: &AppState) -> Result<Vec<FormPart>, ApiError> {
    let mut parts = Vec::new();
    loop {
        let field = multipart.next_field().await.map_err(|e| multipart_error(&e, state))?;
        let Some(field) = field else { return Ok(parts) };
        let Some(name) = field.name().map(str::to_string) else {
            return Err(CoreError::InvalidRequest {
                param: None,
                code: InvalidCode::InvalidMultipart,
                message: "The request body could not be read: a part has no name \
                          (Content-Disposition: form-data; name=\"...\")."
                    .into(),
            }
            .into());
        };
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(str::to_string);
        let data = field.bytes().await.map_err(|e| multipart_error(&e, state))?;
        parts.push(FormPart { name, filename, content_type, data });
    }
}

/// A JSON body read with axum's `Bytes` extractor (the admin API): over the limit is a 413
/// envelope, not axum's plain-text rejection.
pub fn bytes(body: Result<Bytes, BytesRejection>, state: &AppState) -> Result<Bytes, ApiError> {
    body.map_err(|e| body_error(e.status(), state, InvalidCode::InvalidJson, e.body_text()))
}

/// A path segment (`/v1/models/{id}`), or the segment as sent (still percent-encoded) when it
/// does not decode to UTF-8: no resource has such a name, so the caller answers its own 404
/// rather than axum's plain-text 400.
pub fn segment(path: Result<Path<String>, PathRejection>, uri: &Uri) -> String {
    path.map_or_else(|_| uri.path().rsplit('/').next().unwrap_or_default().to_string(), |Path(segment)| segment)
}

fn multipart_error(error: &axum::extract::multipart::MultipartError, state: &AppState) -> ApiError {
    body_error(error.status(), state, InvalidCode::InvalidMultipart, error.body_text())
}

fn body_error(status: StatusCode, state: &AppState, code: InvalidCode, detail: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(state.max_body_bytes)
    } else {
        ApiError::Core(CoreError::InvalidRequest {
            param: None,
            code,
            message: format!("The request body could not be read: {detail}."),
        })
    }
}
