//! `GET /v1/images/files/{name}?expires=&signature=`: hosted images behind signed, expiring
//! links. The link is the credential (no API key), so tampered and expired links get a 403 and
//! swept or unknown images a 404, in the usual envelope.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use easel_core::types::OutputFormat;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::storage::signing::Verdict;
use crate::storage::{now, records};

#[derive(Debug, Deserialize)]
pub struct Signed {
    expires: Option<i64>,
    signature: Option<String>,
}

pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Signed>, QueryRejection>,
) -> ApiResult<Response> {
    let (Some(expires), Some(signature)) = query.map_or((None, None), |Query(q)| (q.expires, q.signature)) else {
        return Err(ApiError::LinkUnsigned);
    };
    // A name that is not UTF-8 was never signed.
    let Ok(Path(name)) = path else { return Err(ApiError::LinkBadSignature) };
    let now = now();
    match state.signer.verify(&name, expires, &signature, now) {
        Verdict::Valid => {}
        Verdict::Expired => return Err(ApiError::LinkExpired),
        Verdict::BadSignature => return Err(ApiError::LinkBadSignature),
    }
    let (id, extension) = name.rsplit_once('.').ok_or(ApiError::ImageNotFound)?;
    let format = OutputFormat::from_extension(extension).ok_or(ApiError::ImageNotFound)?;
    let (key, _) = records::hosted_image(&state.db, id).await?.ok_or(ApiError::ImageNotFound)?;
    let bytes = state.blobs.get(&key).await?.ok_or(ApiError::ImageNotFound)?;
    let mut response = Body::from(bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.mime()));
    if let Ok(value) = HeaderValue::from_str(&format!("private, max-age={}", (expires - now).max(0))) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    Ok(response)
}
