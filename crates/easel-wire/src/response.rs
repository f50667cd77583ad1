//! Response bodies: `ImagesResponse` with OpenAI's image `usage` shape, and the model list.
//!
//! Absent fields are omitted rather than sent as `null` (some third-party parsers test presence),
//! and `usage` always carries `input_tokens_details`, which LiteLLM and others validate.
//!
//! An image's base64 is shared text ([`Base64`]); [`ImagesResponse::to_json_chunks`] writes the
//! body around it rather than copying a relayed MiB into one buffer.

use bytes::Bytes;
use easel_types::base64::Base64;
use easel_types::types::{Background, OutputFormat, Quality};
use easel_types::usage::Usage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImagesResponse {
    pub created: i64,
    pub data: Vec<ImageData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<Background>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format: Option<OutputFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageData {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub b64_json: Option<Base64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageBody {
    pub total_tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub input_tokens_details: InputTokensDetails,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens_details: Option<OutputTokensDetails>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InputTokensDetails {
    pub text_tokens: u64,
    pub image_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputTokensDetails {
    pub image_tokens: u64,
    pub text_tokens: u64,
}

impl ImagesResponse {
    /// The JSON body (exactly `serde_json::to_vec(self)`'s bytes) as chunks that share each
    /// image's base64 text: the rest is serialised with empty `b64_json` strings and the texts go
    /// in between. Base64 needs no escaping, so nothing scans or copies the text.
    pub fn to_json_chunks(&self) -> serde_json::Result<Vec<Bytes>> {
        const KEY: &[u8] = br#""b64_json":""#;
        let mut skeleton = self.clone();
        for image in &mut skeleton.data {
            if let Some(text) = &mut image.b64_json {
                *text = Base64::default();
            }
        }
        // `"b64_json":"` occurs only as the key: inside a JSON string every `"` is escaped.
        let json = Bytes::from(serde_json::to_vec(&skeleton)?);
        let (mut chunks, mut start) = (Vec::new(), 0);
        for text in self.data.iter().filter_map(|image| image.b64_json.as_ref()) {
            let Some(found) = json[start..].windows(KEY.len()).position(|w| w == KEY) else { break };
            let split = start + found + KEY.len();
            chunks.push(json.slice(start..split));
            chunks.push(text.as_bytes().clone());
            start = split;
        }
        chunks.push(json.slice(start..));
        Ok(chunks)
    }
}

impl UsageBody {
    /// The response shape; `output_tokens_details` as in `ImagesResponse` (streams omit it).
    pub fn from_usage(usage: &Usage, with_output_details: bool) -> Self {
        Self {
            total_tokens: usage.total_tokens(),
            input_tokens: usage.input_tokens(),
            output_tokens: usage.output_tokens,
            input_tokens_details: InputTokensDetails {
                text_tokens: usage.input_text_tokens,
                image_tokens: usage.input_image_tokens,
            },
            output_tokens_details: with_output_details
                .then_some(OutputTokensDetails { image_tokens: usage.output_tokens, text_tokens: 0 }),
        }
    }
}

/// `GET /v1/models` and `GET /v1/models/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

impl ModelObject {
    pub fn new(id: &str, created: i64, owned_by: &str) -> Self {
        Self { id: id.to_string(), object: "model".into(), created, owned_by: owned_by.to_string() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub fn new(data: Vec<ModelObject>) -> Self {
        Self { object: "list".into(), data }
    }
}

#[cfg(test)]
mod tests {
    use easel_types::usage::Usage;

    use super::*;

    #[test]
    fn the_chunked_body_is_the_serialised_body_and_shares_the_base64() {
        let texts = [Base64::encode(b"first image"), Base64::encode(&[0xFB; 300])];
        let image = |b64: Option<&Base64>, url: Option<&str>, prompt: Option<&str>| ImageData {
            b64_json: b64.cloned(),
            url: url.map(str::to_string),
            revised_prompt: prompt.map(str::to_string),
        };
        let tricky = r#"a prompt with "b64_json":"" and \" in it"#;
        let response = ImagesResponse {
            created: 1,
            data: vec![
                image(Some(&texts[0]), None, Some(tricky)),
                image(None, Some("https://x.test/a.png"), None),
                image(Some(&texts[1]), Some("https://x.test/b.png"), Some("b64_json")),
            ],
            background: Some(Background::Opaque),
            output_format: Some(OutputFormat::Png),
            quality: Some(Quality::Low),
            size: Some("32x32".into()),
            usage: Some(UsageBody::from_usage(&Usage::default(), true)),
        };
        let chunks = response.to_json_chunks().unwrap();
        assert_eq!(chunks.concat(), serde_json::to_vec(&response).unwrap());
        for text in &texts {
            assert!(chunks.iter().any(|c| c.as_ptr() == text.as_bytes().as_ptr()), "shared, not copied");
        }
        let parsed: ImagesResponse = serde_json::from_slice(&chunks.concat()).unwrap();
        assert_eq!(parsed, response);
        let empty = ImagesResponse { data: vec![], ..response };
        assert_eq!(empty.to_json_chunks().unwrap().concat(), serde_json::to_vec(&empty).unwrap());
    }
}
