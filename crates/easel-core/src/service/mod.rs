//! The image service: from a dialect-free request to delivered images.
//!
//! [`ImageService::resolve`] finds the model, [`ImageService::prepare`] checks the request against
//! its [`Capabilities`](crate::backend::Capabilities) before any compute or money is spent (every
//! range and model-specific rule is checked there, once); [`ImageService::run`] decodes what must
//! be decoded once per job, calls the backend and fills what it lacks: n fan-out with bounded
//! concurrency, generating at a native size and resizing, transcoding, compositing masks,
//! flattening backgrounds. `docs/architecture.md` has the table of gaps filled.
//!
//! Decoding is where a small request costs the most memory, so it is bounded three ways: each
//! image's decoded bytes (`max_decoded_bytes`, read from its header when the request is
//! prepared, before anything is spent), the `image` crate's allocation limit during the decode,
//! and the number of pixel jobs running at once across all requests (`max_concurrent_decodes`,
//! a semaphore in front of the blocking pool).

mod execute;
mod postprocess;
mod prepare;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::fetch::ImageFetcher;
use crate::imaging::{DecodeLimits, EncodeSettings};
use crate::registry::ModelRegistry;
use crate::types::ResponseFormat;

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// `response_format` when the request names none.
    pub default_response_format: ResponseFormat,
    /// The most input images an edit may carry, whatever the model (OpenAI: 16).
    pub max_input_images: usize,
    /// The most pixels an input image may have.
    pub max_input_pixels: u64,
    /// The most bytes one input image may take once decoded (width × height × bytes per pixel of
    /// its color type, 16-bit channels included), checked on its header when the request is
    /// prepared. Default [`DecodeLimits::DEFAULT_MAX_BYTES`] (256 MiB, 64 Mpx of 8-bit RGBA).
    pub max_decoded_bytes: u64,
    /// Pixel jobs (a decode and the resizing, compositing and encoding that follow it) running at
    /// once across all requests; more wait their turn. With `max_decoded_bytes` this bounds the
    /// memory hostile images can take. Default: twice the CPU cores.
    pub max_concurrent_decodes: usize,
    /// Backend calls in flight at once when `n` is fanned out.
    pub fan_out: usize,
    pub encode: EncodeSettings,
}

impl ServiceSettings {
    /// The default of `max_concurrent_decodes`: twice the cores, so the CPUs stay busy while
    /// some jobs wait on memory, and no more.
    pub fn default_concurrent_decodes() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            default_response_format: ResponseFormat::B64Json,
            max_input_images: crate::limits::MAX_INPUT_IMAGES,
            max_input_pixels: crate::limits::MAX_INPUT_PIXELS,
            max_decoded_bytes: DecodeLimits::DEFAULT_MAX_BYTES,
            max_concurrent_decodes: Self::default_concurrent_decodes(),
            fan_out: 4,
            encode: EncodeSettings::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageService {
    registry: Arc<ModelRegistry>,
    fetcher: ImageFetcher,
    settings: ServiceSettings,
    pixels: PixelPool,
}

impl ImageService {
    pub fn new(registry: Arc<ModelRegistry>, fetcher: ImageFetcher, settings: ServiceSettings) -> Self {
        let pixels = PixelPool::new(settings.max_concurrent_decodes);
        Self { registry, fetcher, settings, pixels }
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }
}

/// Where the service's CPU-bound pixel work runs: tokio's blocking pool, at most `permits` jobs
/// at once across every request, because each job holds decoded images (up to
/// `max_decoded_bytes` each) and tokio's pool alone would run hundreds.
#[derive(Debug, Clone)]
struct PixelPool {
    permits: Arc<Semaphore>,
}

impl PixelPool {
    fn new(permits: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(permits.max(1))) }
    }

    /// Runs `f` once a permit is free; a panic there becomes an internal error. The permit moves
    /// into the job, so a request that goes away while its job runs does not free the slot early.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let permit = Arc::clone(&self.permits).acquire_owned().await?;
        let job = move || {
            let _permit = permit;
            f()
        };
        tokio::task::spawn_blocking(job).await.map_err(|e| anyhow::anyhow!("pixel work failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pixel_work_runs_at_most_the_configured_jobs_at_once() {
        let pool = PixelPool::new(2);
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, peak) = (pool.clone(), Arc::clone(&running), Arc::clone(&peak));
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_keeps_its_slot_after_its_caller_leaves() {
        let pool = PixelPool::new(1);
        let (started, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Barrier::new(2)));
        let (s, r) = (Arc::clone(&started), Arc::clone(&release));
        let first = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    s.fetch_add(1, Ordering::SeqCst);
                    r.wait();
                })
                .await
            }
        });
        while started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first.abort();
        let _ = first.await;
        // The first job still runs: the second must wait for it.
        let second = tokio::time::timeout(Duration::from_millis(100), pool.run(|| ())).await;
        assert!(second.is_err(), "a second job ran while the first held the only slot");
        release.wait();
        tokio::time::timeout(Duration::from_secs(5), pool.run(|| ())).await.unwrap().unwrap();
    }

    #[test]
    fn defaults_bound_bytes_and_concurrency() {
        let s = ServiceSettings::default();
        assert_eq!(s.max_decoded_bytes, 256 * 1024 * 1024);
        assert!(s.max_concurrent_decodes >= 2);
    }
}
