//! `easel models create-random | list`: make and list model folders.
//!
//! The server binary embeds [`ModelsCommand`] in its own `models` subcommand, beside `pull`
//! (the server's hub client, `easel_server::hub`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::family::{FAMILY_NAMES, Family};
use crate::random::{self, Scale};

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Write a model with RANDOM weights in the diffusers layout (for tests and benchmarks).
    CreateRandom {
        /// sd-1.5, sd-1.5-inpaint, sd-2.1, sd-2-inpaint, sd-turbo, sdxl, sdxl-inpaint, sdxl-turbo,
        /// flux-schnell, flux-dev, qwen-image or qwen-image-edit.
        #[arg(long)]
        family: String,
        /// `tiny` for tests, `full` for the family's real sizes.
        #[arg(long, value_enum, default_value = "tiny")]
        scale: Scale,
        /// The folder to create (must be empty or absent).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// OpenAI's CLIP BPE merges as plain text (`bpe_simple_vocab_16e6.txt`, gunzipped) for a
        /// real tokenizer; without it every character is its own token.
        #[arg(long)]
        bpe: Option<PathBuf>,
        /// Also write a random tiny autoencoder (TAESD's layout) in `vae_tiny/`, for `tiny_vae`.
        #[arg(long)]
        tiny_vae: bool,
    },
    /// List the model folders in a directory.
    List {
        #[arg(long, default_value = "./easel-data/models")]
        dir: PathBuf,
    },
}

pub async fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::CreateRandom { family, scale, out, seed, bpe, tiny_vae } => {
            let fam = Family::parse(&family)?;
            let out2 = out.clone();
            let mut made =
                tokio::task::spawn_blocking(move || random::create_any(fam, scale, &out2, seed, bpe.as_deref()))
                    .await??;
            if tiny_vae {
                let dir = out.join("vae_tiny");
                let n = tokio::task::spawn_blocking(move || random::create_tiny_vae(&dir, scale, seed)).await??;
                made.params.push(("vae_tiny".into(), n));
            }
            println!("Wrote a model with RANDOM weights to {}.", out.display());
            println!("It is NOT a trained model: it makes noise, not pictures. Use it for tests and benchmarks.");
            println!("family {}, scale {:?}, seed {seed}", fam.name(), scale);
            for (name, n) in &made.params {
                println!("  {name:<16} {n:>13} parameters (random)");
            }
            // The SD families' CLIP tokenizer; the flow families' are described in their modules.
            if fam.kind() == crate::family::Kind::Sd {
                if made.merges == 0 {
                    println!(
                        "  tokenizer: CLIP's byte alphabet without merges (one token per character); pass --bpe for real merges"
                    );
                } else {
                    println!("  tokenizer: {} CLIP BPE merges", made.merges);
                }
            }
            println!(
                "Use it with: [[models]] id = \"...\", backend = \"local\", family = \"{}\", path = \"{}\"",
                fam.name(),
                out.display()
            );
            Ok(())
        }
        ModelsCommand::List { dir } => list(&dir),
    }
}

fn dir_size(p: &Path) -> u64 {
    match std::fs::read_dir(p) {
        Err(_) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        Ok(entries) => entries.flatten().map(|e| dir_size(&e.path())).sum(),
    }
}

fn list(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("No models: {} does not exist.", dir.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut rows = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let Ok(index) = crate::model::read_json(&p.join("model_index.json")) else {
            continue;
        };
        let class = index.get("_class_name").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let info = crate::model::read_json(&p.join(crate::random::INFO_FILE)).ok();
        let what = match &info {
            Some(i) => format!(
                "RANDOM {} ({})",
                i.get("family").and_then(|v| v.as_str()).unwrap_or("?"),
                i.get("scale").and_then(|v| v.as_str()).unwrap_or("?")
            ),
            None => "weights".to_string(),
        };
        rows.push((e.file_name().to_string_lossy().into_owned(), class, what, dir_size(&p)));
    }
    rows.sort();
    if rows.is_empty() {
        println!("No model folders (with model_index.json) in {}.", dir.display());
    }
    for (name, class, what, bytes) in rows {
        println!("{name:<32} {class:<28} {what:<24} {:>9.1} MiB", bytes as f64 / 1048576.0);
    }
    println!("Families: {}", FAMILY_NAMES.join(", "));
    Ok(())
}
