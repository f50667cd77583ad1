//! The config tables this crate reads: `[[providers]]`, the upstream part of `[[models]]`, and
//! `[prompt_enhancer]`.
//!
//! They arrive as `serde_json::Value`s (the server owns the TOML file) and are parsed here into
//! types that reject unknown keys, so a typo fails at startup with the key's name instead of being
//! silently ignored. Secrets are never in these tables: only the name of an environment variable.

use std::time::Duration;

use anyhow::{Context, bail};
use easel_core::backend::SizeRule;
use easel_core::types::ImageSize;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Which protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible images API.
    Openai,
    /// Alibaba DashScope's native image APIs.
    Dashscope,
    /// Another Easel node (the OpenAI API with Easel's extensions).
    Easel,
}

impl ProviderKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Dashscope => "dashscope",
            Self::Easel => "easel",
        }
    }
}

/// One `[[providers]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub id: String,
    pub kind: ProviderKind,
    /// The API root: `https://api.openai.com/v1` (a bare host gets `/v1`), or DashScope's host.
    pub base_url: String,
    /// The environment variable holding the API key; none means no `Authorization` header.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Hosts result images may be downloaded from (`host`, `*.host`, `prefix-*.host`, each `*`
    /// within one DNS label; an IP address to reach that address even if it is not public;
    /// `:port`; `http://` to allow plain HTTP). Names must resolve to public addresses.
    /// DashScope's default: `dashscope-result*.oss-*.aliyuncs.com`.
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// Kind `openai`: a named quirk profile, or an inline table of quirks (optionally `base`).
    #[serde(default)]
    pub profile: Option<Value>,
    /// Whole-call limit per attempt (a DashScope task's polling included), seconds.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    #[serde(default)]
    pub connect_timeout_secs: Option<f64>,
    /// Retries on the same target after 429, 5xx, connection errors and truncated bodies.
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub backoff_base_secs: Option<f64>,
    #[serde(default)]
    pub backoff_max_secs: Option<f64>,
    /// A `Retry-After` longer than this is not waited for: the call falls back instead.
    #[serde(default)]
    pub retry_after_max_secs: Option<f64>,
    /// Consecutive failures that open a target's circuit.
    #[serde(default)]
    pub circuit_failures: Option<u32>,
    /// How long an open circuit refuses calls before one trial call.
    #[serde(default)]
    pub circuit_cooldown_secs: Option<f64>,
    /// The largest result image downloaded, bytes.
    #[serde(default)]
    pub max_image_bytes: Option<usize>,
    /// The largest response body read from the provider (JSON, base64 images and event streams
    /// included), bytes; larger answers fail as an upstream error. Default 64 MiB.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// DashScope tasks: first poll delay and the cap it grows to.
    #[serde(default)]
    pub poll_interval_secs: Option<f64>,
    #[serde(default)]
    pub poll_max_interval_secs: Option<f64>,
}

/// One entry of a model's `targets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub provider: String,
    /// The model name the provider knows.
    pub model: String,
    /// Share of calls among targets of equal rank (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Lower ranks are tried first; by default each target's rank is its position, so targets
    /// are plain fallbacks in order.
    #[serde(default)]
    pub rank: Option<u32>,
    /// Kind `openai`: a profile for this target only (a provider serving several model families).
    #[serde(default)]
    pub profile: Option<Value>,
    /// DashScope: `text2image`, `image2image`, `multimodal` or `image-generation` instead of the
    /// one chosen from the model name.
    #[serde(default)]
    pub protocol: Option<String>,
    /// DashScope: `prompt_extend` to send (the provider's default when absent).
    #[serde(default)]
    pub prompt_extend: Option<bool>,
    /// Extra fields merged into the request body (DashScope: into `parameters`).
    #[serde(default)]
    pub extra: Option<Map<String, Value>>,
}

