//! The streaming events' SSE framing.
//!
//! The server frames events in `easel-server/src/handlers/stream.rs` (`json_event`, private;
//! `respond` needs a running `AppState` with a database and a job), so that function is not
//! reachable from a public API. This target does what it does with the same public pieces: the
//! `easel_wire::events` bodies (and the `easel_wire::error` envelope of an `error` event) with
//! arbitrary field values, framed by axum's `Event::default().event(kind).json_data(body)` and
//! rendered through `Sse`. It then reads the stream back the way an SSE client does (WHATWG
//! rules: lines end at CR, LF or CRLF; `data` lines join with LF) and checks that each event
//! arrives once, whole, with its `event:` name and its JSON unchanged.
#![no_main]

use std::convert::Infallible;

use arbitrary::Arbitrary;
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use easel_types::base64::Base64;
use easel_types::types::{Background, Operation, OutputFormat, Quality};
use easel_wire::error::ErrorBody;
use easel_wire::events::{CompletedEvent, EventImage, PartialImageEvent, completed_type, partial_type};
use easel_wire::response::{InputTokensDetails, UsageBody};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Image {
    /// The image bytes (the event carries their base64).
    image: Vec<u8>,
    created_at: i64,
    size: String,
    quality: u8,
    background: u8,
    output_format: u8,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Partial { operation: u8, image: Image, index: u32 },
    Completed { operation: u8, image: Image, tokens: [u64; 3], url: Option<String>, revised_prompt: Option<String> },
    Error { message: String, kind: String, param: Option<String>, code: Option<String> },
}

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

fn image(i: Image) -> EventImage {
    EventImage {
        b64_json: Base64::encode(&i.image),
        created_at: i.created_at,
        size: i.size,
        quality: pick(Quality::ALL, i.quality),
        background: pick(Background::ALL, i.background),
        output_format: pick(OutputFormat::ALL, i.output_format),
    }
}

/// The body as `(event name, JSON)`.
fn build(body: Body) -> (String, Value) {
    match body {
        Body::Partial { operation, image: i, index } => {
            let kind = partial_type(pick(Operation::ALL, operation));
            let body = PartialImageEvent { kind: kind.clone(), image: image(i), partial_image_index: index };
            (kind, serde_json::to_value(&body).unwrap())
        }
        Body::Completed { operation, image: i, tokens: [text, img, out], url, revised_prompt } => {
            let kind = completed_type(pick(Operation::ALL, operation));
            let usage = UsageBody {
                total_tokens: text.wrapping_add(img).wrapping_add(out),
                input_tokens: text.wrapping_add(img),
                output_tokens: out,
                input_tokens_details: InputTokensDetails { text_tokens: text, image_tokens: img },
                output_tokens_details: None,
            };
            let body = CompletedEvent { kind: kind.clone(), image: image(i), usage, url, revised_prompt };
            (kind, serde_json::to_value(&body).unwrap())
        }
        Body::Error { message, kind, param, code } => {
            let body = ErrorBody::new(message, &kind, param, code.as_deref());
            ("error".to_string(), serde_json::to_value(&body).unwrap())
        }
    }
}

/// Events (name, data) of an SSE stream, per the WHATWG parsing rules.
fn parse_sse(text: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let (mut name, mut data, mut has_data) = (String::new(), String::new(), false);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in text.split('\n') {
        if line.is_empty() {
            if has_data {
                data.pop();
                events.push((std::mem::take(&mut name), std::mem::take(&mut data)));
            }
            name.clear();
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_string(),
            "data" => {
                data.push_str(value);
                data.push('\n');
                has_data = true;
            }
            _ => {}
        }
    }
    events
}

fuzz_target!(|bodies: Vec<Body>| {
    let expected: Vec<(String, Value)> = bodies.into_iter().take(8).map(build).collect();
    let events: Vec<Result<Event, Infallible>> = expected
        .iter()
        .map(|(kind, body)| Ok(Event::default().event(kind).json_data(body).expect("an event body serialises")))
        .collect();
    let response = Sse::new(futures::stream::iter(events)).into_response();
    let bytes = futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
    let text = std::str::from_utf8(&bytes).expect("the stream is UTF-8");
    let received = parse_sse(text);
    assert_eq!(received.len(), expected.len(), "events lost or split: {text:?}");
    for ((name, data), (kind, body)) in received.iter().zip(&expected) {
        assert_eq!(name, kind);
        let value: Value = serde_json::from_str(data).expect("each data line is JSON");
        assert_eq!(&value, body, "the JSON changed in framing");
        if kind != "error" {
            assert_eq!(
                value.get("type").and_then(Value::as_str),
                Some(kind.as_str()),
                "the JSON type is the event name"
            );
        }
    }
});
