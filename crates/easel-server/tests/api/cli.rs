//! The command line as people use it: `easel generate|edit|variations` (the built binary) against
//! a server and in-process from a config file, and `easel models pull` / `easel serve --model`
//! against a small local server that speaks the hub's file API ([`FakeHub`]) and serves the tiny
//! model `easel models create-random` made.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{listening_address, mask, png};
use crate::local::{local_app, model_dir};

/// `easel` with `args`, in an environment without the caller's keys and hub settings.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_easel"));
    command.args(args);
    for var in ["EASEL_API_KEY", "EASEL_CONFIG", "HF_ENDPOINT", "HF_TOKEN"] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command
}

/// Runs it to the end, from a test without a runtime.
fn easel(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().unwrap()
}

/// Runs it to the end without blocking the test's runtime, which serves the app or the hub.
async fn run_easel(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::from(command(args, env)).output().await.unwrap()
}

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn decode(path: &Path) -> image::DynamicImage {
    image::open(path).unwrap_or_else(|e| panic!("{} is not an image: {e}", path.display()))
}

#[tokio::test]
async fn generate_against_a_server_writes_numbered_files_and_the_seed() {
    let app = local_app().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fox.png");
    let args = ["generate", "a fox", "--server", &app.address, "--model", "turbo", "--seed", "11", "--size", "64x48"];
    let run = async |extra: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(extra);
        run_easel(&all, &[]).await
    };
    let output = run(&["-n", "2", "-o", path_arg(&out)]).await;
    assert!(output.status.success(), "{}", said(&output));
    let text = stdout(&output);
    assert!(text.contains("seed: 11"), "the seed is printed: {text}");
    let (first, second) = (dir.path().join("fox-1.png"), dir.path().join("fox-2.png"));
    assert!(text.contains(path_arg(&first)) && text.contains(path_arg(&second)), "{text}");
    assert!(!out.exists(), "several images are numbered, the bare name is not written");
    for path in [&first, &second] {
        assert_eq!(decode(path).to_rgb8().dimensions(), (64, 48));
    }
    assert_ne!(std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap());

    // The printed seed makes the same image again; the format follows -o's extension.
    let again = dir.path().join("again.webp");
    let output = run(&["-o", path_arg(&again), "--output-format", "png"]).await;
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&first).unwrap(), "same seed, same bytes");
    let webp = dir.path().join("one.webp");
    let output = run(&["-o", path_arg(&webp)]).await;
    assert!(output.status.success(), "{}", said(&output));
    assert!(std::fs::read(&webp).unwrap().starts_with(b"RIFF"), "-o one.webp asks for WebP");
}

#[tokio::test]
async fn a_servers_refusal_is_printed_with_its_param_and_fails() {
    let app = local_app().await;
    let output =
        run_easel(&["generate", "p", "--server", &app.address, "--model", "turbo", "--size", "13x13"], &[]).await;
    assert!(!output.status.success());
    let text = said(&output);
    assert!(text.contains("13x13") && text.contains("(param: size)"), "{text}");

    let output =
        run_easel(&["generate", "p", "--server", &format!("{}/v1", app.address), "--model", "nope"], &[]).await;
    assert!(!output.status.success());
    assert!(said(&output).contains("(param: model)"), "{}", said(&output));
}

