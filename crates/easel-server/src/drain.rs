//! Draining on shutdown: after SIGTERM new requests get a 503 envelope (so a load balancer moves
//! them elsewhere, and `/readyz` says so), while the requests already in flight, streams and
//! background image jobs included, finish up to `[server] shutdown_grace_secs`.
//!
//! Each request holds an [`InFlight`] guard from the moment it is accepted; an image job moves a
//! clone into its own task, so a job outlives the handler that started it and is still counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<Inner>);

/// One unit of work in flight; counted until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Inner>);

impl Drain {
    /// A guard for new work, or `None` once draining has begun.
    pub fn enter(&self) -> Option<InFlight> {
        if self.is_draining() {
            return None;
        }
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("easel_http_in_flight").increment(1.0);
        Some(InFlight(Arc::clone(&self.0)))
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.0.in_flight.load(Ordering::SeqCst)
    }

    /// Refuses new work from now on, then waits until the work in flight is done or `grace` has
    /// passed; returns how much was still running.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.0.draining.store(true, Ordering::SeqCst);
        let idle = async {
            loop {
                let notified = self.0.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, idle).await;
        self.in_flight()
    }
}

impl Clone for InFlight {
    fn clone(&self) -> Self {
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("easel_http_in_flight").increment(1.0);
        Self(Arc::clone(&self.0))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("easel_http_in_flight").decrement(1.0);
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_work_and_refuses_new_work() {
        let drain = Drain::default();
        let first = drain.enter().unwrap();
        let job = first.clone();
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.drain(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(drain.enter().is_none(), "new work is refused while draining");
        drop(first);
        assert!(!waiter.is_finished(), "the job still runs");
        drop(job);
        assert_eq!(waiter.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_grace_period() {
        let drain = Drain::default();
        let _stuck = drain.enter().unwrap();
        assert_eq!(drain.drain(Duration::from_millis(30)).await, 1);
    }
}
