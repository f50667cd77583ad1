//! Alibaba DashScope's native image APIs, chosen by model name:
//! - [`task`]: async `text2image/image-synthesis` (wanx, wan2.x t2i) and `image2image/image-synthesis`
//!   (wanx edits), submitted with `X-DashScope-Async: enable` and polled at `/api/v1/tasks/{id}`
//!   (a cancelled job cancels its task there while it is still PENDING);
//! - [`multimodal`]: sync `multimodal-generation/generation` (qwen-image, qwen-image-edit,
//!   z-image, wan2.6-t2i) and `image-generation/generation` (wan2.6/2.7 image), a message of
//!   image parts then the text.
//!
//! Results come back as links that expire in 24 hours; they are downloaded here through the
//! provider's allow-listed fetcher. Errors, also those inside HTTP 200, are mapped by DashScope's
//! `code` (`DataInspectionFailed` is a content-policy refusal).

mod multimodal;
mod task;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use easel_core::BackendError;
use easel_core::backend::{
    BackendCall, BackendOutput, CallContext, Capabilities, ExtensionRanges, PixelInput, SizeRule,
};
use easel_core::types::{ImageSize, Operation, Quality};
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use crate::http::{self, Failure, Next};
use crate::media;
use crate::provider::Provider;
use crate::router::Target;

/// Which DashScope endpoint a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Text2Image,
    Image2Image,
    Multimodal,
    ImageGeneration,
}

impl Protocol {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "text2image" => Self::Text2Image,
            "image2image" => Self::Image2Image,
            "multimodal" => Self::Multimodal,
            "image-generation" => Self::ImageGeneration,
            other => anyhow::bail!(
                "unknown DashScope protocol '{other}'; expected 'text2image', 'image2image', 'multimodal' or 'image-generation'"
            ),
        })
    }
}

/// When `parameters.size` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeSend {
    Always,
    Never,
    /// qwen-image-edit-plus: only when one image is asked for.
    SingleImage,
}

/// What a DashScope model family does.
#[derive(Debug, Clone)]
struct Family {
    generate: Option<Protocol>,
    edit: Option<Protocol>,
    max_n_per_call: u32,
    native_sizes: Option<SizeRule>,
    size: SizeSend,
    max_inputs: usize,
    /// image2image with `function`/`base_image_url` (wanx2.1-imageedit) rather than `images`.
    edit_function: bool,
    /// DashScope's names for `steps` and `guidance_scale`, where the model takes them
    /// (stable-diffusion: `steps`, `scale`; FLUX: `steps`, `guidance`).
    steps: Option<&'static str>,
    guidance: Option<&'static str>,
    /// Takes `parameters.style` (wanx-v1's `<watercolor>`, ...).
    style: bool,
}

fn fixed(list: &[(u32, u32)]) -> Option<SizeRule> {
    Some(SizeRule::fixed(list))
}

fn edges(min: u32, max: u32) -> Option<SizeRule> {
    Some(SizeRule::Range {
        multiple_of: 1,
        min_edge: min,
        max_edge: max,
        min_pixels: u64::from(min) * u64::from(min),
        max_pixels: u64::from(max) * u64::from(max),
        max_aspect: f64::from(max) / f64::from(min),
    })
}

fn pixels(min: u32, max: u32) -> Option<SizeRule> {
    Some(SizeRule::Range {
        multiple_of: 1,
        min_edge: 256,
        max_edge: max * 2,
        min_pixels: u64::from(min) * u64::from(min),
        max_pixels: u64::from(max) * u64::from(max),
        max_aspect: 4.0,
    })
}

