//! The ledger writer: one committer per database that commits every request's usage and image
//! rows, several requests to a transaction.
//!
//! Why: a commit costs far more than a row. With one transaction per request, concurrent
//! requests on SQLite queue for its single write lock by sleeping in the busy handler (1–100 ms
//! steps, which is where a relayed request's p99 went), each commit appends its own pages to the
//! WAL, and checkpoints starve; on PostgreSQL each request pays its own commit round trip and
//! fsync. Here, requests hand their rows to a bounded queue; the committer takes whatever is queued
//! (up to [`MAX_GROUP`]), writes it in one transaction ([`HeldConnection::record`]) and commits.
//! The queue grows while a commit runs, so groups grow with the load without any added delay.
//!
//! Each caller still waits for the commit that holds ITS rows before answering, so nothing the
//! server acknowledged can be lost. If a group fails, its requests are retried one transaction
//! each, so a bad row (a duplicate id, say) fails only its own request.
//!
//! There is one committer (it holds the writer's connection and the queue's receiving end), and
//! it runs where the requests are: a request that queues its rows while the committer is idle
//! takes it and spawns it on its own runtime, where it commits group after group until the queue
//! is empty, then parks again. Why not a task of its own: a task elsewhere is a thread to wake
//! for every commit and another to wake for every answer, and with one request at a time those
//! wake-ups were a quarter of a relayed request's thread switches (`bench/relay/RESULTS.md`).
//! The committer is spawned, never run inside a request's future, so a client that leaves
//! cannot cut a transaction in half; and the server closes the writer before the HTTP threads'
//! runtimes stop (`lanes::Served::release`), so neither can a runtime going away.
//!
//! SQLite's WAL is kept bounded here too (see [`Wal`]): the writer is the one that knows when
//! writes happen and when it is idle. A timer task on the runtime that started the writer asks
//! for the WAL's tick once a second; the committer runs it before its next group, or, when it is
//! idle, the timer spawns it to run the tick (never runs it inline: under constant load it would
//! not come back to its timer).
//!
//! Shutdown: [`Writer::close`] stops taking records, commits everything already queued and
//! returns once it is committed; `run_until_stopped` calls it after draining requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::db::{self, Checkpoint, Db, Engine, WalState};
use super::records::{HeldConnection, ImageRecord, UsageRecord};

/// The most requests in one transaction.
pub const MAX_GROUP: usize = 128;
/// Requests waiting for the writer; beyond this, callers wait for room (backpressure).
const QUEUE: usize = 4096;

/// A handle on the writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Entry>,
    shared: Arc<Shared>,
}

struct Shared {
    /// The committer while it is idle; `None` while it commits somewhere (or before it is
    /// built, or once closed).
    idle: Mutex<Option<Committer>>,
    /// Told whenever the committer parks or is dropped ([`Writer::close`] waits for it).
    parked: Arc<Notify>,
    /// Cancelled when the committer is gone: closed, or lost to a panic.
    stopped: CancellationToken,
    /// Cancelled by [`Writer::close`]: take no more records.
    closing: CancellationToken,
    /// Set by the timer: the WAL's tick is due before the next group.
    tick_due: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("closing", &self.closing.is_cancelled()).finish_non_exhaustive()
    }
}

impl Shared {
    fn take_idle(&self) -> Option<Committer> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

#[derive(Debug)]
struct Entry {
    usage: UsageRecord,
    images: Vec<ImageRecord>,
    done: oneshot::Sender<anyhow::Result<()>>,
}

impl Writer {
    /// Starts the writer on `db` (on a runtime; see [`db::connect_writer`] for the pool it is
    /// meant for, though any pool of the database works).
    pub fn spawn(db: Db) -> Self {
        Self::spawn_with_wal_limit(db, WAL_LIMIT_BYTES)
    }

