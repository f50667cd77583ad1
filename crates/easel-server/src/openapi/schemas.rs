//! Schemas for the shapes that have no single Rust type to derive from: the request bodies,
//! which `easel_wire::request` reads with hand-written parsers (one parameter struct for every
//! dialect, numbers accepted as strings, a key list per operation), and the answers the
//! handlers build as JSON (keys, tasks, usage, health). Each struct here documents one of those
//! shapes field for field; nothing constructs them. The response, event and error bodies that
//! are Rust types come from `easel-wire` itself.

// Documentation types: serde's derive only gives `#[serde]` (read by utoipa) its meaning.
#![allow(dead_code)]

use easel_core::types::{
    Background, InputFidelity, Moderation, Operation, OutputFormat, Quality, ResponseFormat, Style,
};
use easel_wire::error::{ErrorBody, ErrorDetail};
use easel_wire::events::{CompletedEvent, PartialImageEvent};
use easel_wire::response::ImagesResponse;
use serde::Deserialize;
use utoipa::ToSchema;

/// Easel's extensions for open models, accepted on every image route (and in the Qwen
/// `parameters`). A model that cannot honour one refuses it with 400 `unsupported_parameter`.
#[derive(Deserialize, ToSchema)]
pub struct Extensions {
    /// What the image should not show.
    negative_prompt: Option<String>,
    /// The random seed; the same seed and parameters give the same image.
    #[schema(minimum = 0)]
    seed: Option<u64>,
    /// Denoising steps (the model's range).
    #[schema(minimum = 1)]
    steps: Option<u32>,
    /// Classifier-free guidance scale (the model's range).
    guidance_scale: Option<f32>,
}

/// `POST /v1/images/generations`: OpenAI's JSON body.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"prompt": "a lighthouse at dusk, oil painting", "size": "auto", "n": 1, "seed": 42}))]
pub struct GenerationRequest {
    prompt: String,
    /// A model id from `GET /v1/models`; the server's default when absent.
    model: Option<String>,
    /// Images to make, 1-10 (a model may allow fewer).
    #[schema(minimum = 1, maximum = 10)]
    n: Option<i64>,
    /// `WIDTHxHEIGHT` (e.g. `1024x1024`) or `auto`.
    #[schema(example = "1024x1024")]
    size: Option<String>,
    quality: Option<Quality>,
    style: Option<Style>,
    background: Option<Background>,
    output_format: Option<OutputFormat>,
    /// 0-100, for `jpeg` and `webp` (PNG takes only 100).
    #[schema(minimum = 0, maximum = 100)]
    output_compression: Option<i64>,
    moderation: Option<Moderation>,
    response_format: Option<ResponseFormat>,
    /// Answer with server-sent events (`text/event-stream`) instead of JSON.
    stream: Option<bool>,
    /// Partial images to stream, 0-3.
    #[schema(minimum = 0, maximum = 3)]
    partial_images: Option<i64>,
    user: Option<String>,
    #[serde(flatten)]
    extensions: Extensions,
}

/// An input image by reference: exactly one of `image_url` (an http(s) or data URL) and
/// `file_id`.
#[derive(Deserialize, ToSchema)]
pub struct ImageReference {
    image_url: Option<String>,
    file_id: Option<String>,
}

/// One input image: a URL or data URL, or a reference object.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ImageItem {
    Url(String),
    Reference(ImageReference),
}

/// The JSON `image` (and `mask`) field: one image or a list of them.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ImageInput {
    One(ImageItem),
    Many(Vec<ImageItem>),
}

