//! The OpenAI-compatible response bodies as serde types (requests are built in
//! [`super::request`]).
//!
//! Base64 strings are borrowed from the response buffer, not copied: a relayed 1 MiB image stays
//! a slice of the bytes that arrived (see [`crate::media::from_b64`]).

use std::borrow::Cow;

use easel_core::types::{Background, Quality};
use easel_core::usage::Usage;
use serde::{Deserialize, Deserializer};

use crate::http::ErrorBody;

#[derive(Debug, Deserialize)]
pub struct ImagesResponse<'a> {
    #[serde(borrow, default)]
    pub data: Option<Vec<ImageItem<'a>>>,
    #[serde(default)]
    pub usage: Option<UsageBody>,
    /// Some services answer errors with HTTP 200.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// What GPT image says it used (it picks for `auto`); unknown values are ignored.
    #[serde(default, deserialize_with = "lenient")]
    pub quality: Option<Quality>,
    #[serde(default, deserialize_with = "lenient")]
    pub background: Option<Background>,
}

/// A value the core knows, or `None` for anything else (a service's own word is no error).
fn lenient<'de, D: Deserializer<'de>, T: std::str::FromStr>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Cow<'de, str>>::deserialize(d)?.and_then(|s| s.parse().ok()))
}

#[derive(Debug, Deserialize)]
pub struct ImageItem<'a> {
    #[serde(borrow, default)]
    pub b64_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub url: Option<Cow<'a, str>>,
    #[serde(default)]
    pub revised_prompt: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UsageBody {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_details: Option<InputDetails>,
}

#[derive(Debug, Deserialize)]
pub struct InputDetails {
    #[serde(default)]
    pub text_tokens: Option<u64>,
    #[serde(default)]
    pub image_tokens: Option<u64>,
}

impl UsageBody {
    /// OpenAI's usage in the core's shape; `None` when the figures are missing.
    pub fn to_usage(&self) -> Option<Usage> {
        let input = self.input_tokens?;
        let output = self.output_tokens?;
        let (text, image) = match &self.input_tokens_details {
            Some(d) => (d.text_tokens.unwrap_or(input), d.image_tokens.unwrap_or(0)),
            None => (input, 0),
        };
        Some(Usage { input_text_tokens: text, input_image_tokens: image, output_tokens: output })
    }
}

/// One streamed event's JSON (`image_generation.partial_image`, `*.completed`, or an error).
#[derive(Debug, Deserialize)]
pub struct StreamEvent<'a> {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(borrow, default)]
    pub b64_json: Option<Cow<'a, str>>,
    #[serde(default)]
    pub partial_image_index: Option<u32>,
    #[serde(default)]
    pub usage: Option<UsageBody>,
    #[serde(default)]
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub revised_prompt: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub quality: Option<Quality>,
    #[serde(default, deserialize_with = "lenient")]
    pub background: Option<Background>,
}
