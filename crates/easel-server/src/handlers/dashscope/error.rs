//! Errors on the DashScope routes: DashScope's body (`{"code", "message", "request_id"}`) with
//! DashScope's code and status, decided in one table from what the OpenAI routes would have
//! answered (their status and `code`, [`ApiError::parts`]), so an error means the same on both
//! APIs. A failed task's `output.code` comes from the same table.
//!
//! The table is keyed on the OpenAI `code` string (what a stored task keeps too); a code it does
//! not name falls back on the status, so a new error is never left without a DashScope answer.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use easel_wire::dashscope::error::{Code, ErrorBody};

use crate::error::ApiError;

/// The DashScope code for an error the OpenAI routes answer with `status` and `code`; `param` is
/// the parameter the error names.
pub fn code_for(status: u16, code: Option<&str>, param: Option<&str>) -> Code {
    match (code, param) {
        (Some("missing_required_parameter"), Some("model")) => Code::EmptyModel,
        (Some("missing_required_parameter"), Some("input")) => Code::EmptyInput,
        (Some("invalid_image_file"), _) => Code::InvalidParameterDataInspection,
        (Some("unsupported_operation"), _) => Code::UnsupportedOperation,
        (Some("model_not_found"), _) => Code::ModelNotFound,
        (Some("content_policy_violation" | "moderation_blocked"), _) => Code::DataInspectionFailed,
        (Some("overloaded"), _) => Code::Throttling,
        (Some("rate_limit_exceeded"), _) => Code::ThrottlingRateQuota,
        (Some("quota_exceeded"), _) => Code::ThrottlingAllocationQuota,
        (Some("upstream_timeout"), _) => Code::InternalErrorTimeout,
        (Some("request_cancelled"), _) => Code::ClientDisconnect,
        // DashScope's answer to cancelling a task that is no longer pending.
        (Some("task_already_finished"), _) => Code::UnsupportedOperation,
        (Some("model_not_allowed" | "admin_key_required" | "invalid_signature" | "url_expired"), _) => {
            Code::AccessDenied
        }
        _ => match status {
            401 => Code::InvalidApiKey,
            403 => Code::AccessDenied,
            404 => Code::NotFound,
            413 => Code::TooLarge,
            429 => Code::Throttling,
            503 => Code::ModelUnavailable,
            400..=499 => Code::InvalidParameter,
            _ => Code::InternalError,
        },
    }
}

/// DashScope's body has no `param`: the message names the field when it does not already.
pub fn message(message: String, param: Option<&str>) -> String {
    match param {
        Some(param) if !message.contains(param) => format!("{param}: {message}"),
        _ => message,
    }
}

/// An error as a DashScope route sends it.
#[derive(Debug)]
pub struct DashScopeError {
    pub code: Code,
    pub message: String,
    pub request_id: String,
    retry_after: Option<Duration>,
}

impl DashScopeError {
    /// What the OpenAI routes would have answered, in DashScope's terms (logged like there).
    pub fn from_api(error: ApiError, request_id: &str) -> Self {
        error.log();
        let parts = error.parts();
        let code = code_for(parts.status.as_u16(), parts.code.map(|c| c.as_str()), parts.param.as_deref());
        let message = message(parts.message, parts.param.as_deref());
        Self { code, message, request_id: request_id.to_string(), retry_after: parts.retry_after }
    }

    /// A refusal only DashScope's protocol has (a call in the wrong mode).
    pub fn refused(code: Code, message: &str, request_id: &str) -> Self {
        Self { code, message: message.to_string(), request_id: request_id.to_string(), retry_after: None }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone(), self.request_id.clone())
    }
}

impl IntoResponse for DashScopeError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(retry_after) = self.retry_after {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use easel_core::error::{BackendError, CoreError, InvalidCode};

    use super::*;
    use crate::storage::limits::{Counter, Exceeded, Standing};

    fn exceeded(counter: Counter) -> ApiError {
        let standing = Standing { counter, limit: 2, remaining: 0, reset_secs: 30 };
        ApiError::LimitExceeded(Exceeded { standing, asked: 1 })
    }

