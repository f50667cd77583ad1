//! Running a job: fan-out over backend calls, partial images, post-processing, usage.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::backend::{BackendCall, BackendOutput, CallContext, PartialImage, PixelInput, SharedBackend, SourcePixels};
use crate::error::{BackendError, CoreError};
use crate::imaging;
use crate::job::{EncodedPartial, ImageJob, JobContext, JobOutput};
use crate::types::ImageSize;
use crate::usage::{self, Usage};

use super::postprocess::{Finish, finish, finish_partial, passes_through};
use super::{ImageService, PixelPool};

impl ImageService {
    pub async fn run(&self, job: &ImageJob, cx: JobContext) -> Result<JobOutput, CoreError> {
        let backend = Arc::clone(&job.model.backend);
        let caps = backend.capabilities();
        let call_size = match &caps.native_sizes {
            // A backend that picks the size makes what it likes; `job.size` is only the estimate.
            Some(native) if !job.size_auto && !native.allows(job.size) => native.nearest(job.size),
            _ => job.size,
        };

        // Decoded once per job, before anything is spent: the first image and the mask at the
        // delivered size for compositing, and as the backend takes them.
        let sources = self.decode_sources(job, call_size, caps.pixels).await?;
        let per_call = caps.max_n_per_call.max(1);
        // The calls for `count` images, the first at image `offset` of the job.
        let plan = |count: u32, offset: u32| {
            let mut calls = Vec::new();
            let mut planned = 0;
            while planned < count {
                let n = per_call.min(count - planned);
                calls.push(job.call(n, offset + planned, call_size, sources.for_backend.clone()));
                planned += n;
            }
            calls
        };

        let (partial_tx, forwarder) = match (&cx.partials, job.partial_images, caps.partial_images) {
            (Some(out), wanted @ 1.., true) => {
                let (tx, rx) = mpsc::channel(4);
                let params = Finish::for_job(job, &self.settings);
                let forward = forward_partials(rx, out.clone(), params, u32::from(wanted), self.pixels.clone());
                (Some(tx), Some(tokio::spawn(forward)))
            }
            _ => (None, None),
        };

        let call_cx = CallContext { cancel: cx.cancel.clone(), partials: partial_tx };
        let mut outputs = self.call_backend(&backend, plan(job.n, 0), &call_cx).await;
        // A backend that answers with fewer images than asked is asked once more for the
        // missing ones (seeds past the job's own, so they are new images); still short, the job
        // fails: a client is never handed fewer images than `n` as if it were the whole answer.
        let got = outputs.as_deref().map_or(job.n, count_images);
        if got < job.n {
            tracing::warn!(model = %job.model.id, asked = job.n, got, "backend returned fewer images than asked for; asking again for the missing ones");
            let retried = self.call_backend(&backend, plan(job.n - got, job.n), &call_cx).await;
            outputs = outputs.and_then(|mut first| {
                first.extend(retried?);
                Ok(first)
            });
        }
        drop(call_cx);
        let partials_sent = match forwarder {
            Some(handle) => handle.await.unwrap_or(0),
            None => 0,
        };
        let outputs = outputs?;
        let got = count_images(&outputs);
        if got < job.n {
            return Err(too_few(backend.kind(), &job.model.id, got, job.n).into());
        }

        let (source, mask) = sources.for_compositing.map_or((None, None), |p| (Some(p.image), p.mask));
        let finish_params = Finish::for_job(job, &self.settings);
        let mut images = Vec::with_capacity(job.n as usize);
        let mut reported = Some(Usage::default());
        let mut revised_prompt = None;
        let mut served_by: Option<String> = None;
        let (mut quality, mut background) = (None, None);
        for output in outputs {
            quality = quality.or(output.quality);
            background = background.or(output.background);
            if let Some(by) = output.served_by {
                match &mut served_by {
                    Some(all) if !all.split(',').any(|s| s == by) => *all = format!("{all},{by}"),
                    Some(_) => {}
                    None => served_by = Some(by),
                }
            }
            match (&mut reported, output.usage) {
                (Some(total), Some(usage)) => *total += usage,
                _ => reported = None,
            }
            revised_prompt = revised_prompt.or(output.revised_prompt);
            // A backend that made more than asked delivers only `n`.
            let room = job.n as usize - images.len();
            for image in output.images.into_iter().take(room) {
                // Bytes that already match need only their header read: no trip to the pool.
                if let Some(done) = passes_through(&image, &finish_params, mask.is_some())? {
                    images.push(done);
                    continue;
                }
                let (params, source, mask) = (finish_params.clone(), source.clone(), mask.clone());
                images
                    .push(self.pixels.run(move || finish(image, &params, source.as_deref(), mask.as_deref())).await??);
            }
        }
        // What the backend made where it chose, else what the job resolved.
        let size = match images.first() {
            Some(first) if job.size_auto => first.size,
            _ => job.size,
        };
        let quality = quality.unwrap_or(job.resolved_quality);
        let background = background.unwrap_or_else(|| job.resolved_background());
        let usage = reported.unwrap_or_else(|| {
            usage::estimate(
                &job.prompt,
                job.images.iter().map(|i| i.size),
                size,
                quality,
                images.len() as u32,
                partials_sent,
            )
        });
        Ok(JobOutput { images, usage, revised_prompt, partials_sent, served_by, size, quality, background })
    }

