//! Downloading a diffusers-layout model from the Hugging Face hub (`easel models pull`,
//! `easel serve --model`), or from any server that speaks the hub's file API.
//!
//! Two plain routes, with the reqwest already in the tree, rather than the hf-hub crate: hf-hub
//! 1.0 brings about 86 more crates (hf-xet) and 0.5 a second reqwest (`../shared/reference/crates.md`),
//! for what is two GETs:
//! - `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`: the commit and its files, with
//!   their sizes and, for LFS files (the weights), their sha256;
//! - `GET {endpoint}/{repo}/resolve/{commit}/{path}`: one file (LFS files redirect to a CDN; the
//!   `Authorization` header is not carried across hosts).
//!
//! `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN` are honoured as the hub's own
//! tools honour them.
//!
//! Only the files the local backend loads are fetched ([`wanted`]): `model_index.json`, the
//! scheduler, tokenizer, processor and component configs, and one safetensors file per component
//! (or, where the repository shards it — FLUX's and Qwen's transformers and text encoders — the
//! `*.safetensors.index.json` and every shard it names). Weights
//! prefer the `fp16` variant when the repository has one: half the download, and the precision
//! the models are published and usually run at (the loader converts to the model's dtype);
//! `--full-precision` takes the f32 files instead.
//!
//! Each file downloads into `<file>.part`, resumed from its length with an HTTP `Range` (after a
//! dropped connection, a few times within one run, and again on the next run), then checked
//! against the hub's size and sha256 before it is renamed: a file without `.part` is complete and
//! checked. [`MARKER`], written last, says the folder is a whole pull of its repository.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, RANGE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Written into a model folder once every file of the pull is there and checked.
pub const MARKER: &str = ".easel-pull.json";

/// Dropped connections retried (each resuming where it stopped) before a pull gives up.
const RETRIES: u32 = 3;

/// The pipelines whose components Easel's local backend runs.
const PIPELINES: &[&str] = &[
    "StableDiffusionPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLInpaintPipeline",
    "FluxPipeline",
    "QwenImagePipeline",
    "QwenImageEditPipeline",
];

/// Component folders with a safetensors weights file, and its stem.
const WEIGHTS: &[(&str, &str)] = &[
    ("text_encoder", "model"),
    ("text_encoder_2", "model"),
    ("unet", "diffusion_pytorch_model"),
    ("transformer", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
];

/// `owner/name`, checked so that it can be put in a URL and a folder name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    pub owner: String,
    pub name: String,
}

impl RepoId {
    pub fn parse(text: &str) -> Result<Self> {
        let ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match text.split_once('/') {
            Some((owner, name)) if ok(owner) && ok(name) => Ok(Self { owner: owner.into(), name: name.into() }),
            _ => bail!("'{text}' is not a hub repository id: expected owner/name, e.g. stabilityai/sd-turbo"),
        }
    }
}

impl std::fmt::Display for RepoId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// What [`MARKER`] holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pulled {
    pub repo: String,
    pub revision: String,
    pub commit: Option<String>,
    pub files: Vec<String>,
}

/// The marker of a complete pull of `repo` in `dir`, if there is one.
pub fn pulled(dir: &Path, repo: &RepoId) -> Option<Pulled> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let marker: Pulled = serde_json::from_str(&text).ok()?;
    (marker.repo == repo.to_string()).then_some(marker)
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Clone, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Sibling {
    fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }
}

pub struct Hub {
    http: reqwest::Client,
    endpoint: Url,
    token: Option<String>,
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// A branch, tag or commit.
    pub revision: String,
    /// The f32 weights even where an fp16 variant exists.
    pub full_precision: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self { revision: "main".into(), full_precision: false }
    }
}

