//! The request body's timeout (`server.body_timeout_secs`): a client that stops sending in the
//! middle of a body gets a 400 envelope (from the extractor that reads it) instead of holding a
//! connection, and the drain, for ever. The time allowed runs from the last piece received.
//!
//! Why not tower-http's `RequestBodyTimeoutLayer`, which has the same rule: it starts a timer
//! before every read of the body, also when the body is already there, as a small JSON body is
//! (it arrives with the headers). On tokio, a timer registered while the runtime's timer wheel
//! holds nothing earlier wakes the runtime's driver: an `eventfd` write and an extra turn of the
//! event loop, twice for each request (3 of a small relayed request's 27 system calls, about 6 %
//! of its CPU at concurrency 1: `bench/relay/RESULTS.md`). Here the timer starts only when a read
//! has to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;
use tower_http::map_request_body::MapRequestBodyLayer;

/// The layer that gives every request body the timeout.
pub fn layer(timeout: Duration) -> MapRequestBodyLayer<impl Fn(Body) -> Body + Clone> {
    MapRequestBodyLayer::new(move |body| Body::new(Timed { body, timeout, sleep: None }))
}

/// A body that fails when no frame arrives for `timeout`.
struct Timed {
    body: Body,
    timeout: Duration,
    /// Running while a read waits; dropped when a frame arrives.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no data arrived for {} s", .0.as_secs())]
struct Stalled(Duration);

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Stalled(timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    fn timed(body: Body, timeout: Duration) -> Timed {
        Timed { body, timeout, sleep: None }
    }

    async fn frame(body: &mut Timed) -> Option<Result<Frame<Bytes>, axum::BoxError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    /// A body fed by the returned sender, one frame per message.
    fn fed() -> (mpsc::Sender<&'static str>, Body) {
        let (send, receive) = mpsc::channel(4);
        let stream = ReceiverStream::new(receive).map(|piece: &str| Ok::<_, std::io::Error>(Bytes::from(piece)));
        (send, Body::from_stream(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_already_there_is_read_without_a_timer() {
        let mut body = timed(Body::from("{\"prompt\": \"p\"}"), Duration::ZERO);
        // A zero timeout would have elapsed at once: the data wins, and no timer was started.
        let first = frame(&mut body).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "{\"prompt\": \"p\"}");
        assert!(body.sleep.is_none());
        assert!(frame(&mut body).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout() {
        let (send, body) = fed();
        let mut body = timed(body, Duration::from_secs(5));
        send.send("{\"prompt\": ").await.unwrap();
        assert_eq!(frame(&mut body).await.unwrap().unwrap().into_data().unwrap(), "{\"prompt\": ");
        let started = tokio::time::Instant::now();
        let error = frame(&mut body).await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(error.to_string(), "no data arrived for 5 s");
        drop(send);
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_allowed_runs_from_the_last_frame() {
        let (send, body) = fed();
        let feeder = tokio::spawn(async move {
            for piece in ["{\"prompt\"", ": ", "\"p\"}"] {
                tokio::time::sleep(Duration::from_secs(4)).await;
                send.send(piece).await.unwrap();
            }
        });
        // 12 s in all, never 5 s without a frame.
        let collected = axum::body::to_bytes(Body::new(timed(body, Duration::from_secs(5))), 1024).await.unwrap();
        assert_eq!(collected, "{\"prompt\": \"p\"}");
        feeder.await.unwrap();
    }
}
