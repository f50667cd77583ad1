//! A deterministic backend for tests, and only for tests: it paints each image one colour derived
//! from the prompt, the seed and the image's index, so tests can tell images apart and check what
//! the core did around the backend. It records every call it receives.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use easel_core::backend::{
    BackendCall, BackendOutput, CallContext, Capabilities, ImageBackend, OutputImage, PartialImage, PixelInput,
    SizeRule,
};
use easel_core::error::BackendError;
use easel_core::types::{ImageSize, Operation, OutputFormat, Quality};
use image::{DynamicImage, Rgb, RgbImage, Rgba, RgbaImage};

#[derive(Debug)]
pub struct TestBackend {
    pub caps: Capabilities,
    /// Return encoded PNG bytes instead of pixels (as upstream providers do).
    pub encoded: bool,
    pub delay: Duration,
    pub fail_with: Mutex<Option<BackendError>>,
    pub calls: AtomicUsize,
    pub last_call: Mutex<Option<BackendCall>>,
    /// Images each call leaves out, one entry per call in order (then none): a backend that
    /// answers short.
    pub short_by: Mutex<std::collections::VecDeque<u32>>,
    /// `readiness()` panics (a bug in a handler's path, for the catch-panic test).
    pub panic_on_readiness: std::sync::atomic::AtomicBool,
}

pub fn capabilities() -> Capabilities {
    Capabilities {
        operations: vec![Operation::Generate, Operation::Edit, Operation::Variation],
        sizes: SizeRule::Range {
            multiple_of: 8,
            min_edge: 8,
            max_edge: 2048,
            min_pixels: 64,
            max_pixels: 4_194_304,
            max_aspect: 8.0,
        },
        native_sizes: None,
        default_size: ImageSize::new(64, 64),
        picks_size: false,
        max_n: 10,
        max_n_per_call: 2,
        max_input_images: 16,
        native_masks: false,
        transparency: true,
        qualities: Quality::ALL.to_vec(),
        default_quality: Quality::Medium,
        partial_images: true,
        max_prompt_chars: 32_000,
        extensions: Default::default(),
        pixels: PixelInput::Bytes,
    }
}

impl TestBackend {
    pub fn new(caps: Capabilities) -> Self {
        Self {
            caps,
            encoded: false,
            delay: Duration::ZERO,
            fail_with: Mutex::new(None),
            calls: AtomicUsize::new(0),
            last_call: Mutex::new(None),
            short_by: Mutex::default(),
            panic_on_readiness: Default::default(),
        }
    }
}

/// The colour the test backend paints image `index` of a call.
pub fn colour(prompt: &str, seed: Option<u64>, index: u32) -> Rgb<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes().chain(seed.unwrap_or(0).to_le_bytes()).chain(index.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Rgb([(h >> 8) as u8, (h >> 24) as u8, (h >> 40) as u8])
}

#[async_trait]
impl ImageBackend for TestBackend {
    fn kind(&self) -> &'static str {
        "test"
    }

    async fn readiness(&self) -> Result<(), String> {
        assert!(!self.panic_on_readiness.load(Ordering::SeqCst), "the test backend was told to panic");
        Ok(())
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn call(&self, call: BackendCall, cx: CallContext) -> Result<BackendOutput, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_call.lock().unwrap() = Some(call.clone());
        if let Some(error) = self.fail_with.lock().unwrap().take() {
            return Err(error);
        }
        if let Some(partials) = &cx.partials {
            for index in 0..u32::from(call.partial_images) {
                let preview = RgbImage::from_pixel(8, 8, Rgb([index as u8 * 40, 0, 0]));
                let _ = partials
                    .send(PartialImage { index, image: OutputImage::Pixels(DynamicImage::ImageRgb8(preview)) })
                    .await;
            }
        }
        tokio::select! {
            () = cx.cancel.cancelled() => return Err(BackendError::Cancelled),
            () = tokio::time::sleep(self.delay) => {}
        }
        let short = self.short_by.lock().unwrap().pop_front().unwrap_or(0);
        let images = (0..call.n.saturating_sub(short))
            .map(|i| {
                let c = colour(&call.prompt, call.options.extensions.seed, i);
                let size = call.size;
                let pixels = if call.options.background == easel_core::types::Background::Transparent {
                    DynamicImage::ImageRgba8(RgbaImage::from_pixel(
                        size.width,
                        size.height,
                        Rgba([c[0], c[1], c[2], 0]),
                    ))
                } else {
                    DynamicImage::ImageRgb8(RgbImage::from_pixel(size.width, size.height, c))
                };
                if self.encoded {
                    let bytes =
                        easel_core::imaging::encode(&pixels, OutputFormat::Png, None, &Default::default()).unwrap();
                    OutputImage::Encoded { bytes: bytes.into(), format: OutputFormat::Png }
                } else {
                    OutputImage::Pixels(pixels)
                }
            })
            .collect();
        Ok(BackendOutput { images, ..BackendOutput::default() })
    }
}
