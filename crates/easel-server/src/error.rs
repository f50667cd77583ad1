//! The one place where errors get their HTTP meaning.
//!
//! Every error a handler can return is an [`ApiError`]; [`ApiError::parts`] maps each variant to
//! a status, OpenAI error `type` and [`Code`] in an exhaustive match with no wildcard, so a new
//! variant does not compile until someone decides what clients see. Every `code` string Easel
//! sends is a variant of [`Code`], written once in [`Code::as_str`]; the wire and core crates only
//! name the problem ([`InvalidCode`], the variants of `CoreError` and `BackendError`). The body is
//! always OpenAI's envelope. Internal failures are logged with their cause chain; the client gets
//! one generic body. `x-should-retry` tells the SDKs whether a retry can help (they honour it over
//! their own rules).

use std::time::Duration;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use easel_core::error::{BackendError, CoreError, Fault, InvalidCode};
use easel_wire::error::ErrorBody;

use crate::storage::limits::{Exceeded, LimitError};

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::Exceeded(exceeded) => Self::LimitExceeded(exceeded),
            LimitError::Db(e) => Self::Internal(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("This API key is not allowed to use the model '{0}'.")]
    ModelNotAllowed(String),
    #[error("This needs an admin key (easel keys create --admin).")]
    AdminRequired,
    #[error("{}", .0.message())]
    LimitExceeded(Exceeded),
    #[error("No API key with id '{0}'.")]
    KeyNotFound(String),
    #[error("This image link is not signed.")]
    LinkUnsigned,
    #[error("This image link's signature is invalid.")]
    LinkBadSignature,
    #[error("This image link has expired.")]
    LinkExpired,
    #[error("No such image: it may have expired and been deleted.")]
    ImageNotFound,
    #[error("Unknown request URL: {0}.")]
    UnknownUrl(String),
    #[error("Method {method} is not allowed for {path}.")]
    MethodNotAllowed { method: Method, path: String },
    #[error("The request body is larger than {0} bytes.")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("This server is shutting down; retry the request (another node will take it).")]
    ShuttingDown,
    #[error("No task with id '{0}'.")]
    TaskNotFound(String),
    #[error("The task '{id}' has already finished ({status}); only queued or running tasks can be canceled.")]
    TaskFinished { id: String, status: &'static str },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        Self::Core(CoreError::Backend(e))
    }
}

/// Every OpenAI error `code` Easel sends: the problems the wire and core crates name in a request
/// ([`InvalidCode`]), and the server's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Invalid(InvalidCode),
    InvalidImageFile,
    ModelNotFound,
    ContentPolicyViolation,
    ModerationBlocked,
    Overloaded,
    ModelUnavailable,
    UpstreamError,
    UpstreamTimeout,
    RequestCancelled,
    InvalidApiKey,
    ModelNotAllowed,
    AdminRequired,
    RateLimitExceeded,
    QuotaExceeded,
    KeyNotFound,
    DatabaseUnavailable,
    InvalidSignature,
    UrlExpired,
    ImageNotFound,
    UnknownUrl,
    MethodNotAllowed,
    RequestTooLarge,
    UnsupportedMediaType,
    ShuttingDown,
    TaskNotFound,
    TaskFinished,
}

impl Code {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid(invalid) => match invalid {
                InvalidCode::InvalidValue => "invalid_value",
                InvalidCode::InvalidType => "invalid_type",
                InvalidCode::MissingRequiredParameter => "missing_required_parameter",
                InvalidCode::UnknownParameter => "unknown_parameter",
                InvalidCode::IntegerAboveMaxValue => "integer_above_max_value",
                InvalidCode::IntegerBelowMinValue => "integer_below_min_value",
                InvalidCode::InvalidImageUrl => "invalid_image_url",
                InvalidCode::UnsupportedFileId => "unsupported_file_id",
                InvalidCode::TooManyImages => "too_many_images",
                InvalidCode::InvalidJson => "invalid_json",
                InvalidCode::InvalidMultipart => "invalid_multipart",
                InvalidCode::InvalidPngOutputCompression => "invalid_png_output_compression",
                InvalidCode::UnsupportedOperation => "unsupported_operation",
            },
            Self::InvalidImageFile => "invalid_image_file",
            Self::ModelNotFound => "model_not_found",
            Self::ContentPolicyViolation => "content_policy_violation",
            Self::ModerationBlocked => "moderation_blocked",
            Self::Overloaded => "overloaded",
            Self::ModelUnavailable => "model_unavailable",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::RequestCancelled => "request_cancelled",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ModelNotAllowed => "model_not_allowed",
            Self::AdminRequired => "admin_key_required",
            Self::RateLimitExceeded => "rate_limit_exceeded",
            Self::QuotaExceeded => "quota_exceeded",
            Self::KeyNotFound => "key_not_found",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::InvalidSignature => "invalid_signature",
            Self::UrlExpired => "url_expired",
            Self::ImageNotFound => "image_not_found",
            Self::UnknownUrl => "unknown_url",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTooLarge => "request_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ShuttingDown => "shutting_down",
            Self::TaskNotFound => "task_not_found",
            Self::TaskFinished => "task_already_finished",
        }
    }
}

