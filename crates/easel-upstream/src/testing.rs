//! In-process fake providers on 127.0.0.1:0, for tests (feature `testing`), faithful to the
//! documented protocols:
//! OpenAI images (JSON generations, multipart and JSON edits, variations, SSE streaming),
//! DashScope (async submit + task polling + cancel, sync multimodal, image2image), an
//! OpenAI-compatible chat-completions endpoint, and result-image hosting. Every request is
//! recorded; faults are scripted per request.

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64_simd::STANDARD;
use futures::StreamExt;
use serde_json::{Value, json};

/// One scripted answer, used instead of the normal one for the next request to a main endpoint.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, JSON body, extra headers.
    Json(u16, Value, Vec<(&'static str, String)>),
    /// Never answers (well past any test timeout).
    Hang,
    /// Sends the start of a 200 body, then breaks the connection.
    Truncated,
    /// A `text/event-stream` of these JSON events (`event:` taken from each `type`).
    Sse(Vec<Value>),
    /// A 200 whose body never ends and has no `Content-Length` (the start of a JSON answer, or
    /// with `sse` of one `completed` event, then base64 forever): only a cap on the bytes read
    /// stops a reader.
    Endless { sse: bool },
    /// A 200 JSON answer that starts at once, then dribbles one byte every `every` and never
    /// ends: only the whole attempt's timeout stops a reader.
    Trickle { every: Duration },
    /// Status, `Content-Type` and body as given (HTML error pages, bodies that are not JSON).
    Raw(u16, &'static str, Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub json: Option<Value>,
    /// Multipart parts: name, file name, bytes.
    pub parts: Vec<(String, Option<String>, Vec<u8>)>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<String> {
        self.parts.iter().find(|p| p.0 == name && p.1.is_none()).map(|p| String::from_utf8_lossy(&p.2).into_owned())
    }
    pub fn files(&self, name: &str) -> Vec<&[u8]> {
        self.parts.iter().filter(|p| p.0 == name && p.1.is_some()).map(|p| p.2.as_slice()).collect()
    }
}

#[derive(Default)]
pub struct Inner {
    pub log: Vec<Recorded>,
    pub script: VecDeque<Reply>,
    /// Scripted answers for DashScope task polls only.
    pub poll_script: VecDeque<Reply>,
    /// DashScope poll answers used before the default flow (whole JSON bodies).
    pub polls: VecDeque<Value>,
    pub tasks: HashMap<String, Task>,
    pub next_task: u32,
    /// Overrides the result-image host in links (for the allow-list test).
    pub result_host: Option<String>,
    /// Chat answer; `None` gives "ENHANCED: <prompt>".
    pub chat_answer: Option<String>,
    /// DashScope tasks stay PENDING (a long queue) until cancelled.
    pub queued: bool,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub n: u32,
    pub size: (u32, u32),
    pub polls: u32,
    pub prompt: String,
    pub cancelled: bool,
}

impl Task {
    /// Where the task stands after `polls` polls: PENDING, RUNNING, then SUCCEEDED; CANCELED
    /// once cancelled; PENDING throughout while the fake is `queued`.
    fn status(&self, queued: bool) -> &'static str {
        match self.polls {
            _ if self.cancelled => "CANCELED",
            _ if queued => "PENDING",
            0 | 1 => "PENDING",
            2 => "RUNNING",
            _ => "SUCCEEDED",
        }
    }
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<Inner>>,
    pub key: String,
}

type Shared = (Arc<Mutex<Inner>>, String, SocketAddr);

impl Fake {
    /// Starts a fake that accepts `Authorization: Bearer {key}` (others get the provider's 401).
    pub async fn start(key: &str) -> Fake {
        let key = key.to_string();
        let state = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Shared = (Arc::clone(&state), key.clone(), addr);
        let app = Router::new()
            .route("/v1/images/generations", post(openai_images))
            .route("/v1/images/edits", post(openai_images))
            .route("/v1/images/variations", post(openai_images))
            .route("/v1/chat/completions", post(chat))
            .route("/api/v1/services/aigc/text2image/image-synthesis", post(dash_submit))
            .route("/api/v1/services/aigc/image2image/image-synthesis", post(dash_submit))
            .route("/api/v1/services/aigc/multimodal-generation/generation", post(dash_sync))
            .route("/api/v1/services/aigc/image-generation/generation", post(dash_sync))
            .route("/api/v1/tasks/{id}", get(dash_poll))
            .route("/api/v1/tasks/{id}/cancel", post(dash_cancel))
            .route("/results/{file}", get(result_image))
            .with_state(shared);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { addr, state, key }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, reply: Reply) {
        self.state.lock().unwrap().script.push_back(reply);
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests to paths containing `part`.
    pub fn hits(&self, part: &str) -> Vec<Recorded> {
        self.log().into_iter().filter(|r| r.path.contains(part)).collect()
    }
}

/// A solid PNG of the given size.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(w, h, image::Rgba([200, 30, 60, 255]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn record(
    state: &Arc<Mutex<Inner>>,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    json: Option<Value>,
    parts: Vec<(String, Option<String>, Vec<u8>)>,
) {
    let headers = headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    state.lock().unwrap().log.push(Recorded { method: method.into(), path: path.into(), headers, json, parts });
}

fn authorised(headers: &HeaderMap, key: &str) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {key}"))
}