    /// [`Writer::spawn`] with another WAL bound (tests use a small one to see it hold).
    pub fn spawn_with_wal_limit(db: Db, wal_limit: u64) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            idle: Mutex::new(None),
            parked: Arc::new(Notify::new()),
            stopped: CancellationToken::new(),
            closing: CancellationToken::new(),
            tick_due: AtomicBool::new(false),
        });
        tokio::spawn(keep_time(db, wal_limit, receiver, shared.clone()));
        Self { queue, shared }
    }

    /// Writes one request's usage row and image rows (in one transaction, with other requests'
    /// rows) and returns once they are committed, or with the error that kept them out.
    pub async fn record(&self, usage: &UsageRecord, images: &[ImageRecord]) -> anyhow::Result<()> {
        let stopped = || anyhow::anyhow!("the ledger writer has stopped (the server is shutting down, or it failed)");
        if self.shared.closing.is_cancelled() {
            return Err(stopped());
        }
        let (done, committed) = oneshot::channel();
        let entry = Entry { usage: usage.clone(), images: images.to_vec(), done };
        self.queue.send(entry).await.map_err(|_| stopped())?;
        // After the send: a committer that found the queue empty parks before this looks (and
        // is taken here), or sees this entry before it parks (see `Committer::run`).
        if let Some(committer) = self.shared.take_idle() {
            tokio::spawn(committer.run(self.shared.clone()));
        }
        committed.await.map_err(|_| anyhow::anyhow!("the ledger writer stopped before committing this request"))?
    }

    /// Stops taking records (later calls to [`Writer::record`] fail), commits every record
    /// already queued, and returns when that is done. Calling it again just waits.
    pub async fn close(&self) {
        self.shared.closing.cancel();
        loop {
            let parked = self.shared.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            // Closed already (by this call or another), or its committer panicked.
            if self.shared.stopped.is_cancelled() {
                return;
            }
            if let Some(committer) = self.shared.take_idle() {
                committer.close().await;
                return;
            }
            parked.await;
        }
    }
}

/// Builds the committer (reading where SQLite's WAL is) and spawns it for what was queued
/// meanwhile, then asks for the WAL's tick every [`Wal::TICK`] until the writer closes.
async fn keep_time(db: Db, wal_limit: u64, receiver: mpsc::Receiver<Entry>, shared: Arc<Shared>) {
    let wal = match db::engine(&db) {
        Engine::Sqlite => Some(Wal::open(db.clone(), wal_limit).await),
        Engine::Postgres => None,
    };
    let ticks = wal.is_some();
    let committer = Committer {
        receiver,
        conn: HeldConnection::new(db),
        wal,
        group: Vec::with_capacity(MAX_GROUP),
        parked: shared.parked.clone(),
        stopped: shared.stopped.clone(),
    };
    tokio::spawn(committer.run(shared.clone()));
    if !ticks {
        return;
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + Wal::TICK, Wal::TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.closing.cancelled() => return,
        }
        shared.tick_due.store(true, Ordering::Release);
        if let Some(committer) = shared.take_idle() {
            tokio::spawn(committer.run(shared.clone()));
        }
    }
}

/// The one thing that commits: the writer's connection, the queue's receiving end, the WAL.
struct Committer {
    receiver: mpsc::Receiver<Entry>,
    conn: HeldConnection,
    wal: Option<Wal>,
    group: Vec<Entry>,
    parked: Arc<Notify>,
    stopped: CancellationToken,
}

impl Committer {
    /// Commits group after group (the WAL's tick first when it is due) until the queue is
    /// empty, then parks in `shared.idle`.
    async fn run(mut self, shared: Arc<Shared>) {
        loop {
            if shared.tick_due.swap(false, Ordering::AcqRel)
                && let Some(wal) = &mut self.wal
            {
                wal.tick().await;
            }
            self.take_group();
            if self.group.is_empty() {
                let mut idle = shared.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // Under the lock: a record sent before this check is seen here; one sent after
                // it finds the committer parked and takes it.
                if self.receiver.is_empty() {
                    *idle = Some(self);
                    drop(idle);
                    shared.parked.notify_waiters();
                    return;
                }
                continue;
            }
            self.commit_group().await;
        }
    }

    /// At close: refuses new records, commits those queued, empties the WAL.
    async fn close(mut self) {
        self.receiver.close();
        loop {
            self.take_group();
            if self.group.is_empty() {
                break;
            }
            self.commit_group().await;
        }
        if let Some(wal) = &mut self.wal {
            wal.close().await;
        }
    }

    fn take_group(&mut self) {
        while self.group.len() < MAX_GROUP
            && let Ok(entry) = self.receiver.try_recv()
        {
            self.group.push(entry);
        }
    }

    async fn commit_group(&mut self) {
        commit(&mut self.conn, &mut self.group).await;
        if let Some(wal) = &mut self.wal {
            wal.after_commit().await;
        }
    }
}

/// Dropped at close, or on a panic: the writer has stopped, and whoever waits in
/// [`Writer::close`] looks again.
impl Drop for Committer {
    fn drop(&mut self) {
        self.stopped.cancel();
        self.parked.notify_waiters();
    }
}