    /// Runs `calls` with bounded concurrency, stopping at the first error or the client's
    /// cancellation.
    async fn call_backend(
        &self,
        backend: &SharedBackend,
        calls: Vec<BackendCall>,
        call_cx: &CallContext,
    ) -> Result<Vec<BackendOutput>, BackendError> {
        let outputs = futures::stream::iter(calls)
            .map(|call| backend.call(call, call_cx.clone()))
            .buffered(self.settings.fan_out.max(1))
            .try_collect::<Vec<_>>();
        tokio::select! {
            () = call_cx.cancel.cancelled() => Err(BackendError::Cancelled),
            outputs = outputs => outputs,
        }
    }

    /// Brings the first image and the mask, decoded once when the job was prepared, to the sizes
    /// each use needs: the delivered size for compositing; the call size, or none, for the
    /// backend, as it takes them.
    async fn decode_sources(
        &self,
        job: &ImageJob,
        call_size: ImageSize,
        takes: PixelInput,
    ) -> Result<Sources, CoreError> {
        let Some(decoded) = job.decoded.clone() else { return Ok(Sources::default()) };
        let size = job.size;
        let resized = self.pixels.run(move || {
            // Shared as they are when already at the size wanted; resized (a new buffer) otherwise.
            let fit = |image: &Arc<image::DynamicImage>, size: ImageSize| -> anyhow::Result<Arc<image::DynamicImage>> {
                if (image.width(), image.height()) == (size.width, size.height) {
                    Ok(Arc::clone(image))
                } else {
                    Ok(Arc::new(imaging::resize_cover(image, size)?))
                }
            };
            let at = |size: ImageSize| -> Result<SourcePixels, CoreError> {
                let image = fit(&decoded.first, size)?;
                let mask = decoded.mask.as_ref().map(|mask| fit(mask, size)).transpose()?;
                Ok(SourcePixels { image, mask })
            };
            let delivered = at(size)?;
            let for_backend = match takes {
                PixelInput::Bytes => None,
                PixelInput::AsSent => {
                    Some(SourcePixels { image: Arc::clone(&decoded.first), mask: decoded.mask.clone() })
                }
                PixelInput::AtCallSize if call_size == size => Some(delivered.clone()),
                PixelInput::AtCallSize => Some(at(call_size)?),
            };
            let for_compositing = delivered.mask.is_some().then_some(delivered);
            Ok::<_, CoreError>(Sources { for_backend, for_compositing })
        });
        resized.await?
    }
}

/// The images `outputs` hold.
fn count_images(outputs: &[BackendOutput]) -> u32 {
    outputs.iter().map(|o| o.images.len() as u32).sum()
}

/// The error for a backend that made too few images even when asked again for the missing ones:
/// a relay's provider failed (502, like any broken provider answer); a local model has a
/// problem no retry by the client fixes at once, so it is unavailable (503) rather than an
/// anonymous 500.
fn too_few(kind: &str, model: &str, got: u32, asked: u32) -> BackendError {
    let what = format!("{got} of the {asked} images asked for, also after being asked again for the missing ones");
    if kind == "local" {
        BackendError::Unavailable { message: format!("The model '{model}' made only {what}."), retry_after: None }
    } else {
        BackendError::Upstream {
            status: None,
            message: format!("The backend of model '{model}' returned only {what}."),
        }
    }
}

/// The decoded sources of one job.
#[derive(Default)]
struct Sources {
    /// At the call size, for backends that take pixels.
    for_backend: Option<SourcePixels>,
    /// At the delivered size, when a mask is composited.
    for_compositing: Option<SourcePixels>,
}

/// Encodes partial images as they arrive and passes them on, at most `limit`; returns how many
/// were sent.
async fn forward_partials(
    mut rx: mpsc::Receiver<PartialImage>,
    out: mpsc::Sender<EncodedPartial>,
    params: Finish,
    limit: u32,
    pixels: PixelPool,
) -> u32 {
    let mut sent = 0;
    while let Some(partial) = rx.recv().await {
        if sent >= limit {
            continue;
        }
        let params = params.clone();
        let encoded = match pixels.run(move || finish_partial(partial.image, &params)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "dropping a partial image that could not be encoded");
                continue;
            }
        };
        if out.send(EncodedPartial { index: sent, bytes: encoded }).await.is_err() {
            break;
        }
        sent += 1;
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_answer_is_a_clear_error_of_the_backends_kind() {
        match too_few("local", "turbo", 1, 3) {
            BackendError::Unavailable { message, retry_after: None } => {
                assert!(message.contains("'turbo'") && message.contains("1 of the 3 images"), "{message}")
            }
            other => panic!("a local model short of images is unavailable, not {other:?}"),
        }
        match too_few("openai", "gpt", 0, 2) {
            BackendError::Upstream { status: None, message } => assert!(message.contains("0 of the 2"), "{message}"),
            other => panic!("a relay short of images is an upstream error, not {other:?}"),
        }
    }
}
