//! The OpenAI-compatible response bodies as serde types (requests are built in
//! [`super::request`]).
//!
//! Base64 strings are borrowed from the response buffer, not copied: a relayed 1 MiB image stays
//! a slice of the bytes that arrived (see [`crate::media::from_b64`]). serde's own `Cow<str>`
//! borrows only as a bare field, never inside an `Option` (it deserializes a `String` there), so
//! those fields go through [`borrowed`].

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

/// A string borrowed from the input when it has no escapes (owned when it has).
fn borrowed<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(d)?.map(|text| text.0))
}

#[derive(Debug, Deserialize)]
pub struct ImageItem<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub b64_json: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
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
    #[serde(borrow, default, deserialize_with = "borrowed")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let body =
            r#"{"data":[{"b64_json":"aGk=","url":"https://x.test/a.png"},{"b64_json":"a\/k="},{"b64_json":null}]}"#;
        let parsed: ImagesResponse<'_> = serde_json::from_str(body).unwrap();
        let data = parsed.data.unwrap();
        assert!(matches!(data[0].b64_json, Some(Cow::Borrowed("aGk="))));
        assert!(matches!(data[0].url, Some(Cow::Borrowed("https://x.test/a.png"))));
        assert!(matches!(&data[1].b64_json, Some(Cow::Owned(text)) if text == "a/k="));
        assert!(data[2].b64_json.is_none() && data[2].url.is_none());
        let event: StreamEvent<'_> = serde_json::from_str(r#"{"type":"x","b64_json":"aGk="}"#).unwrap();
        assert!(matches!(event.b64_json, Some(Cow::Borrowed("aGk="))));
    }
}
