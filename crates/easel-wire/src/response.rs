//! Response bodies: `ImagesResponse` with OpenAI's image `usage` shape, and the model list.
//!
//! Absent fields are omitted rather than sent as `null` (some third-party parsers test presence),
//! and `usage` always carries `input_tokens_details`, which LiteLLM and others validate.

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
    pub b64_json: Option<String>,
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
