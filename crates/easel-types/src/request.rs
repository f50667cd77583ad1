//! What a client asked for, whatever dialect it spoke.
//!
//! The wire crate parses OpenAI JSON, multipart, the IG1 JSON edit body and the Qwen
//! `input.messages` shape into this one type. Values are already well-formed (a size is a size, a
//! format is a known format); whether the chosen *model* can honour them is decided later by the
//! service, against the model's capabilities.

use bytes::Bytes;
use url::Url;

use crate::types::{
    Background, InputFidelity, Moderation, Operation, OutputFormat, Quality, ResponseFormat, SizeRequest, Style,
};

/// Where an input image comes from, before any bytes are fetched or decoded.
#[derive(Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// Bytes uploaded in the request (a multipart file part or a decoded data URL).
    Inline(Bytes),
    /// An http(s) URL to fetch, subject to the configured host allow-list.
    Url(Url),
    /// A Files API id; Easel has no Files API yet, so these are refused with a clear error.
    FileId(String),
}

impl std::fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(b) => write!(f, "Inline({} bytes)", b.len()),
            Self::Url(u) => write!(f, "Url({u})"),
            Self::FileId(id) => write!(f, "FileId({id})"),
        }
    }
}

/// An input image reference together with the request parameter it came from (`image[1]`,
/// `images[0].image_url`, `input.messages[0].content[1].image`), so errors can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedImage {
    pub param: String,
    pub source: ImageRef,
}

/// Open-model extensions documented by Easel (not part of OpenAI's API). Their ranges depend on
/// the model (`Capabilities::extensions` in the core), which checks them once.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Extensions {
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub strength: Option<f32>,
    /// DashScope's own switches (the Qwen dialect's `parameters`); other backends ignore them.
    pub dashscope: DashScopeOptions,
}

/// DashScope's switches, as the Qwen dialect writes them in `parameters`. Only the DashScope
/// backend sends them (under these names); every other backend ignores them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, Eq)]
#[serde(default)]
pub struct DashScopeOptions {
    /// DashScope's LLM rewrite of the prompt.
    pub prompt_extend: Option<bool>,
    /// DashScope's "AI-generated" mark in a corner.
    pub watermark: Option<bool>,
    /// wanx-v1's style (`<auto>`, `<watercolor>`, ...); not DALL·E 3's `style`.
    pub style: Option<String>,
}

/// Where the client wrote the parameters an error may name. The Qwen dialect nests them under
/// `parameters`, so a range error found later (by the core, against the model) says
/// `parameters.n`, as the client wrote it, and not `n`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamNames {
    under_parameters: Vec<String>,
}

impl ParamNames {
    /// The named parameters were written under `parameters`.
    pub fn under_parameters(names: impl IntoIterator<Item = String>) -> Self {
        Self { under_parameters: names.into_iter().collect() }
    }

    /// `name` as the client wrote it.
    pub fn of(&self, name: &str) -> String {
        if self.under_parameters.iter().any(|p| p == name) { format!("parameters.{name}") } else { name.to_string() }
    }
}

/// The options that travel unchanged from the request, through the job, to every backend call:
/// the wire crate fills them, the core checks them against the model, and backends read them.
/// A new option of this kind is one field here, one in the wire's parameter struct, and its use
/// in the backends that honour it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Options {
    /// DALL·E 3's `style`.
    pub style: Option<Style>,
    /// `auto` unless the client said otherwise.
    pub background: Background,
    /// `png` unless the client said otherwise; a backend making another format is transcoded.
    pub output_format: OutputFormat,
    /// JPEG and WebP quality, 0-100.
    pub output_compression: Option<u8>,
    pub moderation: Option<Moderation>,
    pub input_fidelity: Option<InputFidelity>,
    /// The end user, for abuse tracking upstream and in the usage ledger.
    pub user: Option<String>,
    /// Open-model extensions; `seed` is offset per backend call when the core fans out `n`.
    pub extensions: Extensions,
}

/// One Images API request, dialect-free. `None` means the client did not say.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    pub operation: Operation,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub images: Vec<NamedImage>,
    pub mask: Option<NamedImage>,
    /// As given; the core checks it against the model's `max_n`.
    pub n: Option<i64>,
    pub size: Option<SizeRequest>,
    pub quality: Option<Quality>,
    pub response_format: Option<ResponseFormat>,
    pub stream: bool,
    pub partial_images: Option<u8>,
    pub options: Options,
    /// How errors name the parameters (`parameters.n` in the Qwen dialect).
    pub names: ParamNames,
}

impl ImageRequest {
    pub fn new(operation: Operation) -> Self {
        Self {
            operation,
            model: None,
            prompt: None,
            images: Vec::new(),
            mask: None,
            n: None,
            size: None,
            quality: None,
            response_format: None,
            stream: false,
            partial_images: None,
            options: Options::default(),
            names: ParamNames::default(),
        }
    }
}
