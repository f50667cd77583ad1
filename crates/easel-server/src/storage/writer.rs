//! The ledger writer: one committer per database that commits every request's usage and image
//! rows, several requests to a transaction.
//!
//! Why: a commit costs far more than a row. With one transaction per request, concurrent
//! requests on SQLite queue for its single write lock by sleeping in the busy handler (1–100 ms
//! steps, which is where a relayed request's p99 went), each commit appends its own pages to the
//! WAL, and checkpoints starve; on PostgreSQL each request pays its own commit round trip and
//! fsync. Here, requests hand their rows to a bounded queue; the committer takes whatever is queued
//! (up to [`MAX_GROUP`]), writes it in one transaction and commits: on SQLite in place, on the
//! thread that runs the committer ([`SqliteWriter`]), on PostgreSQL through the writer's own
//! connection ([`HeldConnection`]).
//! The queue grows while a commit runs, so groups grow with the load without any added delay.
//!
//! Each caller still waits for the commit that holds ITS rows before answering, so nothing the
//! server acknowledged can be lost. If a group fails, its requests are retried one transaction
//! each, so a bad row (a duplicate id, say) fails only its own request; a group that waited out
//! SQLite's busy timeout fails whole (that says nothing about its rows).
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
//! writes happen and when it is idle. While commits come, it looks at the WAL after each one. A
//! timer task on the runtime that started the writer also asks for the WAL's tick once a second
//! (the tick checkpoints the last commits, and empties the file once the writer is idle): the
//! committer runs it before its next group, or, when it is idle, the timer spawns it to run the
//! tick (never runs it inline: under constant load it would not come back to its timer).
//!
//! Shutdown: [`Writer::close`] stops taking records, commits everything already queued and
//! returns once it is committed; `run_until_stopped` calls it after draining requests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::db::{self, LedgerDb};
use super::records::{HeldConnection, ImageRecord, UsageRecord};
use super::sqlite_ledger::{self, Checkpoint, SqliteWriter, WalIndex, WalState};

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
    /// Starts the writer on `ledger` ([`super::db::connect_writer`]), on a runtime.
    pub fn spawn(ledger: LedgerDb) -> Self {
        Self::spawn_with_wal_limit(ledger, WAL_LIMIT_BYTES)
    }

    /// [`Writer::spawn`] with another WAL bound (tests use a small one to see it hold).
    pub fn spawn_with_wal_limit(ledger: LedgerDb, wal_limit: u64) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            idle: Mutex::new(None),
            parked: Arc::new(Notify::new()),
            stopped: CancellationToken::new(),
            closing: CancellationToken::new(),
            tick_due: AtomicBool::new(false),
        });
        tokio::spawn(keep_time(ledger, wal_limit, receiver, shared.clone()));
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

