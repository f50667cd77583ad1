//! The `tasks` table: async image tasks and the lease of the worker running each.
//!
//! Every change of status is one conditional statement on the status it leaves (and, for a
//! worker, on its own lease token), so two nodes can never both move a task: the one whose
//! statement matched did it, the other sees no row. That is what makes a claim exclusive, a
//! final status reached once (and the quota settled once), and a worker that lost its lease
//! unable to overwrite what another did since. The claim itself is the one statement that
//! differs per engine: PostgreSQL picks the oldest queued row `FOR UPDATE SKIP LOCKED`, so
//! concurrent claimers take different rows instead of queueing on one; SQLite has one writer, so
//! a plain sub-select in the `UPDATE` is already atomic.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{self, Db, Engine};
use crate::tasks::{ListQuery, Progress, TaskError, TaskPage, TaskStatus, TaskView};

/// A task as submitted.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub owner: String,
    pub operation: String,
    pub model: String,
    pub image_count: u32,
    /// JSON `tasks::request::StoredRequest`.
    pub request: String,
    /// JSON quota reservation.
    pub reservation: Option<String>,
    pub created_at: i64,
}

/// A task a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub owner: String,
    pub request: String,
    pub reservation: Option<String>,
    /// The worker's lease token: only it can renew or finish this run.
    pub lease: String,
    /// Runs so far, this one included.
    pub attempts: i64,
}

/// How a final status is written.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: TaskStatus,
    /// JSON images response.
    pub result: Option<String>,
    pub error: Option<TaskError>,
    pub finished_at: i64,
    /// When the task row (and its result) is deleted.
    pub expires_at: i64,
}

const VIEW_COLUMNS: &str = "id, status, operation, model, image_count, steps_done, steps_total, result, error, \
                            created_at, started_at, finished_at";

pub async fn insert(db: &Db, task: &NewTask) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO tasks (id, owner, status, operation, model, image_count, request, reservation, attempts, \
         cancel_requested, created_at) VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, 0, 0, $8)",
    )
    .bind(&task.id)
    .bind(&task.owner)
    .bind(&task.operation)
    .bind(&task.model)
    .bind(i64::from(task.image_count))
    .bind(&task.request)
    .bind(&task.reservation)
    .bind(task.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// `owner`'s task `id`, unless it has expired.
pub async fn get(db: &Db, owner: &str, id: &str, now: i64) -> anyhow::Result<Option<TaskView>> {
    let sql = format!(
        "SELECT {VIEW_COLUMNS} FROM tasks WHERE id = $1 AND owner = $2 AND (expires_at IS NULL OR expires_at > $3)"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(owner).bind(now).fetch_optional(db).await?;
    row.as_ref().map(view).transpose()
}

/// `owner`'s tasks, newest first, matching `query` (after its cursor, past its offset), and
/// with `query.count` the number of matches on all pages.
pub async fn list(db: &Db, owner: &str, query: &ListQuery, now: i64) -> anyhow::Result<TaskPage> {
    let (filter, args) = filter(owner, query, now);
    // Ids are UUIDv7 strings, which sort by creation time.
    let next = args.len() + 1;
    let sql =
        format!("SELECT {VIEW_COLUMNS} FROM tasks WHERE {filter} ORDER BY id DESC LIMIT ${next} OFFSET ${}", next + 1);
    let select = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
        .bind(i64::from(query.limit) + 1)
        .bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
    let rows = select.fetch_all(db).await?;
    let has_more = rows.len() > query.limit as usize;
    let tasks = rows.iter().take(query.limit as usize).map(view).collect::<anyhow::Result<_>>()?;
    let total = if query.count {
        let sql = format!("SELECT COUNT(*) AS matches FROM tasks WHERE {filter}");
        let row = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), &args).fetch_one(db).await?;
        Some(u64::try_from(row.try_get::<i64, _>("matches")?)?)
    } else {
        None
    };
    Ok(TaskPage { tasks, has_more, total })
}

/// A value bound to a numbered parameter of [`filter`]'s clause.
enum Arg {
    Text(String),
    Int(i64),
}

