//! Streaming event payloads, as the OpenAI SDKs discriminate them: by the JSON `type`
//! (`image_generation.partial_image`, `image_generation.completed`, `image_edit.*`). Every field
//! the spec marks required is always present. The server frames them as SSE with a matching
//! `event:` line.

use easel_types::base64::Base64;
use easel_types::types::{Background, Operation, OutputFormat, Quality};
use serde::Serialize;

use crate::response::UsageBody;

/// The fields every image event carries. The image is shared base64 text, as in
/// [`crate::response::ImageData`]: a relayed image is not copied into the event.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventImage {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub b64_json: Base64,
    pub created_at: i64,
    pub size: String,
    pub quality: Quality,
    pub background: Background,
    pub output_format: OutputFormat,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartialImageEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub image: EventImage,
    pub partial_image_index: u32,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompletedEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub image: EventImage,
    pub usage: UsageBody,
    /// An Easel addition for `response_format=url`: the hosted copy of the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
}

/// `image_generation.partial_image` or `image_edit.partial_image`.
pub fn partial_type(operation: Operation) -> String {
    format!("{}.partial_image", operation.event_prefix())
}

/// `image_generation.completed` or `image_edit.completed`.
pub fn completed_type(operation: Operation) -> String {
    format!("{}.completed", operation.event_prefix())
}