/// What a client sees of an error.
#[derive(Debug, PartialEq, Eq)]
pub struct Parts {
    pub status: StatusCode,
    pub kind: &'static str,
    /// `None` only for internal errors, as OpenAI sends them.
    pub code: Option<Code>,
    pub param: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
    pub should_retry: Option<bool>,
}

const INVALID: &str = "invalid_request_error";
/// OpenAI's `type` for an unusable input image and for GPT image's moderation.
const IMAGE_USER: &str = "image_generation_user_error";
const SERVER: &str = "server_error";
const GENERIC_500: &str = "The server had an error while processing your request. Sorry about that!";

impl Parts {
    fn new(status: StatusCode, kind: &'static str, code: Code, param: Option<String>, message: String) -> Self {
        Self { status, kind, code: Some(code), param, message, retry_after: None, should_retry: None }
    }

    fn invalid(status: StatusCode, code: Code, message: String) -> Self {
        Self::new(status, INVALID, code, None, message)
    }

    /// The one body of every internal failure, whichever layer it came from.
    fn internal() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: SERVER,
            code: None,
            param: None,
            message: GENERIC_500.into(),
            retry_after: None,
            should_retry: Some(false),
        }
    }

    fn retry(self, should_retry: bool) -> Self {
        Self { should_retry: Some(should_retry), ..self }
    }
}

