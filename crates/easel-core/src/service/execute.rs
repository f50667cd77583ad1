//! Running a job: fan-out over backend calls, partial images, post-processing, usage.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::backend::{CallContext, PartialImage, SourcePixels};
use crate::error::{BackendError, CoreError};
use crate::imaging;
use crate::job::{EncodedPartial, ImageJob, JobContext, JobOutput};
use crate::types::ImageSize;
use crate::usage::{self, Usage};

use super::postprocess::{Finish, finish, finish_partial};
use super::{ImageService, PixelPool};

impl ImageService {
    pub async fn run(&self, job: &ImageJob, cx: JobContext) -> Result<JobOutput, CoreError> {
        let backend = Arc::clone(&job.model.backend);
        let caps = backend.capabilities();
        let call_size = match &caps.native_sizes {
            Some(native) if native.check(job.size).is_err() => native.nearest(job.size),
            _ => job.size,
        };

        // Decoded once per job, before anything is spent: the first image and the mask at the
        // delivered size for compositing, and at the call size for backends that take pixels.
        let sources = self.decode_sources(job, call_size, caps.takes_pixels).await?;
        let per_call = caps.max_n_per_call.max(1);
        let mut calls = Vec::new();
        let mut planned = 0;
        while planned < job.n {
            let n = per_call.min(job.n - planned);
            calls.push(job.call(n, planned, call_size, sources.for_backend.clone()));
            planned += n;
        }

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
        let outputs = futures::stream::iter(calls)
            .map(|call| backend.call(call, call_cx.clone()))
            .buffered(self.settings.fan_out.max(1))
            .try_collect::<Vec<_>>();
        let outputs = tokio::select! {
            () = cx.cancel.cancelled() => Err(BackendError::Cancelled),
            outputs = outputs => outputs,
        };
        drop(call_cx);
        let partials_sent = match forwarder {
            Some(handle) => handle.await.unwrap_or(0),
            None => 0,
        };
        let outputs = outputs?;

        let (source, mask) = sources.for_compositing.map_or((None, None), |p| (Some(p.image), p.mask));
        let finish_params = Finish::for_job(job, &self.settings);
        let mut images = Vec::with_capacity(job.n as usize);
        let mut reported = Some(Usage::default());
        let mut revised_prompt = None;
        for output in outputs {
            match (&mut reported, output.usage) {
                (Some(total), Some(usage)) => *total += usage,
                _ => reported = None,
            }
            revised_prompt = revised_prompt.or(output.revised_prompt);
            for image in output.images {
                let (params, source, mask) = (finish_params.clone(), source.clone(), mask.clone());
                images
                    .push(self.pixels.run(move || finish(image, &params, source.as_deref(), mask.as_deref())).await??);
            }
        }
        if images.is_empty() {
            return Err(
                BackendError::Upstream { status: None, message: "The backend returned no images.".into() }.into()
            );
        }
        if images.len() < job.n as usize {
            tracing::warn!(model = %job.model.id, asked = job.n, got = images.len(), "backend returned fewer images than asked for");
        }

        let usage = reported.unwrap_or_else(|| {
            usage::estimate(
                &job.prompt,
                job.images.iter().map(|i| i.size),
                job.size,
                job.resolved_quality,
                images.len() as u32,
                partials_sent,
            )
        });
        Ok(JobOutput { images, usage, revised_prompt, partials_sent })
    }

    /// Brings the first image and the mask, decoded once when the job was prepared, to the sizes
    /// each use needs: the delivered size for compositing, the call size for backends that take
    /// pixels.
    async fn decode_sources(
        &self,
        job: &ImageJob,
        call_size: ImageSize,
        takes_pixels: bool,
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
            let for_backend = match (takes_pixels, call_size == size) {
                (false, _) => None,
                (true, true) => Some(delivered.clone()),
                (true, false) => Some(at(call_size)?),
            };
            let for_compositing = delivered.mask.is_some().then_some(delivered);
            Ok::<_, CoreError>(Sources { for_backend, for_compositing })
        });
        resized.await?
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
