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

/// Open-model extensions documented by Easel (not part of OpenAI's API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extensions {
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub strength: Option<f32>,
}

/// One Images API request, dialect-free. `None` means the client did not say.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    pub operation: Operation,
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub images: Vec<NamedImage>,
    pub mask: Option<NamedImage>,
    pub n: Option<u32>,
    pub size: Option<SizeRequest>,
    pub quality: Option<Quality>,
    pub style: Option<Style>,
    pub background: Option<Background>,
    pub output_format: Option<OutputFormat>,
    pub output_compression: Option<u8>,
    pub moderation: Option<Moderation>,
    pub response_format: Option<ResponseFormat>,
    pub stream: bool,
    pub partial_images: Option<u8>,
    pub input_fidelity: Option<InputFidelity>,
    pub user: Option<String>,
    pub extensions: Extensions,
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
            style: None,
            background: None,
            output_format: None,
            output_compression: None,
            moderation: None,
            response_format: None,
            stream: false,
            partial_images: None,
            input_fidelity: None,
            user: None,
            extensions: Extensions::default(),
        }
    }
}