/// The `WHERE` clause of [`list`] (`$1`, `$2`... in order) and its values.
fn filter(owner: &str, query: &ListQuery, now: i64) -> (String, Vec<Arg>) {
    let mut sql = String::from("owner = $1 AND (expires_at IS NULL OR expires_at > $2)");
    let mut args = vec![Arg::Text(owner.to_string()), Arg::Int(now)];
    let mut add = |clause: &str, arg: Arg| {
        args.push(arg);
        sql.push_str(&format!(" AND {clause} ${}", args.len()));
    };
    if let Some(after) = &query.after {
        add("id <", Arg::Text(after.clone()));
    }
    if let Some(status) = query.status {
        add("status =", Arg::Text(status.as_str().to_string()));
    }
    if let Some(model) = &query.model {
        add("model =", Arg::Text(model.clone()));
    }
    if let Some(from) = query.created_from {
        add("created_at >=", Arg::Int(from));
    }
    if let Some(to) = query.created_to {
        add("created_at <=", Arg::Int(to));
    }
    (sql, args)
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, <sqlx::Any as sqlx::Database>::Arguments>;

fn bind<'q>(mut query: AnyQuery<'q>, args: &[Arg]) -> AnyQuery<'q> {
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text.clone()),
            Arg::Int(number) => query.bind(*number),
        };
    }
    query
}

/// Claims the oldest queued task for a run under `lease` until `lease_until`.
pub async fn claim(db: &Db, lease: &str, lease_until: i64, now: i64) -> anyhow::Result<Option<Claimed>> {
    // Idle workers look often: a read first, so an empty queue takes no write lock (SQLite has
    // one, shared with every request's ledger and limits).
    let waiting = sqlx::query("SELECT id FROM tasks WHERE status = 'queued' LIMIT 1").fetch_optional(db).await?;
    if waiting.is_none() {
        return Ok(None);
    }
    let pick = match db::engine(db) {
        Engine::Postgres => {
            "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
        }
        Engine::Sqlite => "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created_at, id LIMIT 1",
    };
    let sql = format!(
        "UPDATE tasks SET status = 'running', lease_owner = $1, lease_expires_at = $2, started_at = $3, \
         attempts = attempts + 1, steps_done = NULL, steps_total = NULL \
         WHERE id = ({pick}) AND status = 'queued' RETURNING id, owner, request, reservation, attempts"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(lease).bind(lease_until).bind(now).fetch_optional(db).await?;
    row.map(|row| {
        Ok(Claimed {
            id: row.try_get("id")?,
            owner: row.try_get("owner")?,
            request: row.try_get("request")?,
            reservation: row.try_get("reservation")?,
            lease: lease.to_string(),
            attempts: row.try_get("attempts")?,
        })
    })
    .transpose()
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease is extended; `cancel` says whether the task's owner asked to cancel it.
    Held { cancel: bool },
    /// The lease is gone (it ran out and the task was queued again or failed).
    Lost,
}

/// Extends the lease of a running task to `lease_until`.
pub async fn renew(db: &Db, id: &str, lease: &str, lease_until: i64) -> anyhow::Result<Renewal> {
    let row = sqlx::query(
        "UPDATE tasks SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running' \
         RETURNING cancel_requested",
    )
    .bind(lease_until)
    .bind(id)
    .bind(lease)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(row) => Renewal::Held { cancel: row.try_get::<i64, _>("cancel_requested")? != 0 },
        None => Renewal::Lost,
    })
}

/// Records the steps a running task has done.
pub async fn progress(db: &Db, id: &str, lease: &str, progress: Progress) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET steps_done = $1, steps_total = $2 WHERE id = $3 AND lease_owner = $4 AND status = 'running'",
    )
    .bind(i64::from(progress.done))
    .bind(i64::from(progress.total))
    .bind(id)
    .bind(lease)
    .execute(db)
    .await?;
    Ok(())
}

/// What a task that reached its final status leaves to clean up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub owner: String,
    /// The quota reservation to settle.
    pub reservation: Option<String>,
    /// The stored request, which names the input blobs to delete.
    pub request: String,
}

fn ended(row: &AnyRow) -> anyhow::Result<Ended> {
    Ok(Ended {
        owner: row.try_get("owner")?,
        reservation: row.try_get("reservation")?,
        request: row.try_get("request")?,
    })
}

