//! `POST /v1/images/generations`, `/v1/images/edits`, `/v1/images/variations`.
//!
//! All three take the same path: read the dialect, resolve the model once and check the caller
//! may use it, prepare the job against the model's capabilities, then either answer with JSON or
//! stream events. With `Prefer: respond-async` the same checks run and the job becomes a task
//! ([`crate::tasks`]), answered with a 202 at once.

use std::sync::Arc;
use std::time::Instant;

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use easel_core::job::{ImageJob, JobContext};
use easel_core::registry::Model;
use easel_core::request::ImageRequest;
use easel_core::types::Operation;
use easel_wire::response::ImagesResponse;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::quota::{self, Hold, RateHeaders};
use super::{deliver, stream, tasks};
use crate::auth::Caller;
use crate::drain::InFlight;
use crate::error::ApiResult;
use crate::extract;
use crate::observe::ModelLabel;
use crate::state::AppState;

pub async fn generations(State(state): State<AppState>, caller: Caller, request: Request) -> ApiResult<Response> {
    handle(state, caller, Operation::Generate, request).await
}

pub async fn edits(State(state): State<AppState>, caller: Caller, request: Request) -> ApiResult<Response> {
    handle(state, caller, Operation::Edit, request).await
}

pub async fn variations(State(state): State<AppState>, caller: Caller, request: Request) -> ApiResult<Response> {
    handle(state, caller, Operation::Variation, request).await
}

async fn handle(state: AppState, caller: Caller, operation: Operation, request: Request) -> ApiResult<Response> {
    let started = Instant::now();
    // Held by the job's own task, so a draining server waits for the job, not just the handler.
    let in_flight = request.extensions().get::<InFlight>().cloned();
    let prefers_async = tasks::prefers_async(request.headers());
    let mut rate = RateHeaders::default();
    let mut label = None;
    let result = async {
        quota::admit(&state, &caller, &mut rate).await?;
        let request = extract::image_request(operation, &state, request).await?;
        if prefers_async {
            // Every check of the synchronous route runs before the 202.
            let task = crate::tasks::submit(&state, &caller, request, &mut rate).await?;
            label = Some(ModelLabel(task.model.clone()));
            return Ok(tasks::accepted(&task));
        }
        let model = state.service.resolve(operation, request.model.as_deref())?;
        label = Some(ModelLabel(model.id.clone()));
        run(state, caller, Accepted { operation, request, model, started, in_flight }, &mut rate).await
    }
    .await;
    let mut response = result.into_response();
    rate.apply(response.headers_mut());
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    Ok(response)
}

/// A request read and its model resolved.
struct Accepted {
    operation: Operation,
    request: ImageRequest,
    model: Arc<Model>,
    started: Instant,
    in_flight: Option<InFlight>,
}

async fn run(state: AppState, caller: Caller, accepted: Accepted, rate: &mut RateHeaders) -> ApiResult<Response> {
    let Accepted { operation, request, model, started, in_flight } = accepted;
    caller.check_model(&model.id)?;
    let ledger = deliver::Ledger::new(&state, &caller, operation, &model, request.options.user.clone(), started);
    let job = match state.service.prepare(request, model).await {
        Ok(job) => job,
        Err(e) => return Err(ledger.failed(e.into()).await),
    };
    let hold = match quota::reserve(&state, &caller, &job, rate).await {
        Ok(hold) => hold,
        Err(e) => return Err(ledger.failed(e).await),
    };
    if job.stream {
        return Ok(stream::respond(state, ledger, job, hold, in_flight).into_response());
    }
    json_body(&run_to_end(state, ledger, job, hold, in_flight).await?)
}

/// The response as `application/json`, written in chunks that share each image's base64 (a
/// relayed MiB is neither copied into the body nor scanned for escapes), with its length.
fn json_body(response: &ImagesResponse) -> ApiResult<Response> {
    let chunks = response.to_json_chunks().map_err(|e| anyhow::anyhow!("writing the response: {e}"))?;
    let length: usize = chunks.iter().map(Bytes::len).sum();
    let body = Body::from_stream(futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>)));
    let mut response =
        (StatusCode::OK, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

/// Runs a prepared and reserved job, delivers it and settles its quota, in a task of its own so
/// that the accounting finishes even if the client goes away; dropping the returned future (the
/// client left) cancels the job. The synchronous routes of every API shape end here.
pub(crate) async fn run_to_end(
    state: AppState,
    ledger: deliver::Ledger,
    job: ImageJob,
    hold: Option<Hold>,
    in_flight: Option<InFlight>,
) -> ApiResult<ImagesResponse> {
    let cancel = CancellationToken::new();
    let cancel_on_drop = cancel.clone().drop_guard();
    let task = tokio::spawn(
        async move {
            let _in_flight = in_flight;
            let result = match state.service.run(&job, JobContext { cancel, partials: None }).await {
                Ok(output) => ledger.deliver(&job, output).await,
                Err(e) => Err(ledger.failed(e.into()).await),
            };
            if let Some(hold) = hold {
                hold.settle(&result).await;
            }
            result
        }
        .in_current_span(),
    );
    let response = task.await.map_err(|e| anyhow::anyhow!("the image job panicked: {e}"))??;
    cancel_on_drop.disarm();
    Ok(response)
}
