//! Sending one request to a provider and deciding what a failure means.
//!
//! Every failure becomes a [`Failure`]: the [`BackendError`] the client would see, plus what the
//! router should do about it ([`Next`]): retry the same target (429, 5xx, connection errors,
//! truncated bodies), move to the next target (bad credentials, unknown model, a host that is not
//! allowed), or stop (the request itself was refused: invalid input, content policy). Keeping
//! that decision next to the status codes means the router never inspects errors itself.
//!
//! Bodies are read as they stream with a running total against the provider's
//! `max_response_bytes` ([`DEFAULT_MAX_RESPONSE_BYTES`] unless set): a provider is a remote party
//! like any other, and one that answers with an endless body must cost a clear upstream error,
//! not the host's memory.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use easel_core::BackendError;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

/// What the router does after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Retry this target after a backoff (then fall back).
    Retry,
    /// Do not retry this target; try the next one.
    Fallback,
    /// This target cannot serve the request as asked (the provider named a capability it lacks:
    /// a size, `n`, a quality, a format): try the next one, without counting it as the target
    /// failing. When no target is left, the provider's 400 is the answer.
    Skip,
    /// The request is at fault (or the client left): answer now.
    Stop,
}

#[derive(Debug)]
pub struct Failure {
    pub error: BackendError,
    pub next: Next,
    /// The provider's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(error: BackendError, next: Next) -> Self {
        Self { error, next, retry_after: None }
    }

    /// A provider answer that makes no sense (bad JSON, no images): not worth retrying here.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(BackendError::Upstream { status: None, message: message.into() }, Next::Fallback)
    }

    /// A broken connection or body: worth retrying.
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(BackendError::Upstream { status: None, message: message.into() }, Next::Retry)
    }

    pub fn cancelled() -> Self {
        Self::new(BackendError::Cancelled, Next::Stop)
    }
}

/// OpenAI's error envelope, as most compatible services send it.
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub code: Option<Value>,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