/// Ends a run with `outcome`, if `lease` still holds it; `None` when the lease was lost (the
/// task is someone else's now).
pub async fn finish(db: &Db, id: &str, lease: &str, outcome: &Outcome) -> anyhow::Result<Option<Ended>> {
    let error = outcome.error.as_ref().map(serde_json::to_string).transpose()?;
    let row = sqlx::query(
        "UPDATE tasks SET status = $1, result = $2, error = $3, finished_at = $4, expires_at = $5, \
         lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $6 AND lease_owner = $7 AND status = 'running' RETURNING owner, reservation, request",
    )
    .bind(outcome.status.as_str())
    .bind(&outcome.result)
    .bind(error)
    .bind(outcome.finished_at)
    .bind(outcome.expires_at)
    .bind(id)
    .bind(lease)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(ended).transpose()
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRequest {
    /// The task was queued and is canceled; its reservation is to be released.
    Canceled(Ended),
    /// The task is running; its worker will stop it.
    Flagged,
    /// The task is not queued or running (finished, or no such task of this owner).
    Neither,
}

/// Cancels `owner`'s queued task `id` with `outcome`, or flags it if it is running.
pub async fn request_cancel(db: &Db, owner: &str, id: &str, outcome: &Outcome) -> anyhow::Result<CancelRequest> {
    let error = outcome.error.as_ref().map(serde_json::to_string).transpose()?;
    let canceled = sqlx::query(
        "UPDATE tasks SET status = 'canceled', error = $1, finished_at = $2, expires_at = $3, cancel_requested = 1 \
         WHERE id = $4 AND owner = $5 AND status = 'queued' RETURNING owner, reservation, request",
    )
    .bind(error)
    .bind(outcome.finished_at)
    .bind(outcome.expires_at)
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await?;
    if let Some(row) = canceled {
        return Ok(CancelRequest::Canceled(ended(&row)?));
    }
    let flagged =
        sqlx::query("UPDATE tasks SET cancel_requested = 1 WHERE id = $1 AND owner = $2 AND status = 'running'")
            .bind(id)
            .bind(owner)
            .execute(db)
            .await?;
    Ok(if flagged.rows_affected() == 1 { CancelRequest::Flagged } else { CancelRequest::Neither })
}

/// A running task whose lease ran out.
#[derive(Debug, Clone)]
pub struct Expired {
    pub id: String,
    pub owner: String,
    pub reservation: Option<String>,
    pub attempts: i64,
    pub cancel_requested: bool,
    pub lease: String,
}

/// Running tasks whose lease ended before `now`.
pub async fn expired_leases(db: &Db, now: i64, limit: i64) -> anyhow::Result<Vec<Expired>> {
    let rows = sqlx::query(
        "SELECT id, owner, reservation, attempts, cancel_requested, lease_owner FROM tasks \
         WHERE status = 'running' AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Expired {
                id: r.try_get("id")?,
                owner: r.try_get("owner")?,
                reservation: r.try_get("reservation")?,
                attempts: r.try_get("attempts")?,
                cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
                lease: r.try_get::<Option<String>, _>("lease_owner")?.unwrap_or_default(),
            })
        })
        .collect()
}

/// Puts a task whose lease `lease` ran out back in the queue; false if something else moved it.
pub async fn requeue(db: &Db, id: &str, lease: &str) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, steps_done = NULL, \
         steps_total = NULL WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(lease)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Finished tasks whose time is up (their hosted images expire with them): their ids.
pub async fn expired_tasks(db: &Db, now: i64, limit: i64) -> anyhow::Result<Vec<String>> {
    let rows =
        sqlx::query("SELECT id FROM tasks WHERE expires_at < $1 LIMIT $2").bind(now).bind(limit).fetch_all(db).await?;
    rows.iter().map(|r| r.try_get("id").map_err(Into::into)).collect()
}

pub async fn delete(db: &Db, id: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM tasks WHERE id = $1").bind(id).execute(db).await?;
    Ok(())
}

fn view(row: &AnyRow) -> anyhow::Result<TaskView> {
    let status: String = row.try_get("status")?;
    let operation: String = row.try_get("operation")?;
    let progress = match (row.try_get::<Option<i64>, _>("steps_done")?, row.try_get::<Option<i64>, _>("steps_total")?) {
        (Some(done), Some(total)) => Some(Progress { done: done as u32, total: total as u32 }),
        _ => None,
    };
    let result: Option<String> = row.try_get("result")?;
    let error: Option<String> = row.try_get("error")?;
    Ok(TaskView {
        id: row.try_get("id")?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| anyhow::anyhow!("a task has the unknown status '{status}'"))?,
        operation: operation.parse().map_err(anyhow::Error::msg)?,
        model: row.try_get("model")?,
        image_count: row.try_get::<i64, _>("image_count")? as u32,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        progress,
        result: result.as_deref().map(serde_json::from_str).transpose()?,
        error: error.as_deref().map(serde_json::from_str).transpose()?,
    })
}
