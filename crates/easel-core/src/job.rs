//! A request made concrete for one model: every default applied, every image fetched and
//! probed, every value checked against the model's capabilities.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::InputImage;
use crate::registry::Model;
use crate::request::Extensions;
use crate::types::{
    Background, ImageSize, InputFidelity, Moderation, Operation, OutputFormat, Quality, ResponseFormat, Style,
};
use crate::usage::Usage;

#[derive(Debug, Clone)]
pub struct ImageJob {
    pub operation: Operation,
    pub model: Arc<Model>,
    pub prompt: String,
    pub images: Vec<InputImage>,
    pub mask: Option<InputImage>,
    pub n: u32,
    /// The size delivered.
    pub size: ImageSize,
    /// The quality asked for (`auto` kept, so backends can choose).
    pub quality: Quality,
    /// The quality reported back (`auto` resolved).
    pub resolved_quality: Quality,
    pub style: Option<Style>,
    pub background: Background,
    pub output_format: OutputFormat,
    pub output_compression: Option<u8>,
    pub moderation: Option<Moderation>,
    pub input_fidelity: Option<InputFidelity>,
    pub response_format: ResponseFormat,
    pub stream: bool,
    /// Partial images wanted (0 unless streaming).
    pub partial_images: u8,
    pub user: Option<String>,
    pub extensions: Extensions,
}

impl ImageJob {
    /// The background reported back: `transparent` only when asked for and possible.
    pub fn resolved_background(&self) -> Background {
        match self.background {
            Background::Transparent => Background::Transparent,
            Background::Auto | Background::Opaque => Background::Opaque,
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

/// A partial image ready to send: encoded in the job's output format.
#[derive(Debug, Clone)]
pub struct EncodedPartial {
    pub index: u32,
    pub bytes: Bytes,
}

/// A delivered image.
#[derive(Debug, Clone)]
pub struct FinalImage {
    pub bytes: Bytes,
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
}