impl ApiError {
    pub fn parts(&self) -> Parts {
        let message = self.to_string();
        match self {
            Self::Core(core) => match core {
                CoreError::InvalidRequest { param, code, .. } => {
                    Parts::new(StatusCode::BAD_REQUEST, INVALID, Code::Invalid(*code), param.clone(), message)
                }
                // OpenAI sends `param: null` here; the message names the image ('image[1]').
                CoreError::InvalidImage { .. } => {
                    Parts::new(StatusCode::BAD_REQUEST, IMAGE_USER, Code::InvalidImageFile, None, message)
                }
                CoreError::ModelNotFound(_) => {
                    Parts::new(StatusCode::NOT_FOUND, INVALID, Code::ModelNotFound, Some("model".into()), message)
                }
                CoreError::Backend(backend) => backend_parts(backend),
                CoreError::Internal(_) => Parts::internal(),
            },
            Self::Unauthorized(_) => Parts::invalid(StatusCode::UNAUTHORIZED, Code::InvalidApiKey, message),
            Self::ModelNotAllowed(_) => {
                Parts::new(StatusCode::FORBIDDEN, INVALID, Code::ModelNotAllowed, Some("model".into()), message)
            }
            Self::AdminRequired => Parts::invalid(StatusCode::FORBIDDEN, Code::AdminRequired, message),
            Self::KeyNotFound(_) => Parts::invalid(StatusCode::NOT_FOUND, Code::KeyNotFound, message),
            Self::LimitExceeded(exceeded) => {
                let standing = exceeded.standing;
                let (kind, code) = if standing.counter.is_quota() {
                    ("insufficient_quota", Code::QuotaExceeded)
                } else {
                    (standing.counter.dimension().as_str(), Code::RateLimitExceeded)
                };
                Parts {
                    retry_after: Some(Duration::from_secs(standing.reset_secs)),
                    ..Parts::new(StatusCode::TOO_MANY_REQUESTS, kind, code, None, message)
                }
            }
            Self::LinkUnsigned | Self::LinkBadSignature => {
                Parts::invalid(StatusCode::FORBIDDEN, Code::InvalidSignature, message)
            }
            Self::LinkExpired => Parts::invalid(StatusCode::FORBIDDEN, Code::UrlExpired, message),
            Self::ImageNotFound => Parts::invalid(StatusCode::NOT_FOUND, Code::ImageNotFound, message),
            Self::UnknownUrl(_) => Parts::invalid(StatusCode::NOT_FOUND, Code::UnknownUrl, message),
            Self::MethodNotAllowed { .. } => {
                Parts::invalid(StatusCode::METHOD_NOT_ALLOWED, Code::MethodNotAllowed, message)
            }
            Self::PayloadTooLarge(_) => Parts::invalid(StatusCode::PAYLOAD_TOO_LARGE, Code::RequestTooLarge, message),
            Self::UnsupportedMediaType(_) => {
                Parts::invalid(StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::UnsupportedMediaType, message)
            }
            Self::ShuttingDown => Parts {
                retry_after: Some(Duration::from_secs(1)),
                ..Parts::new(StatusCode::SERVICE_UNAVAILABLE, SERVER, Code::ShuttingDown, None, message).retry(true)
            },
            Self::TaskNotFound(_) => {
                Parts::new(StatusCode::NOT_FOUND, INVALID, Code::TaskNotFound, Some("task_id".into()), message)
            }
            Self::TaskFinished { .. } => Parts::invalid(StatusCode::CONFLICT, Code::TaskFinished, message),
            Self::Internal(e) if crate::storage::db::is_unavailable(e) => Parts::new(
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                Code::DatabaseUnavailable,
                None,
                "The database is unavailable; retry shortly.".into(),
            )
            .retry(true),
            Self::Internal(_) => Parts::internal(),
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
    let message = error.to_string();
    match error {
        BackendError::InvalidInput { param, .. } => Parts::new(
            StatusCode::BAD_REQUEST,
            INVALID,
            Code::Invalid(InvalidCode::InvalidValue),
            param.clone(),
            message,
        ),
        BackendError::ContentPolicy { .. } => {
            Parts::invalid(StatusCode::BAD_REQUEST, Code::ContentPolicyViolation, message).retry(false)
        }
        BackendError::ModerationBlocked { .. } => {
            Parts::new(StatusCode::BAD_REQUEST, IMAGE_USER, Code::ModerationBlocked, None, message).retry(false)
        }
        BackendError::Overloaded { retry_after } => Parts {
            retry_after: Some(*retry_after),
            ..Parts::new(StatusCode::SERVICE_UNAVAILABLE, SERVER, Code::Overloaded, None, message).retry(true)
        },
        BackendError::Unavailable { retry_after, .. } => Parts {
            retry_after: *retry_after,
            ..Parts::new(StatusCode::SERVICE_UNAVAILABLE, SERVER, Code::ModelUnavailable, None, message).retry(true)
        },
        // The upstream backend has already retried with backoff and tried every fallback; an
        // SDK's automatic retries would only bill the same failing generation again.
        BackendError::Upstream { .. } => {
            Parts::new(StatusCode::BAD_GATEWAY, SERVER, Code::UpstreamError, None, message).retry(false)
        }
        BackendError::Timeout { .. } => {
            Parts::new(StatusCode::GATEWAY_TIMEOUT, SERVER, Code::UpstreamTimeout, None, message).retry(false)
        }
        BackendError::Cancelled => Parts::invalid(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::RequestCancelled,
            message,
        )
        .retry(false),
        BackendError::Internal(_) => Parts::internal(),
    }
}

impl ApiError {
    /// The envelope as sent, for SSE `error` events too.
    pub fn body(&self) -> ErrorBody {
        let parts = self.parts();
        ErrorBody::new(parts.message, parts.kind, parts.param, parts.code.map(Code::as_str))
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
        let body = ErrorBody::new(parts.message, parts.kind, parts.param, parts.code.map(Code::as_str));
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
    use crate::storage::limits::{Counter, Standing};

    fn exceeded(counter: Counter) -> ApiError {
        let standing = Standing { counter, limit: 2, remaining: 0, reset_secs: 30 };
        ApiError::LimitExceeded(Exceeded { standing, asked: 1 })
    }

    /// The public contract: every variant's (status, type, code). A change here is a change
    /// clients see.
    #[test]
    fn the_error_table() {
        let invalid = |code| CoreError::invalid("p", code, "x");
        let cases: Vec<(ApiError, u16, &str, Option<&str>)> = vec![
            (CoreError::missing("prompt").into(), 400, INVALID, Some("missing_required_parameter")),
            (invalid(InvalidCode::IntegerAboveMaxValue).into(), 400, INVALID, Some("integer_above_max_value")),
            (invalid(InvalidCode::IntegerBelowMinValue).into(), 400, INVALID, Some("integer_below_min_value")),
            (invalid(InvalidCode::InvalidType).into(), 400, INVALID, Some("invalid_type")),
            (invalid(InvalidCode::UnknownParameter).into(), 400, INVALID, Some("unknown_parameter")),
            (invalid(InvalidCode::InvalidImageUrl).into(), 400, INVALID, Some("invalid_image_url")),
            (invalid(InvalidCode::UnsupportedFileId).into(), 400, INVALID, Some("unsupported_file_id")),
            (invalid(InvalidCode::TooManyImages).into(), 400, INVALID, Some("too_many_images")),
            (invalid(InvalidCode::InvalidJson).into(), 400, INVALID, Some("invalid_json")),
            (invalid(InvalidCode::InvalidMultipart).into(), 400, INVALID, Some("invalid_multipart")),
            (
                invalid(InvalidCode::InvalidPngOutputCompression).into(),
                400,
                INVALID,
                Some("invalid_png_output_compression"),
            ),
            (invalid(InvalidCode::UnsupportedOperation).into(), 400, INVALID, Some("unsupported_operation")),
            (invalid(InvalidCode::InvalidValue).into(), 400, INVALID, Some("invalid_value")),
            (CoreError::invalid_image(Some("image".into()), "x").into(), 400, IMAGE_USER, Some("invalid_image_file")),
            (CoreError::ModelNotFound("m".into()).into(), 404, INVALID, Some("model_not_found")),
            (BackendError::invalid(Some("image".into()), "x").into(), 400, INVALID, Some("invalid_value")),
            (
                BackendError::ContentPolicy { message: "x".into() }.into(),
                400,
                INVALID,
                Some("content_policy_violation"),
            ),
            (
                BackendError::ModerationBlocked { message: "x".into() }.into(),
                400,
                IMAGE_USER,
                Some("moderation_blocked"),
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
            (BackendError::Internal(anyhow::anyhow!("boom")).into(), 500, SERVER, None),
            (CoreError::Internal(anyhow::anyhow!("boom")).into(), 500, SERVER, None),
            (ApiError::Unauthorized("x".into()), 401, INVALID, Some("invalid_api_key")),
            (ApiError::ModelNotAllowed("m".into()), 403, INVALID, Some("model_not_allowed")),
            (ApiError::LinkUnsigned, 403, INVALID, Some("invalid_signature")),
            (ApiError::LinkBadSignature, 403, INVALID, Some("invalid_signature")),
            (ApiError::LinkExpired, 403, INVALID, Some("url_expired")),
            (ApiError::ImageNotFound, 404, INVALID, Some("image_not_found")),
            (ApiError::UnknownUrl("/x".into()), 404, INVALID, Some("unknown_url")),
            (
                ApiError::MethodNotAllowed { method: Method::DELETE, path: "/v1/models".into() },
                405,
                INVALID,
                Some("method_not_allowed"),
            ),
            (ApiError::PayloadTooLarge(1), 413, INVALID, Some("request_too_large")),
            (ApiError::UnsupportedMediaType("x".into()), 415, INVALID, Some("unsupported_media_type")),
            (ApiError::ShuttingDown, 503, SERVER, Some("shutting_down")),
            (ApiError::AdminRequired, 403, INVALID, Some("admin_key_required")),
            (ApiError::KeyNotFound("k".into()), 404, INVALID, Some("key_not_found")),
            (ApiError::TaskNotFound("t".into()), 404, INVALID, Some("task_not_found")),
            (
                ApiError::TaskFinished { id: "t".into(), status: "succeeded" },
                409,
                INVALID,
                Some("task_already_finished"),
            ),
            (exceeded(Counter::RequestsPerMinute), 429, "requests", Some("rate_limit_exceeded")),
            (exceeded(Counter::ImagesPerMinute), 429, "images", Some("rate_limit_exceeded")),
            (exceeded(Counter::TokensPerMonth), 429, "insufficient_quota", Some("quota_exceeded")),
            (
                ApiError::Internal(anyhow::Error::new(sqlx::Error::PoolTimedOut)),
                503,
                SERVER,
                Some("database_unavailable"),
            ),
            (ApiError::Internal(anyhow::anyhow!("secret detail")), 500, SERVER, None),
        ];
        for (error, status, kind, code) in cases {
            let parts = error.parts();
            assert_eq!(
                (parts.status.as_u16(), parts.kind, parts.code.map(Code::as_str)),
                (status, kind, code),
                "{error:?}"
            );
            assert!(!parts.message.contains("secret detail") && !parts.message.contains("boom"));
        }
    }

    /// OpenAI sends `param: null` for an unusable image and for GPT image's moderation, whatever
    /// the layer below knew.
    #[test]
    fn image_and_moderation_errors_name_no_param() {
        let image = ApiError::from(CoreError::invalid_image(
            Some("image[1]".into()),
            "Invalid image file or mode for image 2 ('image[1]')",
        ));
        let parts = image.parts();
        assert_eq!(parts.param, None);
        assert!(parts.message.contains("image[1]"), "the message still says which: {}", parts.message);
        let blocked = ApiError::from(BackendError::ModerationBlocked { message: "safety_violations=[x]".into() });
        assert_eq!(blocked.parts().param, None);
        assert_eq!(blocked.parts().should_retry, Some(false));
    }

    /// Every internal failure looks the same to a client, whichever layer it came from.
    #[test]
    fn internal_errors_have_one_body() {
        let core = ApiError::from(CoreError::Internal(anyhow::anyhow!("a")));
        let backend = ApiError::from(BackendError::Internal(anyhow::anyhow!("b")));
        let server = ApiError::Internal(anyhow::anyhow!("c"));
        assert_eq!(core.body(), backend.body());
        assert_eq!(core.body(), server.body());
        assert_eq!(core.parts(), server.parts());
    }
}
