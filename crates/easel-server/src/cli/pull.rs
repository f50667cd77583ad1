//! `easel models …` with `pull` from the hub ([`crate::hub`]), and `easel serve --model REPO`.
//!
//! `create-random` and `list` are the diffusion crate's own ([`easel_diffusion::cli`]), flattened
//! into [`ModelsCommand`] beside `pull`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use easel_diffusion::cli::ModelsCommand as LocalModels;
use serde_json::json;

use crate::config::{Config, ModelConfig};
use crate::hub::{self, Hub, PullOptions, RepoId};

/// Where pulled models go by default, under the data folder.
pub const MODELS_FOLDER: &str = "models";

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Download a diffusers-layout model repository from the Hugging Face hub.
    Pull(PullArgs),
    #[command(flatten)]
    Local(LocalModels),
}

/// Download a diffusers-layout model repository from the Hugging Face hub.
#[derive(Debug, Args)]
#[command(after_help = "\
Only what the local backend loads is fetched: model_index.json, the scheduler, tokenizer and
component configs, and one safetensors file per component (the fp16 variant when there is one,
unless --full-precision). Downloads resume where they stopped (run the command again) and
weights are checked against the hub's sha256. HF_ENDPOINT (default https://huggingface.co) and
HF_TOKEN (for gated or private repositories) are honoured.

Example:
  easel models pull stabilityai/sd-turbo
  easel serve --model stabilityai/sd-turbo      # pulls on first use, then serves it")]
pub struct PullArgs {
    /// A hub repository id, e.g. `stabilityai/sd-turbo`.
    pub repo: String,
    /// The folder that holds models; the model goes in `<dir>/<name>`.
    #[arg(long, default_value = "./easel-data/models")]
    pub dir: PathBuf,
    /// The model's folder (instead of `<dir>/<name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A branch, tag or commit of the repository.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Fetch the f32 weights even where the repository has an fp16 variant.
    #[arg(long)]
    pub full_precision: bool,
}

pub async fn run(command: ModelsCommand) -> Result<()> {
    match command {
        ModelsCommand::Local(command) => easel_diffusion::cli::run(command).await,
        ModelsCommand::Pull(args) => {
            let repo = RepoId::parse(&args.repo)?;
            let out = args.out.unwrap_or_else(|| args.dir.join(&repo.name));
            let options = PullOptions { revision: args.revision, full_precision: args.full_precision };
            let pulled = Hub::from_env()?.pull(&repo, &out, &options).await?;
            println!("pulled {repo} ({} files) into {}", pulled.files.len(), out.display());
            println!("serve it with: easel serve --model {repo}");
            Ok(())
        }
    }
}

/// `easel serve --model REPO`: pulls `repo` into `<data_dir>/models/<name>` unless a complete pull
/// is there, and adds it to `config` as the local model `<name>` (the default model when none
/// is set).
pub async fn add_hub_model(config: &mut Config, repo: &str) -> Result<()> {
    let repo = RepoId::parse(repo)?;
    let dir = config.storage.data_dir.join(MODELS_FOLDER).join(&repo.name);
    if hub::pulled(&dir, &repo).is_none() {
        Hub::from_env()?.pull(&repo, &dir, &PullOptions::default()).await?;
    }
    let family = family_of(&dir, &repo)?;
    anyhow::ensure!(
        !config.models.iter().any(|m| m.id == repo.name),
        "--model {repo}: the config already has a model '{}'",
        repo.name
    );
    let options = json!({"family": family, "path": dir});
    let serde_json::Value::Object(options) = options else { unreachable!("a JSON object") };
    config.models.push(ModelConfig { id: repo.name.clone(), backend: "local".into(), response_format: None, options });
    config.server.default_model.get_or_insert_with(|| repo.name.clone());
    Ok(())
}

/// The family of a pulled folder: as `create-random` recorded it, or from the pipeline class
/// (FLUX: dev has a guidance embedder), the UNet's input channels, the text encoder's width and (for Turbo, whose weights are shaped
/// like their base model's) the repository's name.
fn family_of(dir: &Path, repo: &RepoId) -> Result<&'static str> {
    use easel_diffusion::model::read_json;
    if let Ok(info) = read_json(&dir.join(easel_diffusion::random::INFO_FILE))
        && let Some(name) = info.get("family").and_then(|v| v.as_str())
    {
        return Ok(easel_diffusion::Family::parse(name)?.name());
    }
    let index = read_json(&dir.join("model_index.json"))?;
    let class = index.get("_class_name").and_then(|v| v.as_str()).unwrap_or("?");
    match class {
        "QwenImagePipeline" => return Ok("qwen-image"),
        "QwenImageEditPipeline" => return Ok("qwen-image-edit"),
        "FluxPipeline" => {
            // dev is guidance-distilled (a guidance embedder); schnell is not.
            let transformer = read_json(&dir.join("transformer/config.json"))?;
            let dev = transformer.get("guidance_embeds").and_then(|v| v.as_bool()).unwrap_or(false);
            return Ok(if dev { "flux-dev" } else { "flux-schnell" });
        }
        _ => {}
    }
    let unet = read_json(&dir.join("unet/config.json"))?;
    let inpaint = unet.get("in_channels").and_then(|v| v.as_u64()) == Some(9);
    let turbo = repo.name.to_ascii_lowercase().contains("turbo");
    let xl = class.starts_with("StableDiffusionXL");
    let width = read_json(&dir.join("text_encoder/config.json"))
        .ok()
        .and_then(|c| c.get("hidden_size").and_then(|v| v.as_u64()))
        .unwrap_or(768);
    let family = match (xl, inpaint, turbo, width) {
        (true, true, _, _) => "sdxl-inpaint",
        (true, false, true, _) => "sdxl-turbo",
        (true, false, false, _) => "sdxl",
        (false, true, _, 768) => "sd-1.5-inpaint",
        (false, true, _, _) => "sd-2-inpaint",
        (false, false, true, _) => "sd-turbo",
        (false, false, false, 768) => "sd-1.5",
        (false, false, false, _) => "sd-2.1",
    };
    Ok(family)
}
