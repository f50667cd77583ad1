//! The seam between the core and whatever makes pixels.
//!
//! A backend (local diffusion on candle, an upstream provider, another Easel node) implements
//! [`ImageBackend`] and declares [`Capabilities`]: what it can be asked for and what it does
//! natively. The [`crate::service`] validates requests against the first and fills the gaps of
//! the second (n fan-out, resizing, transcoding, mask compositing), so a backend only ever sees a
//! [`BackendCall`] it can serve as it is.
//!
//! Dispatch is through `Arc<dyn ImageBackend>` (with `async_trait`): the set of backends is open
//! (tests add their own), and one virtual call per image costs nothing next to generating it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use image::DynamicImage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::base64::ImageBytes;
use crate::error::BackendError;
use crate::range::{FloatRange, IntRange};
use crate::request::Options;
use crate::types::{Background, ImageSize, InputFormat, Operation, OutputFormat, Quality};
use crate::usage::Usage;

/// Which sizes a backend can make.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeRule {
    /// Exactly these sizes.
    Fixed(Vec<ImageSize>),
    /// Any size within bounds: both edges multiples of `multiple_of` in `min_edge..=max_edge`,
    /// the pixel count in `min_pixels..=max_pixels`, and long edge / short edge at most
    /// `max_aspect`.
    Range { multiple_of: u32, min_edge: u32, max_edge: u32, min_pixels: u64, max_pixels: u64, max_aspect: f64 },
}

impl SizeRule {
    /// Exactly the sizes in `list`, as `(width, height)` pairs.
    pub fn fixed(list: &[(u32, u32)]) -> Self {
        Self::Fixed(list.iter().map(|&(w, h)| ImageSize::new(w, h)).collect())
    }

    /// What clients may ask of a service that makes only a few sizes: any reasonable size
    /// (multiples of 8, 256 to 2048 pixels an edge, up to 4:1), made at the nearest native size
    /// and resized by the core.
    pub fn broad() -> Self {
        Self::Range {
            multiple_of: 8,
            min_edge: 256,
            max_edge: 2048,
            min_pixels: 256 * 256,
            max_pixels: 2048 * 2048,
            max_aspect: 4.0,
        }
    }

    /// Any size at all: for backends that check sizes themselves (another Easel node).
    pub fn any() -> Self {
        Self::Range {
            multiple_of: 1,
            min_edge: 1,
            max_edge: u32::MAX,
            min_pixels: 1,
            max_pixels: u64::MAX,
            max_aspect: f64::INFINITY,
        }
    }

    /// gpt-image-2's rule: multiples of 16, 655,360 to 8,294,400 pixels, edges up to 3840, 3:1.
    pub fn gpt_image_2() -> Self {
        Self::Range {
            multiple_of: 16,
            min_edge: 16,
            max_edge: 3840,
            min_pixels: 655_360,
            max_pixels: 8_294_400,
            max_aspect: 3.0,
        }
    }

    /// Whether `size` can be made (no message is built: for callers that only branch on it).
    pub fn allows(&self, size: ImageSize) -> bool {
        self.problem(size).is_none()
    }

    /// Whether `size` can be made, and if not, a message saying what can: over a range's bounds,
    /// the largest size of about the same shape.
    pub fn check(&self, size: ImageSize) -> Result<(), String> {
        let Some(problem) = self.problem(size) else { return Ok(()) };
        let problem = problem.message(size);
        match self.largest_like(size) {
            Some(largest) => Err(format!("{problem} The largest size of this shape is {largest}.")),
            None => Err(problem),
        }
    }

