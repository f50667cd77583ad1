//! `stream=true`: Server-Sent Events exactly as the OpenAI SDKs parse them.
//!
//! Each event is `event: <type>` plus one `data:` line whose JSON carries the same `type`
//! (the SDKs discriminate on the JSON). Partial images are sent as the backend produces them, then
//! one `*.completed` event per image. `: keep-alive` comments flow while the model works. An error
//! after the stream started is an `error` event carrying the envelope. The job runs in its own
//! task and records its usage whatever happens to the connection; dropping the stream (the client
//! left) cancels the job.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use easel_core::base64::Base64;
use easel_core::job::{EncodedPartial, ImageJob, JobContext};
use easel_wire::events::{CompletedEvent, EventImage, PartialImageEvent, completed_type, partial_type};
use easel_wire::response::{InputTokensDetails, UsageBody};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use tracing::Instrument as _;

use super::deliver::Ledger;
use super::quota::Hold;
use crate::drain::InFlight;
use crate::error::ApiError;
use crate::state::AppState;
use crate::storage::now;

pub fn respond(
    state: AppState,
    ledger: Ledger,
    job: ImageJob,
    hold: Option<Hold>,
    in_flight: Option<InFlight>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (events, rx) = mpsc::channel::<Event>(8);
    let cancel = CancellationToken::new();
    let keep_alive = state.keep_alive;
    let task = run(state, ledger, job, hold, events, cancel.clone());
    tokio::spawn(
        async move {
            let _in_flight = in_flight;
            task.await;
        }
        .in_current_span(),
    );
    let guard = cancel.drop_guard();
    let stream = ReceiverStream::new(rx).map(move |event| {
        let _ = &guard;
        Ok(event)
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}

async fn run(
    state: AppState,
    ledger: Ledger,
    job: ImageJob,
    hold: Option<Hold>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let (partials_tx, mut partials_rx) = mpsc::channel::<EncodedPartial>(4);
    let partial_kind = partial_type(job.operation);
    let forward = {
        let (events, job) = (events.clone(), job.clone());
        async move {
            while let Some(partial) = partials_rx.recv().await {
                let body = PartialImageEvent {
                    kind: partial_kind.clone(),
                    image: event_image(&job, partial.bytes.base64()),
                    partial_image_index: partial.index,
                };
                if let Some(event) = json_event(&partial_kind, &body)
                    && events.send(event).await.is_err()
                {
                    return;
                }
            }
        }
    };
    let context = JobContext { cancel, partials: Some(partials_tx) };
    let (output, ()) = tokio::join!(state.service.run(&job, context), forward);
    let result = match output {
        Ok(output) => ledger.deliver_with(&job, output, true).await,
        Err(e) => Err(ledger.failed(e.into()).await),
    };
    if let Some(hold) = hold {
        hold.settle(&result).await;
    }
    match result {
        Ok(response) => {
            let kind = completed_type(job.operation);
            let total = response.usage.unwrap_or_else(|| UsageBody::from_usage(&Default::default(), false));
            let shares = split_usage(total, response.data.len());
            // What was made, as the response reports it: the backend's own choices where it made them.
            let reported = |b64_json| {
                let mut image = event_image(&job, b64_json);
                image.size = response.size.clone().unwrap_or(image.size);
                image.quality = response.quality.unwrap_or(image.quality);
                image.background = response.background.unwrap_or(image.background);
                image
            };
            for (image, usage) in response.data.into_iter().zip(shares) {
                let body = CompletedEvent {
                    kind: kind.clone(),
                    image: reported(image.b64_json.unwrap_or_default()),
                    usage,
                    url: image.url,
                    revised_prompt: image.revised_prompt,
                };
                if let Some(event) = json_event(&kind, &body)
                    && events.send(event).await.is_err()
                {
                    return;
                }
            }
        }
        Err(error) => send_error(&events, &error).await,
    }
}

/// The job's usage shared over its `n` completed events so that a client adding them up gets the
/// job's usage exactly once: an even share each, the remainders on the last.
fn split_usage(total: UsageBody, n: usize) -> Vec<UsageBody> {
    let n = n.max(1) as u64;
    let share = |v: u64, last: bool| if last { v / n + v % n } else { v / n };
    (0..n)
        .map(|i| {
            let last = i + 1 == n;
            let text = share(total.input_tokens_details.text_tokens, last);
            let image = share(total.input_tokens_details.image_tokens, last);
            let output = share(total.output_tokens, last);
            UsageBody {
                total_tokens: text + image + output,
                input_tokens: text + image,
                output_tokens: output,
                input_tokens_details: InputTokensDetails { text_tokens: text, image_tokens: image },
                output_tokens_details: None,
            }
        })
        .collect()
}

/// The fields every event of this job carries, around one image.
fn event_image(job: &ImageJob, b64_json: Base64) -> EventImage {
    EventImage {
        b64_json,
        created_at: now(),
        size: job.size.to_string(),
        quality: job.resolved_quality,
        background: job.resolved_background(),
        output_format: job.output_format(),
    }
}

async fn send_error(events: &mpsc::Sender<Event>, error: &ApiError) {
    error.log();
    if let Some(event) = json_event("error", &error.body()) {
        let _ = events.send(event).await;
    }
}

fn json_event(kind: &str, body: &impl serde::Serialize) -> Option<Event> {
    match Event::default().event(kind).json_data(body) {
        Ok(event) => Some(event),
        Err(e) => {
            tracing::error!(error = %e, "could not serialise a stream event");
            None
        }
    }
}
