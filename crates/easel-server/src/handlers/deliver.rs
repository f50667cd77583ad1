//! Delivering a finished job and writing the ledger.
//!
//! Hosted images (`response_format=url`) are put in the blob store first, then the usage row and
//! the image rows are written in one transaction; if that fails the blobs just written are
//! deleted, so no image outlives the record of it. Base64 that a relayed upstream sent and that
//! passed through unchanged is delivered as that same text (decoded only to host it). Failures after the model is known are recorded
//! too, with their error code as the outcome.

use std::time::Instant;

use easel_core::job::{ImageJob, JobOutput};
use easel_core::registry::Model;
use easel_core::types::{Operation, ResponseFormat};
use easel_core::usage::Usage;
use easel_wire::response::{ImageData, ImagesResponse, UsageBody};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Code};
use crate::state::AppState;
use crate::storage::blobs::Blobs;
use crate::storage::now;
use crate::storage::records::{ImageRecord, UsageRecord};

/// The accounting context of one request.
#[derive(Debug, Clone)]
pub struct Ledger {
    state: AppState,
    key_id: Option<String>,
    operation: Operation,
    model: (String, &'static str),
    end_user: Option<String>,
    started: Instant,
    /// The usage row's id when it is fixed in advance ([`Ledger::once_as`]); a new one otherwise.
    usage_id: Option<uuid::Uuid>,
}

impl Ledger {
    pub fn new(
        state: &AppState,
        caller: &Caller,
        operation: Operation,
        model: &Model,
        end_user: Option<String>,
        started: Instant,
    ) -> Self {
        Self {
            state: state.clone(),
            key_id: caller.key_id(),
            operation,
            model: (model.id.clone(), model.backend.kind()),
            end_user,
            started,
            usage_id: None,
        }
    }

    /// Records this work's usage under `id`, at most once: a second delivery of the same work
    /// (a task run again after its worker died between delivering and recording the task's end)
    /// adds no second usage row.
    pub fn once_as(mut self, id: uuid::Uuid) -> Self {
        self.usage_id = Some(id);
        self
    }

    /// `served_by` (what made the images, when the backend said: an upstream fallback target)
    /// is recorded as the backend instead of the model's kind.
    fn usage_record(
        &self,
        outcome: String,
        status: u16,
        job: Option<(&ImageJob, &JobOutput)>,
        usage: Usage,
        served_by: Option<&str>,
    ) -> UsageRecord {
        let (model, backend) = self.model.clone();
        UsageRecord {
            id: self.usage_id.unwrap_or_else(uuid::Uuid::now_v7),
            once: self.usage_id.is_some(),
            key_id: self.key_id.clone(),
            model,
            backend: served_by.unwrap_or(backend).to_string(),
            operation: self.operation.as_str().to_string(),
            outcome,
            status,
            size: job.map(|(_, o)| o.size.to_string()),
            quality: job.map(|(_, o)| o.quality.to_string()),
            output_format: job.map(|(j, _)| j.output_format().to_string()),
            usage,
            latency_ms: self.started.elapsed().as_millis() as i64,
            end_user: self.end_user.clone(),
            created_at: now(),
        }
    }

    /// The request metrics: one request with its outcome, its latency, the images delivered.
    fn observe(&self, outcome: &str, images: usize) {
        let (model, operation) = (self.model.0.clone(), self.operation.as_str());
        metrics::counter!("easel_image_requests_total", "model" => model.clone(), "operation" => operation, "outcome" => outcome.to_string())
            .increment(1);
        metrics::histogram!("easel_image_request_duration_seconds", "model" => model.clone(), "operation" => operation)
            .record(self.started.elapsed().as_secs_f64());
        if images > 0 {
            metrics::counter!("easel_images_total", "model" => model, "operation" => operation)
                .increment(images as u64);
        }
    }

    /// Records a failed request (best effort) and hands the error back.
    pub async fn failed(&self, error: ApiError) -> ApiError {
        let parts = error.parts();
        let outcome = parts.code.map_or(parts.kind, Code::as_str).to_string();
        self.observe(&outcome, 0);
        let record = self.usage_record(outcome, parts.status.as_u16(), None, Usage::default(), None);
        if let Err(e) = self.state.writer.record(&record, &[]).await {
            tracing::warn!(error = %e, "could not record a failed request");
        }
        error
    }

    /// Hosts or inlines the images, records usage and images, and builds the response.
    /// `always_b64` keeps base64 beside URLs (stream events require it).
    pub async fn deliver(&self, job: &ImageJob, output: JobOutput) -> ApiResult<ImagesResponse> {
        self.deliver_with(job, output, false).await
    }

    pub async fn deliver_with(&self, job: &ImageJob, output: JobOutput, always_b64: bool) -> ApiResult<ImagesResponse> {
        let hosted = job.response_format == ResponseFormat::Url;
        let created = now();
        let expires = created + self.state.url_ttl_secs;
        let mut data = Vec::with_capacity(output.images.len());
        let mut images = Vec::with_capacity(output.images.len());
        let mut written = Vec::new();
        for image in &output.images {
            let id = uuid::Uuid::now_v7();
            let name = format!("{id}.{}", image.format.extension());
            let mut entry = ImageData { revised_prompt: output.revised_prompt.clone(), ..ImageData::default() };
            let blob_key = if hosted {
                let key = Blobs::key_for(&id, image.format.extension(), created);
                let stored = match image.bytes.raw() {
                    Ok(raw) => self.state.blobs.put(&key, raw).await,
                    Err(e) => Err(anyhow::Error::new(e)),
                };
                if let Err(e) = stored {
                    cleanup(&self.state.blobs, &written).await;
                    return Err(self.failed(ApiError::Internal(e.context("storing a hosted image"))).await);
                }
                written.push(key.clone());
                entry.url = Some(self.hosted_url(&name, expires));
                Some(key)
            } else {
                None
            };
            if !hosted || always_b64 {
                // The backend's own text when it passed through unchanged; encoded otherwise.
                entry.b64_json = Some(image.bytes.base64());
            }
            data.push(entry);
            images.push(ImageRecord {
                id,
                width: image.size.width,
                height: image.size.height,
                format: image.format.to_string(),
                bytes: image.bytes.len(),
                blob_key,
                expires_at: hosted.then_some(expires),
            });
        }
        let record =
            self.usage_record("ok".into(), 200, Some((job, &output)), output.usage, output.served_by.as_deref());
        if let Err(e) = self.state.writer.record(&record, &images).await {
            cleanup(&self.state.blobs, &written).await;
            self.observe("server_error", 0);
            return Err(ApiError::Internal(e.context("recording usage")));
        }
        self.observe("ok", images.len());
        Ok(ImagesResponse {
            created,
            data,
            background: Some(output.background),
            output_format: Some(job.output_format()),
            quality: Some(output.quality),
            size: Some(output.size.to_string()),
            usage: Some(UsageBody::from_usage(&output.usage, true)),
        })
    }

    fn hosted_url(&self, name: &str, expires: i64) -> String {
        let signature = self.state.signer.sign(name, expires);
        let mut url = self.state.public_url.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/v1/images/files/{name}"));
        url.set_query(Some(&format!("expires={expires}&signature={signature}")));
        url.to_string()
    }
}

async fn cleanup(blobs: &Blobs, keys: &[String]) {
    for key in keys {
        if let Err(e) = blobs.delete(key).await {
            tracing::warn!(error = %e, key, "could not delete a blob left by a failed request");
        }
    }
}