/// A `[[models]]` table with `backend = "upstream"`, minus `id` and `backend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOptions {
    pub targets: Vec<TargetConfig>,
    /// Read by [`crate::Gateway::enhance`]; accepted here so the same table can be passed.
    #[serde(default)]
    pub prompt_enhance: Option<bool>,
    /// Capability overrides: sizes clients may ask for (a list of `WxH` or a range table).
    #[serde(default)]
    pub sizes: Option<Value>,
    /// Sizes the provider itself makes (the core resizes to the requested size).
    #[serde(default)]
    pub native_sizes: Option<Value>,
    #[serde(default)]
    pub default_size: Option<String>,
    #[serde(default)]
    pub max_n: Option<u32>,
    #[serde(default)]
    pub max_n_per_call: Option<u32>,
    #[serde(default)]
    pub max_input_images: Option<usize>,
    #[serde(default)]
    pub max_prompt_chars: Option<usize>,
}

/// The `[prompt_enhancer]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnhancerConfig {
    /// An OpenAI-compatible API root (`/chat/completions` is appended).
    pub base_url: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    pub model: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    #[serde(default)]
    pub retries: Option<u32>,
    /// When the rewrite fails: `false` (default) generates from the original prompt, `true` fails
    /// the request.
    #[serde(default)]
    pub required: Option<bool>,
    /// Send edit input images to the chat model as `image_url` parts (for vision models).
    #[serde(default)]
    pub vision: Option<bool>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
}

/// Parses a table, naming it in the error.
pub fn parse<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(value.clone()).with_context(|| format!("invalid {what}"))
}

/// Seconds from config as a duration; rejects negative or non-finite values.
pub fn secs(value: Option<f64>, default: f64, name: &str) -> anyhow::Result<Duration> {
    let v = value.unwrap_or(default);
    if !v.is_finite() || v < 0.0 {
        bail!("'{name}' must be a non-negative number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// A size rule from config: a list of `WxH` strings or a table
/// `{ multiple_of, min_edge, max_edge, min_pixels, max_pixels, max_aspect }`.
pub fn size_rule(value: &Value, name: &str) -> anyhow::Result<SizeRule> {
    match value {
        Value::Array(items) => {
            let mut sizes = Vec::with_capacity(items.len());
            for item in items {
                let text =
                    item.as_str().with_context(|| format!("'{name}': expected size strings like \"1024x1024\""))?;
                sizes.push(ImageSize::parse(text).map_err(|e| anyhow::anyhow!("'{name}': {e}"))?);
            }
            if sizes.is_empty() {
                bail!("'{name}' must list at least one size");
            }
            Ok(SizeRule::Fixed(sizes))
        }
        Value::Object(_) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Range {
                #[serde(default)]
                multiple_of: Option<u32>,
                min_edge: u32,
                max_edge: u32,
                #[serde(default)]
                min_pixels: Option<u64>,
                #[serde(default)]
                max_pixels: Option<u64>,
                #[serde(default)]
                max_aspect: Option<f64>,
            }
            let r: Range = parse(value, &format!("'{name}' range"))?;
            if r.min_edge == 0 || r.min_edge > r.max_edge {
                bail!("'{name}': min_edge must be between 1 and max_edge");
            }
            Ok(SizeRule::Range {
                multiple_of: r.multiple_of.unwrap_or(1).max(1),
                min_edge: r.min_edge,
                max_edge: r.max_edge,
                min_pixels: r.min_pixels.unwrap_or(0),
                max_pixels: r.max_pixels.unwrap_or(u64::from(r.max_edge) * u64::from(r.max_edge)),
                max_aspect: r.max_aspect.unwrap_or(f64::from(r.max_edge) / f64::from(r.min_edge)),
            })
        }
        _ => bail!("'{name}': expected a list of sizes or a range table"),
    }
}

/// An API key; its `Debug` output is redacted so it never reaches logs.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads an API key from the environment; `None` when the config names no variable.
pub fn api_key(env: Option<&str>, owner: &str) -> anyhow::Result<Option<Secret>> {
    let Some(name) = env else { return Ok(None) };
    match std::env::var(name) {
        Ok(key) if !key.trim().is_empty() => Ok(Some(Secret(key.trim().to_string()))),
        _ => bail!("{owner}: the environment variable {name} (api_key_env) is not set or empty"),
    }
}
