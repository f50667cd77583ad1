//! HTTP connections served on one single-threaded runtime per core: the lanes.
//!
//! Why: a relayed request is a chain of hand-offs between tasks: the connection's task, the job
//! task, the upstream connection's task passing the body on in chunks. On tokio's work-stealing
//! runtime a hand-off while another worker is idle wakes that worker (a futex and a context
//! switch each time), and the task often runs on the other core. At concurrency 1 a 1 MiB relay
//! switched threads about 24 times; with its tasks on one thread, 6 (`bench/relay/RESULTS.md`).
//! Each lane is a current-thread runtime on a thread of its own, so a connection's tasks stay on
//! the thread that serves it and hand-offs between them are plain calls, while every core still
//! serves (the model of actix-web and of nginx's workers).
//!
//! One acceptor task, on the main runtime, accepts on the listener (axum's own accept loop and
//! its error handling), sets `TCP_NODELAY` and gives each connection to the lane with the fewest
//! open connections. A lane serves its connections with `axum::serve` as the whole server did
//! before, through a [`Listener`] fed by a channel. Connections never move between lanes: one
//! busy keep-alive client keeps one core busy, many clients spread over all of them.
//!
//! Work a request spawns (its job, its stream, the ledger's committer when the request found it
//! idle) runs on the request's thread; the sweeper, the task runner, the metrics listener and the
//! ledger's timer stay on the main runtime, a local model on its own worker thread, pixel work on
//! each runtime's blocking pool under the service's one bound. PostgreSQL connections are one
//! pool for the node: a connection's socket is driven by the thread that opened it, whichever
//! thread uses it later.
//!
//! Shutdown: when `closed` is cancelled (after the drain), the acceptor stops and each lane stops
//! taking requests as `axum::serve`'s graceful shutdown does, giving connections still open a
//! second to close; [`serve`] then returns. The lanes' runtimes keep running what was spawned on
//! them (the ledger's committer, sockets they opened) until [`Served::release`], which the caller
//! calls once the ledger is closed, so no commit is cut off by a runtime going away.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long connections still open after the drain get to close before they are dropped.
const LINGER: Duration = Duration::from_secs(1);

/// The number of lanes for `[server] http_threads` (0: one per CPU core).
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// Serves `router` on `lanes` threads until `closed` is cancelled; returns once every lane has
/// stopped taking requests, with their runtimes still running until [`Served::release`].
pub async fn serve(listener: TcpListener, router: Router, lanes: usize, closed: CancellationToken) -> Served {
    let release = CancellationToken::new();
    let mut served = Served { release: release.clone(), finished: Vec::new(), result: Ok(()) };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => return served.failed(e),
    };
    let mut handles = Vec::with_capacity(lanes);
    let mut stopped = Vec::with_capacity(lanes);
    for index in 0..lanes.max(1) {
        match Lane::start(index, address, router.clone(), closed.clone(), release.clone()) {
            Ok((handle, ends)) => {
                handles.push(handle);
                stopped.push(ends.served);
                served.finished.push(ends.finished);
            }
            Err(e) => return served.failed(e),
        }
    }
    accept(listener, &handles, &closed).await;
    // The lanes' channels close: each lane's listener waits for the graceful shutdown.
    drop(handles);
    for done in stopped {
        let outcome = done.await.unwrap_or_else(|_| Err(io::Error::other("an HTTP lane's thread panicked")));
        if served.result.is_ok() {
            served.result = outcome;
        }
    }
    served
}

/// The lanes once they have stopped taking requests.
#[must_use = "the lanes' runtimes run until released"]
pub struct Served {
    release: CancellationToken,
    /// One per lane started: answers when its runtime has shut down.
    finished: Vec<oneshot::Receiver<()>>,
    /// The first lane's error, if any.
    result: io::Result<()>,
}

impl Served {
    fn failed(mut self, error: io::Error) -> Self {
        self.result = Err(error);
        self
    }

    /// Shuts the lanes' runtimes down (what still runs on them is dropped after a second) and
    /// returns the serving's result.
    pub async fn release(self) -> io::Result<()> {
        self.release.cancel();
        for finished in self.finished {
            let _ = finished.await;
        }
        self.result
    }
}