    /// What is wrong with `size`, if anything.
    fn problem(&self, size: ImageSize) -> Option<SizeProblem<'_>> {
        match self {
            Self::Fixed(sizes) if sizes.contains(&size) => None,
            Self::Fixed(sizes) => Some(SizeProblem::NotListed(sizes)),
            &Self::Range { multiple_of, min_edge, max_edge, min_pixels, max_pixels, max_aspect } => {
                let (w, h) = (size.width, size.height);
                let aspect = f64::from(w.max(h)) / f64::from(w.min(h));
                if w % multiple_of != 0 || h % multiple_of != 0 {
                    Some(SizeProblem::NotMultiple(multiple_of))
                } else if w.min(h) < min_edge || w.max(h) > max_edge {
                    Some(SizeProblem::Edge(min_edge, max_edge))
                } else if size.pixels() < min_pixels || size.pixels() > max_pixels {
                    Some(SizeProblem::Pixels(min_pixels, max_pixels))
                } else if aspect > max_aspect + 1e-9 {
                    Some(SizeProblem::Aspect(max_aspect))
                } else {
                    None
                }
            }
        }
    }

    /// For a size larger than a range allows, the biggest allowed size of about its aspect ratio.
    fn largest_like(&self, size: ImageSize) -> Option<ImageSize> {
        let Self::Range { multiple_of, .. } = *self else { return None };
        let mut largest = self.nearest(size);
        if largest.pixels() >= size.pixels() {
            return None;
        }
        // `nearest` rounds to the grid, which may overshoot a bound by a step: shrink until it fits.
        while !self.allows(largest) && largest.width.min(largest.height) > multiple_of {
            let shrink = |e: u32| e.saturating_sub(multiple_of).max(multiple_of);
            largest = ImageSize::new(shrink(largest.width), shrink(largest.height));
        }
        self.allows(largest).then_some(largest)
    }

    /// The makeable size closest to `want`: same aspect ratio first, then area.
    pub fn nearest(&self, want: ImageSize) -> ImageSize {
        match self {
            Self::Fixed(sizes) => {
                let ratio = (f64::from(want.width) / f64::from(want.height)).ln();
                let area = (want.pixels() as f64).ln();
                *sizes
                    .iter()
                    .min_by(|a, b| {
                        let score = |s: &ImageSize| {
                            let r = (f64::from(s.width) / f64::from(s.height)).ln();
                            (r - ratio).abs() * 4.0 + ((s.pixels() as f64).ln() - area).abs()
                        };
                        score(a).total_cmp(&score(b))
                    })
                    .unwrap_or(&want)
            }
            &Self::Range { multiple_of, min_edge, max_edge, min_pixels, max_pixels, max_aspect } => {
                let m = f64::from(multiple_of);
                let (mut w, mut h) = (f64::from(want.width), f64::from(want.height));
                let aspect = (w / h).clamp(1.0 / max_aspect, max_aspect);
                let area = (w * h).clamp(min_pixels as f64, max_pixels as f64);
                h = (area / aspect).sqrt();
                w = h * aspect;
                let scale = (f64::from(max_edge) / w.max(h)).min(1.0);
                let snap = |v: f64| {
                    ((v * scale / m).round() * m).clamp(f64::from(min_edge.max(multiple_of)), f64::from(max_edge))
                };
                ImageSize::new(snap(w) as u32, snap(h) as u32)
            }
        }
    }
}

/// Why a [`SizeRule`] refuses a size; the message is written only when it is needed.
enum SizeProblem<'a> {
    NotListed(&'a [ImageSize]),
    NotMultiple(u32),
    Edge(u32, u32),
    Pixels(u64, u64),
    Aspect(f64),
}

impl SizeProblem<'_> {
    fn message(&self, size: ImageSize) -> String {
        match *self {
            Self::NotListed(sizes) => {
                let names: Vec<String> = sizes.iter().map(ToString::to_string).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                format!("Invalid value: '{size}'. Supported values are: {}.", crate::types::quote_list(&names))
            }
            Self::NotMultiple(multiple_of) => {
                format!("Invalid size '{size}': width and height must be multiples of {multiple_of}.")
            }
            Self::Edge(min_edge, max_edge) => {
                format!("Invalid size '{size}': each edge must be between {min_edge} and {max_edge} pixels.")
            }
            Self::Pixels(min_pixels, max_pixels) => {
                format!("Invalid size '{size}': the image must have between {min_pixels} and {max_pixels} pixels.")
            }
            Self::Aspect(max_aspect) => {
                format!("Invalid size '{size}': the long edge may be at most {max_aspect} times the short edge.")
            }
        }
    }
}

/// What a backend can be asked for, and what it does natively.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Operations it serves.
    pub operations: Vec<Operation>,
    /// Sizes a client may request. The core resizes when `native_sizes` is narrower.
    pub sizes: SizeRule,
    /// Sizes the backend itself makes, where narrower than `sizes`: the core asks for the nearest
    /// and resizes (cover and centre crop) to the requested size.
    pub native_sizes: Option<SizeRule>,
    /// The size for `size=auto` (or no size) on generations.
    pub default_size: ImageSize,
    /// Whether the backend picks the size itself for `size=auto` (GPT image picks the
    /// orientation): the call then carries `auto` ([`BackendCall::size_auto`]), `default_size`
    /// is only the estimate checks and token counts use, and the size it made is delivered and
    /// reported as it is, never resized to a guess.
    pub picks_size: bool,
    /// The most images a client may ask for in one request.
    pub max_n: u32,
    /// The most images one backend call makes; the core fans out the rest.
    pub max_n_per_call: u32,
    /// The most input images an edit may carry (0 when edits are not served).
    pub max_input_images: usize,
    /// Whether the backend uses a mask itself. The core composites the source back over opaque
    /// mask pixels in every case; without native support the mask is not sent.
    pub native_masks: bool,
    /// Whether the backend can make transparent backgrounds.
    pub transparency: bool,
    /// Accepted `quality` values.
    pub qualities: Vec<Quality>,
    /// What `auto` means: the quality the backend uses for it (reported back, and what token
    /// estimates count), or `Auto` itself when the backend picks for itself (GPT image): the
    /// call then carries `auto` and the response reports `auto`, never a guess.
    pub default_quality: Quality,
    /// Whether the backend sends partial images while it works.
    pub partial_images: bool,
    /// Longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// The ranges of the open-model extensions this model accepts.
    pub extensions: ExtensionRanges,
    /// Whether and how the backend takes the first input image and the mask as pixels
    /// ([`BackendCall::pixels`]).
    pub pixels: PixelInput,
}

