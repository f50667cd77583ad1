//! Prompt enhancement: a model whose id ends in `-pe` (or with `prompt_enhance = true`) first
//! rewrites the prompt through an OpenAI-compatible chat-completions endpoint, then generates
//! with the rewritten prompt, which comes back as `revised_prompt`.
//!
//! [`EnhancedBackend`] wraps any backend, local or upstream. It takes the whole `n` in one call
//! (so the prompt is rewritten once per request, not once per chunk) and fans out to the inner
//! backend in its own chunks. While the inner backend runs, a task-local flag tells DashScope
//! targets to send `prompt_extend=false`, so the prompt is not rewritten a second time upstream.

use std::sync::Arc;

use async_trait::async_trait;
use easel_core::BackendError;
use easel_core::backend::{
    BackendCall, BackendOutput, CallContext, Capabilities, ImageBackend, InputImage, SharedBackend,
};
use easel_core::client::ThreadClient;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{EnhancerConfig, Secret, api_key, secs};
use crate::http::{self, Failure};
use crate::media::data_url;
use crate::resilience::{RetryPolicy, retrying};

tokio::task_local! {
    static REWRITTEN: bool;
}

/// Whether the current call's prompt was already rewritten by the enhancer.
pub fn prompt_rewritten() -> bool {
    REWRITTEN.try_with(|v| *v).unwrap_or(false)
}

pub const DEFAULT_SYSTEM_PROMPT: &str = "You rewrite prompts for an image generation model. Keep the user's intent, subject, \
any text to be rendered, and the user's language. Add concrete visual detail: composition, lighting, colours, materials, style. \
If the prompt is an instruction to edit an existing image, keep it an instruction about that image. \
Answer with the rewritten prompt only: no preamble, no quotes, no explanation.";

/// The chat-completions client that rewrites prompts.
#[derive(Debug)]
pub struct Enhancer {
    client: ThreadClient,
    url: String,
    key: Option<Secret>,
    model: String,
    system_prompt: String,
    policy: RetryPolicy,
    required: bool,
    vision: bool,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<String>,
}

impl Enhancer {
    pub fn from_config(c: EnhancerConfig) -> anyhow::Result<Self> {
        let owner = "[prompt_enhancer]";
        let url =
            url::Url::parse(c.base_url.trim()).map_err(|e| anyhow::anyhow!("{owner}: 'base_url' is not a URL: {e}"))?;
        let mut root = url.as_str().trim_end_matches('/').to_string();
        if url.path().trim_end_matches('/').is_empty() {
            root.push_str("/v1");
        }
        let client = ThreadClient::new(|| {
            reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10)).tcp_nodelay(true).build()
        })?;
        Ok(Self {
            client,
            url: format!("{root}/chat/completions"),
            key: api_key(c.api_key_env.as_deref(), owner)?,
            model: c.model,
            system_prompt: c.system_prompt.unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_string()),
            policy: RetryPolicy {
                timeout: secs(c.timeout_secs, 60.0, "timeout_secs")?,
                retries: c.retries.unwrap_or(2),
                backoff_base: std::time::Duration::from_millis(300),
                backoff_max: std::time::Duration::from_secs(4),
                retry_after_max: std::time::Duration::from_secs(10),
            },
            required: c.required.unwrap_or(false),
            vision: c.vision.unwrap_or(false),
            max_tokens: c.max_tokens,
            temperature: c.temperature,
        })
    }

    fn body(&self, prompt: &str, images: &[InputImage]) -> Value {
        let user = if self.vision && !images.is_empty() {
            let mut parts: Vec<Value> =
                images.iter().map(|i| json!({"type": "image_url", "image_url": {"url": data_url(i)}})).collect();
            parts.push(json!({"type": "text", "text": prompt}));
            Value::Array(parts)
        } else {
            json!(prompt)
        };
        let mut body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user},
            ],
            "stream": false,
        });
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        body
    }

    async fn once(&self, body: &Value) -> Result<String, Failure> {
        let mut request = self.client.local().post(&self.url).json(body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(&key.0);
        }
        let (_, bytes) = http::send("prompt_enhancer", request).await?;
        let parsed: ChatResponse = http::json("prompt_enhancer", &bytes)?;
        let text = parsed.choices.into_iter().next().and_then(|c| c.message.content).unwrap_or_default();
        let text = clean(&text);
        if text.is_empty() {
            return Err(Failure::protocol("The prompt enhancer returned an empty prompt."));
        }
        Ok(text)
    }

    /// The rewritten prompt.
    pub async fn rewrite(
        &self,
        prompt: &str,
        images: &[InputImage],
        cancel: &CancellationToken,
    ) -> Result<String, Failure> {
        let body = self.body(prompt, images);
        retrying(&self.policy, cancel, "prompt_enhancer", || self.once(&body)).await
    }
}