/// `POST /v1/images/edits` as JSON (gpt-image-1's `images[]` body, and `image`/`mask` as
/// references).
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"prompt": "paint the sky red", "images": [{"image_url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}]}))]
pub struct EditJsonRequest {
    prompt: String,
    images: Option<Vec<ImageReference>>,
    image: Option<ImageInput>,
    /// A PNG whose transparent pixels mark where to edit (the first image's size).
    mask: Option<ImageInput>,
    model: Option<String>,
    #[schema(minimum = 1, maximum = 10)]
    n: Option<i64>,
    #[schema(example = "1024x1024")]
    size: Option<String>,
    quality: Option<Quality>,
    background: Option<Background>,
    output_format: Option<OutputFormat>,
    #[schema(minimum = 0, maximum = 100)]
    output_compression: Option<i64>,
    moderation: Option<Moderation>,
    response_format: Option<ResponseFormat>,
    stream: Option<bool>,
    #[schema(minimum = 0, maximum = 3)]
    partial_images: Option<i64>,
    input_fidelity: Option<InputFidelity>,
    user: Option<String>,
    /// How far an edit may move from the input, 0-1 (open models).
    strength: Option<f32>,
    #[serde(flatten)]
    extensions: Extensions,
}

/// A file part of a multipart body.
#[derive(Deserialize, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct File(String);

/// `POST /v1/images/edits` as `multipart/form-data`: one or more `image` parts (or `image[]`),
/// an optional `mask`, and the parameters as text parts.
#[derive(Deserialize, ToSchema)]
pub struct EditForm {
    image: Vec<File>,
    mask: Option<File>,
    prompt: String,
    model: Option<String>,
    #[schema(minimum = 1, maximum = 10)]
    n: Option<i64>,
    size: Option<String>,
    quality: Option<Quality>,
    background: Option<Background>,
    output_format: Option<OutputFormat>,
    #[schema(minimum = 0, maximum = 100)]
    output_compression: Option<i64>,
    moderation: Option<Moderation>,
    response_format: Option<ResponseFormat>,
    stream: Option<bool>,
    #[schema(minimum = 0, maximum = 3)]
    partial_images: Option<i64>,
    input_fidelity: Option<InputFidelity>,
    user: Option<String>,
    strength: Option<f32>,
    #[serde(flatten)]
    extensions: Extensions,
}

/// `POST /v1/images/variations` as `multipart/form-data`.
#[derive(Deserialize, ToSchema)]
pub struct VariationForm {
    image: File,
    model: Option<String>,
    #[schema(minimum = 1, maximum = 10)]
    n: Option<i64>,
    size: Option<String>,
    output_format: Option<OutputFormat>,
    #[schema(minimum = 0, maximum = 100)]
    output_compression: Option<i64>,
    response_format: Option<ResponseFormat>,
    user: Option<String>,
    strength: Option<f32>,
    #[serde(flatten)]
    extensions: Extensions,
}

/// One part of a Qwen message: `{"text"}`, `{"image"}` (a URL or data URL), or OpenAI's
/// `{"type": "image_url", "image_url": {"url"}}`.
#[derive(Deserialize, ToSchema)]
pub struct QwenPart {
    text: Option<String>,
    image: Option<String>,
}

/// A message's content: text (image URLs written inline are taken as input images) or parts.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum QwenContent {
    Text(String),
    Parts(Vec<QwenPart>),
}

#[derive(Deserialize, ToSchema)]
pub struct QwenMessage {
    /// `user` (a `system` message is read as well).
    role: String,
    content: QwenContent,
}

/// `input`: the messages, or DashScope's `prompt` with `base_image_url`/`images`.
#[derive(Deserialize, ToSchema)]
pub struct QwenInput {
    messages: Option<Vec<QwenMessage>>,
    prompt: Option<String>,
    negative_prompt: Option<String>,
    images: Option<Vec<String>>,
    base_image_url: Option<String>,
    mask_image_url: Option<String>,
    /// DashScope's image2image function, on that route only: `description_edit` or
    /// `description_edit_with_mask`.
    function: Option<String>,
}

/// `parameters`; `size` is written `W*H`. `prompt_extend`, `watermark` and `style` are
/// DashScope's, sent only to DashScope models.
#[derive(Deserialize, ToSchema)]
pub struct QwenParameters {
    #[schema(example = "1024*1024")]
    size: Option<String>,
    #[schema(minimum = 1, maximum = 10)]
    n: Option<i64>,
    strength: Option<f32>,
    prompt_extend: Option<bool>,
    watermark: Option<bool>,
    style: Option<String>,
    #[serde(flatten)]
    extensions: Extensions,
}

/// The Qwen / DashScope shape, accepted on the OpenAI image routes too; OpenAI parameters
/// beside `input` (`n`, `size`, `response_format`, ...) win over `parameters`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"input": {"messages": [{"role": "user", "content": [{"text": "a lighthouse at dusk"}]}]}, "parameters": {"n": 1, "seed": 42}}))]
pub struct QwenRequest {
    model: Option<String>,
    input: QwenInput,
    parameters: Option<QwenParameters>,
}

/// A JSON body of `POST /v1/images/generations`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum GenerationBody {
    OpenAi(GenerationRequest),
    Qwen(QwenRequest),
}

/// A JSON body of `POST /v1/images/edits`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EditBody {
    OpenAi(EditJsonRequest),
    Qwen(QwenRequest),
}

