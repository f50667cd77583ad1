//! The operations, one `#[utoipa::path]` per route of `routes.rs` (the handlers take raw
//! requests and parse them in `easel-wire`, so their signatures say little; the bodies, answers
//! and parameters are written here). The functions are only carriers for the attributes; the
//! error answers are added to every operation by `super::Errors`.

// Carriers for `#[utoipa::path]`: the router calls the real handlers in `crate::handlers`.
#![allow(dead_code)]

use easel_wire::dashscope::response::{Canceled, MultimodalBody, Submitted, TaskBody, TaskList as DashScopeTaskList};
use easel_wire::error::ErrorBody;
use easel_wire::response::ImagesResponse;

use super::schemas::{
    ApiKey, ApiKeyList, DashScopeAsync, EditBody, EditForm, GenerationBody, Health, ImageStreamEvent, KeySettings,
    Model, ModelList, QwenRequest, Readiness, RevokedKey, Task, TaskList, UsageReport, VariationForm,
};

const IMAGES_OK: &str = "The images (JSON), or with `stream: true` server-sent events whose `data` is one of the \
                         event bodies";

#[utoipa::path(
    post, path = "/v1/images/generations", tag = "images",
    summary = "Create images from a prompt",
    description = "OpenAI's JSON body, or the Qwen `input.messages` shape. `Prefer: respond-async` answers 202 \
                   with a task to poll at `/v1/tasks/{id}`.",
    params(("Prefer" = Option<String>, Header, example = "respond-async", description = "`respond-async` to run the job as a task")),
    request_body(content((GenerationBody = "application/json"))),
    responses(
        (status = 200, description = IMAGES_OK, content(
            (ImagesResponse = "application/json"),
            (ImageStreamEvent = "text/event-stream"),
        )),
        (status = 202, description = "Accepted as a task (`Prefer: respond-async`)", body = Task),
    ),
    security(("bearer" = []))
)]
fn generations() {}

#[utoipa::path(
    post, path = "/v1/images/edits", tag = "images",
    summary = "Edit images (inpaint with an optional mask)",
    description = "Multipart (one or more `image` parts, `mask`), JSON with `images[]`/`image`/`mask` as URLs, \
                   data URLs or file ids, or the Qwen shape with images in the messages.",
    params(("Prefer" = Option<String>, Header, example = "respond-async", description = "`respond-async` to run the job as a task")),
    request_body(content((EditForm = "multipart/form-data"), (EditBody = "application/json"))),
    responses(
        (status = 200, description = IMAGES_OK, content(
            (ImagesResponse = "application/json"),
            (ImageStreamEvent = "text/event-stream"),
        )),
        (status = 202, description = "Accepted as a task (`Prefer: respond-async`)", body = Task),
    ),
    security(("bearer" = []))
)]
fn edits() {}

#[utoipa::path(
    post, path = "/v1/images/variations", tag = "images",
    summary = "Make variations of an image",
    description = "Multipart with one `image` part, or the Qwen shape with the image in the messages.",
    params(("Prefer" = Option<String>, Header, example = "respond-async", description = "`respond-async` to run the job as a task")),
    request_body(content((VariationForm = "multipart/form-data"), (QwenRequest = "application/json"))),
    responses(
        (status = 200, description = "The images", body = ImagesResponse),
        (status = 202, description = "Accepted as a task (`Prefer: respond-async`)", body = Task),
    ),
    security(("bearer" = []))
)]
fn variations() {}

#[utoipa::path(
    get, path = "/v1/images/files/{name}", tag = "images",
    summary = "A hosted image (`response_format: url`)",
    description = "The signed link is the credential: no key. A tampered or expired link is 403, an unknown or \
                   swept image 404.",
    params(
        ("name" = String, Path, description = "`ID.png`, `ID.jpeg` or `ID.webp`"),
        ("expires" = Option<i64>, Query, description = "Unix seconds, from the link"),
        ("signature" = Option<String>, Query, description = "From the link"),
    ),
    responses(
        (status = 200, description = "The image", content(("image/png"), ("image/jpeg"), ("image/webp"))),
        (status = 403, description = "An unsigned, tampered or expired link", body = ErrorBody),
    )
)]
fn image_file() {}

