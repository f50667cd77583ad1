//! The thread that owns the model and its device, and the bounded queue in front of it.
//!
//! candle models are not `Send`-friendly across an async runtime's threads (schedulers hold
//! non-`Send` state, CUDA contexts are per-thread), and one diffusion at a time per device is the
//! fastest order anyway. So one OS thread loads the weights, then takes jobs from a bounded
//! channel. Admission is `try_send`: a full queue is refused at once (503 with Retry-After, from
//! the measured time per job), never left to pile up. The loop checks the job's cancellation
//! token (and whether its caller is still waiting) between steps.
//!
//! A panic inside a job (a bug in model code, a shape candle refuses with a panic, an
//! out-of-memory abort that unwinds) is caught around that job alone: the job answers
//! [`BackendError::Internal`] (a 500 with the generic message) and the thread goes on with the
//! next one. Keeping the thread rather than restarting it is safe because a job cannot leave the
//! model half-changed: [`Loaded`] holds immutable weights and tokenizers, [`Loaded::run`] only
//! borrows it, and everything a job mutates (scheduler, latents, noise, the partial-image
//! sender) lives in the job's own frames and is dropped as the panic unwinds. Restarting would
//! reload the weights (seconds to minutes) and drop the queue for nothing. What a restart would
//! not fix either, a broken device, shows as panics in a row: [`Health`] counts them, and after
//! [`UNREADY_AFTER_PANICS`] consecutive panics `readiness()` fails so `/readyz` takes the node
//! out of rotation. A panic while loading is a load failure, and a worker thread that is gone for
//! any other reason is reported as such.
//!
//! Recovery, the rule: any job that ends without a panic clears the streak and the worker is
//! ready again. A node out of rotation gets no jobs, though, so it does not wait for one: after
//! `recheck_after_secs` (default 30) with an empty queue, the worker tests itself with a probe
//! (one step, one image at the smallest size, no prompt) through the same path as a job. A probe
//! that makes its image clears the streak (ready again); one that panics counts as a panic and
//! the worker waits again before the next probe; a job arriving meanwhile runs as usual. So a
//! passing fault heals by itself within one wait, and a broken device stays out of rotation,
//! costing one small probe per wait.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use easel_core::backend::{OutputImage, PartialImage};
use easel_core::error::BackendError;
use easel_core::job::Steps;
use image::DynamicImage;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{DeviceSpec, Resolved};
use crate::loaded::Loaded;
use crate::pipeline::{Generate, Hooks, RunError};

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
    /// Where the steps done are reported, when the caller wants them.
    pub steps: Option<Steps>,
    pub reply: oneshot::Sender<Result<Vec<DynamicImage>, BackendError>>,
}

/// Consecutive panicking jobs after which the worker reports itself not ready.
pub const UNREADY_AFTER_PANICS: u32 = 3;

/// Panics caught in jobs, for readiness and metrics (`easel_local_panics_total`).
#[derive(Debug, Default)]
pub struct Health {
    total: AtomicU64,
    streak: AtomicU32,
    last: Mutex<Option<String>>,
}

