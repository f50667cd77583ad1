//! `easel models pull` with the `hub` feature: a diffusers-layout snapshot from the Hugging Face
//! hub through hf-hub (which honours `HF_ENDPOINT`, `HF_TOKEN` and `HF_HOME`, and skips files
//! already complete in the target folder, so an interrupted pull resumes).

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use hf_hub::HFClient;
use hf_hub::progress::{DownloadEvent, Progress, ProgressEvent, ProgressHandler};

/// Prints a one-line progress bar to stderr.
struct Bar {
    total: Mutex<(u64, std::collections::HashMap<String, u64>)>,
}

impl ProgressHandler for Bar {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else {
            return;
        };
        let mut state = self.total.lock().expect("progress lock");
        match event {
            DownloadEvent::Start { total_files, total_bytes } => {
                state.0 = *total_bytes;
                eprintln!("downloading {total_files} files, {:.1} MiB", *total_bytes as f64 / 1048576.0);
            }
            DownloadEvent::Progress { files } => {
                for f in files {
                    state.1.insert(f.filename.clone(), f.bytes_completed);
                }
                draw(state.1.values().sum(), state.0);
            }
            DownloadEvent::AggregateProgress { bytes_completed, total_bytes, .. } => {
                draw(*bytes_completed, *total_bytes)
            }
            DownloadEvent::Complete => eprintln!(),
        }
    }
}

fn draw(done: u64, total: u64) {
    let frac = if total > 0 { done as f64 / total as f64 } else { 0.0 };
    let filled = (frac * 40.0) as usize;
    eprint!(
        "\r[{}{}] {:5.1}% {:.1}/{:.1} MiB",
        "#".repeat(filled),
        " ".repeat(40 - filled.min(40)),
        frac * 100.0,
        done as f64 / 1048576.0,
        total as f64 / 1048576.0
    );
}

pub async fn pull(id: &str, out: &Path, fp16: bool) -> Result<()> {
    let (owner, name) = id.split_once('/').with_context(|| format!("'{id}' is not an owner/name repository id"))?;
    let client = HFClient::new().context("cannot set up the hub client")?;
    let weights: &[&str] = if fp16 {
        &["*/*.fp16.safetensors"]
    } else {
        &[
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
            "text_encoder_2/model.safetensors",
        ]
    };
    let mut allow: Vec<String> =
        ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    allow.extend(weights.iter().map(|s| s.to_string()));
    let bar = Progress::new(Bar { total: Mutex::new((0, Default::default())) });
    let path = client
        .model(owner, name)
        .snapshot_download()
        .allow_patterns(allow)
        .local_dir(out.to_path_buf())
        .progress(bar)
        .send()
        .await
        .with_context(|| format!("downloading {id}"))?;
    println!("{id} is in {}", path.display());
    Ok(())
}