/// Builds the committer and spawns it for what was queued meanwhile, then (SQLite) asks for the
/// WAL's tick every [`Wal::TICK`] until the writer closes.
async fn keep_time(ledger: LedgerDb, wal_limit: u64, receiver: mpsc::Receiver<Entry>, shared: Arc<Shared>) {
    let ledger = match ledger {
        LedgerDb::Sqlite { file, conn } => {
            let frame_bytes = sqlite_ledger::frame_bytes(&conn).unwrap_or_else(|e| {
                let assumed = db::SQLITE_PAGE_SIZE;
                tracing::warn!(error = %e, "cannot read the SQLite page size; assuming {assumed} bytes");
                u64::from(assumed) + 24
            });
            let wal = Box::new(Wal::new(&file, frame_bytes, wal_limit));
            Ledger::Sqlite { wal, writer: SqliteWriter::new(file, conn) }
        }
        LedgerDb::Postgres(db) => Ledger::Postgres(HeldConnection::new(db)),
    };
    let ticks = matches!(ledger, Ledger::Sqlite { .. });
    let committer = Committer {
        receiver,
        ledger,
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

/// The one thing that commits: the writer's connection (and WAL), the queue's receiving end.
struct Committer {
    receiver: mpsc::Receiver<Entry>,
    ledger: Ledger,
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
                && let Ledger::Sqlite { wal, .. } = &mut self.ledger
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
            // A commit in place on SQLite never waits, so nothing above gives the thread back:
            // when more records are queued, let the thread's other tasks (the requests just
            // answered among them) run before the next group, or records arriving from other
            // threads would keep them waiting for as long as they keep coming. With none queued
            // the committer parks next, and a yield would only cost a turn of the event loop.
            if !self.receiver.is_empty() {
                tokio::task::yield_now().await;
            }
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
        if let Ledger::Sqlite { wal, .. } = &mut self.ledger {
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
        commit(&mut self.ledger, &mut self.group).await;
        if let Ledger::Sqlite { wal, .. } = &mut self.ledger {
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

/// Where the committer writes.
enum Ledger {
    Sqlite { writer: SqliteWriter, wal: Box<Wal> },
    Postgres(HeldConnection),
}

impl Ledger {
    /// Writes `group` in one transaction.
    async fn record(&mut self, group: &[(&UsageRecord, &[ImageRecord])]) -> anyhow::Result<()> {
        match self {
            Self::Sqlite { writer, .. } => writer.record(group).await,
            Self::Postgres(conn) => conn.record(group).await,
        }
    }
}

/// Commits the group and answers every caller in it.
async fn commit(ledger: &mut Ledger, group: &mut Vec<Entry>) {
    let rows = group.iter().map(|e| (&e.usage, e.images.as_slice())).collect::<Vec<_>>();
    let result = ledger.record(&rows).await;
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
        Err(e) if sqlite_ledger::is_busy(&e) => {
            // Another connection held the write lock past the busy timeout: that says nothing
            // about the rows, and retrying them one by one would wait as long again for each.
            for entry in group.drain(..) {
                let _ = entry.done.send(Err(anyhow::anyhow!("{e:#}")));
            }
        }
        Err(e) => {
            // One bad row fails the whole transaction: find it by retrying one request at a time.
            tracing::debug!(error = %e, records = group.len(), "a ledger group failed; retrying its records one by one");
            for entry in group.drain(..) {
                let result = ledger.record(&[(&entry.usage, &entry.images)]).await;
                let _ = entry.done.send(result);
            }
        }
    }
}

/// Keeps SQLite's WAL under its bound ([`WAL_LIMIT_BYTES`] by default) with as little as
/// possible on the commit path.
///
/// Why: in WAL mode commits append pages to the `-wal` file, which checkpoints copy back into
/// the database. SQLite's automatic checkpoint runs inside the commit that crosses its
/// threshold (fsyncs on a request's path), and the file restarts from its beginning only when a
/// checkpoint has caught up with every commit, which never happens while commits keep coming:
/// under steady load the file only grows. Instead:
/// - a PASSIVE checkpoint copies pages on another connection (this one's, on a blocking thread),
///   beside the writer and the readers (it waits for no one), and fsyncs what the commits
///   appended (they do not: `synchronous = NORMAL`). One runs every [`Wal::PASSIVE_EVERY`] while
///   commits come and at the next tick
///   after the last one (so a power cut usually takes no more than the last second or two of
///   commits, never the file; a reader holding an old snapshot can delay that), and one as soon
///   as a commit takes the log past the bound;
/// - after that one, a RESTART checkpoint runs between two groups (on the same connection and
///   thread, the committer waiting for it): it copies the pages committed meanwhile and fsyncs
///   two files with little unsynced in them, and the next
///   commit starts the log again from the file's beginning, over the same blocks (SQLite syncs
///   the log's new header then, a fraction of a millisecond). When the PASSIVE one was slow and
///   the log grew by more than a quarter of the bound meanwhile, a second PASSIVE one copies that
///   first, off the commit path;
/// - when the writer has been idle for a tick, a TRUNCATE checkpoint empties the file and gives
///   the disk back.
///
/// Why RESTART and not TRUNCATE under load: truncating gives the file's blocks back to the file
/// system on the commit path and the next commits allocate them again; at a 16 MiB bound the
/// `ftruncate` alone took 11 ms (`bench/relay/RESULTS.md`). Restarting in place costs the commit
/// path about as much at any bound, so the bound sets how often, not (normally) how long, commits
/// wait.
///
/// The log's length is read after each commit from the WAL index
/// ([`sqlite_ledger::WalIndex`]), since a log restarted in place keeps the file's size.
struct Wal {
    /// The database file.
    file: PathBuf,
    /// The connection checkpoints run on, opened by the first one (on its blocking thread);
    /// `None` until then, while a checkpoint has it, or after one failed to open or panicked.
    conn: Option<rusqlite::Connection>,
    /// The `-wal` file (an idle writer empties it when it is not empty).
    path: PathBuf,
    /// Where the log's length is read; when it cannot be, the timed checkpoints find a long log,
    /// a little later. Opened again at each tick.
    index: WalIndex,
    /// The bytes a page takes in the log (page and frame header).
    frame_bytes: u64,
    /// A PASSIVE checkpoint on a blocking thread, which gives the connection back with its result.
    passive: Option<JoinHandle<Checkpointed>>,
    /// When the last PASSIVE checkpoint started.
    passive_started: Instant,
    commits_since_tick: u64,
    /// The last PASSIVE checkpoint found the log past the bound.
    restart_due: bool,
    /// How much of the log the last PASSIVE checkpoint copied.
    copied: u64,
    /// A second PASSIVE checkpoint ran because the log had grown far past the first before the
    /// RESTART; the RESTART follows the second whatever it finds.
    caught_up: bool,
    /// The last RESTART or TRUNCATE gave up waiting for readers: retry at the next tick, not
    /// every commit.
    busy: bool,
    /// RESTARTs given up in a row; past [`Wal::PATIENT_AFTER`] the next one waits as long as a
    /// write would, so overlapping readers cannot keep the log from restarting for ever.
    busy_in_a_row: u32,
    /// The log length past which the writer restarts it.
    limit: u64,
}

/// A checkpoint's connection (when it had or opened one) and result, from its blocking thread.
type Checkpointed = (Option<rusqlite::Connection>, anyhow::Result<WalState>);

/// The WAL length past which the writer restarts the log (the autocheckpoint backstop and the
/// size the file is cut back to, in [`sqlite_ledger::open`], are 64 MiB). Each restart normally
/// holds commits for one or two milliseconds (1.2-2.3 ms on the benchmark's virtual disk: two
/// fsyncs of files the background checkpoints keep nearly synced), so the bound only sets how
/// often that happens: at 16 MiB, when each request commits alone (about five 2 KiB pages of log
/// each on a database this server created, four 4 KiB ones on an older database: 10.8 or 17.5 KB),
/// about once in 1,550 requests (960 with 4 KiB pages), out of the p99. With the 2 MiB bound and
/// truncation before it, one relayed request in 85 waited 4-5 ms, which was the p99 at
/// concurrency 1.
pub const WAL_LIMIT_BYTES: u64 = 16 << 20;

impl Wal {
    const TICK: Duration = Duration::from_secs(1);
    /// How often a PASSIVE checkpoint runs while commits come.
    const PASSIVE_EVERY: Duration = Duration::from_millis(250);
    /// RESTARTs given up in a row (about one a tick) before one waits as long as a write would.
    const PATIENT_AFTER: u32 = 10;

    fn new(file: &Path, frame_bytes: u64, limit: u64) -> Self {
        Self {
            file: file.to_owned(),
            conn: None,
            path: sqlite_ledger::beside(file, "-wal"),
            index: WalIndex::new(file),
            frame_bytes,
            passive: None,
            passive_started: Instant::now(),
            commits_since_tick: 0,
            restart_due: false,
            copied: 0,
            caught_up: false,
            busy: false,
            busy_in_a_row: 0,
            limit,
        }
    }

    /// Runs a checkpoint on a blocking thread (it may wait for readers, and it fsyncs files), on
    /// this one's connection, opened there when there is none yet.
    fn run(&mut self, mode: Checkpoint, patient: bool) -> JoinHandle<Checkpointed> {
        let checkpoint = move |conn: &mut rusqlite::Connection| sqlite_ledger::checkpoint(conn, mode, patient);
        sqlite_ledger::on_blocking_thread(self.conn.take(), self.file.clone(), checkpoint)
    }

    /// Keeps the connection a checkpoint gives back with its result (one that panicked lost it).
    fn give_back(&mut self, done: Result<Checkpointed, tokio::task::JoinError>) -> anyhow::Result<WalState> {
        let (conn, state) = done.map_err(|e| anyhow::anyhow!("it panicked: {e}"))?;
        self.conn = conn;
        state
    }

    /// The WAL file's size (0 when it does not exist or cannot be read).
    fn size(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The log's length in bytes, from the WAL index (0 when it cannot be read).
    fn length(&mut self) -> u64 {
        self.index.read().map_or(0, |header| u64::from(header.frames) * self.frame_bytes)
    }

    async fn tick(&mut self) {
        self.index.reopen();
        self.collect_passive().await;
        if self.passive.is_none() {
            if self.commits_since_tick == 0 {
                if self.size() > 0 {
                    self.checkpoint(Checkpoint::Truncate).await;
                }
            } else if self.passive_started.elapsed() >= Self::PASSIVE_EVERY {
                // The last commits, when none has come since to start a checkpoint.
                self.start_passive();
            }
        }
        self.commits_since_tick = 0;
        self.busy = false;
    }

    async fn after_commit(&mut self) {
        self.commits_since_tick += 1;
        self.collect_passive().await;
        if self.passive.is_some() {
            return;
        }
        if self.restart_due && !self.busy {
            // Commits wait while the RESTART copies what the PASSIVE one did not: when that is
            // much (the PASSIVE one was slow), another PASSIVE one copies it off the commit path.
            if !self.caught_up && self.length().saturating_sub(self.copied) > self.limit / 4 {
                self.caught_up = true;
                self.start_passive();
                return;
            }
            self.caught_up = false;
            self.checkpoint(Checkpoint::Restart).await;
            return;
        }
        if self.passive_started.elapsed() >= Self::PASSIVE_EVERY || (!self.busy && self.length() > self.limit) {
            self.start_passive();
        }
    }

    fn start_passive(&mut self) {
        self.passive_started = Instant::now();
        self.passive = Some(self.run(Checkpoint::Passive, false));
    }

    /// Takes the result of a finished PASSIVE checkpoint, if any (never waits for one).
    async fn collect_passive(&mut self) {
        let Some(task) = self.passive.take_if(|task| task.is_finished()) else { return };
        match self.give_back(task.await) {
            // A busy one (another checkpoint held the lock) says nothing about the log.
            Ok(state) if state.busy => {}
            Ok(state) => {
                self.copied = state.checkpointed.max(0) as u64 * self.frame_bytes;
                self.restart_due = state.frames.max(0) as u64 * self.frame_bytes > self.limit;
            }
            Err(e) => tracing::warn!(error = %e, "a background WAL checkpoint failed; will retry"),
        }
    }

    /// A RESTART or TRUNCATE checkpoint; when readers or an error keep it from finishing, the
    /// next try is at the next tick.
    async fn checkpoint(&mut self, mode: Checkpoint) {
        let patient = self.busy_in_a_row >= Self::PATIENT_AFTER;
        let done = self.run(mode, patient).await;
        match self.give_back(done) {
            Ok(state) if !state.busy => {
                self.restart_due = false;
                self.busy_in_a_row = 0;
            }
            Ok(state) => {
                self.busy = true;
                self.busy_in_a_row += 1;
                if self.busy_in_a_row == Self::PATIENT_AFTER {
                    tracing::warn!(
                        frames = state.frames,
                        "readers have kept the SQLite WAL from restarting for {} tries; the next one waits for them",
                        Self::PATIENT_AFTER
                    );
                } else {
                    tracing::debug!(
                        frames = state.frames,
                        ?mode,
                        "the WAL could not be checkpointed yet (readers); will retry"
                    );
                }
            }
            Err(e) => {
                self.busy = true;
                tracing::warn!(error = %e, ?mode, "a WAL checkpoint failed; will retry");
            }
        }
    }

    /// At shutdown: waits for a background checkpoint, then empties the WAL (unless readers
    /// hold it; SQLite empties it when the last connection closes anyway).
    async fn close(&mut self) {
        if let Some(task) = self.passive.take() {
            let _ = self.give_back(task.await);
        }
        self.checkpoint(Checkpoint::Truncate).await;
    }
}