#[tokio::test]
async fn edit_with_a_mask_and_variations_against_a_server() {
    let app = local_app().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    std::fs::write(&input, png(64, 64, [12, 34, 56])).unwrap();
    let mask_file = dir.path().join("mask.png");
    std::fs::write(&mask_file, mask(64, 64, |x, _| if x < 32 { 255 } else { 0 })).unwrap();
    let out = dir.path().join("edited.png");
    let output = run_easel(
        &[
            "edit",
            path_arg(&input),
            "paint the right half",
            "--mask",
            path_arg(&mask_file),
            "--server",
            &app.address,
            "--model",
            "turbo",
            "-o",
            path_arg(&out),
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(decode(&out).to_rgb8().get_pixel(4, 4).0, [12, 34, 56], "opaque mask pixels are kept");

    let out = dir.path().join("var.jpg");
    let output = run_easel(
        &[
            "variations",
            path_arg(&input),
            "--server",
            &app.address,
            "--model",
            "turbo",
            "-n",
            "2",
            "-o",
            path_arg(&out),
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", said(&output));
    assert!(stdout(&output).contains("seed: "), "{}", stdout(&output));
    for k in 1..=2 {
        let bytes = std::fs::read(dir.path().join(format!("var-{k}.jpg"))).unwrap();
        assert!(bytes.starts_with(&[0xFF, 0xD8, 0xFF]), "JPEG, from -o's extension");
    }
}

/// A config file with the tiny model as `turbo`.
fn config_file(dir: &Path, model: &Path) -> PathBuf {
    let config = dir.join("easel.toml");
    let text = format!(
        "[storage]\ndata_dir = {data:?}\n\n[[models]]\nid = \"turbo\"\nbackend = \"local\"\nfamily = \"sd-turbo\"\n\
         path = {model:?}\nmin_edge = 32\ndefault_size = \"64x64\"\nsteps = 4\n",
        data = path_arg(&dir.join("data")),
        model = path_arg(model),
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn generate_and_edit_in_process_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &model_dir());
    let out = dir.path().join("local.png");
    let output = easel(&["generate", "a lighthouse", "--config", path_arg(&config), "-o", path_arg(&out)], &[]);
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(decode(&out).to_rgb8().dimensions(), (64, 64), "the model's default size");
    let text = stdout(&output);
    let seed = text.lines().find_map(|l| l.strip_prefix("seed: ")).expect("a seed line");
    let seed = seed.split_whitespace().next().unwrap();
    seed.parse::<u64>().unwrap_or_else(|_| panic!("the seed is a number: {text}"));

    // The printed seed reproduces the image.
    let again = dir.path().join("again.png");
    let output = easel(
        &["generate", "a lighthouse", "--config", path_arg(&config), "--seed", seed, "-o", path_arg(&again)],
        &[],
    );
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&out).unwrap());

    let edited = dir.path().join("edited.png");
    let output = easel(
        &["edit", path_arg(&out), "bluer", "--strength", "0.5", "--config", path_arg(&config), "-o", path_arg(&edited)],
        &[],
    );
    assert!(output.status.success(), "{}", said(&output));
    decode(&edited);

    // Refusals read as the server's: the message and the parameter.
    let output = easel(&["generate", "p", "--config", path_arg(&config), "--size", "13x13"], &[]);
    assert!(!output.status.success());
    assert!(said(&output).contains("(param: size)"), "{}", said(&output));
    let output = easel(&["generate", "p", "--config", path_arg(&config), "--model", "other"], &[]);
    assert!(!output.status.success());
    assert!(said(&output).contains("no model 'other'"), "{}", said(&output));
}

#[test]
fn help_explains_every_flag_with_an_example() {
    for command in ["generate", "edit", "variations"] {
        let output = easel(&[command, "--help"], &[]);
        assert!(output.status.success());
        let text = stdout(&output);
        assert!(text.contains("Examples:") && text.contains(&format!("easel {command} ")), "{text}");
        for flag in ["--server", "--api-key", "--model", "--size", "--seed", "--steps", "--output-format", "--output"] {
            assert!(text.contains(flag), "{command} --help names {flag}");
        }
    }
    let text = stdout(&easel(&["models", "pull", "--help"], &[]));
    assert!(text.contains("HF_ENDPOINT") && text.contains("easel models pull stabilityai/sd-turbo"), "{text}");
}

// ---- models by name ----------------------------------------------------------------------

/// What the fake hub does and saw.
#[derive(Default)]
struct HubState {
    /// The only repository it has.
    repo: String,
    files: HashMap<String, Vec<u8>>,
    /// The file whose download breaks off half-way, and how many more times it does.
    drop: Option<(String, u32)>,
    /// A file whose listed sha256 is wrong.
    corrupt: Option<String>,
    /// `(file, Range header)` of every file request.
    requests: Vec<(String, Option<String>)>,
}

/// A local HTTP server with the hub's routes, serving one repository: the tiny model's files.
struct FakeHub {
    endpoint: String,
    state: Arc<Mutex<HubState>>,
}

impl FakeHub {
    async fn start(repo: &str) -> Self {
        let mut files = HashMap::new();
        collect(&model_dir(), &model_dir(), &mut files);
        // The shared test model also carries `vae_tiny/`, which a pull does not fetch (TAESD is
        // configured on its own): the hub serves the rest.
        files.retain(|name, _| !name.starts_with("vae_tiny/"));
        let state = Arc::new(Mutex::new(HubState { repo: repo.into(), files, ..HubState::default() }));
        let router = Router::new()
            .route("/api/models/{owner}/{name}/revision/{rev}", get(list))
            .route("/{owner}/{name}/resolve/{rev}/{*path}", get(file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { endpoint, state }
    }

    fn env(&self) -> [(&str, &str); 2] {
        [("HF_ENDPOINT", self.endpoint.as_str()), ("HF_TOKEN", "hf_test")]
    }

    fn ranges(&self, file: &str) -> Vec<Option<String>> {
        let state = self.state.lock().unwrap();
        state.requests.iter().filter(|(f, _)| f == file).map(|(_, r)| r.clone()).collect()
    }
}

fn collect(root: &Path, dir: &Path, files: &mut HashMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let name = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
}

fn not_found(code: &str) -> Response {
    (StatusCode::UNAUTHORIZED, [("x-error-code", code)], "Repository not found").into_response()
}

async fn list(
    State(state): State<Arc<Mutex<HubState>>>,
    UrlPath((owner, name, _rev)): UrlPath<(String, String, String)>,
) -> Response {
    let state = state.lock().unwrap();
    if format!("{owner}/{name}") != state.repo {
        return not_found("RepoNotFound");
    }
    let mut siblings = vec![json!({"rfilename": "README.md", "size": 5})];
    for (name, bytes) in &state.files {
        let mut entry = json!({"rfilename": name, "size": bytes.len()});
        if name.ends_with(".safetensors") {
            let mut sha = hex::encode(Sha256::digest(bytes));
            if state.corrupt.as_deref() == Some(name.as_str()) {
                sha = hex::encode(Sha256::digest(b"something else"));
            }
            entry["lfs"] = json!({"sha256": sha, "size": bytes.len(), "pointerSize": 134});
        }
        siblings.push(entry);
    }
    axum::Json(json!({"id": state.repo, "sha": "0123456789abcdef", "siblings": siblings})).into_response()
}

async fn file(
    State(state): State<Arc<Mutex<HubState>>>,
    UrlPath((owner, name, rev, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().unwrap();
    let range = headers.get(header::RANGE).map(|v| v.to_str().unwrap().to_string());
    state.requests.push((path.clone(), range.clone()));
    if format!("{owner}/{name}") != state.repo || rev != "0123456789abcdef" {
        return not_found("RepoNotFound");
    }
    let Some(bytes) = state.files.get(&path).cloned() else {
        return (StatusCode::NOT_FOUND, [("x-error-code", "EntryNotFound")], "").into_response();
    };
    let start: usize =
        range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()).unwrap_or(0);
    let rest = bytes[start..].to_vec();
    let status = if start > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let content_range = format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len());
    let breaks = matches!(&mut state.drop, Some((file, left)) if *file == path && *left > 0);
    if breaks {
        if let Some((_, left)) = &mut state.drop {
            *left -= 1;
        }
        // Half of what is left, a pause (the server flushes what it has when the body waits),
        // then the connection drops.
        let half = rest[..rest.len() / 2].to_vec();
        let broken = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("dropped"))
        };
        let body = Body::from_stream(futures::stream::once(async { Ok(half) }).chain(futures::stream::once(broken)));
        return (status, [(header::CONTENT_LENGTH, rest.len().to_string())], body).into_response();
    }
    (status, [(header::CONTENT_RANGE, content_range)], rest).into_response()
}

const WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";

#[tokio::test]
async fn models_pull_fetches_the_diffusers_files_and_checks_them() {
    let hub = FakeHub::start("acme/tiny-turbo").await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let output = run_easel(&["models", "pull", "acme/tiny-turbo", "--dir", path_arg(&models)], &hub.env()).await;
    assert!(output.status.success(), "{}", said(&output));
    let folder = models.join("tiny-turbo");
    for (name, bytes) in &hub.state.lock().unwrap().files {
        assert_eq!(&std::fs::read(folder.join(name)).unwrap(), bytes, "{name}");
    }
    assert!(!folder.join("README.md").exists(), "only what the backend loads");
    let marker: Value = serde_json::from_slice(&std::fs::read(folder.join(".easel-pull.json")).unwrap()).unwrap();
    assert_eq!(marker["repo"], "acme/tiny-turbo");
    assert_eq!(marker["commit"], "0123456789abcdef");
    assert!(stdout(&output).contains("easel serve --model acme/tiny-turbo"), "{}", stdout(&output));

    // Pulled again, nothing is downloaded.
    let before = hub.state.lock().unwrap().requests.len();
    let output = run_easel(&["models", "pull", "acme/tiny-turbo", "--dir", path_arg(&models)], &hub.env()).await;
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(hub.state.lock().unwrap().requests.len(), before);
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let hub = FakeHub::start("acme/tiny-turbo").await;
    // More drops than one run retries: the first run fails and keeps the partial file, the
    // second resumes it.
    hub.state.lock().unwrap().drop = Some((WEIGHTS.into(), 5));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let args = ["models", "pull", "acme/tiny-turbo", "--out", path_arg(&out)];
    let output = run_easel(&args, &hub.env()).await;
    assert!(!output.status.success(), "{}", said(&output));
    assert!(said(&output).contains("run the same command again to resume"), "{}", said(&output));
    let part = out.join(format!("{WEIGHTS}.part"));
    assert!(part.metadata().unwrap().len() > 0, "the partial download is kept");
    assert!(!out.join(".easel-pull.json").exists());

    let output = run_easel(&args, &hub.env()).await;
    assert!(output.status.success(), "{}", said(&output));
    let expected = hub.state.lock().unwrap().files[WEIGHTS].clone();
    assert_eq!(std::fs::read(out.join(WEIGHTS)).unwrap(), expected);
    assert!(!part.exists());
    let ranges = hub.ranges(WEIGHTS);
    assert_eq!(ranges.len(), 6, "{ranges:?}");
    assert_eq!(ranges[0], None, "the first request starts at 0");
    let starts: Vec<usize> = ranges[1..]
        .iter()
        .map(|r| r.as_deref().unwrap().trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]) && starts[0] > 0, "each request resumes further on: {starts:?}");
}