async fn scripted(state: &Arc<Mutex<Inner>>) -> Option<Response> {
    let reply = state.lock().unwrap().script.pop_front()?;
    Some(answer(reply).await)
}

async fn scripted_poll(state: &Arc<Mutex<Inner>>) -> Option<Response> {
    let reply = state.lock().unwrap().poll_script.pop_front()?;
    Some(answer(reply).await)
}

async fn answer(reply: Reply) -> Response {
    match reply {
        Reply::Json(status, body, headers) => {
            let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            for (k, v) in headers {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            response
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Reply::Sse(events) => {
            let mut text = String::new();
            for e in events {
                let name = e.get("type").and_then(Value::as_str).unwrap_or("error").to_string();
                text.push_str(&format!("event: {name}\ndata: {e}\n\n"));
            }
            ([(header::CONTENT_TYPE, "text/event-stream")], text).into_response()
        }
        Reply::Endless { sse } => {
            let (content_type, head): (&str, &'static [u8]) = if sse {
                ("text/event-stream", b"event: image_generation.completed\ndata: {\"b64_json\": \"")
            } else {
                ("application/json", b"{\"created\": 1, \"data\": [{\"b64_json\": \"")
            };
            let chunk = Bytes::from(vec![b'A'; 64 * 1024]);
            let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from_static(head)) })
                .chain(futures::stream::repeat_with(move || Ok(chunk.clone())));
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from_stream(body))
                .unwrap()
        }
        Reply::Trickle { every } => {
            let head =
                futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"created\": 1, ")) });
            let drip = futures::stream::unfold((), move |()| async move {
                tokio::time::sleep(every).await;
                Some((Ok(Bytes::from_static(b" ")), ()))
            });
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(head.chain(drip)))
                .unwrap()
        }
        Reply::Raw(status, content_type, body) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap(),
        Reply::Truncated => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"created\":1,\"data\":[{\"b64_json\":\"iVBOR")),
                Err(std::io::Error::other("connection reset")),
            ];
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, "5000")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap()
        }
    }
}

fn size_of(v: &Value) -> (u32, u32) {
    if let (Some(w), Some(h)) = (v.get("width").and_then(Value::as_u64), v.get("height").and_then(Value::as_u64)) {
        return (w as u32, h as u32);
    }
    let text = v.get("size").and_then(Value::as_str).unwrap_or("1024x1024");
    let (w, h) = text.split_once(['x', '*']).unwrap_or(("1024", "1024"));
    (w.parse().unwrap_or(1024), h.parse().unwrap_or(1024))
}

