//! The CLI client's requests to a server (`--server`): generations as JSON and edits as
//! multipart, both streamed (`stream: true`) so that each partial image and each finished image
//! moves the progress bar; variations (which the API does not stream) as one multipart request.

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use easel_core::types::Operation;
use easel_wire::error::ErrorBody;
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::client::{Made, Order, Target, progress_bar, refusal};

/// A finished image as `data[]` and `*.completed` events carry it.
#[derive(Deserialize)]
struct Image {
    #[serde(default)]
    b64_json: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    output_format: Option<String>,
}

pub async fn send(server: &Url, target: &Target, order: &Order) -> Result<Vec<Made>> {
    let path = match order.operation {
        Operation::Generate => "v1/images/generations",
        Operation::Edit => "v1/images/edits",
        Operation::Variation => "v1/images/variations",
    };
    let url = api_base(server).join(path)?;
    let stream = order.operation != Operation::Variation;
    let partials = if stream { target.partial_images } else { 0 };
    let n = order.fields.get("n").and_then(Value::as_u64).unwrap_or(1);
    let mut fields = order.fields.clone();
    if stream {
        fields.insert("stream".into(), json!(true));
        fields.insert("partial_images".into(), json!(partials));
    }
    let default_format = fields.get("output_format").and_then(Value::as_str).unwrap_or("png").to_string();

    let client = reqwest::Client::new();
    let mut request = client.post(url.clone());
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    request = if order.operation == Operation::Generate {
        request.json(&fields)
    } else {
        let mut form = Form::new();
        for (name, value) in &fields {
            form = form.text(name.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_string));
        }
        for file in &order.files {
            let mut part = Part::bytes(file.data.to_vec()).file_name(file.filename.clone().unwrap_or_default());
            if let Some(mime) = &file.content_type {
                part = part.mime_str(mime)?;
            }
            form = form.part(file.name.clone(), part);
        }
        request.multipart(form)
    };

    let bar = progress_bar(u64::from(partials) + n, "working");
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let is_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let result = if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        Err(envelope(&body).unwrap_or_else(|| {
            anyhow::anyhow!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body).chars().take(300).collect::<String>()
            )
        }))
    } else if is_stream {
        read_events(response, &bar, &client, &default_format).await
    } else {
        let body: Value = response.json().await.context("the server's answer is not JSON")?;
        let images: Vec<Image> = serde_json::from_value(body.get("data").cloned().unwrap_or_default())
            .context("the server's answer has no `data` list")?;
        let mut made = Vec::new();
        for image in images {
            made.push(decode(&client, image, &default_format).await?);
            bar.inc(1);
        }
        Ok(made)
    };
    bar.finish_and_clear();
    result
}

/// `http://host:8080` and `http://host:8080/v1` both name the server.
fn api_base(server: &Url) -> Url {
    let mut base = server.clone();
    let path = base.path().trim_end_matches('/').trim_end_matches("/v1").to_string();
    base.set_path(&format!("{path}/"));
    base
}

async fn read_events(
    response: reqwest::Response,
    bar: &indicatif::ProgressBar,
    client: &reqwest::Client,
    default_format: &str,
) -> Result<Vec<Made>> {
    let mut events = response.bytes_stream().eventsource();
    let mut made = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.context("the event stream broke off")?;
        let data: Value = serde_json::from_str(&event.data).context("an event whose data is not JSON")?;
        let kind = data.get("type").and_then(Value::as_str).unwrap_or(&event.event).to_string();
        if kind == "error" || data.get("error").is_some() {
            return Err(
                envelope(event.data.as_bytes()).unwrap_or_else(|| anyhow::anyhow!("error event: {}", event.data))
            );
        }
        if kind.ends_with(".partial_image") {
            bar.set_message("denoising");
            bar.inc(1);
        } else if kind.ends_with(".completed") {
            let image: Image = serde_json::from_value(data).context("a completed event without its image")?;
            made.push(decode(client, image, default_format).await?);
            bar.set_message("done");
            bar.inc(1);
        }
    }
    anyhow::ensure!(!made.is_empty(), "the stream ended without an image");
    Ok(made)
}

async fn decode(client: &reqwest::Client, image: Image, default_format: &str) -> Result<Made> {
    let format = image.output_format.unwrap_or_else(|| default_format.to_string());
    let bytes = match (image.b64_json.filter(|b| !b.is_empty()), image.url) {
        (Some(b64), _) => Bytes::from(STANDARD.decode(b64.trim()).context("an image that is not base64")?),
        (None, Some(url)) => client.get(&url).send().await?.error_for_status()?.bytes().await?,
        (None, None) => anyhow::bail!("the server sent an image without data or URL"),
    };
    Ok(Made { bytes, format })
}

/// The envelope's message and `param`, when `body` is one.
fn envelope(body: &[u8]) -> Option<anyhow::Error> {
    let body: ErrorBody = serde_json::from_slice(body).ok()?;
    let e = body.error;
    Some(refusal(&e.message, e.param.as_deref(), e.code.as_deref()))
}
