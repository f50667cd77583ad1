//! The background sweep: hosted images whose links have expired, orphan blobs, and the limiter's
//! expired reservations.
//!
//! Expired images: the blob first, then the row is marked, so a crash in between only leaves a
//! row to retry.
//!
//! Orphans: a delivery puts its blobs first and commits their rows after
//! (`handlers/deliver.rs`), and deletes the blobs if the commit fails; a process killed between
//! the two leaves blobs no row names, which nothing would ever serve or delete. Every blob under
//! `images/` older than [`ORPHAN_GRACE_SECS`] whose image has no live row is deleted, together
//! with the partial files a local write cut short left ([`Blobs::remove_partial_writes`]). The
//! grace keeps a delivery still between its upload and its commit from being taken for one.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::blobs::{Blobs, Stored};
use super::db::Db;
use super::limits::Limiter;
use super::{now, records};

/// How old a blob with no live image row must be to be deleted as an orphan: far longer than
/// any delivery spends between putting its blobs and committing their rows (a commit that
/// cannot happen fails in seconds, and the delivery then deletes its own blobs).
pub const ORPHAN_GRACE_SECS: i64 = 3600;

/// How often orphans are looked for besides at start: they come only from a process that died
/// mid-delivery, and looking lists every hosted blob.
const ORPHAN_INTERVAL: Duration = Duration::from_secs(3600);

/// The blobs looked up in the database at once.
const ORPHAN_BATCH: usize = 256;

/// Deletes every expired hosted image now; returns how many.
pub async fn sweep_once(db: &Db, blobs: &Blobs) -> anyhow::Result<usize> {
    let mut deleted = 0;
    loop {
        let batch = records::expired(db, now(), 256).await?;
        if batch.is_empty() {
            return Ok(deleted);
        }
        for (id, key) in batch {
            blobs.delete(&key).await?;
            records::mark_deleted(db, &id, now()).await?;
            deleted += 1;
        }
    }
}

/// Deletes the hosted blobs written before `written_before` (Unix seconds) that no live image row
/// names, and the partial files of writes cut short before then; returns how many. Keys that are
/// not Easel's (`images/<day>/<uuid>.<ext>`) are left alone.
pub async fn sweep_orphans(db: &Db, blobs: &Blobs, written_before: i64) -> anyhow::Result<usize> {
    let mut deleted = blobs.remove_partial_writes(written_before).await?;
    let mut listed = blobs.list("images");
    let mut batch = Vec::with_capacity(ORPHAN_BATCH);
    while let Some(stored) = listed.next().await {
        let Stored { key, modified } = stored?;
        if modified < written_before
            && let Some(id) = image_id(&key)
        {
            batch.push((id, key));
        }
        if batch.len() == ORPHAN_BATCH {
            deleted += delete_unrecorded(db, blobs, &mut batch).await?;
        }
    }
    Ok(deleted + delete_unrecorded(db, blobs, &mut batch).await?)
}

/// Deletes the blobs of `batch` (image id, key) that no live row names, and empties it.
async fn delete_unrecorded(db: &Db, blobs: &Blobs, batch: &mut Vec<(String, String)>) -> anyhow::Result<usize> {
    let ids = batch.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    let live = records::live_hosted(db, &ids).await?;
    let mut deleted = 0;
    for (id, key) in batch.drain(..) {
        if !live.iter().any(|(live_id, live_key)| *live_id == id && *live_key == key) {
            blobs.delete(&key).await?;
            tracing::info!(key, "deleted an orphan blob (its delivery never committed)");
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The image id in a key made by [`Blobs::key_for`].
fn image_id(key: &str) -> Option<String> {
    let (day, name) = key.strip_prefix("images/")?.split_once('/')?;
    let (stem, _extension) = name.split_once('.')?;
    day.parse::<i64>().ok()?;
    uuid::Uuid::parse_str(stem).ok().map(|id| id.to_string())
}

/// Runs [`sweep_once`] and the limiter's sweep (expired reservations, old windows) every
/// `interval`, and [`sweep_orphans`] at start and every [`ORPHAN_INTERVAL`], until `stop` is
/// cancelled. Every node sweeps; each row is claimed by one, and deleting a blob twice is
/// harmless.
pub async fn run(db: Db, blobs: Blobs, limiter: Limiter, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    let mut orphans_due = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {
                match sweep_once(&db, &blobs).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "swept expired hosted images"),
                    Err(e) => tracing::warn!(error = %e, "sweeping expired images failed; will retry"),
                }
                match limiter.sweep(now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(released = n, "released expired quota reservations"),
                    Err(e) => tracing::warn!(error = %e, "sweeping quota reservations failed; will retry"),
                }
                if Instant::now() >= orphans_due {
                    match sweep_orphans(&db, &blobs, now() - ORPHAN_GRACE_SECS).await {
                        Ok(0) => orphans_due += ORPHAN_INTERVAL,
                        Ok(n) => {
                            tracing::warn!(deleted = n, "deleted orphan blobs left by an interrupted delivery");
                            orphans_due += ORPHAN_INTERVAL;
                        }
                        Err(e) => tracing::warn!(error = %e, "sweeping orphan blobs failed; will retry"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_come_only_from_easels_own_keys() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(image_id(&Blobs::key_for(&id, "png", 1_700_000_000)), Some(id.to_string()));
        assert_eq!(image_id(&format!("images/19675/{id}.webp")), Some(id.to_string()));
        for foreign in ["readyz/probe", "images/19675/not-a-uuid.png", &format!("images/x/{id}.png"), "images/1"] {
            assert_eq!(image_id(foreign), None, "{foreign}");
        }
    }
}
