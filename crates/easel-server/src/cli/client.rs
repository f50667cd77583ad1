//! `easel generate`, `easel edit`, `easel variations`: make images from the command line.
//!
//! The command line becomes one request, the same fields a client would send
//! ([`Order`]: JSON-shaped fields plus image files), which then goes either to a server
//! (`--server`, [`super::remote`]: streamed, so partial images move the progress bar) or through
//! this process's own parser and image service on a model of the local config
//! ([`super::in_process`]: the denoising steps move the bar). Either way the images are written
//! as files and the seed is printed, so a result can be made again.
//!
//! File names: `-o out.png` names the only image; with several, image k of n is written as
//! `out-k.png` (`out-1.png`, `out-2.png`, …). Without `-o` the name is `image.<format>`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use easel_core::types::Operation;
use easel_wire::request::FormPart;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use url::Url;

use super::ConfigArgs;

const EXAMPLES_GENERATE: &str = "\
Examples:
  easel generate \"a lighthouse at dusk\" -o lighthouse.png
  easel generate \"a red fox\" --n 2 --size 768x512 --seed 42 -o fox.png   # writes fox-1.png, fox-2.png
  easel generate \"a castle\" --server http://127.0.0.1:8080 --model sd-turbo --steps 4

Without --server the image is made in this process by a model of the config (--config, the same
file `easel serve` reads); with it, EASEL_API_KEY (or --api-key) is the key. The seed is printed:
pass it back with --seed to make the same image (image k of n uses seed+k-1 on local models).";

const EXAMPLES_EDIT: &str = "\
Examples:
  easel edit photo.png \"make the sky stormy\" -o stormy.png
  easel edit room.png \"a red sofa\" --mask sofa-mask.png --strength 0.8 -o sofa.png
  easel edit a.png b.png \"combine them\" --server https://images.example.com --model gpt-image-1

The last positional argument is the prompt; every one before it is an input image. The mask is a
PNG of the first image's size whose transparent pixels mark what to change (OpenAI's convention).";

const EXAMPLES_VARIATIONS: &str = "\
Examples:
  easel variations photo.png --n 3 -o photo-var.png   # writes photo-var-1.png … photo-var-3.png
  easel variations photo.png --strength 0.4 --seed 7";

/// Where the request goes.
#[derive(Debug, Args)]
pub struct Target {
    /// An Easel server's base URL, e.g. `http://127.0.0.1:8080` (Easel's extensions such as the
    /// seed are sent, which OpenAI itself refuses). Without it the image is made in this process
    /// by a model of the local config.
    #[arg(long, value_name = "URL")]
    pub server: Option<Url>,
    /// The API key sent to --server as `Authorization: Bearer`.
    #[arg(long, env = "EASEL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// With --server: partial images the server streams while it works (0-3); they move the
    /// progress bar. OpenAI bills partial images as output tokens.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub partial_images: u8,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// What every operation takes.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The model id (default: the server's or the config's default model).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// `WIDTHxHEIGHT`, e.g. `512x512`, or `auto`.
    #[arg(long)]
    pub size: Option<String>,
    /// How many images to make.
    #[arg(long, short = 'n')]
    pub n: Option<u32>,
    /// The first image's seed (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Denoising steps (open models).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (open models; `guidance_scale` in the API).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// `low`, `medium`, `high`, `auto` (`standard`/`hd` for DALL·E 3).
    #[arg(long)]
    pub quality: Option<String>,
    /// `png`, `jpeg` or `webp` (default: from -o's extension, else png).
    #[arg(long)]
    pub output_format: Option<String>,
    /// What the image should not show (open models).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// The file to write; with several images, `NAME-1.EXT`, `NAME-2.EXT`, …
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Make images from a prompt.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES_GENERATE)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub target: Target,
}

/// Change images as a prompt says, optionally only where a mask is transparent.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES_EDIT)]
pub struct EditArgs {
    /// The input images (PNG, JPEG or WebP).
    #[arg(required = true, num_args = 1.., value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// What to change.
    pub prompt: String,
    /// A PNG whose transparent pixels mark where to edit the first image.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// How far to move from the input, 0-1 (open models; 1 ignores it).
    #[arg(long)]
    pub strength: Option<f32>,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub target: Target,
}

/// Make variations of an image.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES_VARIATIONS)]
pub struct VariationsArgs {
    /// The input image (PNG, JPEG or WebP).
    pub image_file: PathBuf,
    /// How far to move from the input, 0-1 (open models).
    #[arg(long)]
    pub strength: Option<f32>,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub target: Target,
}

/// One request as the API reads it: its fields, and its image files as multipart parts.
#[derive(Debug)]
pub struct Order {
    pub operation: Operation,
    pub fields: Map<String, Value>,
    pub files: Vec<FormPart>,
    pub seed: u64,
}

/// An image made, in the format it was encoded in (`png`, `jpeg`, `webp`).
pub struct Made {
    pub bytes: Bytes,
    pub format: String,
}