fn family(model: &str) -> Family {
    use Protocol::*;
    let base = Family {
        generate: Some(Text2Image),
        edit: None,
        max_n_per_call: 4,
        native_sizes: edges(512, 1440),
        size: SizeSend::Always,
        max_inputs: 0,
        edit_function: false,
        steps: None,
        guidance: None,
        style: false,
    };
    let m = model;
    if m.starts_with("qwen-image-edit-plus") || m.starts_with("qwen-image-edit-max") {
        Family {
            generate: None,
            edit: Some(Multimodal),
            max_n_per_call: 6,
            native_sizes: edges(512, 2048),
            size: SizeSend::SingleImage,
            max_inputs: 3,
            ..base
        }
    } else if m.starts_with("qwen-image-edit") {
        Family {
            generate: None,
            edit: Some(Multimodal),
            max_n_per_call: 1,
            native_sizes: None,
            size: SizeSend::Never,
            max_inputs: 3,
            ..base
        }
    } else if m.starts_with("qwen-image-2") {
        Family {
            generate: Some(Multimodal),
            edit: Some(Multimodal),
            max_n_per_call: 6,
            native_sizes: edges(512, 2048),
            max_inputs: 3,
            ..base
        }
    } else if m.starts_with("qwen-image") {
        Family {
            generate: Some(Multimodal),
            max_n_per_call: 1,
            native_sizes: fixed(&[(1664, 928), (1472, 1140), (1328, 1328), (1140, 1472), (928, 1664)]),
            ..base
        }
    } else if m.starts_with("z-image") {
        Family { generate: Some(Multimodal), max_n_per_call: 1, native_sizes: edges(512, 2048), ..base }
    } else if m.starts_with("wan2.6-t2i") {
        Family { generate: Some(Multimodal), native_sizes: pixels(1280, 1440), ..base }
    } else if m.starts_with("wan2.6-image") || m.starts_with("wan2.7-image") {
        Family {
            generate: Some(ImageGeneration),
            edit: Some(ImageGeneration),
            native_sizes: pixels(768, 1440),
            max_inputs: 4,
            ..base
        }
    } else if m.contains("imageedit") {
        Family {
            generate: None,
            edit: Some(Image2Image),
            native_sizes: None,
            size: SizeSend::Never,
            max_inputs: 1,
            edit_function: true,
            ..base
        }
    } else if m.contains("i2i") {
        Family { generate: None, edit: Some(Image2Image), native_sizes: pixels(768, 1440), max_inputs: 3, ..base }
    } else if m == "wanx-v1" {
        Family { native_sizes: fixed(&[(1024, 1024), (720, 1280), (1280, 720)]), style: true, ..base }
    } else if m.starts_with("stable-diffusion") {
        Family { native_sizes: edges(512, 1024), steps: Some("steps"), guidance: Some("scale"), ..base }
    } else if m.starts_with("flux") {
        Family {
            max_n_per_call: 1,
            native_sizes: edges(512, 1024),
            steps: Some("steps"),
            guidance: Some("guidance"),
            ..base
        }
    } else if m.starts_with("wan2.5") {
        Family { native_sizes: pixels(768, 1440), ..base }
    } else {
        base
    }
}

#[derive(Debug)]
pub struct DashScopeTarget {
    provider: Arc<Provider>,
    model: String,
    family: Family,
    caps: Capabilities,
    prompt_extend: Option<bool>,
    extra: Option<Map<String, Value>>,
}

impl DashScopeTarget {
    pub fn new(
        provider: Arc<Provider>,
        model: String,
        protocol: Option<Protocol>,
        prompt_extend: Option<bool>,
        extra: Option<Map<String, Value>>,
    ) -> Self {
        let mut family = family(&model);
        if let Some(p) = protocol {
            match p {
                Protocol::Text2Image => family.generate = Some(p),
                Protocol::Image2Image => family.edit = Some(p),
                Protocol::Multimodal | Protocol::ImageGeneration => {
                    family.generate = Some(p);
                    if family.max_inputs > 0 {
                        family.edit = Some(p);
                    }
                }
            }
        }
        let mut operations = Vec::new();
        if family.generate.is_some() {
            operations.push(Operation::Generate);
        }
        if family.edit.is_some() {
            operations.push(Operation::Edit);
        }
        let caps = Capabilities {
            operations,
            sizes: SizeRule::broad(),
            native_sizes: family.native_sizes.clone(),
            default_size: ImageSize::new(1024, 1024),
            picks_size: false,
            max_n: 10,
            max_n_per_call: family.max_n_per_call,
            max_input_images: family.max_inputs,
            native_masks: false,
            transparency: false,
            qualities: Quality::ALL.to_vec(),
            default_quality: Quality::High,
            partial_images: false,
            max_prompt_chars: 2000,
            extensions: ExtensionRanges::default(),
            pixels: PixelInput::Bytes,
        };
        Self { provider, model, family, caps, prompt_extend, extra }
    }

    /// The size to send, if any.
    fn size(&self, call: &BackendCall) -> Option<String> {
        let send = match self.family.size {
            SizeSend::Always => true,
            SizeSend::Never => false,
            SizeSend::SingleImage => call.n == 1,
        };
        if !send {
            return None;
        }
        let size = match &self.family.native_sizes {
            Some(rule) if !rule.allows(call.size) => rule.nearest(call.size),
            _ => call.size,
        };
        Some(format!("{}*{}", size.width, size.height))
    }

