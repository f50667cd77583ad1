//! The background sweep that deletes hosted images whose links have expired: the blob first,
//! then the row is marked, so a crash in between only leaves a row to retry.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::blobs::Blobs;
use super::db::Db;
use super::limits::Limiter;
use super::{now, records};

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

/// Runs [`sweep_once`] and the limiter's sweep (expired reservations, old windows) every
/// `interval` until `stop` is cancelled. Every node sweeps; each row is claimed by one.
pub async fn run(db: Db, blobs: Blobs, limiter: Limiter, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
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
            }
        }
    }
}