#[utoipa::path(
    get, path = "/v1/models", tag = "models",
    summary = "The models this key may use, with their capabilities",
    responses((status = 200, description = "OpenAI's model list", body = ModelList)),
    security(("bearer" = []))
)]
fn list_models() {}

#[utoipa::path(
    get, path = "/v1/models/{id}", tag = "models",
    summary = "One model",
    params(("id" = String, Path)),
    responses((status = 200, description = "OpenAI's model object", body = Model)),
    security(("bearer" = []))
)]
fn get_model() {}

#[utoipa::path(
    get, path = "/v1/tasks", tag = "tasks",
    summary = "This key's tasks, newest first",
    params(
        ("status" = Option<String>, Query, description = "`queued`, `running`, `succeeded`, `failed` or `canceled`"),
        ("limit" = Option<i64>, Query, description = "1-100, default 20"),
        ("after" = Option<String>, Query, description = "A task id: the page after it"),
    ),
    responses((status = 200, description = "A page of tasks", body = TaskList)),
    security(("bearer" = []))
)]
fn list_tasks() {}

#[utoipa::path(
    get, path = "/v1/tasks/{id}", tag = "tasks",
    summary = "A task: its status, progress, and result or error",
    params(("id" = String, Path)),
    responses((status = 200, description = "The task", body = Task)),
    security(("bearer" = []))
)]
fn get_task() {}

#[utoipa::path(
    post, path = "/v1/tasks/{id}/cancel", tag = "tasks",
    summary = "Cancel a queued or running task",
    params(("id" = String, Path)),
    responses((status = 200, description = "The task, canceled", body = Task)),
    security(("bearer" = []))
)]
fn cancel_task() {}

#[utoipa::path(
    get, path = "/admin/v1/keys", tag = "admin",
    summary = "Every key",
    responses((status = 200, description = "The keys, without secrets", body = ApiKeyList)),
    security(("bearer" = []))
)]
fn list_keys() {}

#[utoipa::path(
    post, path = "/admin/v1/keys", tag = "admin",
    summary = "Create a key",
    request_body(content((KeySettings = "application/json"))),
    responses((status = 201, description = "The key, with its secret in `key` (shown once)", body = ApiKey)),
    security(("bearer" = []))
)]
fn create_key() {}

#[utoipa::path(
    get, path = "/admin/v1/keys/{id}", tag = "admin",
    summary = "One key",
    params(("id" = String, Path)),
    responses((status = 200, description = "The key", body = ApiKey)),
    security(("bearer" = []))
)]
fn get_key() {}

#[utoipa::path(
    patch, path = "/admin/v1/keys/{id}", tag = "admin",
    summary = "Change a key's name, models, admin flag, limits or expiry",
    params(("id" = String, Path)),
    request_body(content((KeySettings = "application/json"))),
    responses((status = 200, description = "The key", body = ApiKey)),
    security(("bearer" = []))
)]
fn update_key() {}

#[utoipa::path(
    delete, path = "/admin/v1/keys/{id}", tag = "admin",
    summary = "Revoke a key",
    params(("id" = String, Path)),
    responses((status = 200, description = "Revoked", body = RevokedKey)),
    security(("bearer" = []))
)]
fn revoke_key() {}

#[utoipa::path(
    get, path = "/admin/v1/usage", tag = "admin",
    summary = "Requests, images and tokens, grouped",
    params(
        ("by" = Option<String>, Query, description = "`model` (default), `key` or `day`"),
        ("key" = Option<String>, Query, description = "A key id"),
        ("model" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "Unix seconds, `YYYY-MM-DD` or RFC 3339"),
        ("until" = Option<String>, Query, description = "Exclusive; as `since`"),
    ),
    responses((status = 200, description = "The report", body = UsageReport)),
    security(("bearer" = []))
)]
fn usage() {}

#[utoipa::path(
    post, path = "/api/v1/services/aigc/multimodal-generation/generation", tag = "dashscope",
    summary = "DashScope's synchronous Qwen-Image call",
    description = "A message with an `{\"image\"}` part makes it an edit. Errors are DashScope's body.",
    request_body(content((QwenRequest = "application/json"))),
    responses((status = 200, description = "DashScope's answer, image URLs in the choices", body = MultimodalBody)),
    security(("bearer" = []))
)]
fn dashscope_generation() {}

