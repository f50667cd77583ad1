//! The one place where errors get their HTTP meaning.
//!
//! Every error a handler can return is an [`ApiError`]; [`ApiError::parts`] maps each variant to
//! a status, OpenAI error `type` and `code` in an exhaustive match with no wildcard, so a new
//! variant does not compile until someone decides what clients see. The body is always OpenAI's
//! envelope. Internal failures are logged with their cause chain; the client gets a generic
//! message. `x-should-retry` tells the SDKs whether a retry can help (they honour it over their
//! own rules).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use easel_core::error::{BackendError, CoreError, Fault};
use easel_wire::error::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{message}")]
    Forbidden { message: String, code: &'static str },
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    #[error("The request body is larger than {0} bytes.")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        Self::Core(CoreError::Backend(e))
    }
}

/// What a client sees of an error.
#[derive(Debug, PartialEq, Eq)]
pub struct Parts {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub should_retry: Option<bool>,
}

const INVALID: &str = "invalid_request_error";
const SERVER: &str = "server_error";
const GENERIC_500: &str = "The server had an error while processing your request. Sorry about that!";

impl ApiError {
    pub fn parts(&self) -> Parts {
        let p = |status, kind, code: Option<&'static str>, param: Option<String>, message: String| Parts {
            status,
            kind,
            code,
            param,
            message,
            retry_after: None,
            should_retry: None,
        };
        match self {
            Self::Core(core) => match core {
                CoreError::InvalidRequest { param, code, message } => {
                    p(StatusCode::BAD_REQUEST, INVALID, Some(code.as_str()), param.clone(), message.clone())
                }
                CoreError::InvalidImage { param, message } => p(
                    StatusCode::BAD_REQUEST,
                    "image_generation_user_error",
                    Some("invalid_image_file"),
                    param.clone(),
                    message.clone(),
                ),
                CoreError::ModelNotFound(_) => {
                    p(StatusCode::NOT_FOUND, INVALID, Some("model_not_found"), Some("model".into()), core.to_string())
                }
                CoreError::Backend(backend) => backend_parts(backend),
                CoreError::Internal(_) => Parts {
                    should_retry: Some(false),
                    ..p(StatusCode::INTERNAL_SERVER_ERROR, SERVER, None, None, GENERIC_500.into())
                },
            },
            Self::Unauthorized(message) => {
                p(StatusCode::UNAUTHORIZED, INVALID, Some("invalid_api_key"), None, message.clone())
            }
            Self::Forbidden { message, code } => p(StatusCode::FORBIDDEN, INVALID, Some(code), None, message.clone()),
            Self::NotFound { message, code } => p(StatusCode::NOT_FOUND, INVALID, Some(code), None, message.clone()),
            Self::PayloadTooLarge(_) => {
                p(StatusCode::PAYLOAD_TOO_LARGE, INVALID, Some("request_too_large"), None, self.to_string())
            }
            Self::UnsupportedMediaType(message) => {
                p(StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID, Some("unsupported_media_type"), None, message.clone())
            }
            Self::Internal(_) => Parts {
                should_retry: Some(false),
                ..p(StatusCode::INTERNAL_SERVER_ERROR, SERVER, None, None, GENERIC_500.into())
            },
        }
    }

    /// Whether this is the client's doing (logged quietly) or ours.
    pub fn is_server_fault(&self) -> bool {
        match self {
            Self::Core(CoreError::Backend(b)) => b.fault() != Fault::User,
            Self::Core(CoreError::Internal(_)) | Self::Internal(_) => true,
            _ => false,
        }
    }
}

fn backend_parts(error: &BackendError) -> Parts {
    let base = |status, kind, code: &'static str, param: Option<String>, message: String, should_retry| Parts {
        status,
        kind,
        code: Some(code),
        param,
        message,
        retry_after: None,
        should_retry,
    };
    match error {
        BackendError::InvalidInput { param, message } => {
            base(StatusCode::BAD_REQUEST, INVALID, "invalid_value", param.clone(), message.clone(), None)
        }
        BackendError::ContentPolicy { message } => {
            base(StatusCode::BAD_REQUEST, INVALID, "content_policy_violation", None, message.clone(), Some(false))
        }
        BackendError::Overloaded { retry_after } => Parts {
            retry_after: Some(*retry_after),
            ..base(StatusCode::SERVICE_UNAVAILABLE, SERVER, "overloaded", None, error.to_string(), Some(true))
        },
        BackendError::Unavailable { message, retry_after } => Parts {
            retry_after: *retry_after,
            ..base(StatusCode::SERVICE_UNAVAILABLE, SERVER, "model_unavailable", None, message.clone(), Some(true))
        },
        // The upstream backend has already retried with backoff and tried every fallback; an
        // SDK's automatic retries would only bill the same failing generation again.
        BackendError::Upstream { message, .. } => {
            base(StatusCode::BAD_GATEWAY, SERVER, "upstream_error", None, message.clone(), Some(false))
        }
        BackendError::Timeout { message } => {
            base(StatusCode::GATEWAY_TIMEOUT, SERVER, "upstream_timeout", None, message.clone(), Some(false))
        }
        BackendError::Cancelled => base(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            INVALID,
            "request_cancelled",
            None,
            error.to_string(),
            Some(false),
        ),
        BackendError::Internal(_) => {
            base(StatusCode::INTERNAL_SERVER_ERROR, SERVER, "server_error", None, GENERIC_500.into(), Some(false))
        }
    }
}

