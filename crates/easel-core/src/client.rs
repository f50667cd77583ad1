//! One HTTP client per thread, all built alike.
//!
//! Why: a `reqwest::Client` pools its connections, and each pooled connection is driven by a
//! task on the runtime of the request that opened it. `easel serve` serves HTTP on one
//! single-threaded runtime per core (`easel-server`'s `lanes`); with one client shared by all of
//! them, a request on one lane often reuses a connection whose task runs on another, and every
//! chunk of the answer then crosses threads (a 1 MiB relay at concurrency 1: seven more thread
//! switches and a quarter of a millisecond of CPU, `bench/relay/RESULTS.md`). With a client per
//! thread, a lane's upstream connections are driven on that lane.
//!
//! On a multi-threaded runtime (the CLI, async task workers, tests) it is merely a pool per
//! worker thread: a few more idle connections, nothing else changes.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Weak};

type Build = dyn Fn() -> reqwest::Result<reqwest::Client> + Send + Sync;

/// A `reqwest::Client` for the calling thread, built by the same function on every thread.
#[derive(Clone)]
pub struct ThreadClient {
    inner: Arc<Inner>,
}

struct Inner {
    build: Box<Build>,
    /// Built at once, so that a bad setting fails at start-up; also the client of any thread
    /// where building one fails later.
    first: reqwest::Client,
}

thread_local! {
    /// This thread's clients, each beside the [`ThreadClient`] it was built for (gone ones are
    /// dropped at the next miss).
    static CLIENTS: RefCell<Vec<(Weak<Inner>, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

impl ThreadClient {
    /// Builds the first client now (its error is the caller's); the other threads' when they
    /// first ask.
    pub fn new(build: impl Fn() -> reqwest::Result<reqwest::Client> + Send + Sync + 'static) -> reqwest::Result<Self> {
        let first = build()?;
        Ok(Self { inner: Arc::new(Inner { build: Box::new(build), first }) })
    }

    /// The calling thread's client (a cheap handle on it).
    pub fn local(&self) -> reqwest::Client {
        CLIENTS.with_borrow_mut(|clients| {
            let key = Arc::downgrade(&self.inner);
            if let Some((_, client)) = clients.iter().find(|(owner, _)| owner.ptr_eq(&key)) {
                return client.clone();
            }
            clients.retain(|(owner, _)| owner.strong_count() > 0);
            let client = (self.inner.build)().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not build this thread's HTTP client; sharing the first");
                self.inner.first.clone()
            });
            clients.push((key, client.clone()));
            client
        })
    }
}

impl fmt::Debug for ThreadClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadClient").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_gets_its_own_client_and_keeps_it() {
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = built.clone();
        let clients = ThreadClient::new(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            reqwest::Client::builder().build()
        })
        .unwrap();
        clients.local();
        clients.local();
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 2, "the first, then this thread's once");
        let other = clients.clone();
        std::thread::spawn(move || other.local()).join().unwrap();
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 3, "another thread builds its own");
    }

    #[test]
    fn a_dropped_client_is_forgotten_at_the_next_miss() {
        let gone = ThreadClient::new(|| reqwest::Client::builder().build()).unwrap();
        gone.local();
        drop(gone);
        let kept = ThreadClient::new(|| reqwest::Client::builder().build()).unwrap();
        kept.local();
        CLIENTS.with_borrow(|clients| {
            assert_eq!(clients.len(), 1, "only the live one is kept");
            assert!(clients[0].0.strong_count() > 0);
        });
    }
}
