//! Reading an OpenAI image stream (SSE) and passing partial images on.
//!
//! SSE framing is parsed by `eventsource-stream`; each event's JSON `type` says what it is.
//! Partial images go to the core through `cx.partials` as they arrive (the core re-encodes them
//! only when the format differs); `*.completed` events carry the final images.

use bytes::Bytes;
use easel_core::BackendError;
use easel_core::backend::{BackendOutput, CallContext, PartialImage};
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;

use super::skeleton::Skeleton;
use super::wire::StreamEvent;
use crate::http::{Failure, Next, too_large};

/// Why the byte stream under the events stopped.
#[derive(Debug)]
enum Transport {
    Network(reqwest::Error),
    /// The stream passed the provider's `max_response_bytes`.
    TooLarge,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Network(e) => e.fmt(f),
            Self::TooLarge => f.write_str("the stream is too large"),
        }
    }
}

/// Reads the stream to its end; `limit` caps the bytes of the whole stream (every event
/// together), counted as they arrive, so neither one endless event nor endless events are
/// buffered.
pub async fn read(
    provider: &str,
    response: reqwest::Response,
    cx: &CallContext,
    trust_usage: bool,
    limit: usize,
) -> Result<BackendOutput, Failure> {
    let mut total = 0usize;
    let capped = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(Transport::Network)?;
        total += chunk.len();
        if total > limit { Err(Transport::TooLarge) } else { Ok(chunk) }
    });
    let mut events = capped.eventsource();
    let mut output = BackendOutput::default();
    let mut partials = 0u32;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            EventStreamError::Transport(Transport::TooLarge) => too_large(provider, Some(200), limit),
            e => Failure::network(format!("The upstream provider '{provider}' broke off its stream: {e}")),
        })?;
        // The event's text as shared bytes (trimmed as `str::trim` does): its base64 stays a
        // slice of it, and a long one is not read by serde_json (see `Skeleton`).
        let end = event.data.trim_end().len();
        let start = end - event.data[..end].trim_start().len();
        let text = Bytes::from(event.data).slice(start..end);
        if &text[..] == b"[DONE]" {
            break;
        }
        if text.is_empty() {
            continue;
        }
        let skeleton = Skeleton::of(&text);
        let holes_used = |parsed: &StreamEvent<'_>| {
            usize::from(parsed.b64_json.as_deref().is_some_and(|text| skeleton.is_hole(text)))
        };
        let parsed: StreamEvent<'_> = skeleton.read(&text, holes_used).map_err(|e| {
            Failure::protocol(format!("The upstream provider '{provider}' sent an unreadable stream event: {e}"))
        })?;
        if let Some(error) = parsed.error {
            let message = error.message.unwrap_or_else(|| "the stream reported an error".into());
            let code = error.code.as_ref().and_then(|c| c.as_str()).unwrap_or_default().to_string();
            return Err(if code == "moderation_blocked" {
                Failure::new(BackendError::ModerationBlocked { message }, Next::Stop)
            } else if code == "content_policy_violation" {
                Failure::new(BackendError::ContentPolicy { message }, Next::Stop)
            } else {
                Failure::new(
                    BackendError::Upstream {
                        status: None,
                        message: format!("The upstream provider '{provider}' failed mid-stream: {message}"),
                    },
                    Next::Fallback,
                )
            });
        }
        let kind = parsed.kind.as_deref().unwrap_or(event.event.as_str());
        let Some(b64) = parsed.b64_json.as_ref().filter(|b| !skeleton.is_blank(b)) else {
            continue;
        };
        if kind.ends_with("partial_image") {
            if let Some(tx) = &cx.partials {
                let image = skeleton.image(provider, &text, b64)?;
                let index = parsed.partial_image_index.unwrap_or(partials);
                partials += 1;
                // The core stops listening once it has what it wants; that is not an error.
                let _ = tx.send(PartialImage { index, image }).await;
            }
        } else if kind.ends_with("completed") {
            output.images.push(skeleton.image(provider, &text, b64)?);
            if trust_usage && let Some(u) = parsed.usage.as_ref().and_then(|u| u.to_usage()) {
                output.usage = Some(u);
            }
            if output.revised_prompt.is_none() {
                output.revised_prompt = parsed.revised_prompt;
            }
            output.quality = output.quality.or(parsed.quality);
            output.background = output.background.or(parsed.background);
        }
    }
    if output.images.is_empty() {
        return Err(Failure::network(format!(
            "The upstream provider '{provider}' ended its stream before the image was completed."
        )));
    }
    Ok(output)
}