/// A download that failed in a way that resuming may cure (the connection dropped) or not.
enum Failure {
    Resumable(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Hub {
    /// The hub named by `HF_ENDPOINT` (default [`DEFAULT_ENDPOINT`]), with `HF_TOKEN` if set.
    pub fn from_env() -> Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|s| !s.trim().is_empty());
        let endpoint = endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/');
        let endpoint =
            Url::parse(&format!("{endpoint}/")).with_context(|| format!("HF_ENDPOINT '{endpoint}' is not a URL"))?;
        let token = std::env::var("HF_TOKEN").ok().filter(|s| !s.trim().is_empty());
        let http = reqwest::Client::builder()
            .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self { http, endpoint, token })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut().expect("an http(s) endpoint").pop_if_empty().extend(segments);
        url
    }

    fn get(&self, url: Url) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    /// Downloads what the local backend needs of `repo` into `out`, with a progress bar on a
    /// terminal; returns what was pulled (also written to [`MARKER`]).
    pub async fn pull(&self, repo: &RepoId, out: &Path, options: &PullOptions) -> Result<Pulled> {
        let mut url = self.url(&["api", "models", &repo.owner, &repo.name, "revision", &options.revision]);
        url.set_query(Some("blobs=true"));
        let response = self.get(url.clone()).send().await.with_context(|| format!("cannot reach the hub at {url}"))?;
        if !response.status().is_success() {
            bail!(self.refusal(repo, &options.revision, None, response).await);
        }
        let info: RepoInfo =
            response.json().await.with_context(|| format!("the hub's answer for {repo} is not a file list"))?;
        let files = wanted(&info.siblings, options.full_precision)?;
        if !files.iter().any(|f| f.rfilename.starts_with("unet/")) {
            bail!(
                "{repo} has no diffusers-layout UNet in safetensors (unet/diffusion_pytorch_model*.safetensors): \
                 Easel runs diffusers-layout repositories of the SD 1.5, 2.x, Turbo and SDXL families"
            );
        }
        // Pinned to the commit the list came from, so every file is from the same snapshot.
        let commit = info.sha.clone().unwrap_or_else(|| options.revision.clone());
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let total: u64 = files.iter().filter_map(Sibling::size).sum();
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        tracing::info!(%repo, files = files.len(), mib = total / 1048576, out = %out.display(), "pulling");
        for file in &files {
            bar.set_message(file.rfilename.clone());
            self.fetch(repo, &commit, file, out, &bar).await?;
            if file.rfilename == "model_index.json" {
                check_pipeline(repo, &out.join("model_index.json"))?;
            }
        }
        bar.finish_and_clear();
        let pulled = Pulled {
            repo: repo.to_string(),
            revision: options.revision.clone(),
            commit: info.sha,
            files: files.iter().map(|f| f.rfilename.clone()).collect(),
        };
        std::fs::write(out.join(MARKER), serde_json::to_vec_pretty(&pulled)?)?;
        Ok(pulled)
    }

    /// One file into `out`, resumed and checked; nothing to do when it is already there.
    async fn fetch(&self, repo: &RepoId, commit: &str, file: &Sibling, out: &Path, bar: &ProgressBar) -> Result<()> {
        let dest = out.join(&file.rfilename);
        if std::fs::metadata(&dest).is_ok_and(|m| file.size().is_none_or(|size| m.len() == size)) {
            bar.inc(file.size().unwrap_or(0));
            return Ok(());
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let part = PathBuf::from(format!("{}.part", dest.display()));
        let start = bar.position();
        let mut retries = 0;
        loop {
            bar.set_position(start);
            match self.fetch_once(repo, commit, file, &part, bar).await {
                Ok(()) => break,
                Err(Failure::Resumable(e)) if retries < RETRIES => {
                    retries += 1;
                    bar.suspend(|| tracing::warn!(file = %file.rfilename, error = %format!("{e:#}"), "resuming"));
                }
                Err(Failure::Resumable(e)) => {
                    return Err(e.context(format!(
                        "downloading {} failed {} times; run the same command again to resume",
                        file.rfilename,
                        RETRIES + 1
                    )));
                }
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
        verify(file, &part).await?;
        std::fs::rename(&part, &dest).with_context(|| format!("cannot rename {}", part.display()))?;
        Ok(())
    }

    async fn fetch_once(
        &self,
        repo: &RepoId,
        commit: &str,
        file: &Sibling,
        part: &Path,
        bar: &ProgressBar,
    ) -> Result<(), Failure> {
        let fatal = |e: anyhow::Error| Failure::Fatal(e);
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let size = file.size();
        if size.is_some_and(|size| have > size) {
            std::fs::remove_file(part).map_err(|e| fatal(e.into()))?;
            have = 0;
        }
        bar.inc(have);
        if size.is_some_and(|size| size == have) {
            return Ok(());
        }
        let mut segments = vec![repo.owner.as_str(), repo.name.as_str(), "resolve", commit];
        segments.extend(file.rfilename.split('/'));
        let mut request = self.get(self.url(&segments));
        if have > 0 {
            request = request.header(RANGE, format!("bytes={have}-"));
        }
        let mut response = request.send().await.map_err(|e| Failure::Resumable(e.into()))?;
        let append = match response.status() {
            StatusCode::PARTIAL_CONTENT => true,
            StatusCode::OK => {
                bar.set_position(bar.position() - have);
                false
            }
            _ => return Err(fatal(anyhow::anyhow!(self.refusal(repo, commit, Some(&file.rfilename), response).await))),
        };
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .await
            .map_err(|e| fatal(anyhow::Error::from(e).context(format!("cannot write {}", part.display()))))?;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    out.write_all(&chunk).await.map_err(|e| fatal(e.into()))?;
                    bar.inc(chunk.len() as u64);
                }
                Ok(None) => break,
                Err(e) => {
                    out.flush().await.map_err(|e| fatal(e.into()))?;
                    return Err(Failure::Resumable(anyhow::Error::from(e).context("the connection dropped")));
                }
            }
        }
        out.flush().await.map_err(|e| fatal(e.into()))?;
        let got = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        match size {
            Some(size) if got < size => {
                Err(Failure::Resumable(anyhow::anyhow!("the connection closed after {got} of {size} bytes")))
            }
            _ => Ok(()),
        }
    }

    /// The message for a refused request, in the hub's terms (`X-Error-Code`).
    async fn refusal(&self, repo: &RepoId, revision: &str, file: Option<&str>, response: reqwest::Response) -> String {
        let status = response.status();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let code = header("x-error-code").unwrap_or_default();
        let detail = header("x-error-message");
        let endpoint = self.endpoint.as_str().trim_end_matches('/');
        let token_hint = if self.token.is_some() { "HF_TOKEN is set" } else { "set HF_TOKEN" };
        match code.as_str() {
            "RepoNotFound" => format!(
                "repository {repo} was not found on {endpoint} (check the name; a private repository needs access: {token_hint})"
            ),
            "RevisionNotFound" => format!("revision '{revision}' was not found in {repo} on {endpoint}"),
            "GatedRepo" => format!(
                "{repo} is gated: accept its conditions on {endpoint}/{repo} and use a token of that account ({token_hint})"
            ),
            "EntryNotFound" => format!("{repo} has no file {} at {revision}", file.unwrap_or("?")),
            _ => {
                let body = response.text().await.unwrap_or_default();
                let detail = detail.unwrap_or_else(|| body.chars().take(200).collect());
                let what = file.map_or_else(|| format!("{repo}"), |f| format!("{repo}/{f}"));
                format!("the hub at {endpoint} answered {status} for {what}: {detail}")
            }
        }
    }
}