/// One server-sent event of a streamed image request; the SSE `event:` line repeats `type`
/// (`image_generation.partial_image`, `image_generation.completed`, `image_edit.*`), and a
/// failure after the stream began is an `error` event holding the error envelope.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum ImageStreamEvent {
    Partial(PartialImageEvent),
    Completed(CompletedEvent),
    Error(ErrorBody),
}

/// `{"steps_done", "steps_total"}` of a running task.
#[derive(Deserialize, ToSchema)]
pub struct TaskProgress {
    steps_done: u32,
    steps_total: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

/// An async image job (`Prefer: respond-async`).
#[derive(Deserialize, ToSchema)]
pub struct Task {
    id: String,
    /// Always `image.task`.
    object: String,
    status: TaskState,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    model: String,
    operation: Operation,
    /// Images asked for.
    n: i64,
    progress: Option<TaskProgress>,
    /// The answer the synchronous route would have given.
    result: Option<ImagesResponse>,
    error: Option<ErrorDetail>,
}

#[derive(Deserialize, ToSchema)]
pub struct TaskList {
    object: String,
    data: Vec<Task>,
    first_id: Option<String>,
    last_id: Option<String>,
    has_more: bool,
}

/// OpenAI's model object plus what the model can do.
#[derive(Deserialize, ToSchema)]
pub struct Model {
    id: String,
    /// Always `model`.
    object: String,
    created: i64,
    owned_by: String,
    /// Operations, sizes, `n`, qualities, formats and the open-model ranges (steps, guidance).
    #[schema(value_type = Object)]
    capabilities: serde_json::Value,
    /// Present (true) for a model with random weights, made for tests.
    random_weights: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct ModelList {
    object: String,
    data: Vec<Model>,
}

/// The body of `POST /admin/v1/keys` and `PATCH /admin/v1/keys/{id}`. A limit of 0 lifts it.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"name": "ci", "models": [], "rpm": 60}))]
pub struct KeySettings {
    /// Required when creating.
    name: Option<String>,
    /// Model ids the key may use; empty for every model.
    models: Option<Vec<String>>,
    admin: Option<bool>,
    #[schema(minimum = 0)]
    rpm: Option<u64>,
    #[schema(minimum = 0)]
    images_per_min: Option<u64>,
    #[schema(minimum = 0)]
    daily_images: Option<u64>,
    #[schema(minimum = 0)]
    monthly_images: Option<u64>,
    #[schema(minimum = 0)]
    monthly_tokens: Option<u64>,
    /// Unix seconds; 0 for no expiry.
    #[schema(minimum = 0)]
    expires_at: Option<i64>,
}

/// An API key, without its secret.
#[derive(Deserialize, ToSchema)]
pub struct ApiKey {
    id: String,
    /// Always `api_key`.
    object: String,
    name: String,
    models: Option<Vec<String>>,
    admin: bool,
    rpm: Option<u64>,
    images_per_min: Option<u64>,
    daily_images: Option<u64>,
    monthly_images: Option<u64>,
    monthly_tokens: Option<u64>,
    expires_at: Option<i64>,
    created_at: i64,
    revoked_at: Option<i64>,
    /// The secret, only in the answer to the create.
    key: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct ApiKeyList {
    object: String,
    data: Vec<ApiKey>,
}

#[derive(Deserialize, ToSchema)]
pub struct RevokedKey {
    id: String,
    object: String,
    revoked: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroup {
    Model,
    Key,
    Day,
}

#[derive(Deserialize, ToSchema)]
pub struct UsageRow {
    /// The model id, the key id (`open` without a key) or the day (`YYYY-MM-DD`).
    group: String,
    requests: i64,
    failed: i64,
    images: i64,
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
}

#[derive(Deserialize, ToSchema)]
pub struct UsageReport {
    object: String,
    by: UsageGroup,
    data: Vec<UsageRow>,
}

#[derive(Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    status: String,
}

/// Readiness; `checks` (each `{"ok", "error"?, "required"?}`, by name: `database`, `blobs`,
/// `model:ID`, `draining`) only for an admin key.
#[derive(Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    status: String,
    #[schema(value_type = Option<Object>)]
    checks: Option<serde_json::Value>,
}

/// DashScope's async switch: its image-synthesis routes are async only.
#[derive(Deserialize, ToSchema)]
pub enum DashScopeAsync {
    #[serde(rename = "enable")]
    Enable,
}