/// Commits the group and answers every caller in it.
async fn commit(conn: &mut HeldConnection, group: &mut Vec<Entry>) {
    let rows = group.iter().map(|e| (&e.usage, e.images.as_slice())).collect::<Vec<_>>();
    let result = conn.record(&rows).await;
    drop(rows);
    metrics::counter!("easel_ledger_commits_total").increment(1);
    metrics::counter!("easel_ledger_records_total").increment(group.len() as u64);
    match result {
        Ok(()) => {
            for entry in group.drain(..) {
                let _ = entry.done.send(Ok(()));
            }
        }
        Err(e) if group.len() == 1 => {
            let _ = group.remove(0).done.send(Err(e));
        }
        Err(e) => {
            // One bad row fails the whole transaction: find it by retrying one request at a time.
            tracing::debug!(error = %e, records = group.len(), "a ledger group failed; retrying its records one by one");
            for entry in group.drain(..) {
                let result = conn.record(&[(&entry.usage, &entry.images)]).await;
                let _ = entry.done.send(result);
            }
        }
    }
}

/// Keeps SQLite's WAL file under its limit ([`WAL_LIMIT_BYTES`] by default) without putting checkpoints on the
/// commit path.
///
/// Why: in WAL mode commits append pages to the `-wal` file, which checkpoints copy back into
/// the database. SQLite's automatic checkpoint runs inside the commit that crosses its
/// threshold (fsyncs on a request's path), and the file restarts from its beginning only when a
/// checkpoint has caught up with every commit, which never happens while commits keep coming:
/// under steady load the file only grows. Instead:
/// - every [`Wal::TICK`] with commits since the last one, a PASSIVE checkpoint copies pages on
///   another connection, beside the writer and the readers (it waits for no one);
/// - when the file has grown past the limit anyway, or the writer has been idle for a
///   tick, the writer itself runs a TRUNCATE checkpoint between two groups: most pages are
///   already copied (and a checkpoint copies each page once, however often it was rewritten),
///   so it is short, and it empties the file.
struct Wal {
    db: Db,
    /// The `-wal` file; `None` for an in-memory database.
    path: Option<PathBuf>,
    passive: Option<JoinHandle<anyhow::Result<WalState>>>,
    commits_since_tick: u64,
    /// The last TRUNCATE gave up waiting for readers: retry at the next tick, not every commit.
    truncate_busy: bool,
    /// The size past which the writer truncates the file.
    limit: u64,
}

/// The WAL size past which the writer truncates it (the autocheckpoint backstop in
/// [`db::connect_writer`] is 64 MiB). Each truncation holds commits while it copies the pages the
/// background checkpoint has not yet copied and fsyncs, so the stall grows with the bound: on a
/// 2-core machine at 3,000-4,500 requests/s, p99 was 7-8× p50 at 32 MiB, 4.2-4.8× at 8 MiB and
/// 2.6-3.0× at 2 MiB (docs/performance.md). Short, frequent truncations win.
pub const WAL_LIMIT_BYTES: u64 = 2 << 20;

impl Wal {
    const TICK: Duration = Duration::from_secs(1);

    async fn open(db: Db, limit: u64) -> Self {
        let path = db::wal_path(&db).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot find the SQLite WAL file; it is checkpointed on a timer only");
            None
        });
        Self { db, path, passive: None, commits_since_tick: 0, truncate_busy: false, limit }
    }

    /// The WAL file's size (0 when it does not exist or cannot be read).
    fn size(&self) -> u64 {
        self.path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len())
    }

    async fn tick(&mut self) {
        self.collect_passive().await;
        if self.commits_since_tick == 0 {
            if self.passive.is_none() && self.size() > 0 {
                self.truncate().await;
            }
        } else if self.passive.is_none() {
            let db = self.db.clone();
            self.passive = Some(tokio::spawn(async move { db::checkpoint(&db, Checkpoint::Passive).await }));
        }
        self.commits_since_tick = 0;
        self.truncate_busy = false;
    }

    async fn after_commit(&mut self) {
        self.commits_since_tick += 1;
        self.collect_passive().await;
        if self.passive.is_none() && !self.truncate_busy && self.size() > self.limit {
            self.truncate().await;
        }
    }

    /// Takes the result of a finished PASSIVE checkpoint, if any (never waits for one).
    async fn collect_passive(&mut self) {
        let Some(task) = self.passive.take_if(|task| task.is_finished()) else { return };
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "a background WAL checkpoint failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "a background WAL checkpoint panicked; will retry"),
        }
    }

    async fn truncate(&mut self) {
        match db::checkpoint(&self.db, Checkpoint::Truncate).await {
            Ok(state) if !state.busy => {}
            Ok(state) => {
                self.truncate_busy = true;
                tracing::debug!(frames = state.frames, "the WAL could not be truncated yet (readers); will retry");
            }
            Err(e) => {
                self.truncate_busy = true;
                tracing::warn!(error = %e, "truncating the WAL failed; will retry");
            }
        }
    }

    /// At shutdown: waits for a background checkpoint, then empties the WAL.
    async fn close(&mut self) {
        if let Some(task) = self.passive.take() {
            let _ = task.await;
        }
        self.truncate().await;
    }
}