#[utoipa::path(
    post, path = "/api/v1/services/aigc/text2image/image-synthesis", tag = "dashscope",
    summary = "Submit a DashScope text-to-image task",
    params(("X-DashScope-Async" = inline(DashScopeAsync), Header, description = "`enable`: these routes are async only")),
    request_body(content((QwenRequest = "application/json"))),
    responses((status = 200, description = "The task, `PENDING`", body = Submitted)),
    security(("bearer" = []))
)]
fn dashscope_text2image() {}

#[utoipa::path(
    post, path = "/api/v1/services/aigc/image2image/image-synthesis", tag = "dashscope",
    summary = "Submit a DashScope image-to-image task",
    params(("X-DashScope-Async" = inline(DashScopeAsync), Header, description = "`enable`: these routes are async only")),
    request_body(content((QwenRequest = "application/json"))),
    responses((status = 200, description = "The task, `PENDING`", body = Submitted)),
    security(("bearer" = []))
)]
fn dashscope_image2image() {}

#[utoipa::path(
    get, path = "/api/v1/tasks", tag = "dashscope",
    summary = "This key's DashScope tasks, newest first, a page at a time",
    params(
        ("page_no" = Option<i64>, Query, description = "From 1, default 1"),
        ("page_size" = Option<i64>, Query, description = "1-100, default 10"),
        ("status" = Option<String>, Query, description = "`PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED` or `CANCELED`"),
        ("model_name" = Option<String>, Query, description = "The model the task ran on"),
        ("start_time" = Option<String>, Query, description = "Submitted at or after, `YYYYMMDDhhmmss` (UTC)"),
        ("end_time" = Option<String>, Query, description = "Submitted at or before, `YYYYMMDDhhmmss` (UTC)"),
    ),
    responses((status = 200, description = "A page of tasks, with `total` and `total_page`", body = DashScopeTaskList)),
    security(("bearer" = []))
)]
fn dashscope_list_tasks() {}

#[utoipa::path(
    get, path = "/api/v1/tasks/{task_id}", tag = "dashscope",
    summary = "Poll a DashScope task",
    params(("task_id" = String, Path)),
    responses((status = 200, description = "The task", body = TaskBody)),
    security(("bearer" = []))
)]
fn dashscope_get_task() {}

#[utoipa::path(
    post, path = "/api/v1/tasks/{task_id}/cancel", tag = "dashscope",
    summary = "Cancel a pending DashScope task",
    params(("task_id" = String, Path)),
    responses((status = 200, description = "Canceled", body = Canceled)),
    security(("bearer" = []))
)]
fn dashscope_cancel_task() {}

#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "Alive", body = Health))
)]
fn healthz() {}

#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    summary = "Readiness: the database, the blob store, local models, not draining",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready", body = Readiness),
    )
)]
fn readyz() {}

#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics (when `[metrics] enabled` and no `[metrics] bind`)",
    responses((status = 200, description = "Prometheus text format", content(("text/plain")))),
    security(("bearer" = []))
)]
fn metrics() {}

#[utoipa::path(
    get, path = "/", tag = "operations",
    summary = "The web playground (`[server] playground`)",
    responses((status = 200, description = "The page", content(("text/html"))))
)]
fn playground() {}

#[utoipa::path(
    get, path = "/playground/{file}", tag = "operations",
    summary = "The playground's embedded scripts and styles",
    params(("file" = String, Path)),
    responses((status = 200, description = "The file", content(("text/javascript"), ("text/css"))))
)]
fn playground_asset() {}

#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", content(("application/json"))))
)]
fn openapi_json() {}

#[utoipa::path(
    get, path = "/docs", tag = "operations",
    summary = "A page that renders this document",
    responses((status = 200, description = "The page", content(("text/html"))))
)]
fn docs_page() {}

#[utoipa::path(
    get, path = "/docs/{file}", tag = "operations",
    summary = "The docs page's embedded script and style",
    params(("file" = String, Path, description = "`docs.js` or `docs.css`")),
    responses((status = 200, description = "The file", content(("text/javascript"), ("text/css"))))
)]
fn docs_asset() {}