impl ApiError {
    /// The envelope as sent, for SSE `error` events too.
    pub fn body(&self) -> ErrorBody {
        let parts = self.parts();
        ErrorBody::new(parts.message, parts.kind, parts.param, parts.code)
    }

    pub fn log(&self) {
        if self.is_server_fault() {
            tracing::error!(error = ?anyhow_chain(self), "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
    }
}

fn anyhow_chain(error: &ApiError) -> String {
    let mut out = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let parts = self.parts();
        let body = ErrorBody::new(parts.message, parts.kind, parts.param, parts.code);
        let mut response = (parts.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(retry_after) = parts.retry_after {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(should_retry) = parts.should_retry {
            headers.insert("x-should-retry", HeaderValue::from_static(if should_retry { "true" } else { "false" }));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use easel_core::error::InvalidCode;

    /// The public contract: every variant's (status, type, code). A change here is a change
    /// clients see.
    #[test]
    fn the_error_table() {
        let cases: Vec<(ApiError, u16, &str, Option<&str>)> = vec![
            (CoreError::missing("prompt").into(), 400, INVALID, Some("missing_required_parameter")),
            (
                CoreError::invalid("n", InvalidCode::IntegerAboveMaxValue, "x").into(),
                400,
                INVALID,
                Some("integer_above_max_value"),
            ),
            (
                CoreError::invalid_image(Some("image".into()), "x").into(),
                400,
                "image_generation_user_error",
                Some("invalid_image_file"),
            ),
            (CoreError::ModelNotFound("m".into()).into(), 404, INVALID, Some("model_not_found")),
            (BackendError::invalid(Some("image".into()), "x").into(), 400, INVALID, Some("invalid_value")),
            (
                BackendError::ContentPolicy { message: "x".into() }.into(),
                400,
                INVALID,
                Some("content_policy_violation"),
            ),
            (BackendError::Overloaded { retry_after: Duration::from_secs(2) }.into(), 503, SERVER, Some("overloaded")),
            (
                BackendError::Unavailable { message: "x".into(), retry_after: None }.into(),
                503,
                SERVER,
                Some("model_unavailable"),
            ),
            (
                BackendError::Upstream { status: Some(500), message: "x".into() }.into(),
                502,
                SERVER,
                Some("upstream_error"),
            ),
            (BackendError::Timeout { message: "x".into() }.into(), 504, SERVER, Some("upstream_timeout")),
            (BackendError::Cancelled.into(), 499, INVALID, Some("request_cancelled")),
            (BackendError::Internal(anyhow::anyhow!("boom")).into(), 500, SERVER, Some("server_error")),
            (CoreError::Internal(anyhow::anyhow!("boom")).into(), 500, SERVER, None),
            (ApiError::Unauthorized("x".into()), 401, INVALID, Some("invalid_api_key")),
            (
                ApiError::Forbidden { message: "x".into(), code: "model_not_allowed" },
                403,
                INVALID,
                Some("model_not_allowed"),
            ),
            (ApiError::NotFound { message: "x".into(), code: "not_found" }, 404, INVALID, Some("not_found")),
            (ApiError::PayloadTooLarge(1), 413, INVALID, Some("request_too_large")),
            (ApiError::UnsupportedMediaType("x".into()), 415, INVALID, Some("unsupported_media_type")),
            (ApiError::Internal(anyhow::anyhow!("secret detail")), 500, SERVER, None),
        ];
        for (error, status, kind, code) in cases {
            let parts = error.parts();
            assert_eq!((parts.status.as_u16(), parts.kind, parts.code), (status, kind, code), "{error:?}");
            assert!(!parts.message.contains("secret detail") && !parts.message.contains("boom"));
        }
    }
}
