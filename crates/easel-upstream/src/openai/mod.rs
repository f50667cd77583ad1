//! The OpenAI-compatible protocol: `/images/generations`, `/images/edits` (multipart or JSON),
//! `/images/variations`, and SSE streaming, shaped per service by a [`Quirks`] profile.
//!
//! Also serves kind `easel` (another Easel node), which is this protocol with the `easel` profile:
//! every parameter and extension passed through, JSON edits, streaming.

mod request;
mod skeleton;
mod stream;
pub mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use easel_core::BackendError;
use easel_core::backend::{BackendCall, BackendOutput, CallContext, Capabilities, ExtensionRanges, PixelInput};
use easel_core::types::Operation;
use serde_json::{Map, Value};

use crate::http::{self, Failure, Next};
use crate::media;
use crate::profile::{EditStyle, Quirks};
use crate::provider::Provider;
use crate::router::Target;
use skeleton::Skeleton;
use wire::ImagesResponse;

pub use request::target_size;

#[derive(Debug)]
pub struct OpenAiTarget {
    provider: Arc<Provider>,
    model: String,
    quirks: Quirks,
    caps: Capabilities,
    extra: Option<Map<String, Value>>,
}

impl OpenAiTarget {
    pub fn new(provider: Arc<Provider>, model: String, quirks: Quirks, extra: Option<Map<String, Value>>) -> Self {
        let caps = capabilities(&quirks);
        Self { provider, model, quirks, caps, extra }
    }

    pub fn quirks(&self) -> &Quirks {
        &self.quirks
    }

    fn request(&self, call: &BackendCall, stream: bool) -> Result<reqwest::RequestBuilder, Failure> {
        let q = &self.quirks;
        let fields = request::fields(q, &self.model, call, stream, self.extra.as_ref());
        let p = &self.provider;
        Ok(match call.operation {
            Operation::Generate => p.post("/images/generations").json(&request::json_body(fields)),
            Operation::Edit => match q.edits {
                EditStyle::Multipart => p.post("/images/edits").multipart(request::multipart(fields, call)),
                EditStyle::Json => p.post("/images/edits").json(&request::json_edit(fields, call)),
                EditStyle::GenerationImageUrl => {
                    p.post("/images/generations").json(&request::image_url_edit(fields, call))
                }
                EditStyle::None => return Err(unsupported(&p.id, "edits")),
            },
            Operation::Variation => p.post("/images/variations").multipart(request::multipart(fields, call)),
        })
    }

    async fn parse(&self, body: &Bytes) -> Result<BackendOutput, Failure> {
        let id = self.provider.id.as_str();
        let skeleton = Skeleton::of(body);
        let parsed = read(id, body, &skeleton)?;
        let items = parsed.data.unwrap_or_default();
        if items.is_empty() {
            if parsed.error.is_some() {
                // An error envelope inside HTTP 200: judged like the same body with a 500.
                let mut failure = http::status_failure(id, 500, &Default::default(), body);
                if let BackendError::Upstream { status, .. } = &mut failure.error {
                    *status = None;
                }
                return Err(failure);
            }
            return Err(Failure::protocol(format!("The upstream provider '{id}' returned no images.")));
        }
        let mut output = BackendOutput::default();
        let mut downloads = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if output.revised_prompt.is_none() {
                output.revised_prompt = item.revised_prompt.clone().filter(|p| !p.is_empty());
            }
            let b64 = item.b64_json.as_ref().filter(|b| !skeleton.is_blank(b));
            match (b64, item.url.as_deref().filter(|u| !u.is_empty())) {
                (Some(b64), _) => {
                    downloads.push(futures::future::Either::Left(std::future::ready(skeleton.image(id, body, b64))))
                }
                (None, Some(url)) => {
                    downloads.push(futures::future::Either::Right(media::from_url(id, &self.provider.fetcher, url)))
                }
                (None, None) => {
                    return Err(Failure::protocol(format!(
                        "The upstream provider '{id}' returned image {index} without data."
                    )));
                }
            }
        }
        output.images = futures::future::try_join_all(downloads).await?;
        if self.quirks.usage {
            output.usage = parsed.usage.as_ref().and_then(|u| u.to_usage());
        }
        (output.quality, output.background) = (parsed.quality, parsed.background);
        Ok(output)
    }
}

/// The answer, parsed from its skeleton when every hole in it is an image's `b64_json`.
fn read<'a>(id: &str, body: &'a [u8], skeleton: &'a Skeleton) -> Result<ImagesResponse<'a>, Failure> {
    let holes_used = |parsed: &ImagesResponse<'_>| {
        let images = parsed.data.iter().flatten().filter_map(|item| item.b64_json.as_deref());
        images.filter(|text| skeleton.is_hole(text)).count()
    };
    skeleton.read(body, holes_used).map_err(|e| http::unreadable(id, &e))
}

fn unsupported(provider: &str, what: &str) -> Failure {
    Failure::new(
        BackendError::invalid(
            Some("model".to_string()),
            format!("The upstream provider '{provider}' does not serve image {what}."),
        ),
        Next::Fallback,
    )
}

/// The capabilities a profile gives.
pub fn capabilities(q: &Quirks) -> Capabilities {
    let mut operations = Vec::new();
    if q.generations {
        operations.push(Operation::Generate);
    }
    if q.edits != EditStyle::None {
        operations.push(Operation::Edit);
    }
    if q.variations {
        operations.push(Operation::Variation);
    }
    Capabilities {
        operations,
        sizes: q.sizes.clone(),
        native_sizes: q.native_sizes.clone(),
        default_size: q.default_size,
        picks_size: q.picks_size,
        max_n: q.max_n,
        max_n_per_call: q.max_n_per_call.min(q.max_n).max(1),
        max_input_images: if q.edits == EditStyle::None { 0 } else { q.max_input_images },
        native_masks: q.masks && matches!(q.edits, EditStyle::Multipart | EditStyle::Json),
        transparency: q.transparency,
        qualities: q.qualities.clone(),
        default_quality: q.default_quality,
        partial_images: q.streaming,
        max_prompt_chars: q.max_prompt_chars,
        // Passed on as the client gave them; OpenAI-compatible services document no ranges.
        extensions: ExtensionRanges::default(),
        pixels: PixelInput::Bytes,
    }
}

#[async_trait]
impl Target for OpenAiTarget {
    fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    fn model(&self) -> &str {
        &self.model
    }

    /// Another Easel node's model: what the node says it accepts, once it has said so; until then
    /// (and for every other service) what the profile gives.
    fn capabilities(&self) -> &Capabilities {
        self.provider.node_models.get().and_then(|models| models.get(&self.model)).unwrap_or(&self.caps)
    }

    async fn attempt(&self, call: &BackendCall, cx: &CallContext) -> Result<BackendOutput, Failure> {
        let id = self.provider.id.as_str();
        let stream = self.quirks.streaming
            && call.partial_images > 0
            && cx.partials.is_some()
            && call.operation != Operation::Variation;
        let request = self.request(call, stream)?;
        let limit = self.provider.max_response_bytes;
        if !stream {
            let (_, body) = http::send_limited(id, request, limit).await?;
            return self.parse(&body).await;
        }
        let response = request.send().await.map_err(|e| http::request_failure(id, &e))?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = http::read_body(id, response, limit).await.unwrap_or_default();
            return Err(http::status_failure(id, status.as_u16(), &headers, &body));
        }
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            // A service that ignored `stream` answers with plain JSON.
            let body = http::read_body(id, response, limit).await?;
            return self.parse(&body).await;
        }
        stream::read(id, response, cx, self.quirks.usage, limit).await
    }
}
