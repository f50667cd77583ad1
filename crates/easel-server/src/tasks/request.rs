//! A validated request as a task keeps it until a worker runs it, possibly on another node after
//! a restart.
//!
//! `ImageRequest` is the core's in-memory type and carries image bytes, so it has no serde shape
//! of its own (its `Options` do, so every option is kept without being listed here): this module
//! gives it one, the values as JSON in the task row, the input images as bytes in the blob store. The
//! images kept are those the job was prepared with (URLs already fetched, data URLs decoded), so
//! the task runs on exactly the inputs that were checked at submit, whatever happens to the URLs
//! meanwhile. The worker turns it back into an `ImageRequest` and prepares it again, which
//! repeats the checks on the same values and yields the same job.

use bytes::Bytes;
use easel_core::job::ImageJob;
use easel_core::request::{ImageRef, ImageRequest, NamedImage, Options};
use easel_core::types::{Operation, Quality, ResponseFormat, SizeRequest};
use serde::{Deserialize, Serialize};

use crate::storage::blobs::Blobs;

/// The request as stored: `request` in the row, the images under [`blob_key`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub operation: Operation,
    /// The model the request resolved to at submit.
    pub model: String,
    pub prompt: Option<String>,
    /// The parameter each input image came from, in order; the bytes are in the blob store.
    pub images: Vec<String>,
    pub mask: Option<String>,
    pub n: Option<i64>,
    /// `auto` or `WxH`.
    pub size: Option<String>,
    pub quality: Option<Quality>,
    pub response_format: Option<ResponseFormat>,
    /// Every pass-through option and extension, as the request carried it.
    pub options: Options,
}

/// Where input image `index` of task `id` lives (the mask comes after the images).
pub fn blob_key(id: &str, index: usize) -> String {
    format!("tasks/{id}/input-{index}")
}

impl StoredRequest {
    /// The request `request`, resolved to `model`, ready to store; its inputs are stored apart
    /// ([`StoredRequest::inputs`]).
    pub fn new(request: &ImageRequest, model: &str) -> Self {
        Self {
            operation: request.operation,
            model: model.to_string(),
            prompt: request.prompt.clone(),
            images: request.images.iter().map(|i| i.param.clone()).collect(),
            mask: request.mask.as_ref().map(|m| m.param.clone()),
            n: request.n,
            size: request.size.map(|s| match s {
                SizeRequest::Auto => "auto".to_string(),
                SizeRequest::Exact(size) => size.to_string(),
            }),
            quality: request.quality,
            response_format: request.response_format,
            options: request.options.clone(),
        }
    }

    /// The input images' bytes, in [`blob_key`] order: the job's images, then its mask.
    pub fn inputs(job: &ImageJob) -> Vec<Bytes> {
        job.images.iter().chain(job.mask.as_ref()).map(|i| i.bytes.clone()).collect()
    }

    /// How many input blobs the task has.
    pub fn input_count(&self) -> usize {
        self.images.len() + usize::from(self.mask.is_some())
    }

    /// The request again, its images read back from `blobs`.
    pub async fn load(&self, id: &str, blobs: &Blobs) -> anyhow::Result<ImageRequest> {
        let mut inputs = Vec::with_capacity(self.input_count());
        for index in 0..self.input_count() {
            let key = blob_key(id, index);
            let bytes = blobs.get(&key).await?.ok_or_else(|| anyhow::anyhow!("the task's input {key} is missing"))?;
            inputs.push(bytes);
        }
        let mut inputs = inputs.into_iter();
        let mut named = |param: &String| NamedImage {
            param: param.clone(),
            source: ImageRef::Inline(inputs.next().unwrap_or_default()),
        };
        let images = self.images.iter().map(&mut named).collect();
        let mask = self.mask.as_ref().map(&mut named);
        let size = match &self.size {
            Some(text) => Some(text.parse::<SizeRequest>().map_err(anyhow::Error::msg)?),
            None => None,
        };
        Ok(ImageRequest {
            operation: self.operation,
            model: Some(self.model.clone()),
            prompt: self.prompt.clone(),
            images,
            mask,
            n: self.n,
            size,
            quality: self.quality,
            response_format: self.response_format,
            stream: false,
            partial_images: None,
            options: self.options.clone(),
            // How errors name parameters: checked at submit already, so the plain names do here.
            ..ImageRequest::new(self.operation)
        })
    }
}

#[cfg(test)]
mod tests {
    use easel_core::request::{DashScopeOptions, Extensions};
    use easel_core::types::{Background, ImageSize, InputFidelity, Moderation, Operation, OutputFormat, Style};

    use super::*;

    /// Every value of a request comes back from the row and the blob store as it was given.
    #[tokio::test]
    async fn a_request_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path()).unwrap();
        let inline = |bytes: &'static [u8], param: &str| NamedImage {
            param: param.into(),
            source: ImageRef::Inline(Bytes::from_static(bytes)),
        };
        let request = ImageRequest {
            model: Some("m".into()),
            prompt: Some("a fox".into()),
            images: vec![inline(b"first", "image[0]"), inline(b"second", "image[1]")],
            mask: Some(inline(b"mask", "mask")),
            n: Some(3),
            size: Some(SizeRequest::Exact(ImageSize::new(64, 96))),
            quality: Some(Quality::High),
            response_format: Some(ResponseFormat::B64Json),
            options: Options {
                style: Some(Style::Vivid),
                background: Background::Transparent,
                output_format: OutputFormat::Webp,
                output_compression: Some(70),
                moderation: Some(Moderation::Low),
                input_fidelity: Some(InputFidelity::High),
                user: Some("u".into()),
                extensions: Extensions {
                    negative_prompt: Some("blur".into()),
                    seed: Some(7),
                    steps: Some(12),
                    guidance_scale: Some(4.5),
                    strength: Some(0.5),
                    dashscope: DashScopeOptions {
                        prompt_extend: Some(false),
                        watermark: Some(true),
                        style: Some("<watercolor>".into()),
                    },
                },
            },
            ..ImageRequest::new(Operation::Edit)
        };
        let stored = StoredRequest::new(&request, "m");
        let json = serde_json::to_string(&stored).unwrap();
        let inputs: Vec<Bytes> = [&b"first"[..], b"second", b"mask"].into_iter().map(Bytes::from_static).collect();
        for (index, bytes) in inputs.into_iter().enumerate() {
            blobs.put(&blob_key("t", index), bytes).await.unwrap();
        }
        let back: StoredRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.input_count(), 3);
        assert_eq!(back.load("t", &blobs).await.unwrap(), request);
    }
}