/// Accepts until `closed`, giving each connection to the lane with the fewest open.
async fn accept(mut listener: TcpListener, lanes: &[Lane], closed: &CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = closed.cancelled() => return,
            // Retries and logs accept errors as axum does (a second's pause on EMFILE).
            accepted = Listener::accept(&mut listener) => accepted,
        };
        // axum leaves Nagle's algorithm on: an answer written in several pieces (a relayed MiB
        // of base64, SSE events) would wait for the client's delayed ACK before its last piece,
        // 20–40 ms per request (bench/relay at concurrency 1: p50 22 ms against 0.3 ms for nginx).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
        }
        let Ok(stream) = stream.into_std().inspect_err(|e| tracing::debug!(error = %e, "could not take a connection"))
        else {
            continue;
        };
        let mut connection = (stream, peer);
        loop {
            let (lane, open) = lanes
                .iter()
                .map(|lane| (lane, lane.open.load(Ordering::Relaxed)))
                .min_by_key(|&(_, open)| open)
                .expect("at least one lane");
            if open >= DEAD {
                tracing::error!("every HTTP thread has stopped; dropping a connection");
                break;
            }
            match lane.give(connection) {
                Ok(()) => break,
                Err(back) => connection = back,
            }
        }
    }
}

/// A lane whose thread has gone: never chosen again.
const DEAD: usize = usize::MAX / 2;

/// What a lane's thread tells as it ends.
struct Ends {
    /// It has stopped serving (its result).
    served: oneshot::Receiver<io::Result<()>>,
    /// Its runtime has shut down (after `release`).
    finished: oneshot::Receiver<()>,
}

/// The acceptor's end of one lane.
struct Lane {
    connections: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    /// Connections given to this lane and not yet closed.
    open: Arc<AtomicUsize>,
}

impl Lane {
    /// Builds the lane's runtime and starts its thread.
    fn start(
        index: usize,
        address: SocketAddr,
        router: Router,
        closed: CancellationToken,
        release: CancellationToken,
    ) -> io::Result<(Self, Ends)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (connections, receiver) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let listener = LaneListener { connections: receiver, open: open.clone(), address };
        let (done, served) = oneshot::channel();
        let (finish, finished) = oneshot::channel();
        std::thread::Builder::new().name(format!("easel-http-{index}")).spawn(move || {
            let result = runtime.block_on(async move {
                let server = axum::serve(listener, router).with_graceful_shutdown(closed.clone().cancelled_owned());
                tokio::select! {
                    result = server => result,
                    () = async { closed.cancelled().await; tokio::time::sleep(LINGER).await } => Ok(()),
                }
            });
            let _ = done.send(result);
            // What requests spawned here (the ledger's committer) goes on until released; then
            // what is left past a second (a job whose client left, a blocking decode) is dropped,
            // as it would be when the process exits.
            runtime.block_on(release.cancelled());
            runtime.shutdown_timeout(LINGER);
            let _ = finish.send(());
        })?;
        Ok((Self { connections, open }, Ends { served, finished }))
    }

    /// Hands a connection over, or gives it back if the lane's thread has gone (marking it dead).
    fn give(&self, connection: (std::net::TcpStream, SocketAddr)) -> Result<(), (std::net::TcpStream, SocketAddr)> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.connections.send(connection).map_err(|refused| {
            self.open.store(DEAD, Ordering::Relaxed);
            refused.0
        })
    }
}

/// A lane's side: the connections the acceptor gave it, registered on the lane's runtime.
struct LaneListener {
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    address: SocketAddr,
}

impl Listener for LaneListener {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some((stream, peer)) = self.connections.recv().await else {
                // The acceptor has stopped: the graceful shutdown ends this lane.
                return std::future::pending().await;
            };
            match TcpStream::from_std(stream) {
                Ok(stream) => return (Counted { stream, open: self.open.clone() }, peer),
                Err(e) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "a lane could not take a connection");
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.address)
    }
}

/// A connection that counts itself out of its lane when it closes.
struct Counted {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Counted {
    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(&mut self.stream)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    /// hyper writes a relayed body's chunks (each image's base64 shared, not copied) in one
    /// `writev` only when the connection says it can.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use axum::routing::get;

    use super::*;

    /// Answers with the name of the thread that served the request.
    fn router() -> Router {
        Router::new().route("/", get(|| async { std::thread::current().name().unwrap_or("?").to_string() }))
    }

    #[tokio::test]
    async fn connections_spread_over_the_lanes_and_each_stays_on_its_own() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let closed = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router(), 2, closed.clone()));

        // Four clients, one keep-alive connection each, opened one after the other and kept open.
        let mut lanes = HashSet::new();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            clients.push(client.clone());
            let mut seen = HashSet::new();
            for _ in 0..3 {
                seen.insert(client.get(&url).send().await.unwrap().text().await.unwrap());
            }
            assert_eq!(seen.len(), 1, "a connection stays on one lane: {seen:?}");
            lanes.extend(seen);
        }
        assert_eq!(lanes, HashSet::from(["easel-http-0".to_string(), "easel-http-1".to_string()]));

        drop(clients);
        closed.cancel();
        server.await.unwrap().release().await.expect("the lanes stop cleanly");
    }

    #[test]
    fn zero_threads_means_one_per_core() {
        assert_eq!(count(3), 3);
        assert_eq!(count(0), std::thread::available_parallelism().map_or(1, usize::from));
    }
}