    /// `parameters`: n, size, seed, negative prompt (where not in `input`), strength (edits),
    /// steps and guidance under the model's own names, the request's DashScope switches
    /// (`prompt_extend`, `watermark`, wanx-v1's `style`), then the target's `extra`, which wins.
    /// `prompt_extend`: false after Easel's own rewrite (never rewritten twice), else the
    /// request's, else the target's `prompt_extend`.
    fn parameters(&self, call: &BackendCall, with_negative: bool) -> Value {
        let mut p = Map::new();
        p.insert("n".into(), json!(call.n));
        if let Some(size) = self.size(call) {
            p.insert("size".into(), json!(size));
        }
        let x = &call.options.extensions;
        if let Some(seed) = x.seed {
            p.insert("seed".into(), json!(seed % 2_147_483_648));
        }
        if let (true, Some(neg)) = (with_negative, &x.negative_prompt) {
            p.insert("negative_prompt".into(), json!(neg));
        }
        if let Some(strength) = x.strength.filter(|_| call.operation == Operation::Edit) {
            p.insert("strength".into(), json!(strength));
        }
        if let (Some(name), Some(steps)) = (self.family.steps, x.steps) {
            p.insert(name.into(), json!(steps));
        }
        if let (Some(name), Some(guidance)) = (self.family.guidance, x.guidance_scale) {
            p.insert(name.into(), json!(guidance));
        }
        let switches = &x.dashscope;
        let extend = if crate::enhance::prompt_rewritten() {
            Some(false)
        } else {
            switches.prompt_extend.or(self.prompt_extend)
        };
        if let Some(extend) = extend {
            p.insert("prompt_extend".into(), json!(extend));
        }
        if let Some(watermark) = switches.watermark {
            p.insert("watermark".into(), json!(watermark));
        }
        if let (true, Some(style)) = (self.family.style, &switches.style) {
            p.insert("style".into(), json!(style));
        }
        if let Some(extra) = &self.extra {
            for (k, v) in extra {
                p.insert(k.clone(), v.clone());
            }
        }
        Value::Object(p)
    }

    /// Downloads result links (in order) and gathers per-item errors.
    async fn collect(
        &self,
        links: Vec<String>,
        item_errors: Vec<(String, String)>,
        revised_prompt: Option<String>,
        image_count: Option<u32>,
    ) -> Result<BackendOutput, Failure> {
        let id = self.provider.id.as_str();
        if links.is_empty() {
            return Err(match item_errors.first() {
                Some((code, message)) => error(id, None, &HeaderMap::new(), code, message),
                None => Failure::protocol(format!("The upstream provider '{id}' returned no images.")),
            });
        }
        if !item_errors.is_empty() {
            tracing::warn!(provider = id, model = %self.model, failed = item_errors.len(), first = ?item_errors[0], "DashScope made only some of the images");
        }
        let downloads = links.into_iter().map(|link| async move {
            if link.starts_with("http") {
                media::from_url(id, &self.provider.fetcher, &link).await
            } else {
                // Base64 or a data URL: the string's own bytes, not a copy.
                media::from_b64(id, bytes::Bytes::from(link))
            }
        });
        let images = futures::future::try_join_all(downloads).await?;
        if let Some(count) = image_count.filter(|c| *c as usize != images.len()) {
            tracing::warn!(
                provider = id,
                reported = count,
                got = images.len(),
                "DashScope's image_count differs from the images returned"
            );
        }
        Ok(BackendOutput { images, revised_prompt, ..BackendOutput::default() })
    }
}

/// Maps a DashScope error `code` (from any status, 200 included) to a failure.
pub fn error(provider: &str, status: Option<u16>, headers: &HeaderMap, code: &str, message: &str) -> Failure {
    let text = if message.is_empty() { code.to_string() } else { format!("{message} ({code})") };
    let invalid = |text: String| {
        Failure::new(
            BackendError::invalid(None, format!("The upstream provider rejected the request: {text}")),
            Next::Stop,
        )
    };
    if code.starts_with("DataInspectionFailed")
        || code == "IPInfringementSuspect"
        || (code.contains("DataInspection") && code != "InvalidParameter.DataInspection")
    {
        return Failure::new(
            BackendError::ContentPolicy {
                message: format!("The request was rejected by the provider's safety system: {text}"),
            },
            Next::Stop,
        );
    }
    if code.starts_with("InvalidParameter") || code.starts_with("BadRequest") || code == "InvalidURL" {
        let mut failure = invalid(text);
        // DashScope names no `param`; a refusal of what the model makes (its sizes, its image
        // count) is told by the message, and another target may make it.
        if code == "InvalidParameter" && names_a_capability(message) {
            failure.next = Next::Skip;
        }
        return failure;
    }
    if code.starts_with("Throttling") {
        let mut f = http::classify(provider, 429, headers, text, false, None);
        f.next = Next::Retry;
        return f;
    }
    let status = match status {
        Some(s) if !(200..300).contains(&s) => s,
        _ if code.starts_with("InternalError") || code.contains("Timeout") => 500,
        _ if code == "InvalidApiKey" => 401,
        _ if code == "AccessDenied" || code == "Arrearage" => 403,
        _ => 502,
    };
    http::classify(provider, status, headers, text, false, None)
}