fn code_str(code: &Option<Value>) -> Option<String> {
    match code {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The failure for a non-success HTTP status with an OpenAI-style (or unknown) body.
pub fn status_failure(provider: &str, status: u16, headers: &HeaderMap, body: &[u8]) -> Failure {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok().map(|e| e.error);
    let message = parsed.as_ref().and_then(|e| e.message.clone()).unwrap_or_else(|| snippet(body));
    let code = parsed.as_ref().and_then(|e| code_str(&e.code)).unwrap_or_default();
    let param = parsed.as_ref().and_then(|e| e.param.clone());
    if code == "moderation_blocked" {
        // GPT image's moderation: passed on under OpenAI's own code, not renamed.
        return Failure::new(BackendError::ModerationBlocked { message }, Next::Stop);
    }
    let policy = ["content_policy_violation", "moderation_blocked", "content_filter"].contains(&code.as_str())
        || message.contains("safety system");
    let mismatch = capability_mismatch(param.as_deref(), &code);
    let mut failure = classify(provider, status, headers, message, policy, param);
    if mismatch && failure.next == Next::Stop && matches!(failure.error, BackendError::InvalidInput { .. }) {
        failure.next = Next::Skip;
    }
    failure
}

/// The request parameters whose refusal says "this target cannot make that" rather than "the
/// request is wrong": another target may well serve the same request. Refusals of the prompt,
/// the input images, `user`, or with no parameter named are the request's own.
const CAPABILITY_PARAMS: &[&str] = &[
    "size",
    "n",
    "quality",
    "style",
    "background",
    "output_format",
    "output_compression",
    "response_format",
    "moderation",
    "input_fidelity",
    "partial_images",
    "stream",
    "mask",
    "model",
    "steps",
    "guidance_scale",
    "strength",
    "seed",
    "negative_prompt",
];

/// Whether a 400 names a capability the target lacks: its `param` (`parameters.size` and
/// `size[0]` count as `size`) is one of `CAPABILITY_PARAMS`, or its code says a parameter is
/// unknown to this service (`unknown_parameter`).
pub fn capability_mismatch(param: Option<&str>, code: &str) -> bool {
    let name = param.map(|p| {
        let p = p.strip_prefix("parameters.").unwrap_or(p);
        p.split(['[', '.']).next().unwrap_or(p)
    });
    code == "unknown_parameter" || name.is_some_and(|n| CAPABILITY_PARAMS.contains(&n))
}

/// Maps a status (plus whether the body says "content policy") to a failure.
pub fn classify(
    provider: &str,
    status: u16,
    headers: &HeaderMap,
    message: String,
    policy: bool,
    param: Option<String>,
) -> Failure {
    let retry_after = retry_after(headers);
    let upstream = |message: String| BackendError::Upstream { status: Some(status), message };
    let mut failure = match status {
        _ if policy => Failure::new(BackendError::ContentPolicy { message }, Next::Stop),
        400 | 413 | 415 | 422 => Failure::new(
            BackendError::InvalidInput {
                param,
                message: format!("The upstream provider rejected the request: {message}"),
            },
            Next::Stop,
        ),
        429 => Failure::new(
            BackendError::Overloaded { retry_after: retry_after.unwrap_or(Duration::from_secs(1)) },
            Next::Retry,
        ),
        401 | 403 => Failure::new(
            upstream(format!("The upstream provider '{provider}' refused the credentials (HTTP {status}): {message}")),
            Next::Fallback,
        ),
        408 | 409 | 425 | 500..=599 => Failure::new(
            upstream(format!("The upstream provider '{provider}' failed (HTTP {status}): {message}")),
            Next::Retry,
        ),
        _ => Failure::new(
            upstream(format!("The upstream provider '{provider}' answered HTTP {status}: {message}")),
            Next::Fallback,
        ),
    };
    failure.retry_after = retry_after;
    failure
}

/// The start of a body, for messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    if text.trim().is_empty() { "(empty body)".into() } else { text.trim().to_string() }
}

/// A `reqwest` error before or while reading a response.
pub fn request_failure(provider: &str, e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        return Failure::new(
            BackendError::Timeout { message: format!("The upstream provider '{provider}' did not answer in time.") },
            Next::Fallback,
        );
    }
    let what = if e.is_connect() { "could not be reached" } else { "broke the connection" };
    Failure::network(format!("The upstream provider '{provider}' {what}: {}", error_chain(e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The most bytes read from one provider response when the provider sets no
/// `max_response_bytes` (and for the prompt enhancer): room for ten large base64 PNGs, far below
/// what would hurt the host. Bodies are read whole before they are parsed, so without a cap a
/// broken or hostile provider could make this server buffer without end.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The failure for a body over `limit`: not retried on this target (it would answer the same),
/// the next target may do better.
pub fn too_large(provider: &str, status: Option<u16>, limit: usize) -> Failure {
    Failure::new(
        BackendError::Upstream {
            status,
            message: format!(
                "The upstream provider '{provider}' sent a response larger than {limit} bytes, the most this server reads from it (max_response_bytes)."
            ),
        },
        Next::Fallback,
    )
}

/// Reads a response body as it streams, failing as soon as the running total passes `limit`
/// (at once when `Content-Length` already says so), so an oversized answer is never buffered.
pub async fn read_body(provider: &str, response: reqwest::Response, limit: usize) -> Result<Bytes, Failure> {
    let status = response.status().as_u16();
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err(too_large(provider, Some(status), limit));
    }
    // Copied as the pieces come, even an answer that arrives whole: a piece is a slice of the
    // connection's read buffer (up to 400 KiB after a large answer), which keeping it would hold
    // for as long as the image, and hyper could not read into again (bench/relay/RESULTS.md).
    let mut body = BytesMut::with_capacity(response.content_length().map_or(0, |len| len as usize));
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let mut f = request_failure(provider, &e);
            if f.next == Next::Retry {
                f.error = BackendError::Upstream {
                    status: Some(status),
                    message: format!(
                        "The upstream provider '{provider}' sent a truncated response: {}",
                        error_chain(&e)
                    ),
                };
            }
            f
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(provider, Some(status), limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Sends a request and reads the whole body (at most `limit` bytes), whatever the status; only
/// network failures (a truncated body included) and oversized bodies are failures here.
pub async fn send_raw(
    provider: &str,
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<(u16, HeaderMap, Bytes), Failure> {
    let response = request.send().await.map_err(|e| request_failure(provider, &e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = read_body(provider, response, limit).await?;
    Ok((status, headers, body))
}

/// Sends a request and reads the whole body (at most `limit` bytes); non-success statuses become
/// failures.
pub async fn send_limited(
    provider: &str,
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<(HeaderMap, Bytes), Failure> {
    let (status, headers, body) = send_raw(provider, request, limit).await?;
    if !(200..300).contains(&status) {
        return Err(status_failure(provider, status, &headers, &body));
    }
    Ok((headers, body))
}

/// [`send_limited`] with [`DEFAULT_MAX_RESPONSE_BYTES`], for callers without a provider table.
pub async fn send(provider: &str, request: reqwest::RequestBuilder) -> Result<(HeaderMap, Bytes), Failure> {
    send_limited(provider, request, DEFAULT_MAX_RESPONSE_BYTES).await
}

/// Parses a JSON body; a body that does not parse (a truncated one included) is retried.
pub fn json<'a, T: Deserialize<'a>>(provider: &str, body: &'a [u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| unreadable(provider, &e))
}

/// The failure for a body that is not the JSON expected: retried when it was cut short.
pub fn unreadable(provider: &str, e: &serde_json::Error) -> Failure {
    let message = format!("The upstream provider '{provider}' sent a response that could not be read: {e}");
    if e.is_eof() { Failure::network(message) } else { Failure::protocol(message) }
}

/// `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn capability_refusals_fall_back_and_the_requests_own_do_not() {
        let failure = |body: Value| status_failure("p", 400, &HeaderMap::new(), body.to_string().as_bytes()).next;
        let error = |param: Value, code: &str| json_error(param, code);
        assert_eq!(failure(error(json!("size"), "invalid_value")), Next::Skip);
        assert_eq!(failure(error(json!("parameters.n"), "invalid_value")), Next::Skip);
        assert_eq!(failure(error(json!("quality"), "invalid_value")), Next::Skip);
        assert_eq!(failure(error(json!("output_format"), "invalid_value")), Next::Skip);
        assert_eq!(failure(error(json!("response_format"), "unknown_parameter")), Next::Skip);
        assert_eq!(failure(error(json!("prompt"), "invalid_value")), Next::Stop);
        assert_eq!(failure(error(json!("image[0]"), "invalid_image_file")), Next::Stop);
        assert_eq!(failure(error(Value::Null, "invalid_request_error")), Next::Stop);
        assert_eq!(
            failure(error(json!("size"), "content_policy_violation")),
            Next::Stop,
            "a refusal of content is never a mismatch"
        );
    }

    fn json_error(param: Value, code: &str) -> Value {
        json!({"error": {"message": "no", "type": "invalid_request_error", "param": param, "code": code}})
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }
}
