//! The ledger writer: one task per database that commits every request's usage and image rows,
//! several requests to a transaction.
//!
//! Why: a commit costs far more than a row. With one transaction per request, concurrent
//! requests on SQLite queue for its single write lock by sleeping in the busy handler (1–100 ms
//! steps, which is where a relayed request's p99 went), each commit appends its own pages to the
//! WAL, and checkpoints starve; on PostgreSQL each request pays its own commit round trip and
//! fsync. Here, requests hand their rows to a bounded queue; one task takes whatever is queued
//! (up to [`MAX_GROUP`]), writes it in one transaction ([`HeldConnection::record`]) and commits.
//! The queue grows while a commit runs, so groups grow with the load without any added delay.
//!
//! Each caller still waits for the commit that holds ITS rows before answering, so nothing the
//! server acknowledged can be lost. If a group fails, its requests are retried one transaction
//! each, so a bad row (a duplicate id, say) fails only its own request.
//!
//! SQLite's WAL is kept bounded here too (see [`Wal`]): the writer is the one that knows when
//! writes happen and when it is idle.
//!
//! Shutdown: [`Writer::close`] stops taking records, commits everything already queued and
//! returns once it is committed; `run_until_stopped` calls it after draining requests.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::db::{self, Checkpoint, Db, Engine, WalState};
use super::records::{HeldConnection, ImageRecord, UsageRecord};

/// The most requests in one transaction.
pub const MAX_GROUP: usize = 128;
/// Requests waiting for the writer; beyond this, callers wait for room (backpressure).
const QUEUE: usize = 4096;

/// A handle on the writer task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Entry>,
    /// Cancelled by [`Writer::close`]: take no more records.
    closing: CancellationToken,
    /// Cancelled by the task when it has committed its last group and stopped.
    stopped: CancellationToken,
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
        let (closing, stopped) = (CancellationToken::new(), CancellationToken::new());
        tokio::spawn(run(db, wal_limit, receiver, closing.clone(), stopped.clone()));
        Self { queue, closing, stopped }
    }

    /// Writes one request's usage row and image rows (in one transaction, with other requests'
    /// rows) and returns once they are committed, or with the error that kept them out.
    pub async fn record(&self, usage: &UsageRecord, images: &[ImageRecord]) -> anyhow::Result<()> {
        let (done, committed) = oneshot::channel();
        let entry = Entry { usage: usage.clone(), images: images.to_vec(), done };
        self.queue.send(entry).await.map_err(|_| {
            anyhow::anyhow!("the ledger writer has stopped (the server is shutting down, or it failed)")
        })?;
        committed.await.map_err(|_| anyhow::anyhow!("the ledger writer stopped before committing this request"))?
    }

    /// Stops taking records (later calls to [`Writer::record`] fail), commits every record
    /// already queued, and returns when that is done. Calling it again just waits.
    pub async fn close(&self) {
        self.closing.cancel();
        self.stopped.cancelled().await;
    }
}

async fn run(
    db: Db,
    wal_limit: u64,
    mut receiver: mpsc::Receiver<Entry>,
    closing: CancellationToken,
    stopped: CancellationToken,
) {
    // Also on a panic, so `close` never waits for a task that is gone.
    let _stopped = stopped.drop_guard();
    let mut wal = match db::engine(&db) {
        Engine::Sqlite => Some(Wal::open(db.clone(), wal_limit).await),
        Engine::Postgres => None,
    };
    let mut ticker = tokio::time::interval(Wal::TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut conn = HeldConnection::new(db.clone());
    loop {
        let first = tokio::select! {
            // The ticker first: under constant load the queue is never empty.
            biased;
            _ = ticker.tick(), if wal.is_some() => {
                if let Some(wal) = &mut wal {
                    wal.tick().await;
                }
                continue;
            }
            // Closing the queue refuses new records; those already in it are still received,
            // then `recv` answers `None`.
            () = closing.cancelled(), if !receiver.is_closed() => {
                receiver.close();
                continue;
            }
            entry = receiver.recv() => entry,
        };
        let Some(first) = first else { break };
        group.push(first);
        while group.len() < MAX_GROUP
            && let Ok(entry) = receiver.try_recv()
        {
            group.push(entry);
        }
        commit(&mut conn, &mut group).await;
        if let Some(wal) = &mut wal {
            wal.after_commit().await;
        }
    }
    if let Some(wal) = &mut wal {
        wal.close().await;
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