impl Health {
    /// Panics caught since the worker started.
    pub fn panics(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Jobs in a row that panicked, up to the last one.
    pub fn streak(&self) -> u32 {
        self.streak.load(Ordering::SeqCst)
    }

    /// Why the worker should not be trusted with traffic, if it should not.
    pub fn problem(&self) -> Option<String> {
        let streak = self.streak();
        (streak >= UNREADY_AFTER_PANICS).then(|| {
            let last = self.last.lock().expect("health lock").clone().unwrap_or_default();
            format!("its last {streak} jobs panicked (the last: {last})")
        })
    }

    fn panicked(&self, message: &str) -> u32 {
        self.total.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().expect("health lock") = Some(message.to_string());
        self.streak.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn finished(&self) {
        self.streak.store(0, Ordering::SeqCst);
    }
}

pub struct Worker {
    /// The model id, for the metrics' `model` label.
    pub id: String,
    pub state: Arc<Mutex<LoadState>>,
    pub queue: mpsc::Sender<Job>,
    /// Milliseconds the last job took, for Retry-After.
    pub last_job_ms: Arc<AtomicU64>,
    pub health: Arc<Health>,
}

impl Worker {
    pub fn spawn(id: &str, cfg: Resolved) -> std::io::Result<Self> {
        easel_core::memory::keep_freed_memory(easel_core::memory::Keep::Tensors);
        let state = Arc::new(Mutex::new(LoadState::Loading));
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        let last_job_ms = Arc::new(AtomicU64::new(0));
        let health = Arc::new(Health::default());
        let (st, ms, h) = (Arc::clone(&state), Arc::clone(&last_job_ms), Arc::clone(&health));
        let name = format!("easel-local-{id}");
        let model = id.to_string();
        std::thread::Builder::new().name(name).spawn(move || run(&model, cfg, st, rx, ms, &h))?;
        Ok(Self { id: id.to_string(), state, queue: tx, last_job_ms, health })
    }

    pub fn state(&self) -> LoadState {
        self.state.lock().expect("state lock").clone()
    }

    /// Whether the thread still takes jobs: it ends only if something outside a job panicked.
    pub fn alive(&self) -> bool {
        !self.queue.is_closed()
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
    health: &Health,
) {
    let queued = metrics::gauge!("easel_local_queue_depth", "model" => id.to_string());
    let in_flight = metrics::gauge!("easel_local_in_flight", "model" => id.to_string());
    let panics = metrics::counter!("easel_local_panics_total", "model" => id.to_string());
    let loaded = catch_unwind(AssertUnwindSafe(|| load(&cfg)))
        .unwrap_or_else(|payload| Err(anyhow::anyhow!("loading panicked: {}", panic_message(payload.as_ref()))));
    let model = match loaded {
        Ok(m) => {
            let convolutions = matches!(cfg.device, DeviceSpec::Cuda(_)).then_some(crate::ops::CUDA_CONVOLUTIONS);
            tracing::info!(family = cfg.family.name(), path = %cfg.path.display(), convolutions, "local model loaded");
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
    let weights = model.denoising_bytes();
    // Only to wait for a job with a time limit while unready (see the module docs).
    let timer = tokio::runtime::Builder::new_current_thread().enable_time().build();
    loop {
        let next = match (&timer, health.problem()) {
            (Ok(timer), Some(_)) => {
                match timer.block_on(async { tokio::time::timeout(cfg.recheck_after, rx.recv()).await }) {
                    Ok(next) => next,
                    Err(_) => {
                        probe(id, &model, &cfg, weights, health, &panics);
                        continue;
                    }
                }
            }
            _ => rx.blocking_recv(),
        };
        let Some(job) = next else { break };
        queued.decrement(1.0);
        in_flight.set(1.0);
        let started = Instant::now();
        let Job { generate, cancel, partials, steps, reply } = job;
        let cancelled = || cancel.is_cancelled() || reply.is_closed();
        // Only this job's frames unwind; the model is borrowed immutably (see the module docs).
        let served = catch_unwind(AssertUnwindSafe(|| {
            let reports = Reports { partials: partials.as_ref(), steps: steps.as_ref() };
            serve(id, &model, &cfg, weights, generate, &cancelled, reports)
        }));
        let result = match served {
            Ok(result) => {
                health.finished();
                result
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                let streak = health.panicked(&message);
                panics.increment(1);
                tracing::error!(model = id, panic = %message, streak, "a local job panicked; the worker goes on with the next job");
                Err(BackendError::Internal(anyhow::anyhow!("the local diffusion job panicked: {message}")))
            }
        };
        last_job_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        in_flight.set(0.0);
        let _ = reply.send(result);
    }
}

/// Tests an unready worker with a job of its own: one step, one image at the smallest size. Its
/// image clears the panic streak; a panic counts like a job's.
fn probe(id: &str, model: &Loaded, cfg: &Resolved, weights: u64, health: &Health, panics: &metrics::Counter) {
    let d = cfg.defaults;
    let edge = d.min_edge as usize;
    let generate = Generate {
        prompt: String::new(),
        negative_prompt: String::new(),
        width: edge,
        height: edge,
        seeds: vec![0],
        steps: 1,
        guidance_scale: f64::from(d.guidance_scale),
        scheduler: d.scheduler,
        init: None,
        partials: 0,
        preview: cfg.preview,
    };
    let served =
        catch_unwind(AssertUnwindSafe(|| serve(id, model, cfg, weights, generate, &|| false, Reports::default())));
    match served {
        Ok(Ok(_)) => {
            health.finished();
            tracing::info!(model = id, "the local worker's probe made its image; it is ready again");
        }
        Ok(Err(e)) => {
            tracing::warn!(model = id, error = %e, "the local worker's probe failed; it stays out of rotation")
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            let streak = health.panicked(&message);
            panics.increment(1);
            tracing::error!(model = id, panic = %message, streak, "the local worker's probe panicked; it stays out of rotation");
        }
    }
}

fn load(cfg: &Resolved) -> anyhow::Result<Loaded> {
    let device = cfg.device.open()?;
    let mut loaded = Loaded::load(&cfg.path, cfg.family, &device, cfg.dtype, cfg.preset, cfg.memory_budget)?;
    if let (Loaded::Qwen(m), Some(p)) = (&mut loaded, cfg.condition_pixels) {
        m.condition_pixels = p;
    }
    match (loaded, &cfg.tiny_vae) {
        (Loaded::Sd(model), Some(dir)) => Ok(Loaded::Sd(Box::new(model.with_tiny_vae(dir, cfg.decoder)?))),
        (_, Some(_)) => unreachable!("config resolution refuses tiny_vae outside the SD families"),
        (loaded, None) => Ok(loaded),
    }
}

/// The text of a panic's payload (`panic!` with a message gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_string(),
        (_, Some(text)) => text.clone(),
        _ => "a panic without a message".to_string(),
    }
}

/// Where a job's in-between results go, when its caller wants them.
#[derive(Clone, Copy, Default)]
struct Reports<'a> {
    partials: Option<&'a mpsc::Sender<PartialImage>>,
    steps: Option<&'a Steps>,
}

fn serve(
    id: &str,
    model: &Loaded,
    cfg: &Resolved,
    weights: u64,
    mut g: Generate,
    cancelled: &dyn Fn() -> bool,
    reports: Reports<'_>,
) -> Result<Vec<DynamicImage>, BackendError> {
    let Reports { partials, steps } = reports;
    if cancelled() {
        return Err(BackendError::Cancelled);
    }
    fault::maybe_panic(id);
    let all_seeds = std::mem::take(&mut g.seeds);
    let size = easel_core::types::ImageSize::new(g.width as u32, g.height as u32);
    let batch = cfg.batch_for(size, g.guidance_scale > 1.0, weights) as usize;
    let mut images = Vec::with_capacity(all_seeds.len());
    let mut sent = 0u32;
    let batches = all_seeds.len().div_ceil(batch.max(1));
    for (index, chunk) in all_seeds.chunks(batch).enumerate() {
        g.seeds = chunk.to_vec();
        let mut on_partial = |image: DynamicImage| {
            if let Some(tx) = partials
                && tx.blocking_send(PartialImage { index: sent, image: OutputImage::Pixels(image) }).is_ok()
            {
                sent += 1;
            }
        };
        // Steps over the whole job: every batch runs the same number.
        let mut on_step = |done: usize, per_batch: usize| {
            if let Some(steps) = steps {
                steps.report((index * per_batch + done) as u32, (batches * per_batch) as u32);
            }
        };
        let hooks = Hooks { cancelled, partial: &mut on_partial, step: &mut on_step };
        match model.run(&g, hooks) {
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

/// Fault injection, for tests of panic handling from outside this crate (integration tests
/// cannot see `cfg(test)` items, and nothing a request carries should be able to make a job
/// panic on purpose). Armed per model id by Rust code in the same process only; unarmed it costs
/// one relaxed atomic load per job.
#[doc(hidden)]
pub mod fault {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    static ARMED: AtomicBool = AtomicBool::new(false);
    static PANICS: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

    /// Makes the next `jobs` jobs of model `id` panic inside the job, where a bug would.
    pub fn panic_next_jobs(id: &str, jobs: u32) {
        let mut armed = PANICS.lock().expect("fault lock");
        armed.retain(|(model, _)| model != id);
        armed.push((id.to_string(), jobs));
        ARMED.store(true, Ordering::SeqCst);
    }

    pub(crate) fn maybe_panic(id: &str) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        let fire = {
            let mut armed = PANICS.lock().expect("fault lock");
            match armed.iter_mut().find(|(model, left)| model == id && *left > 0) {
                Some((_, left)) => {
                    *left -= 1;
                    true
                }
                None => false,
            }
        };
        if fire {
            panic!("injected fault in model '{id}'");
        }
    }
}