    /// What a DashScope client sees of every error: (status, DashScope code).
    #[test]
    fn the_dashscope_error_table() {
        let invalid = |code| CoreError::invalid("parameters.n", code, "x").into();
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (CoreError::missing("model").into(), 400, "BadRequest.EmptyModel"),
            (CoreError::missing("input").into(), 400, "BadRequest.EmptyInput"),
            (CoreError::missing("input.prompt").into(), 400, "InvalidParameter"),
            (invalid(InvalidCode::InvalidValue), 400, "InvalidParameter"),
            (invalid(InvalidCode::InvalidType), 400, "InvalidParameter"),
            (invalid(InvalidCode::UnknownParameter), 400, "InvalidParameter"),
            (invalid(InvalidCode::IntegerAboveMaxValue), 400, "InvalidParameter"),
            (invalid(InvalidCode::IntegerBelowMinValue), 400, "InvalidParameter"),
            (invalid(InvalidCode::InvalidImageUrl), 400, "InvalidParameter"),
            (invalid(InvalidCode::UnsupportedFileId), 400, "InvalidParameter"),
            (invalid(InvalidCode::TooManyImages), 400, "InvalidParameter"),
            (invalid(InvalidCode::InvalidJson), 400, "InvalidParameter"),
            (invalid(InvalidCode::InvalidMultipart), 400, "InvalidParameter"),
            (invalid(InvalidCode::InvalidPngOutputCompression), 400, "InvalidParameter"),
            (invalid(InvalidCode::UnsupportedOperation), 400, "UnsupportedOperation"),
            (
                CoreError::invalid_image(Some("input.base_image_url".into()), "x").into(),
                400,
                "InvalidParameter.DataInspection",
            ),
            (CoreError::ModelNotFound("m".into()).into(), 404, "ModelNotFound"),
            (BackendError::invalid(None, "x").into(), 400, "InvalidParameter"),
            (BackendError::ContentPolicy { message: "x".into() }.into(), 400, "DataInspectionFailed"),
            (BackendError::ModerationBlocked { message: "x".into() }.into(), 400, "DataInspectionFailed"),
            (BackendError::Overloaded { retry_after: Duration::from_secs(2) }.into(), 429, "Throttling"),
            (BackendError::Unavailable { message: "x".into(), retry_after: None }.into(), 503, "ModelUnavailable"),
            (BackendError::Upstream { status: Some(500), message: "x".into() }.into(), 500, "InternalError"),
            (BackendError::Timeout { message: "x".into() }.into(), 500, "InternalError.Timeout"),
            (BackendError::Cancelled.into(), 400, "ClientDisconnect"),
            (BackendError::Internal(anyhow::anyhow!("boom")).into(), 500, "InternalError"),
            (ApiError::Unauthorized("x".into()), 401, "InvalidApiKey"),
            (ApiError::ModelNotAllowed("m".into()), 403, "AccessDenied"),
            (ApiError::AdminRequired, 403, "AccessDenied"),
            (ApiError::LinkUnsigned, 403, "AccessDenied"),
            (ApiError::LinkExpired, 403, "AccessDenied"),
            (ApiError::KeyNotFound("k".into()), 404, "NotFound"),
            (ApiError::ImageNotFound, 404, "NotFound"),
            (ApiError::UnknownUrl("/x".into()), 404, "NotFound"),
            (ApiError::TaskNotFound("t".into()), 404, "NotFound"),
            (ApiError::TaskFinished { id: "t".into(), status: "succeeded" }, 400, "UnsupportedOperation"),
            (
                ApiError::MethodNotAllowed { method: axum::http::Method::GET, path: "/x".into() },
                400,
                "InvalidParameter",
            ),
            (ApiError::PayloadTooLarge(1), 413, "BadRequest.TooLarge"),
            (ApiError::UnsupportedMediaType("x".into()), 400, "InvalidParameter"),
            (exceeded(Counter::RequestsPerMinute), 429, "Throttling.RateQuota"),
            (exceeded(Counter::TokensPerMonth), 429, "Throttling.AllocationQuota"),
            (ApiError::ShuttingDown, 503, "ModelUnavailable"),
            (ApiError::Internal(anyhow::Error::new(sqlx::Error::PoolTimedOut)), 503, "ModelUnavailable"),
            (ApiError::Internal(anyhow::anyhow!("secret detail")), 500, "InternalError"),
        ];
        for (error, status, code) in cases {
            let described = format!("{error:?}");
            let refused = DashScopeError::from_api(error, "req-1");
            assert_eq!((refused.code.status(), refused.code.as_str()), (status, code), "{described}");
            let body = refused.body();
            assert_eq!((body.code.as_str(), body.request_id.as_str()), (code, "req-1"));
            assert!(!body.message.contains("secret"), "{described}");
        }
    }

    /// DashScope's body has no `param`, so the message names the field.
    #[test]
    fn messages_name_the_field() {
        let error = CoreError::invalid("parameters.size", InvalidCode::InvalidValue, "Invalid size 'huge'.");
        let refused = DashScopeError::from_api(error.into(), "r");
        assert_eq!(refused.message, "parameters.size: Invalid size 'huge'.");
        let refused = DashScopeError::from_api(CoreError::missing("input.prompt").into(), "r");
        assert_eq!(refused.message, "Missing required parameter: 'input.prompt'.");
    }
}