/// A refusal: the API's error envelope, printed as its message and `param`.
pub fn refusal(message: &str, param: Option<&str>, code: Option<&str>) -> anyhow::Error {
    let mut text = message.to_string();
    if let Some(param) = param {
        text.push_str(&format!(" (param: {param})"));
    }
    if let Some(code) = code {
        text.push_str(&format!(" [{code}]"));
    }
    anyhow::anyhow!(text)
}

pub async fn generate(args: GenerateArgs) -> Result<()> {
    let mut order = Order::new(Operation::Generate, &args.image)?;
    order.fields.insert("prompt".into(), json!(args.prompt));
    run(order, &args.image, &args.target).await
}

pub async fn edit(args: EditArgs) -> Result<()> {
    let mut order = Order::new(Operation::Edit, &args.image)?;
    order.fields.insert("prompt".into(), json!(args.prompt));
    set(&mut order.fields, "strength", args.strength);
    let name = if args.images.len() > 1 { "image[]" } else { "image" };
    for path in &args.images {
        order.files.push(file_part(name, path)?);
    }
    if let Some(mask) = &args.mask {
        order.files.push(file_part("mask", mask)?);
    }
    run(order, &args.image, &args.target).await
}

pub async fn variations(args: VariationsArgs) -> Result<()> {
    let mut order = Order::new(Operation::Variation, &args.image)?;
    set(&mut order.fields, "strength", args.strength);
    order.files.push(file_part("image", &args.image_file)?);
    run(order, &args.image, &args.target).await
}

impl Order {
    fn new(operation: Operation, args: &ImageArgs) -> Result<Self> {
        let seed = args.seed.unwrap_or_else(|| u64::from(rand::random::<u32>()));
        let mut fields = Map::new();
        set(&mut fields, "model", args.model.clone());
        set(&mut fields, "size", args.size.clone());
        set(&mut fields, "n", args.n);
        fields.insert("seed".into(), json!(seed));
        set(&mut fields, "steps", args.steps);
        set(&mut fields, "guidance_scale", args.guidance);
        set(&mut fields, "quality", args.quality.clone());
        set(&mut fields, "negative_prompt", args.negative_prompt.clone());
        let format = args.output_format.clone().or_else(|| args.output.as_deref().and_then(format_of));
        set(&mut fields, "output_format", format);
        fields.insert("response_format".into(), json!("b64_json"));
        Ok(Self { operation, fields, files: Vec::new(), seed })
    }

    /// The fields as multipart text parts, then the files.
    pub fn parts(&self) -> Vec<FormPart> {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut parts: Vec<FormPart> = self
            .fields
            .iter()
            .map(|(name, value)| FormPart {
                name: name.clone(),
                filename: None,
                content_type: None,
                data: Bytes::from(text(value)),
            })
            .collect();
        parts.extend(self.files.iter().cloned());
        parts
    }
}

fn set<T: serde::Serialize>(fields: &mut Map<String, Value>, name: &str, value: Option<T>) {
    if let Some(value) = value {
        fields.insert(name.into(), json!(value));
    }
}

fn file_part(name: &str, path: &Path) -> Result<FormPart> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let filename = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let content_type = easel_core::imaging::sniff(&data).map(|f| f.as_output().mime().to_string());
    Ok(FormPart { name: name.into(), filename, content_type, data: Bytes::from(data) })
}

/// `png`, `jpeg` or `webp` from a file name's extension.
fn format_of(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" | "webp" => Some(ext),
        "jpg" | "jpeg" => Some("jpeg".into()),
        _ => None,
    }
}

/// Where image `k` (from 1) of `n` goes: `path` itself for one image, `stem-k.ext` for several.
pub fn output_name(path: &Path, k: usize, n: usize) -> PathBuf {
    if n == 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{k}"),
    };
    path.with_file_name(name)
}

/// A bar for `length` units of work (steps or events), drawn on stderr when it is a terminal.
pub fn progress_bar(length: u64, message: &str) -> ProgressBar {
    ProgressBar::new(length).with_message(message.to_string()).with_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    )
}

async fn run(order: Order, args: &ImageArgs, target: &Target) -> Result<()> {
    let made = match &target.server {
        Some(server) => super::remote::send(server, target, &order).await?,
        None => super::in_process::make(&target.config, &order).await?,
    };
    let n = made.len();
    for (i, image) in made.iter().enumerate() {
        let base = args.output.clone().unwrap_or_else(|| PathBuf::from(format!("image.{}", image.format)));
        let path = output_name(&base, i + 1, n);
        std::fs::write(&path, &image.bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!("seed: {} (pass --seed {} to make the same image again)", order.seed, order.seed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_images_are_numbered_from_one() {
        assert_eq!(output_name(Path::new("out.png"), 1, 1), Path::new("out.png"));
        assert_eq!(output_name(Path::new("dir/out.png"), 2, 3), Path::new("dir/out-2.png"));
        assert_eq!(output_name(Path::new("out"), 1, 2), Path::new("out-1"));
        assert_eq!(format_of(Path::new("a.JPG")).as_deref(), Some("jpeg"));
    }
}