#[tokio::test]
async fn a_corrupted_file_is_refused() {
    let hub = FakeHub::start("acme/tiny-turbo").await;
    hub.state.lock().unwrap().corrupt = Some(WEIGHTS.into());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let output = run_easel(&["models", "pull", "acme/tiny-turbo", "--out", path_arg(&out)], &hub.env()).await;
    assert!(!output.status.success());
    let text = said(&output);
    assert!(text.contains("checksum mismatch") && text.contains(WEIGHTS), "{text}");
    assert!(!out.join(WEIGHTS).exists() && !out.join(format!("{WEIGHTS}.part")).exists(), "nothing corrupt is kept");
    assert!(!out.join(".easel-pull.json").exists());
}

#[tokio::test]
async fn a_missing_repository_is_explained() {
    let hub = FakeHub::start("acme/tiny-turbo").await;
    let dir = tempfile::tempdir().unwrap();
    let output = run_easel(&["models", "pull", "acme/no-such-model", "--dir", path_arg(dir.path())], &hub.env()).await;
    assert!(!output.status.success());
    let text = said(&output);
    assert!(text.contains("repository acme/no-such-model was not found on") && text.contains("HF_TOKEN"), "{text}");
    let output = run_easel(&["models", "pull", "not-a-repo-id"], &hub.env()).await;
    assert!(!output.status.success());
    assert!(said(&output).contains("expected owner/name"), "{}", said(&output));
}

// Two threads: the server's log is read with blocking reads while the hub answers its pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_model_pulls_on_first_use_and_generates() {
    let hub = FakeHub::start("acme/tiny-turbo").await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = hub.env().to_vec();
    env.extend([("EASEL__SERVER__LOG_FORMAT", "json"), ("RUST_LOG", "info")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["serve", "--model", "acme/tiny-turbo", "--bind", "127.0.0.1:0", "--data-dir", path_arg(&data)])
        .env_remove("EASEL_CONFIG")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let address = format!("http://{}", listening_address(&mut lines, Duration::from_secs(120)));
    std::thread::spawn(move || lines.for_each(drop));
    assert!(data.join("models/tiny-turbo/.easel-pull.json").exists(), "pulled into the data folder");
    let started = std::time::Instant::now();
    while reqwest::get(format!("{address}/readyz")).await.unwrap().status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(120), "the pulled model did not load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let out = dir.path().join("served.png");
    let output =
        run_easel(&["generate", "a tiny turbo", "--server", &address, "--size", "256x256", "-o", path_arg(&out)], &[])
            .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(decode(&out).to_rgb8().dimensions(), (256, 256), "the pulled model, served as the default");
}
