//! Who is calling: the [`Caller`] extractor checks `Authorization: Bearer <key>`.
//!
//! While no key was ever made and the server may run open (a loopback bind, or
//! `--insecure-no-auth`), every request is served, whatever key it presents: SDKs insist on
//! sending one. As soon as one key has existed, every request needs a valid, unrevoked, unexpired
//! key, even after the last one is revoked: a server never falls back to open. [`Admin`] is a
//! caller whose key is an admin key (or the open server's).

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::keys::KeyRecord;

#[derive(Debug, Clone)]
pub enum Caller {
    Key(KeyRecord),
    /// No keys exist and the server runs open.
    Open,
}

impl Caller {
    pub fn key_id(&self) -> Option<String> {
        match self {
            Self::Key(key) => Some(key.id.clone()),
            Self::Open => None,
        }
    }

    pub fn may_use(&self, model: &str) -> bool {
        match self {
            Self::Key(key) => key.allows(model),
            Self::Open => true,
        }
    }

    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.may_use(model) { Ok(()) } else { Err(ApiError::ModelNotAllowed(model.to_string())) }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Caller::from_headers(&parts.headers, state).await
    }
}

impl Caller {
    /// The caller a request's headers name.
    pub async fn from_headers(headers: &HeaderMap, state: &AppState) -> Result<Self, ApiError> {
        let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).map(str::trim);
        if let Some(token) = token
            && let Some(key) = state.keys.verify(token).await?
        {
            if key.is_expired(crate::storage::now()) {
                return Err(ApiError::Unauthorized("This API key has expired.".into()));
            }
            return Ok(Self::Key(key));
        }
        if state.open_when_keyless && !state.keys.any_ever().await? {
            return Ok(Self::Open);
        }
        Err(ApiError::Unauthorized(match token {
            Some(_) => "Incorrect API key provided.".into(),
            None => "You didn't provide an API key. You need to provide your API key in an Authorization header \
                     using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .into(),
        }))
    }
}

impl Caller {
    /// Whether this caller may use the admin API (and see `/readyz`'s details).
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Key(key) => key.admin,
            Self::Open => true,
        }
    }
}

/// A caller allowed to use the admin API.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.is_admin() { Ok(Self(caller)) } else { Err(ApiError::AdminRequired) }
    }
}
