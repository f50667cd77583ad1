//! `POST /api/v1/services/aigc/multimodal-generation/generation`: Qwen-Image (text only, a
//! generation) and Qwen-Image-Edit (image parts, an edit), answered at once with every image in
//! one choice's `content`, as hosted links. The request takes the OpenAI routes' path: the model
//! resolved once and allowed, the job prepared, the quota reserved, the job run in its own task
//! (so its accounting finishes even if the client leaves) and delivered through the ledger.
//!
//! DashScope serves this route synchronously only; `X-DashScope-Async: enable` is refused as
//! DashScope refuses it.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use easel_wire::dashscope::error::Code as DashCode;
use easel_wire::dashscope::request::{Route, parse};
use easel_wire::dashscope::response::MultimodalBody;

use super::{DashScopeError, caller, request_id};
use crate::drain::InFlight;
use crate::extract;
use crate::handlers::deliver::Ledger;
use crate::handlers::images;
use crate::handlers::quota::{self, RateHeaders};
use crate::observe::ModelLabel;
use crate::state::AppState;

pub async fn generation(
    State(state): State<AppState>,
    headers: HeaderMap,
    in_flight: Option<Extension<InFlight>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let id = request_id(&headers);
    let caller = match caller(&state, &headers, &id).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if super::tasks::async_enabled(&headers) {
        return DashScopeError::refused(
            DashCode::AccessDenied,
            "current user api does not support asynchronous calls",
            &id,
        )
        .into_response();
    }
    let mut rate = RateHeaders::default();
    let mut label = None;
    let result = async {
        quota::admit(&state, &caller, &mut rate).await?;
        let body = extract::bytes(body, &state)?;
        let request = parse(Route::Multimodal, &body, state.unknown_params)?;
        let model = state.service.resolve(request.operation, request.model.as_deref())?;
        label = Some(ModelLabel(model.id.clone()));
        caller.check_model(&model.id)?;
        let ledger = Ledger::new(&state, &caller, request.operation, &model, request.options.user.clone(), started);
        let job = match state.service.prepare(request, model).await {
            Ok(job) => job,
            Err(e) => return Err(ledger.failed(e.into()).await),
        };
        let hold = match quota::reserve(&state, &caller, &job, &mut rate).await {
            Ok(hold) => hold,
            Err(e) => return Err(ledger.failed(e).await),
        };
        let size = job.size;
        let delivered = images::run_to_end(state.clone(), ledger, job, hold, in_flight.map(|Extension(f)| f)).await?;
        let urls = delivered.data.into_iter().filter_map(|d| d.url).collect();
        Ok(MultimodalBody::new(urls, size.width, size.height, id.clone()))
    }
    .await;
    let mut response = match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => DashScopeError::from_api(e, &id).into_response(),
    };
    rate.apply(response.headers_mut());
    if let Some(label) = label {
        response.extensions_mut().insert(label);
    }
    response
}
