//! DashScope's error body, `{"code", "message", "request_id"}`, and the codes Easel sends in it,
//! each with the HTTP status DashScope documents for it (Alibaba Model Studio's status-code
//! table). Which code an error gets is the server's decision (`handlers/dashscope/error.rs`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeErrorBody))]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl ErrorBody {
    pub fn new(code: Code, message: impl Into<String>, request_id: impl Into<String>) -> Self {
        Self { code: code.as_str().to_string(), message: message.into(), request_id: request_id.into() }
    }
}

/// A DashScope error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidParameter,
    /// An input image that is not a readable image.
    InvalidParameterDataInspection,
    /// A safety refusal.
    DataInspectionFailed,
    EmptyInput,
    EmptyModel,
    UnsupportedOperation,
    /// The client went away before the work ended.
    ClientDisconnect,
    TooLarge,
    InvalidApiKey,
    AccessDenied,
    ModelNotFound,
    NotFound,
    Throttling,
    ThrottlingRateQuota,
    ThrottlingAllocationQuota,
    InternalError,
    InternalErrorTimeout,
    ModelUnavailable,
}

impl Code {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidParameter => "InvalidParameter",
            Self::InvalidParameterDataInspection => "InvalidParameter.DataInspection",
            Self::DataInspectionFailed => "DataInspectionFailed",
            Self::EmptyInput => "BadRequest.EmptyInput",
            Self::EmptyModel => "BadRequest.EmptyModel",
            Self::UnsupportedOperation => "UnsupportedOperation",
            Self::ClientDisconnect => "ClientDisconnect",
            Self::TooLarge => "BadRequest.TooLarge",
            Self::InvalidApiKey => "InvalidApiKey",
            Self::AccessDenied => "AccessDenied",
            Self::ModelNotFound => "ModelNotFound",
            Self::NotFound => "NotFound",
            Self::Throttling => "Throttling",
            Self::ThrottlingRateQuota => "Throttling.RateQuota",
            Self::ThrottlingAllocationQuota => "Throttling.AllocationQuota",
            Self::InternalError => "InternalError",
            Self::InternalErrorTimeout => "InternalError.Timeout",
            Self::ModelUnavailable => "ModelUnavailable",
        }
    }

    /// The HTTP status DashScope answers with this code.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidParameter
            | Self::InvalidParameterDataInspection
            | Self::DataInspectionFailed
            | Self::EmptyInput
            | Self::EmptyModel
            | Self::UnsupportedOperation
            | Self::ClientDisconnect => 400,
            Self::InvalidApiKey => 401,
            Self::AccessDenied => 403,
            Self::ModelNotFound | Self::NotFound => 404,
            Self::TooLarge => 413,
            Self::Throttling | Self::ThrottlingRateQuota | Self::ThrottlingAllocationQuota => 429,
            Self::InternalError | Self::InternalErrorTimeout => 500,
            Self::ModelUnavailable => 503,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_as_dashscope_writes_it() {
        let body = ErrorBody::new(Code::InvalidParameter, "num_images_per_prompt must be 1", "req-1");
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"code": "InvalidParameter", "message": "num_images_per_prompt must be 1", "request_id": "req-1"})
        );
    }
}