/// Drops a reasoning model's `<think>` block and quotes around the answer.
fn clean(text: &str) -> String {
    let text = match text.rfind("</think>") {
        Some(end) => &text[end + "</think>".len()..],
        None => text,
    };
    let text = text.trim();
    let unquoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    unquoted.trim().to_string()
}

/// A backend whose prompts are rewritten first.
#[derive(Debug)]
pub struct EnhancedBackend {
    id: String,
    inner: SharedBackend,
    enhancer: Arc<Enhancer>,
    caps: Capabilities,
}

impl EnhancedBackend {
    pub fn new(id: String, inner: SharedBackend, enhancer: Arc<Enhancer>) -> Self {
        let mut caps = inner.capabilities().clone();
        caps.max_n_per_call = caps.max_n.max(1);
        Self { id, inner, enhancer, caps }
    }
}

#[async_trait]
impl ImageBackend for EnhancedBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn readiness(&self) -> Result<(), String> {
        self.inner.readiness().await
    }

    async fn call(&self, call: BackendCall, cx: CallContext) -> Result<BackendOutput, BackendError> {
        // Variations have no prompt to rewrite.
        let enhanced = if call.prompt.trim().is_empty() {
            None
        } else {
            match self.enhancer.rewrite(&call.prompt, &call.images, &cx.cancel).await {
                Ok(prompt) => Some(prompt),
                Err(f) if matches!(f.error, BackendError::Cancelled) => {
                    return Err(BackendError::Cancelled);
                }
                Err(f) if self.enhancer.required => return Err(f.error),
                Err(f) => {
                    tracing::warn!(model = %self.id, error = %f.error, "prompt enhancement failed; generating from the original prompt");
                    None
                }
            }
        };
        let prompt = enhanced.clone().unwrap_or_else(|| call.prompt.clone());
        let per_call = self.inner.capabilities().max_n_per_call.max(1);
        let mut calls = Vec::new();
        let mut planned = 0;
        while planned < call.n {
            let mut c = call.clone();
            c.n = per_call.min(call.n - planned);
            c.prompt = prompt.clone();
            c.options.extensions.seed = call.options.extensions.seed.map(|s| s.wrapping_add(u64::from(planned)));
            calls.push(c);
            planned += per_call.min(call.n - planned);
        }
        let rewritten = enhanced.is_some();
        let outputs: Vec<BackendOutput> = futures::stream::iter(calls)
            .map(|c| REWRITTEN.scope(rewritten, self.inner.call(c, cx.clone())))
            .buffered(4)
            .try_collect()
            .await?;
        let mut merged = BackendOutput::default();
        let mut usage = Some(easel_core::usage::Usage::default());
        for output in outputs {
            merged.images.extend(output.images);
            merged.revised_prompt = merged.revised_prompt.or(output.revised_prompt);
            merged.served_by = merged.served_by.or(output.served_by);
            match (&mut usage, output.usage) {
                (Some(total), Some(u)) => *total += u,
                _ => usage = None,
            }
        }
        merged.usage = usage;
        if enhanced.is_some() {
            merged.revised_prompt = merged.revised_prompt.filter(|r| *r != call.prompt).or(enhanced);
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_answers() {
        assert_eq!(clean("  \"A red fox at dawn\" "), "A red fox at dawn");
        assert_eq!(clean("<think>hmm</think>\nA red fox"), "A red fox");
    }

    #[tokio::test]
    async fn the_flag_is_scoped() {
        assert!(!prompt_rewritten());
        assert!(REWRITTEN.scope(true, async { prompt_rewritten() }).await);
    }
}