fn openai_error(status: u16, message: &str, param: Option<&str>, code: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn openai_images(State((state, key, addr)): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let headers = request.headers().clone();
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut params = serde_json::Map::new();
    let mut parts = Vec::new();
    let mut json_body = None;
    if multipart {
        let Ok(mut form) = Multipart::from_request(request, &()).await else {
            return openai_error(400, "Invalid multipart body", None, "invalid_multipart");
        };
        while let Ok(Some(field)) = form.next_field().await {
            let name = field.name().unwrap_or("").to_string();
            let file = field.file_name().map(str::to_string);
            let bytes = field.bytes().await.unwrap_or_default().to_vec();
            if file.is_none() {
                params.insert(name.clone(), json!(String::from_utf8_lossy(&bytes)));
            }
            parts.push((name, file, bytes));
        }
    } else {
        let bytes = axum::body::to_bytes(request.into_body(), 64 << 20).await.unwrap_or_default();
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => {
                params = map.clone();
                json_body = Some(Value::Object(map));
            }
            _ => {
                record(&state, "POST", &path, &headers, None, parts);
                return openai_error(400, "We could not parse the JSON body of your request.", None, "invalid_json");
            }
        }
    }
    record(&state, "POST", &path, &headers, json_body, parts);
    if !authorised(&headers, &key) {
        return openai_error(401, "Incorrect API key provided.", None, "invalid_api_key");
    }
    if let Some(response) = scripted(&state).await {
        return response;
    }
    let params = Value::Object(params);
    let n: u32 = match params.get("n") {
        Some(Value::String(s)) => s.parse().unwrap_or(1),
        Some(v) => v.as_u64().unwrap_or(1) as u32,
        None => 1,
    };
    let (w, h) = size_of(&params);
    let format = params.get("response_format").and_then(Value::as_str).unwrap_or("b64_json").to_string();
    let stream = matches!(params.get("stream"), Some(Value::Bool(true)))
        || params.get("stream").and_then(Value::as_str) == Some("true");
    let image = png(w, h);
    let prefix = if path.ends_with("edits") { "image_edit" } else { "image_generation" };
    if stream {
        // Multipart bodies carry numbers as text.
        let partials = params
            .get("partial_images")
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|t| t.parse().ok())))
            .unwrap_or(0);
        let mut text = String::new();
        for i in 0..partials {
            let ev = json!({"type": format!("{prefix}.partial_image"), "b64_json": STANDARD.encode_to_string(png(8, 8)), "partial_image_index": i,
                "created_at": 1, "size": format!("{w}x{h}"), "quality": "high", "background": "opaque", "output_format": "png"});
            text.push_str(&format!("event: {prefix}.partial_image\ndata: {ev}\n\n"));
        }
        for _ in 0..n {
            let ev = json!({"type": format!("{prefix}.completed"), "b64_json": STANDARD.encode_to_string(&image), "created_at": 1,
                "size": format!("{w}x{h}"), "quality": "high", "background": "opaque", "output_format": "png",
                "usage": {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20, "input_tokens_details": {"text_tokens": 10, "image_tokens": 0}}});
            text.push_str(&format!("event: {prefix}.completed\ndata: {ev}\n\n"));
        }
        return ([(header::CONTENT_TYPE, "text/event-stream")], text).into_response();
    }
    let data: Vec<Value> = (0..n)
        .map(|i| match format.as_str() {
            "url" => json!({"url": format!("http://{addr}/results/{w}x{h}-{i}.png"), "b64_json": "", "revised_prompt": "a revised prompt"}),
            _ => json!({"b64_json": STANDARD.encode_to_string(&image), "revised_prompt": "a revised prompt"}),
        })
        .collect();
    axum::Json(json!({
        "created": 1_700_000_000,
        "data": data,
        "usage": {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20, "input_tokens_details": {"text_tokens": 7, "image_tokens": 3}}
    }))
    .into_response()
}