impl Capabilities {
    pub fn supports(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }
}

/// Whether and how a backend takes the first input image and the mask as pixels. The core
/// decodes them once per job, before anything is spent, and hands them over as said here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelInput {
    /// Not at all: the backend relays the encoded bytes, and never pays for a decode.
    Bytes,
    /// Brought to the call size (cover, then centre crop): img2img and inpainting work on the
    /// output's canvas.
    AtCallSize,
    /// As sent, whole: the backend conditions on the image at its own geometry (Qwen-Image-Edit
    /// brings it to its condition area, keeping its aspect), so a crop to the output's aspect
    /// would lose what the client sent, and a resize to the call size would resample it twice.
    AsSent,
}

impl PixelInput {
    pub fn wanted(self) -> bool {
        self != Self::Bytes
    }
}

/// The values a model accepts for Easel's open-model extensions; the core checks requests
/// against them once, naming the parameter. `seed` and `negative_prompt` have no range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtensionRanges {
    pub steps: IntRange,
    pub guidance_scale: FloatRange,
    pub strength: FloatRange,
}

impl Default for ExtensionRanges {
    /// The widest Easel accepts, for backends that pass the values on (upstream services that
    /// document their own limits narrow them).
    fn default() -> Self {
        Self {
            steps: IntRange::new(1, 500),
            guidance_scale: FloatRange::new(0.0, 50.0),
            strength: FloatRange::new(0.0, 1.0),
        }
    }
}

/// An input image whose format, size and channels are known from its header, read once when the
/// request was prepared.
#[derive(Clone)]
pub struct InputImage {
    pub bytes: Bytes,
    pub format: InputFormat,
    pub size: ImageSize,
    pub has_alpha: bool,
}

impl std::fmt::Debug for InputImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InputImage({:?} {} {} bytes)", self.format, self.size, self.bytes.len())
    }
}

/// The first input image and the mask as pixels, decoded once per job, for backends that take
/// them ([`Capabilities::pixels`]: at the call size, or as sent).
#[derive(Debug, Clone)]
pub struct SourcePixels {
    pub image: Arc<DynamicImage>,
    /// OpenAI's convention: fully transparent pixels mark the area to edit.
    pub mask: Option<Arc<DynamicImage>>,
}

/// One call to a backend: everything already validated and resolved. Built by the core with
/// [`crate::job::ImageJob::call`]; tests build them with `easel_core::testing::CallBuilder`.
#[derive(Debug, Clone)]
pub struct BackendCall {
    pub operation: Operation,
    /// The model id the client used (the registry key).
    pub model: String,
    pub prompt: String,
    /// The input images as encoded bytes, for backends that relay them.
    pub images: Vec<InputImage>,
    /// Present only when the backend declares `native_masks`.
    pub mask: Option<InputImage>,
    /// Present only when the backend takes pixels ([`Capabilities::pixels`]) and the request
    /// has an image.
    pub pixels: Option<SourcePixels>,
    /// Images to make, at most `max_n_per_call`.
    pub n: u32,
    /// A size from the backend's native rule.
    pub size: ImageSize,
    /// The client left the size to a backend that picks it ([`Capabilities::picks_size`]): ask
    /// for `auto`; `size` is only the estimate.
    pub size_auto: bool,
    pub quality: Quality,
    /// Partial images wanted while streaming (0 when not streaming).
    pub partial_images: u8,
    /// Everything else the client asked for, unchanged; `options.extensions.seed` is already
    /// offset for this call when the core fans out.
    pub options: Options,
}

/// An image a backend made.
pub enum OutputImage {
    Pixels(DynamicImage),
    /// Encoded bytes (raw, or base64 text as a relay received it), already checked to start like
    /// an image of `format`.
    Encoded {
        bytes: ImageBytes,
        format: OutputFormat,
    },
}

