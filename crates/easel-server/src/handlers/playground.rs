//! The web playground: a page at `/` where a person tries the API without writing curl (generate
//! with live partial images, edit with a painted mask, a gallery, usage charts for admins). Plain
//! HTML, CSS and JavaScript modules compiled into the binary, so it works offline and nothing is
//! loaded from elsewhere; the page calls the same public API as any client, with the key the
//! person types. Served without a key (it holds no data) when `[server] playground` is on.

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::extract;

/// Each asset: its name under `/playground/`, its content type, its text.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css; charset=utf-8", include_str!("../../assets/playground/style.css")),
    ("app.js", JS, include_str!("../../assets/playground/app.js")),
    ("api.js", JS, include_str!("../../assets/playground/api.js")),
    ("mask.js", JS, include_str!("../../assets/playground/mask.js")),
    ("gallery.js", JS, include_str!("../../assets/playground/gallery.js")),
    ("snippets.js", JS, include_str!("../../assets/playground/snippets.js")),
    ("usage.js", JS, include_str!("../../assets/playground/usage.js")),
];

const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("../../assets/playground/index.html");

/// Only this origin's scripts and styles; images may also be `data:`/`blob:` (results, uploads)
/// or hosted URLs elsewhere (`response_format=url` behind a `public_url`).
const POLICY: &str = "default-src 'self'; img-src * data: blob:; script-src 'self'; style-src 'self'; \
                      connect-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `GET /`: the page.
pub async fn index() -> Response {
    respond("text/html; charset=utf-8", INDEX)
}

/// `GET /playground/{file}`: one embedded asset.
pub async fn asset(uri: Uri, path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let name = extract::segment(path, &uri);
    let (_, kind, text) =
        ASSETS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| ApiError::UnknownUrl(uri.path().to_string()))?;
    Ok(respond(kind, text))
}

fn respond(kind: &'static str, text: &'static str) -> Response {
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Revalidated on every load, so a new binary's page is never mixed with old cached modules.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
