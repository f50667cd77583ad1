//! The thread that owns the model and its device, and the bounded queue in front of it.
//!
//! candle models are not `Send`-friendly across an async runtime's threads (schedulers hold
//! non-`Send` state, CUDA contexts are per-thread), and one diffusion at a time per device is the
//! fastest order anyway. So one OS thread loads the weights, then takes jobs from a bounded
//! channel. Admission is `try_send`: a full queue is refused at once (503 with Retry-After, from
//! the measured time per job), never left to pile up. The loop checks the job's cancellation
//! token (and whether its caller is still waiting) between steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use easel_core::backend::{OutputImage, PartialImage};
use easel_core::error::BackendError;
use image::DynamicImage;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Resolved;
use crate::model::{Model, weights_bytes};
use crate::pipeline::{self, Generate, Hooks, RunError};

/// Where the model stands, for `/readyz`.
#[derive(Debug, Clone)]
pub enum LoadState {
    Loading,
    Ready,
    Failed(String),
}

/// A request the worker can run: the resolved generation plus how to answer.
pub struct Job {
    pub generate: Generate,
    pub cancel: CancellationToken,
    pub partials: Option<mpsc::Sender<PartialImage>>,
    pub reply: oneshot::Sender<Result<Vec<DynamicImage>, BackendError>>,
}

pub struct Worker {
    /// The model id, for the metrics' `model` label.
    pub id: String,
    pub state: Arc<Mutex<LoadState>>,
    pub queue: mpsc::Sender<Job>,
    /// Milliseconds the last job took, for Retry-After.
    pub last_job_ms: Arc<AtomicU64>,
}

impl Worker {
    pub fn spawn(id: &str, cfg: Resolved) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(LoadState::Loading));
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        let last_job_ms = Arc::new(AtomicU64::new(0));
        let (st, ms) = (Arc::clone(&state), Arc::clone(&last_job_ms));
        let name = format!("easel-local-{id}");
        let model = id.to_string();
        std::thread::Builder::new().name(name).spawn(move || run(&model, cfg, st, rx, ms))?;
        Ok(Self { id: id.to_string(), state, queue: tx, last_job_ms })
    }

    pub fn state(&self) -> LoadState {
        self.state.lock().expect("state lock").clone()
    }

    /// Queues a job or refuses it at once.
    pub fn submit(&self, job: Job) -> Result<(), BackendError> {
        // Counted before it is sent, so the worker's decrement never comes first.
        let queued = metrics::gauge!("easel_local_queue_depth", "model" => self.id.clone());
        queued.increment(1.0);
        let sent = self.queue.try_send(job);
        if sent.is_err() {
            queued.decrement(1.0);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let waiting = (self.queue.max_capacity() + 1) as u64;
                let per_job = self.last_job_ms.load(Ordering::Relaxed).max(1000);
                let secs = (waiting * per_job).div_ceil(1000).clamp(1, 600);
                Err(BackendError::Overloaded { retry_after: Duration::from_secs(secs) })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(BackendError::Unavailable {
                message: "The local model's worker has stopped.".into(),
                retry_after: None,
            }),
        }
    }
}

fn run(
    id: &str,
    cfg: Resolved,
    state: Arc<Mutex<LoadState>>,
    mut rx: mpsc::Receiver<Job>,
    last_job_ms: Arc<AtomicU64>,
) {
    let queued = metrics::gauge!("easel_local_queue_depth", "model" => id.to_string());
    let in_flight = metrics::gauge!("easel_local_in_flight", "model" => id.to_string());
    let loaded = load(&cfg);
    let model = match loaded {
        Ok(m) => {
            tracing::info!(family = cfg.family.name(), path = %cfg.path.display(), "local model loaded");
            *state.lock().expect("state lock") = LoadState::Ready;
            m
        }
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!(path = %cfg.path.display(), error = %message, "local model failed to load");
            *state.lock().expect("state lock") = LoadState::Failed(message.clone());
            while let Some(job) = rx.blocking_recv() {
                queued.decrement(1.0);
                let _ = job.reply.send(Err(BackendError::Unavailable { message: message.clone(), retry_after: None }));
            }
            return;
        }
    };
    let weights = weights_bytes(&cfg.path);
    while let Some(job) = rx.blocking_recv() {
        queued.decrement(1.0);
        in_flight.set(1.0);
        let started = Instant::now();
        let Job { generate, cancel, partials, reply } = job;
        let cancelled = || cancel.is_cancelled() || reply.is_closed();
        let result = serve(&model, &cfg, weights, generate, &cancelled, partials.as_ref());
        last_job_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        in_flight.set(0.0);
        let _ = reply.send(result);
    }
}

fn load(cfg: &Resolved) -> anyhow::Result<Model> {
    if let Some(budget) = cfg.memory_budget {
        let need = weights_bytes(&cfg.path);
        let need = if cfg.dtype == candle_core::DType::F32 { need } else { need / 2 };
        if need > budget {
            anyhow::bail!(
                "the weights need about {} MiB, over memory_budget_mib = {}",
                need / (1024 * 1024),
                budget / (1024 * 1024)
            );
        }
    }
    let device = cfg.device.open()?;
    Model::load(&cfg.path, cfg.family, &device, cfg.dtype)
}

fn serve(
    model: &Model,
    cfg: &Resolved,
    weights: u64,
    mut g: Generate,
    cancelled: &dyn Fn() -> bool,
    partials: Option<&mpsc::Sender<PartialImage>>,
) -> Result<Vec<DynamicImage>, BackendError> {
    if cancelled() {
        return Err(BackendError::Cancelled);
    }
    let all_seeds = std::mem::take(&mut g.seeds);
    let size = easel_core::types::ImageSize::new(g.width as u32, g.height as u32);
    let batch = cfg.batch_for(size, g.guidance_scale > 1.0, weights) as usize;
    let mut images = Vec::with_capacity(all_seeds.len());
    let mut sent = 0u32;
    for chunk in all_seeds.chunks(batch) {
        g.seeds = chunk.to_vec();
        let mut on_partial = |image: DynamicImage| {
            if let Some(tx) = partials
                && tx.blocking_send(PartialImage { index: sent, image: OutputImage::Pixels(image) }).is_ok()
            {
                sent += 1;
            }
        };
        let hooks = Hooks { cancelled, partial: &mut on_partial };
        match pipeline::run(model, &g, hooks) {
            Ok(batch) => images.extend(batch),
            Err(RunError::Cancelled) => return Err(BackendError::Cancelled),
            Err(RunError::Failed(e)) => {
                return Err(BackendError::Internal(e.context("local diffusion failed")));
            }
        }
        g.partials = 0;
    }
    Ok(images)
}
