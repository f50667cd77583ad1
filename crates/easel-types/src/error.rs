//! The problems each layer can name: the wire crate and the core raise [`CoreError`], backends
//! raise [`BackendError`].
//!
//! Two layers: [`BackendError`] is what a backend may report (a local model or an upstream
//! provider); [`CoreError`] is what the service reports, wrapping backend errors. Neither knows
//! HTTP: the server crate maps every variant to a status, an OpenAI error `type` and `code` in one
//! exhaustive match, so a new variant does not compile until someone decides its meaning.

use std::time::Duration;

/// Who caused a failure; drives log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    User,
    Upstream,
    Runtime,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The input cannot be used by this backend (too many images, a size it cannot make...).
    #[error("{message}")]
    InvalidInput { param: Option<String>, message: String },
    /// The prompt or image was refused by a safety system.
    #[error("{message}")]
    ContentPolicy { message: String },
    /// GPT image's moderation refused the prompt or an image (OpenAI's `moderation_blocked`,
    /// kept as OpenAI sends it: clients tell it apart from DALL·E's content policy).
    #[error("{message}")]
    ModerationBlocked { message: String },
    /// The backend's queue is full; the client should retry later.
    #[error("The model is busy; retry in {} seconds.", retry_after.as_secs().max(1))]
    Overloaded { retry_after: Duration },
    /// The backend cannot serve at all right now (a model that failed to load, an open circuit).
    #[error("{message}")]
    Unavailable { message: String, retry_after: Option<Duration> },
    /// An upstream provider failed; `status` is its HTTP status where there was one.
    #[error("{message}")]
    Upstream { status: Option<u16>, message: String },
    /// No answer in time.
    #[error("{message}")]
    Timeout { message: String },
    /// The client went away and the work was stopped.
    #[error("the request was cancelled")]
    Cancelled,
    /// A bug or an unexpected runtime failure; details go to the logs, not to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl BackendError {
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self::InvalidInput { param: param.into(), message: message.into() }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::InvalidInput { .. }
            | Self::ContentPolicy { .. }
            | Self::ModerationBlocked { .. }
            | Self::Cancelled => Fault::User,
            Self::Upstream { .. } | Self::Timeout { .. } => Fault::Upstream,
            Self::Overloaded { .. } | Self::Unavailable { .. } | Self::Internal(_) => Fault::Runtime,
        }
    }
}

/// What is wrong with an invalid request, named. The server's error table gives each its HTTP
/// status and OpenAI `code` string (`easel_server::error`), so codes are written in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidCode {
    InvalidValue,
    InvalidType,
    MissingRequiredParameter,
    UnknownParameter,
    IntegerAboveMaxValue,
    IntegerBelowMinValue,
    InvalidImageUrl,
    UnsupportedFileId,
    TooManyImages,
    InvalidJson,
    InvalidMultipart,
    InvalidPngOutputCompression,
    UnsupportedOperation,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A malformed or unacceptable parameter.
    #[error("{message}")]
    InvalidRequest { param: Option<String>, code: InvalidCode, message: String },
    /// An input image or mask that cannot be decoded or used.
    #[error("{message}")]
    InvalidImage { param: Option<String>, message: String },
    /// No model by that id is configured.
    #[error("The model '{0}' does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A failure of Easel itself; details go to the logs.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl CoreError {
    pub fn invalid(param: impl Into<String>, code: InvalidCode, message: impl Into<String>) -> Self {
        Self::InvalidRequest { param: Some(param.into()), code, message: message.into() }
    }

    pub fn invalid_value(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(param, InvalidCode::InvalidValue, message)
    }

    /// A parameter the route does not take (when unknown parameters are refused).
    pub fn unknown_parameter(param: &str) -> Self {
        Self::invalid(param, InvalidCode::UnknownParameter, format!("Unknown parameter: '{param}'."))
    }

    pub fn missing(param: &str) -> Self {
        Self::invalid(param, InvalidCode::MissingRequiredParameter, format!("Missing required parameter: '{param}'."))
    }

    pub fn invalid_image(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self::InvalidImage { param: param.into(), message: message.into() }
    }
}
