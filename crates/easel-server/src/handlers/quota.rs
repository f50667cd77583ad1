//! Per-key limits in the request path (the counting itself is `storage::limits`): a request is
//! admitted against its requests per minute, reserves its images and estimated tokens once it is
//! validated, and settles what was delivered when its job ends, in the job's own task, so a client
//! that leaves changes nothing. Every answer carries OpenAI's `x-ratelimit-*` headers for the
//! limits the key has.

use axum::http::{HeaderMap, HeaderValue};
use easel_core::job::ImageJob;
use easel_core::usage;
use easel_wire::response::ImagesResponse;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::storage::limits::{LimitError, Limiter, Reservation, Standing, format_duration};
use crate::storage::now;

/// Where the key stands on each limited quantity, the tightest limit of each.
#[derive(Debug, Default, Clone)]
pub struct RateHeaders(Vec<Standing>);

impl RateHeaders {
    fn note(&mut self, standings: impl IntoIterator<Item = Standing>) {
        for s in standings {
            let dimension = s.counter.dimension();
            match self.0.iter_mut().find(|o| o.counter.dimension() == dimension) {
                Some(old) if s.remaining < old.remaining => *old = s,
                Some(_) => {}
                None => self.0.push(s),
            }
        }
    }

    /// Notes the standing an over-limit error carries, and passes the error on.
    fn note_error(&mut self, error: LimitError) -> ApiError {
        if let LimitError::Exceeded(exceeded) = &error {
            self.note([exceeded.standing]);
            metrics::counter!("easel_limit_rejections_total", "limit" => exceeded.standing.counter.name()).increment(1);
        }
        error.into()
    }

    /// `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
    /// `x-ratelimit-reset-requests`, and the same for `images` and `tokens`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for s in &self.0 {
            let dim = s.counter.dimension().as_str();
            let values = [
                ("limit", s.limit.to_string()),
                ("remaining", s.remaining.to_string()),
                ("reset", format_duration(s.reset_secs)),
            ];
            for (what, value) in values {
                if let (Ok(name), Ok(value)) = (
                    format!("x-ratelimit-{what}-{dim}").parse::<axum::http::HeaderName>(),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// Counts the request against the caller's requests per minute.
pub async fn admit(state: &AppState, caller: &Caller, headers: &mut RateHeaders) -> ApiResult<()> {
    let Caller::Key(key) = caller else { return Ok(()) };
    let standings = state.limiter.admit(&key.id, &key.limits, now()).await.map_err(|e| headers.note_error(e))?;
    headers.note(standings);
    Ok(())
}

/// What a running job holds against the caller's quotas.
#[derive(Debug)]
pub struct Hold {
    limiter: Limiter,
    key_id: String,
    reservation: Reservation,
}

/// Reserves the job's images and estimated tokens; `None` when the caller has no such limits.
pub async fn reserve(
    state: &AppState,
    caller: &Caller,
    job: &ImageJob,
    headers: &mut RateHeaders,
) -> ApiResult<Option<Hold>> {
    let Caller::Key(key) = caller else { return Ok(None) };
    let estimate = usage::estimate(
        &job.prompt,
        job.images.iter().map(|i| i.size),
        job.size,
        job.resolved_quality,
        job.n,
        u32::from(job.partial_images),
    );
    let (reservation, standings) = state
        .limiter
        .reserve(&key.id, &key.limits, u64::from(job.n), estimate.total_tokens(), now())
        .await
        .map_err(|e| headers.note_error(e))?;
    headers.note(standings);
    Ok(reservation.map(|reservation| Hold { limiter: state.limiter.clone(), key_id: key.id.clone(), reservation }))
}

impl Hold {
    /// The hold of `key_id` over `reservation`, taken up again where the work ends (an async
    /// task settles on the node that finishes it).
    pub fn resume(state: &AppState, key_id: String, reservation: Reservation) -> Self {
        Self { limiter: state.limiter.clone(), key_id, reservation }
    }

    pub fn reservation(&self) -> &Reservation {
        &self.reservation
    }

    /// Charges what `result` delivered (images and tokens), or nothing if it failed.
    pub async fn settle(self, result: &ApiResult<ImagesResponse>) {
        let (images, tokens) = match result {
            Ok(response) => (response.data.len() as u64, response.usage.map_or(0, |u| u.total_tokens)),
            Err(_) => (0, 0),
        };
        if let Err(e) = self.limiter.settle(&self.key_id, &self.reservation, images, tokens).await {
            // The reservation stays until it expires; the sweep then releases it.
            tracing::error!(error = %e, key = %self.key_id, "could not settle a quota reservation");
        }
    }
}
