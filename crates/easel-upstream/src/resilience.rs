//! Retries with exponential backoff and jitter, `Retry-After`, and a circuit breaker per target.
//!
//! Upstream image calls are slow and billed, so the policy is conservative: a bounded number of
//! retries on the same target for failures that are worth it (see [`crate::http::Next`]), each
//! after `base * 2^attempt` capped and fully jittered, or after the provider's `Retry-After` when
//! it sent one and it is short enough to wait. A target that keeps failing has its circuit opened
//! for a cooldown, so later calls go straight to the fallback instead of paying its timeout; after
//! the cooldown one trial call decides whether it closes again.

use std::sync::Mutex;
use std::time::Duration;

use easel_core::BackendError;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http::{Failure, Next};

/// Timeouts and retries for one target.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The limit for one attempt, end to end.
    pub timeout: Duration,
    pub retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A longer `Retry-After` is not waited for.
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based): full jitter over the exponential step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self.backoff_base.saturating_mul(1u32 << attempt.min(16)).min(self.backoff_max);
        let nanos = step.as_nanos().min(u128::from(u64::MAX)) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        // Half fixed, half random: never retries in a burst, never waits much less than planned.
        Duration::from_nanos(nanos / 2 + rand::rng().random_range(0..=nanos / 2))
    }
}

/// Runs `attempt` under the policy: each try bounded by the timeout, retried after a backoff (or
/// the provider's `Retry-After`) while the failure says so, and stopped when `cancel` fires.
/// `who` names the provider in messages.
pub async fn retrying<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    who: &str,
    mut attempt: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut tries = 0;
    loop {
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Failure::cancelled()),
            r = tokio::time::timeout(policy.timeout, attempt()) => r.unwrap_or_else(|_| {
                Err(Failure::new(
                    BackendError::Timeout {
                        message: format!("The upstream provider '{who}' did not finish within {:.1} seconds.", policy.timeout.as_secs_f64()),
                    },
                    Next::Fallback,
                ))
            }),
        };
        let failure = match result {
            Ok(value) => return Ok(value),
            Err(f) if f.next == Next::Retry && tries < policy.retries => f,
            Err(f) => return Err(f),
        };
        let wait = match failure.retry_after {
            Some(after) if after > policy.retry_after_max => {
                tracing::info!(provider = who, ?after, "Retry-After too long to wait for; giving up on this target");
                return Err(failure);
            }
            Some(after) => after,
            None => policy.backoff(tries),
        };
        tracing::info!(provider = who, attempt = tries, ?wait, error = %failure.error, "retrying upstream call");
        metrics::counter!("easel_upstream_retries_total", "provider" => who.to_string()).increment(1);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Failure::cancelled()),
            () = tokio::time::sleep(wait) => {}
        }
        tries += 1;
    }
}

/// A consecutive-failure circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, state: Mutex::new(BreakerState::default()) }
    }

    /// Whether a call may go to the target now. After the cooldown one trial call is let through.
    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if s.trial_in_flight => false,
            Some(_) => {
                s.trial_in_flight = true;
                true
            }
        }
    }

    pub fn is_open(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.open_until.is_some_and(|until| Instant::now() < until || s.trial_in_flight)
    }

    pub fn success(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = BreakerState::default();
    }

    /// A call that ended without a verdict on the target (the request was refused, the client
    /// left): a trial slot is released without closing or reopening.
    pub fn neutral(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).trial_in_flight = false;
    }

    pub fn failure(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.failures += 1;
        if s.trial_in_flight || s.failures >= self.threshold {
            s.open_until = Some(Instant::now() + self.cooldown);
            s.trial_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            timeout: Duration::from_secs(1),
            retries: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            retry_after_max: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d0 = p.backoff(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = p.backoff(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            assert!(p.backoff(20) <= Duration::from_millis(1000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_then_lets_one_trial_through() {
        let b = Breaker::new(2, Duration::from_secs(10));
        assert!(b.allow());
        b.failure();
        assert!(b.allow());
        b.failure();
        assert!(!b.allow(), "open after two failures");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.allow(), "one trial after the cooldown");
        assert!(!b.allow(), "only one");
        b.failure();
        assert!(!b.allow(), "a failed trial reopens");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow(), "closed again");
    }
}