/// The files of `siblings` the local backend needs, `model_index.json` first and weights last.
fn wanted(siblings: &[Sibling], full_precision: bool) -> Result<Vec<Sibling>> {
    let names: std::collections::HashSet<&str> = siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let mut weights = Vec::new();
    for (folder, stem) in WEIGHTS {
        let full = format!("{folder}/{stem}.safetensors");
        let half = format!("{folder}/{stem}.fp16.safetensors");
        let (first, second) = if full_precision { (full, half) } else { (half, full) };
        if let Some(name) = [first, second].into_iter().find(|n| names.contains(n.as_str())) {
            weights.push(name);
        } else if names.contains(format!("{folder}/{stem}.safetensors.index.json").as_str()) {
            // Sharded (FLUX's transformer and T5, Qwen's transformer and text encoder): the index
            // and every `{stem}-NNNNN-of-NNNNN.safetensors` it names.
            let shard = format!("{folder}/{stem}-");
            weights.push(format!("{folder}/{stem}.safetensors.index.json"));
            weights.extend(
                names.iter().filter(|n| n.starts_with(&shard) && n.ends_with(".safetensors")).map(|n| n.to_string()),
            );
        }
    }
    let small = |name: &str| {
        name == "model_index.json"
            || name == easel_diffusion::random::INFO_FILE
            || (name.starts_with("scheduler/") && name.ends_with(".json"))
            || name.starts_with("tokenizer/")
            || name.starts_with("tokenizer_2/")
            || (name.starts_with("processor/") && !name.ends_with(".md"))
            || WEIGHTS.iter().any(|(folder, _)| name == format!("{folder}/config.json"))
    };
    let mut files: Vec<Sibling> =
        siblings.iter().filter(|s| small(&s.rfilename) || weights.contains(&s.rfilename)).cloned().collect();
    for file in &files {
        let safe = Path::new(&file.rfilename).components().all(|c| matches!(c, Component::Normal(_)));
        anyhow::ensure!(safe, "the hub listed a file outside the repository: {}", file.rfilename);
    }
    files.sort_by_key(|f| (f.rfilename != "model_index.json", f.lfs.is_some(), f.rfilename.clone()));
    Ok(files)
}