async fn chat(State((state, key, _)): State<Shared>, headers: HeaderMap, body: axum::Json<Value>) -> Response {
    record(&state, "POST", "/v1/chat/completions", &headers, Some(body.0.clone()), Vec::new());
    if !authorised(&headers, &key) {
        return openai_error(401, "Incorrect API key provided.", None, "invalid_api_key");
    }
    if let Some(response) = scripted(&state).await {
        return response;
    }
    let user = body.0["messages"][1]["content"].clone();
    let prompt = match &user {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    };
    let answer = state.lock().unwrap().chat_answer.clone().unwrap_or_else(|| format!("ENHANCED: {prompt}"));
    axum::Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body.0["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
    }))
    .into_response()
}

fn dash_error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"request_id": "req-1", "code": code, "message": message})),
    )
        .into_response()
}

fn result_link(state: &Arc<Mutex<Inner>>, addr: SocketAddr, w: u32, h: u32, i: u32) -> String {
    let host = state.lock().unwrap().result_host.clone().unwrap_or_else(|| addr.to_string());
    format!("http://{host}/results/{w}x{h}-{i}.png?Expires=1700000000&Signature=abc")
}

async fn dash_submit(State((state, key, _)): State<Shared>, headers: HeaderMap, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let bytes = axum::body::to_bytes(request.into_body(), 64 << 20).await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    record(&state, "POST", &path, &headers, body.clone(), Vec::new());
    if !authorised(&headers, &key) {
        return dash_error(401, "InvalidApiKey", "Invalid API-key provided.");
    }
    if headers.get("x-dashscope-async").and_then(|v| v.to_str().ok()) != Some("enable") {
        return dash_error(403, "AccessDenied", "current user api does not support synchronous calls");
    }
    let Some(body) = body else {
        return dash_error(400, "InvalidParameter", "Request body is not valid JSON");
    };
    if let Some(response) = scripted(&state).await {
        return response;
    }
    let Some(prompt) = body["input"]["prompt"].as_str() else {
        return dash_error(400, "InvalidParameter", "Field required: input.prompt");
    };
    if path.contains("image2image") && body["input"]["base_image_url"].is_null() && body["input"]["images"].is_null() {
        return dash_error(400, "InvalidParameter", "Field required: input.base_image_url");
    }
    let n = body["parameters"]["n"].as_u64().unwrap_or(4) as u32;
    let size = match body["parameters"]["size"].as_str() {
        Some(s) => {
            let Some((w, h)) = s.split_once('*') else {
                return dash_error(400, "InvalidParameter", "size must be like 1024*1024");
            };
            (w.parse().unwrap(), h.parse().unwrap())
        }
        None => (512, 512),
    };
    let mut s = state.lock().unwrap();
    s.next_task += 1;
    let id = format!("task-{}", s.next_task);
    s.tasks.insert(id.clone(), Task { n, size, polls: 0, prompt: prompt.to_string(), cancelled: false });
    axum::Json(json!({"output": {"task_status": "PENDING", "task_id": id}, "request_id": "req-submit"})).into_response()
}

async fn dash_poll(State((state, key, addr)): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    record(&state, "GET", &format!("/api/v1/tasks/{id}"), &headers, None, Vec::new());
    if !authorised(&headers, &key) {
        return dash_error(401, "InvalidApiKey", "Invalid API-key provided.");
    }
    if let Some(response) = scripted_poll(&state).await {
        return response;
    }
    let scripted_poll = state.lock().unwrap().polls.pop_front();
    if let Some(body) = scripted_poll {
        return axum::Json(body).into_response();
    }
    let (task, status) = {
        let mut s = state.lock().unwrap();
        let queued = s.queued;
        let Some(task) = s.tasks.get_mut(&id) else {
            return axum::Json(json!({"request_id": "r", "output": {"task_id": id, "task_status": "UNKNOWN"}}))
                .into_response();
        };
        task.polls += 1;
        (task.clone(), task.status(queued))
    };
    if status != "SUCCEEDED" {
        return axum::Json(json!({"request_id": "r", "output": {"task_id": id, "task_status": status}}))
            .into_response();
    }
    let (w, h) = task.size;
    let results: Vec<Value> = (0..task.n)
        .map(|i| json!({"orig_prompt": task.prompt, "actual_prompt": format!("{} (extended)", task.prompt), "url": result_link(&state, addr, w, h, i)}))
        .collect();
    axum::Json(json!({
        "request_id": "r",
        "output": {"task_id": id, "task_status": "SUCCEEDED", "submit_time": "2025-09-23 22:14:10.800", "results": results,
            "task_metrics": {"TOTAL": task.n, "SUCCEEDED": task.n, "FAILED": 0}},
        "usage": {"image_count": task.n}
    }))
    .into_response()
}

