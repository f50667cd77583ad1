//! `GET /openapi.json`, the OpenAPI 3.1 document of every route, and `GET /docs`, a small page
//! (embedded, no CDN) that renders it.
//!
//! The document is derived from the code with utoipa: the response, event and error bodies are
//! the wire types themselves (`easel-wire`'s `openapi` feature derives their schemas, and
//! `easel-types` gives every string enum its wire names), so a field added there appears here.
//! The request bodies are read by hand-written parsers (one serde struct for every dialect,
//! with lenient numbers and per-operation key lists), and several answers are built as JSON in
//! their handlers, so [`schemas`] describes those shapes, field for field; the test
//! `every_route_is_documented` fails when a route in `routes.rs` is missing here, and the API
//! test suite runs schemathesis against the served document to hold it to what the server sends.
//!
//! Both routes are public, like the playground: the document holds nothing a client could not
//! learn from the README. Errors are added to every operation in one place (`Errors`): the
//! OpenAI envelope, or DashScope's body on the DashScope routes under `/api/v1/`.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
use crate::extract;

mod paths;
pub mod schemas;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Easel",
        description = "The OpenAI Images API (and the Qwen `input.messages` and DashScope dialects), served \
                       by local models or upstream providers. Authenticate with `Authorization: Bearer KEY` \
                       (or DashScope's `X-DashScope-API-Key`) unless the server runs keyless on loopback.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        paths::generations,
        paths::edits,
        paths::variations,
        paths::image_file,
        paths::list_models,
        paths::get_model,
        paths::list_tasks,
        paths::get_task,
        paths::cancel_task,
        paths::list_keys,
        paths::create_key,
        paths::get_key,
        paths::update_key,
        paths::revoke_key,
        paths::usage,
        paths::dashscope_generation,
        paths::dashscope_text2image,
        paths::dashscope_image2image,
        paths::dashscope_list_tasks,
        paths::dashscope_get_task,
        paths::dashscope_cancel_task,
        paths::healthz,
        paths::readyz,
        paths::metrics,
        paths::playground,
        paths::playground_asset,
        paths::openapi_json,
        paths::docs_page,
        paths::docs_asset,
    ),
    components(schemas(easel_wire::error::ErrorBody, easel_wire::dashscope::error::ErrorBody)),
    modifiers(&Errors),
    tags(
        (name = "images", description = "OpenAI's Images API and its dialects"),
        (name = "models"),
        (name = "tasks", description = "Async jobs (`Prefer: respond-async`)"),
        (name = "admin", description = "Keys and usage (admin keys only)"),
        (name = "dashscope", description = "DashScope's own protocol, for DashScope clients"),
        (name = "operations", description = "Health, readiness, metrics, pages"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);
    &DOCUMENT
}

/// `GET /openapi.json`.
pub async fn json() -> Response {
    static BODY: LazyLock<String> = LazyLock::new(|| document().to_json().expect("the OpenAPI document serialises"));
    ([(header::CONTENT_TYPE, "application/json")], BODY.as_str()).into_response()
}

const PAGE: &str = include_str!("../assets/docs/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    ("docs.js", "text/javascript; charset=utf-8", include_str!("../assets/docs/docs.js")),
    ("docs.css", "text/css; charset=utf-8", include_str!("../assets/docs/docs.css")),
];
/// Only this server's own files: the page runs no inline script and loads nothing elsewhere.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; \
                      base-uri 'none'; frame-ancestors 'none'";

/// `GET /docs`.
pub async fn page() -> Response {
    page_file("text/html; charset=utf-8", PAGE)
}

/// `GET /docs/{file}`: the page's script or style.
pub async fn asset(uri: Uri, path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let name = extract::segment(path, &uri);
    let (_, kind, text) =
        ASSETS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| ApiError::UnknownUrl(uri.path().to_string()))?;
    Ok(page_file(kind, text))
}

fn page_file(kind: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Adds the error answers and the bearer scheme to every operation: the error body is one fact
/// per protocol, not a line in each path.
struct Errors;

/// The statuses an operation may answer with an error besides its own: a bad request, a missing
/// or wrong key, a model the key may not use, an unknown id, a body too large, a wrong content
/// type, a limit, a provider failing or the server draining.
const ERROR_STATUSES: &[(&str, &str)] = &[
    ("400", "The request is invalid; `param` names the field"),
    ("401", "No key, or an unknown, revoked or expired one"),
    ("403", "The key may not do this"),
    ("404", "Not found"),
    ("413", "The body is too large"),
    ("415", "The content type is not one this route reads"),
    ("429", "A rate limit or quota"),
    ("502", "An upstream provider failed"),
    ("503", "The server is draining or a provider is unavailable"),
    ("default", "An error"),
];

impl Modify for Errors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("API key").build()),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let body = if path.starts_with("/api/v1/") { "DashScopeErrorBody" } else { "ErrorBody" };
            for operation in operations(item) {
                add_errors(operation, body);
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.post, &mut item.patch, &mut item.delete, &mut item.put].into_iter().flatten()
}

fn add_errors(operation: &mut Operation, body: &str) {
    // A public route never asks for a key.
    let public = operation.security.is_none();
    for (status, description) in ERROR_STATUSES {
        // A status the path documents itself (readiness's 503) keeps its own description.
        if operation.responses.responses.contains_key(*status) || (public && matches!(*status, "401" | "403")) {
            continue;
        }
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(body))).build();
        let response = ResponseBuilder::new().description(*description).content("application/json", content).build();
        operation.responses.responses.insert((*status).to_string(), response.into());
    }
}

#[cfg(test)]
mod tests;
