//! A request made concrete for one model: every default applied, every image fetched and
//! probed, every value checked against the model's capabilities.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendCall, InputImage, SourcePixels};
use crate::base64::ImageBytes;
use crate::registry::Model;
use crate::request::Options;
use crate::types::{Background, ImageSize, Operation, OutputFormat, Quality, ResponseFormat};
use crate::usage::Usage;

#[derive(Debug, Clone)]
pub struct ImageJob {
    pub operation: Operation,
    pub model: Arc<Model>,
    pub prompt: String,
    pub images: Vec<InputImage>,
    pub mask: Option<InputImage>,
    pub n: u32,
    /// The size delivered; only the estimate when `size_auto`.
    pub size: ImageSize,
    /// The client left the size to a backend that picks it ([`Capabilities::picks_size`]): the
    /// call asks for `auto` and the size the backend made is delivered.
    ///
    /// [`Capabilities::picks_size`]: crate::backend::Capabilities::picks_size
    pub size_auto: bool,
    /// The quality asked for (`auto` kept, so backends can choose).
    pub quality: Quality,
    /// The quality reported back (`auto` resolved).
    pub resolved_quality: Quality,
    pub response_format: ResponseFormat,
    pub stream: bool,
    /// Partial images wanted (0 unless streaming).
    pub partial_images: u8,
    /// The options carried unchanged from the request, checked against the model.
    pub options: Options,
    /// The first image and the mask, decoded when the request was prepared, when a mask is
    /// composited or the backend takes pixels.
    pub decoded: Option<Decoded>,
}

/// Input pixels decoded once, at their own size.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub first: Arc<image::DynamicImage>,
    pub mask: Option<Arc<image::DynamicImage>>,
}

impl ImageJob {
    /// The background reported back: `transparent` only when asked for and possible.
    pub fn resolved_background(&self) -> Background {
        self.options.background.resolved()
    }

    /// The output format delivered.
    pub fn output_format(&self) -> OutputFormat {
        self.options.output_format
    }

    /// The backend call for `n` images starting at image `offset` of the job (which offsets the
    /// seed, so fanned-out calls make different images), at the backend's `size`, with the
    /// job's decoded `pixels` when the backend takes them.
    pub fn call(&self, n: u32, offset: u32, size: ImageSize, pixels: Option<SourcePixels>) -> BackendCall {
        let caps = self.model.backend.capabilities();
        let mut options = self.options.clone();
        options.extensions.seed = options.extensions.seed.map(|seed| seed.wrapping_add(u64::from(offset)));
        BackendCall {
            operation: self.operation,
            model: self.model.id.clone(),
            prompt: self.prompt.clone(),
            images: self.images.clone(),
            mask: if caps.native_masks { self.mask.clone() } else { None },
            pixels: if caps.pixels.wanted() { pixels } else { None },
            n,
            size,
            size_auto: self.size_auto,
            quality: self.quality,
            partial_images: self.partial_images,
            options,
        }
    }
}

/// Where a running job reports progress.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub cancel: CancellationToken,
    /// Encoded partial images, when streaming.
    pub partials: Option<mpsc::Sender<EncodedPartial>>,
}

/// Where a running job reports the denoising steps it has done out of its total (all its images
/// together), for an async task's `progress`. Only backends that count steps report (the local
/// one).
///
/// It travels in a task-local ([`Steps::scope`], [`Steps::current`]) rather than in
/// [`JobContext`] and every `CallContext`: only the backend that counts steps and the caller that
/// shows them know of it, and the service between them passes it on untouched, since a job's
/// backend calls run within the job's own task.
#[derive(Clone)]
pub struct Steps(Arc<dyn Fn(u32, u32) + Send + Sync>);

tokio::task_local! {
    static STEPS: Steps;
}

impl Steps {
    /// A reporter that calls `report(done, total)`; it may be called from any thread.
    pub fn new(report: impl Fn(u32, u32) + Send + Sync + 'static) -> Self {
        Self(Arc::new(report))
    }

    /// Runs `job` with this reporter as [`Steps::current`].
    pub async fn scope<F: Future>(self, job: F) -> F::Output {
        STEPS.scope(self, job).await
    }

    /// The reporter of the job running in this task, if its caller wants steps.
    pub fn current() -> Option<Self> {
        STEPS.try_with(Clone::clone).ok()
    }

    pub fn report(&self, done: u32, total: u32) {
        (self.0)(done, total);
    }
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Steps")
    }
}

/// A partial image ready to send: encoded in the job's output format.
#[derive(Debug, Clone)]
pub struct EncodedPartial {
    pub index: u32,
    /// Base64 when a relayed partial passed through unchanged: sent as that same text.
    pub bytes: ImageBytes,
}

/// A delivered image.
#[derive(Debug, Clone)]
pub struct FinalImage {
    /// Base64 when a backend's base64 passed through unchanged: delivered as that same text.
    pub bytes: ImageBytes,
    pub format: OutputFormat,
    pub size: ImageSize,
}

#[derive(Debug, Clone)]
pub struct JobOutput {
    pub images: Vec<FinalImage>,
    pub usage: Usage,
    pub revised_prompt: Option<String>,
    /// Partial images actually sent.
    pub partials_sent: u32,
    /// What made the images when the backend said (`BackendOutput::served_by`); the distinct
    /// values of the job's calls, comma-separated, when they differ.
    pub served_by: Option<String>,
    /// The size, quality and background reported back: what the job resolved, or what the
    /// backend made and said it used where it chose (`auto` passed on).
    pub size: ImageSize,
    pub quality: Quality,
    pub background: Background,
}
