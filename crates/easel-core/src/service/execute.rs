//! Running a job: fan-out over backend calls, partial images, post-processing, usage.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use image::DynamicImage;
use tokio::sync::mpsc;

use crate::backend::{BackendCall, CallContext, PartialImage};
use crate::error::{BackendError, CoreError};
use crate::imaging;
use crate::job::{EncodedPartial, ImageJob, JobContext, JobOutput};
use crate::usage::{self, Usage};

use super::postprocess::{Finish, finish, finish_partial};
use super::{ImageService, blocking};

impl ImageService {
    pub async fn run(&self, job: &ImageJob, cx: JobContext) -> Result<JobOutput, CoreError> {
        let backend = Arc::clone(&job.model.backend);
        let caps = backend.capabilities();
        let call_size = match &caps.native_sizes {
            Some(native) if native.check(job.size).is_err() => native.nearest(job.size),
            _ => job.size,
        };

        let per_call = caps.max_n_per_call.max(1);
        let mut calls = Vec::new();
        let mut planned = 0;
        while planned < job.n {
            let n = per_call.min(job.n - planned);
            calls.push(self.call_for(job, n, planned, call_size, caps.native_masks));
            planned += n;
        }

        let (partial_tx, forwarder) = match (&cx.partials, job.partial_images, caps.partial_images) {
            (Some(out), wanted @ 1.., true) => {
                let (tx, rx) = mpsc::channel(4);
                let forward =
                    forward_partials(rx, out.clone(), Finish::for_job(job, &self.settings), u32::from(wanted));
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

        let (source, mask) = self.decode_mask_inputs(job).await?;
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
                images.push(blocking(move || finish(image, &params, source.as_deref(), mask.as_deref())).await??);
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

    fn call_for(
        &self,
        job: &ImageJob,
        n: u32,
        offset: u32,
        size: crate::types::ImageSize,
        native_masks: bool,
    ) -> BackendCall {
        let mut extensions = job.extensions.clone();
        extensions.seed = extensions.seed.map(|seed| seed.wrapping_add(u64::from(offset)));
        BackendCall {
            operation: job.operation,
            model: job.model.id.clone(),
            prompt: job.prompt.clone(),
            images: job.images.clone(),
            mask: if native_masks { job.mask.clone() } else { None },
            n,
            size,
            quality: job.quality,
            style: job.style,
            background: job.background,
            output_format: job.output_format,
            output_compression: job.output_compression,
            moderation: job.moderation,
            input_fidelity: job.input_fidelity,
            partial_images: job.partial_images,
            user: job.user.clone(),
            extensions,
        }
    }

    /// The first image and the mask, decoded and brought to the delivered size once per job,
    /// when a mask must be composited.
    async fn decode_mask_inputs(
        &self,
        job: &ImageJob,
    ) -> Result<(Option<Arc<DynamicImage>>, Option<Arc<DynamicImage>>), CoreError> {
        let (Some(mask), Some(first)) = (&job.mask, job.images.first()) else {
            return Ok((None, None));
        };
        let (mask_bytes, first_bytes) = (mask.bytes.clone(), first.bytes.clone());
        let (max, size) = (self.settings.max_input_pixels, job.size);
        let (mask, first) =
            blocking(move || (imaging::decode(&mask_bytes, max), imaging::decode(&first_bytes, max))).await?;
        let first = first.map_err(|e| {
            CoreError::invalid_image(Some("image".into()), format!("Invalid image file or mode for image 1: {e}."))
        })?;
        let mask = mask.map_err(|e| CoreError::invalid_image(Some("mask".into()), format!("Invalid mask: {e}.")))?;
        let resized = blocking(move || -> anyhow::Result<_> {
            Ok((imaging::resize_cover(&first, size)?, imaging::resize_cover(&mask, size)?))
        });
        let (first, mask) = resized.await??;
        Ok((Some(Arc::new(first)), Some(Arc::new(mask))))
    }
}

/// Encodes partial images as they arrive and passes them on, at most `limit`; returns how many
/// were sent.
async fn forward_partials(
    mut rx: mpsc::Receiver<PartialImage>,
    out: mpsc::Sender<EncodedPartial>,
    params: Finish,
    limit: u32,
) -> u32 {
    let mut sent = 0;
    while let Some(partial) = rx.recv().await {
        if sent >= limit {
            continue;
        }
        let params = params.clone();
        let encoded = match blocking(move || finish_partial(partial.image, &params)).await {
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