fn check_pipeline(repo: &RepoId, index: &Path) -> Result<()> {
    let index = easel_diffusion::model::read_json(index)?;
    let class = index.get("_class_name").and_then(|v| v.as_str()).unwrap_or("?");
    anyhow::ensure!(
        PIPELINES.contains(&class),
        "{repo} is a {class}; Easel runs {} (the SD 1.5, 2.x, Turbo and SDXL families, FLUX.1, Qwen-Image and Qwen-Image-Edit)",
        PIPELINES.join(", ")
    );
    Ok(())
}

/// The whole `.part` file against the hub's size and sha256 (LFS files have one); a mismatch
/// deletes it, so the next run starts that file afresh.
async fn verify(file: &Sibling, part: &Path) -> Result<()> {
    let got = std::fs::metadata(part)?.len();
    if let Some(size) = file.size()
        && got != size
    {
        std::fs::remove_file(part)?;
        bail!("{}: downloaded {got} bytes, the hub lists {size}; the file was deleted, run again", file.rfilename);
    }
    let Some(lfs) = &file.lfs else { return Ok(()) };
    let path = part.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut hasher = Sha256::new();
        std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await??;
    if !digest.eq_ignore_ascii_case(&lfs.sha256) {
        std::fs::remove_file(part)?;
        bail!(
            "{}: checksum mismatch (sha256 {digest}, the hub lists {}); the corrupt download was deleted, run again",
            file.rfilename,
            lfs.sha256
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sib(name: &str, lfs: bool) -> Sibling {
        Sibling { rfilename: name.into(), size: Some(1), lfs: lfs.then(|| Lfs { sha256: String::new(), size: 1 }) }
    }

    #[test]
    fn wanted_files_prefer_fp16_weights_unless_asked() {
        let siblings = [
            sib("README.md", false),
            sib("sd_turbo.safetensors", true),
            sib("unet/config.json", false),
            sib("unet/diffusion_pytorch_model.safetensors", true),
            sib("unet/diffusion_pytorch_model.fp16.safetensors", true),
            sib("unet/diffusion_pytorch_model.bin", true),
            sib("vae/diffusion_pytorch_model.safetensors", true),
            sib("tokenizer/vocab.json", false),
            sib("scheduler/scheduler_config.json", false),
            sib("model_index.json", false),
            sib("safety_checker/model.safetensors", true),
        ];
        let names = |full| wanted(&siblings, full).unwrap().into_iter().map(|s| s.rfilename).collect::<Vec<_>>();
        assert_eq!(
            names(false),
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "tokenizer/vocab.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        );
        assert!(names(true).contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
        assert!(!names(true).iter().any(|n| n.contains("fp16")));
    }

    #[test]
    fn sharded_weights_come_with_their_index() {
        let siblings = [
            sib("model_index.json", false),
            sib("transformer/config.json", false),
            sib("transformer/diffusion_pytorch_model.safetensors.index.json", false),
            sib("transformer/diffusion_pytorch_model-00001-of-00002.safetensors", true),
            sib("transformer/diffusion_pytorch_model-00002-of-00002.safetensors", true),
            sib("text_encoder/config.json", false),
            sib("text_encoder/model.safetensors.index.json", false),
            sib("text_encoder/model-00001-of-00001.safetensors", true),
            sib("text_encoder/generation_config.json", false),
            sib("processor/preprocessor_config.json", false),
            sib("processor/README.md", false),
            sib("flux1-dev.safetensors", true),
        ];
        let names = wanted(&siblings, false).unwrap().into_iter().map(|s| s.rfilename).collect::<Vec<_>>();
        assert_eq!(
            names,
            [
                "model_index.json",
                "processor/preprocessor_config.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors.index.json",
                "transformer/config.json",
                "transformer/diffusion_pytorch_model.safetensors.index.json",
                "text_encoder/model-00001-of-00001.safetensors",
                "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
                "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
            ]
        );
    }

    #[test]
    fn repo_ids_are_owner_and_name() {
        assert_eq!(RepoId::parse("stabilityai/sd-turbo").unwrap().to_string(), "stabilityai/sd-turbo");
        for bad in ["sd-turbo", "a/b/c", "../x", "a/..", "a/", "a b/c"] {
            assert!(RepoId::parse(bad).is_err(), "{bad}");
        }
    }
}