/// Whether a DashScope `InvalidParameter` message is about what the model makes (size,
/// resolution, image count) rather than the request's content.
fn names_a_capability(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["size", "resolution", "num_images", "image count", "parameters.n"].iter().any(|w| m.contains(w))
        || m.starts_with("n ")
}

/// Sends a DashScope request; non-2xx statuses and error bodies inside HTTP 200 become failures
/// (a `code` with no task, results or choices beside it is an error, whatever the status).
pub async fn send(p: &Provider, request: reqwest::RequestBuilder) -> Result<wire::Response, Failure> {
    let provider = p.id.as_str();
    let (status, headers, body) = http::send_raw(provider, request, p.max_response_bytes).await?;
    if !(200..300).contains(&status) {
        let parsed: wire::Response = serde_json::from_slice(&body).unwrap_or_default();
        let code = parsed.code.unwrap_or_default();
        let message = parsed.message.unwrap_or_else(|| http::snippet(&body));
        if code.is_empty() {
            return Err(http::classify(provider, status, &headers, message, false, None));
        }
        return Err(error(provider, Some(status), &headers, &code, &message));
    }
    let parsed: wire::Response = http::json(provider, &body)?;
    let answered = parsed.output.as_ref().is_some_and(|o| {
        o.task_id.as_deref().is_some_and(|t| !t.is_empty()) || o.results.is_some() || o.choices.is_some()
    });
    if let Some(code) = parsed.code.as_deref().filter(|c| !c.is_empty())
        && !answered
    {
        return Err(error(provider, Some(status), &headers, code, parsed.message.as_deref().unwrap_or_default()));
    }
    Ok(parsed)
}

#[async_trait]
impl Target for DashScopeTarget {
    fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn attempt(&self, call: &BackendCall, _cx: &CallContext) -> Result<BackendOutput, Failure> {
        let protocol = match call.operation {
            Operation::Generate => self.family.generate,
            Operation::Edit => self.family.edit,
            Operation::Variation => None,
        };
        match protocol {
            Some(Protocol::Text2Image) => task::text2image(self, call).await,
            Some(Protocol::Image2Image) => task::image2image(self, call).await,
            Some(Protocol::Multimodal) => {
                multimodal::call(self, call, "/api/v1/services/aigc/multimodal-generation/generation").await
            }
            Some(Protocol::ImageGeneration) => {
                multimodal::call(self, call, "/api/v1/services/aigc/image-generation/generation").await
            }
            None => Err(Failure::new(
                BackendError::invalid(
                    Some("model".to_string()),
                    format!("The DashScope model '{}' does not serve this operation.", self.model),
                ),
                Next::Fallback,
            )),
        }
    }
}

/// The first poll waits `first`; each later one waits 1.5 times longer, up to `max`.
pub(crate) fn next_delay(current: Duration, max: Duration) -> Duration {
    current.mul_f64(1.5).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_name() {
        assert_eq!(family("wanx-v1").generate, Some(Protocol::Text2Image));
        assert_eq!(family("qwen-image-plus").generate, Some(Protocol::Multimodal));
        assert_eq!(family("qwen-image-edit").edit, Some(Protocol::Multimodal));
        assert_eq!(family("qwen-image-edit").generate, None);
        assert_eq!(family("qwen-image-edit-plus").max_n_per_call, 6);
        assert_eq!(family("wanx2.1-imageedit").edit, Some(Protocol::Image2Image));
        assert!(family("wanx2.1-imageedit").edit_function);
        assert_eq!(family("wan2.7-image").edit, Some(Protocol::ImageGeneration));
        assert_eq!(family("wan2.2-t2i-flash").generate, Some(Protocol::Text2Image));
    }

    #[test]
    fn error_codes() {
        let h = HeaderMap::new();
        assert!(matches!(
            error("d", Some(200), &h, "DataInspectionFailed", "x").error,
            BackendError::ContentPolicy { .. }
        ));
        assert!(matches!(error("d", Some(400), &h, "InvalidParameter", "x").error, BackendError::InvalidInput { .. }));
        assert!(matches!(
            error("d", Some(400), &h, "InvalidParameter.DataInspection", "x").error,
            BackendError::InvalidInput { .. }
        ));
        assert_eq!(error("d", Some(429), &h, "Throttling.RateQuota", "x").next, Next::Retry);
        assert_eq!(error("d", Some(200), &h, "InternalError", "x").next, Next::Retry);
        assert_eq!(error("d", Some(401), &h, "InvalidApiKey", "x").next, Next::Fallback);
        assert_eq!(error("d", Some(400), &h, "InvalidParameter", "num_images_per_prompt must be 1").next, Next::Skip);
        assert_eq!(error("d", Some(400), &h, "InvalidParameter", "size must be one of 1024*1024").next, Next::Skip);
        assert_eq!(error("d", Some(400), &h, "InvalidParameter", "Field required: input.prompt").next, Next::Stop);
    }
}