impl std::fmt::Debug for OutputImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pixels(p) => write!(f, "Pixels({}x{})", p.width(), p.height()),
            Self::Encoded { bytes, format } => {
                write!(f, "Encoded({format}, {bytes:?})")
            }
        }
    }
}

/// What one backend call returns.
#[derive(Debug, Default)]
pub struct BackendOutput {
    pub images: Vec<OutputImage>,
    /// The prompt actually used, when the backend rewrote it.
    pub revised_prompt: Option<String>,
    /// Usage as the backend reports it; the core computes it when absent.
    pub usage: Option<Usage>,
    /// What actually made the images, for the usage ledger, when a backend can say more than its
    /// [`ImageBackend::kind`]: an upstream router names the target that answered
    /// (`kind:provider/model`), which is not its primary when it fell back.
    pub served_by: Option<String>,
    /// The quality the backend says it used, where it chose (a provider answering
    /// `quality=auto`): reported back instead of the one the core resolved.
    pub quality: Option<Quality>,
    /// Likewise the background it says it made (`background=auto`).
    pub background: Option<Background>,
}

/// An intermediate render sent while streaming.
#[derive(Debug)]
pub struct PartialImage {
    /// 0-based, per call.
    pub index: u32,
    pub image: OutputImage,
}

/// Per-call context: cancellation and where partial images go.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Cancelled when the client goes away; long loops check it between steps.
    pub cancel: CancellationToken,
    /// Present when the client streams with `partial_images > 0`.
    pub partials: Option<mpsc::Sender<PartialImage>>,
}

impl CallContext {
    pub fn new(cancel: CancellationToken) -> Self {
        Self { cancel, partials: None }
    }
}

#[async_trait]
pub trait ImageBackend: Send + Sync + std::fmt::Debug {
    /// A short name for logs and usage rows: `local`, `openai`, `dashscope`, `easel`.
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> &Capabilities;

    /// Whether the backend can serve now; the error says why not (for `/readyz`).
    async fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    async fn call(&self, call: BackendCall, cx: CallContext) -> Result<BackendOutput, BackendError>;

    /// Whether the model's weights are random (made by `easel models create-random` for tests
    /// and benchmarks): it makes noise, not pictures, and `GET /v1/models` says so.
    fn random_weights(&self) -> bool {
        false
    }
}

pub type SharedBackend = Arc<dyn ImageBackend>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_image_2_sizes() {
        let rule = SizeRule::gpt_image_2();
        assert!(rule.check(ImageSize::new(1280, 720)).is_ok());
        assert!(rule.check(ImageSize::new(3840, 2160)).is_ok());
        assert!(rule.check(ImageSize::new(1000, 1000)).unwrap_err().contains("multiples of 16"));
        assert!(rule.check(ImageSize::new(512, 512)).unwrap_err().contains("pixels"));
        assert!(rule.check(ImageSize::new(3840, 1024)).unwrap_err().contains("3 times"));
        assert!(rule.check(ImageSize::new(4096, 2048)).unwrap_err().contains("between"));
        // Over the bounds, the message names the largest size of the same shape.
        let over = rule.check(ImageSize::new(4096, 2048)).unwrap_err();
        assert!(over.ends_with("The largest size of this shape is 3840x1920."), "{over}");
        let over = rule.check(ImageSize::new(4000, 4000)).unwrap_err();
        assert!(over.ends_with("The largest size of this shape is 2880x2880."), "{over}");
        assert!(rule.check(rule.nearest(ImageSize::new(4000, 4000))).is_ok());
        assert!(!rule.check(ImageSize::new(512, 512)).unwrap_err().contains("largest"), "too small is not 'largest'");
    }

    #[test]
    fn nearest_prefers_the_aspect_ratio() {
        let fixed =
            SizeRule::Fixed(vec![ImageSize::new(1024, 1024), ImageSize::new(1536, 1024), ImageSize::new(1024, 1536)]);
        assert_eq!(fixed.nearest(ImageSize::new(1280, 720)), ImageSize::new(1536, 1024));
        assert_eq!(fixed.nearest(ImageSize::new(300, 310)), ImageSize::new(1024, 1024));
        let range = SizeRule::Range {
            multiple_of: 8,
            min_edge: 64,
            max_edge: 1024,
            min_pixels: 0,
            max_pixels: u64::MAX,
            max_aspect: 4.0,
        };
        assert_eq!(range.nearest(ImageSize::new(1001, 497)), ImageSize::new(1000, 496));
        assert!(range.check(range.nearest(ImageSize::new(5000, 5000))).is_ok());
    }
}