async fn dash_cancel(State((state, key, _)): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    record(&state, "POST", &format!("/api/v1/tasks/{id}/cancel"), &headers, None, Vec::new());
    if !authorised(&headers, &key) {
        return dash_error(401, "InvalidApiKey", "Invalid API-key provided.");
    }
    // DashScope cancels only PENDING tasks; any other (running, finished, unknown) is refused.
    let mut s = state.lock().unwrap();
    let queued = s.queued;
    match s.tasks.get_mut(&id) {
        Some(task) if task.status(queued) == "PENDING" => {
            task.cancelled = true;
            axum::Json(json!({"request_id": "r"})).into_response()
        }
        _ => dash_error(
            400,
            "UnsupportedOperation",
            "Failed to cancel the task, please confirm if the task is in PENDING status.",
        ),
    }
}

async fn dash_sync(State((state, key, addr)): State<Shared>, headers: HeaderMap, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let bytes = axum::body::to_bytes(request.into_body(), 64 << 20).await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    record(&state, "POST", &path, &headers, body.clone(), Vec::new());
    if !authorised(&headers, &key) {
        return dash_error(401, "InvalidApiKey", "Invalid API-key provided.");
    }
    if headers.get("x-dashscope-async").is_some() && path.contains("multimodal") {
        return dash_error(
            400,
            "InvalidParameter",
            "The multimodal-generation API does not support asynchronous calls",
        );
    }
    let Some(body) = body else {
        return dash_error(400, "InvalidParameter", "Request body is not valid JSON");
    };
    if let Some(response) = scripted(&state).await {
        return response;
    }
    let content = body["input"]["messages"][0]["content"].as_array().cloned().unwrap_or_default();
    if !content.last().is_some_and(|c| c["text"].is_string()) {
        return dash_error(400, "InvalidParameter", "the last content item must be the text");
    }
    let model = body["model"].as_str().unwrap_or_default();
    if model.starts_with("qwen-image-edit") && !content.iter().any(|c| c["image"].is_string()) {
        return dash_error(400, "InvalidParameter", "an image is required");
    }
    let n = body["parameters"]["n"].as_u64().unwrap_or(1) as u32;
    let (w, h) = match body["parameters"]["size"].as_str() {
        Some(s) => {
            let (w, h) = s.split_once('*').unwrap();
            (w.parse().unwrap(), h.parse().unwrap())
        }
        None => (640, 480),
    };
    let images: Vec<Value> =
        (0..n).map(|i| json!({"image": result_link(&state, addr, w, h, i), "type": "image"})).collect();
    axum::Json(json!({
        "output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": images}}], "finished": true},
        "usage": {"image_count": n, "width": w, "height": h},
        "request_id": "req-sync"
    }))
    .into_response()
}

async fn result_image(State((state, _, _)): State<Shared>, headers: HeaderMap, Path(file): Path<String>) -> Response {
    record(&state, "GET", &format!("/results/{file}"), &headers, None, Vec::new());
    if file.ends_with(".html") {
        // A link that serves a web page (a login wall, an error page) instead of the image.
        return ([(header::CONTENT_TYPE, "text/html")], "<!doctype html><html><body>Expired</body></html>")
            .into_response();
    }
    let dims = file.split('-').next().unwrap_or("8x8");
    let (w, h) = dims.split_once('x').unwrap_or(("8", "8"));
    let bytes = png(w.parse().unwrap_or(8), h.parse().unwrap_or(8));
    ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
}
