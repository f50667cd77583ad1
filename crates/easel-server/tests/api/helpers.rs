//! `spawn_app()`: the real server on port 0 with a temp data directory and the test models, and
//! a `TestApp` with helpers per endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use easel_core::backend::{ImageBackend, SizeRule};
use easel_core::registry::Model;
use easel_core::types::{ImageSize, Operation, Quality};
use easel_server::config::Config;
use easel_server::startup::Application;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, RgbaImage};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backend::{TestBackend, capabilities};

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub backends: HashMap<String, Arc<TestBackend>>,
    pub app_state: easel_server::state::AppState,
    /// The private metrics listener, when `[metrics] bind` is set.
    pub metrics_address: Option<std::net::SocketAddr>,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The standard test models.
pub fn test_models() -> Vec<(String, TestBackend)> {
    let mut fixed = capabilities();
    fixed.native_sizes =
        Some(SizeRule::Fixed(vec![ImageSize::new(64, 64), ImageSize::new(96, 64), ImageSize::new(64, 96)]));
    fixed.max_n_per_call = 1;
    fixed.transparency = false;
    let mut encoded = TestBackend::new(capabilities());
    encoded.encoded = true;
    let mut dalle = capabilities();
    dalle.operations = vec![Operation::Generate];
    dalle.sizes = SizeRule::Fixed(vec![ImageSize::new(64, 64), ImageSize::new(112, 64)]);
    dalle.max_n = 1;
    dalle.qualities = vec![Quality::Standard, Quality::Hd];
    dalle.default_quality = Quality::Standard;
    dalle.transparency = false;
    dalle.max_prompt_chars = 40;
    vec![
        ("test-image".into(), TestBackend::new(capabilities())),
        ("test-fixed".into(), TestBackend::new(fixed)),
        ("test-encoded".into(), encoded),
        ("test-dalle".into(), TestBackend::new(dalle)),
    ]
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, test_models()).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config), models: Vec<(String, TestBackend)>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.server.bind = "127.0.0.1:0".into();
    configure(&mut config);
    let mut backends = HashMap::new();
    let mut registry_models = Vec::new();
    for (id, backend) in models {
        let backend = Arc::new(backend);
        backends.insert(id.clone(), Arc::clone(&backend));
        let shared: Arc<dyn ImageBackend> = backend;
        registry_models.push(Model {
            id,
            backend: shared,
            created: 1_700_000_000,
            owned_by: "easel".into(),
            defaults: Default::default(),
        });
    }
    let app = Application::build_with(config, registry_models).await.expect("the app builds");
    let address = format!("http://{}", app.address());
    let stop = app.stop_token();
    let app_state = app.state().clone();
    let metrics_address = app.metrics_address();
    tokio::spawn(app.run_until_stopped());
    TestApp { address, client: reqwest::Client::new(), dir, backends, app_state, metrics_address, stop }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.unwrap()
    }

    pub async fn post_form(&self, path: &str, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client.post(self.url(path)).multipart(form).send().await.unwrap()
    }

    pub async fn generate(&self, body: Value) -> reqwest::Response {
        self.post_json("/v1/images/generations", &body).await
    }

    /// What SIGTERM does: the server starts draining.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    pub fn backend(&self, id: &str) -> &TestBackend {
        &self.backends[id]
    }
}

/// Reads a JSON body, asserting the status and the JSON content type.
/// Waits, if need be, until the current UTC minute has at least `room` left. Requests per
/// minute are counted per UTC minute (`storage/limits.rs`), so a test that spends a minute's
/// requests and then expects a 429 must not straddle a minute's end: that once let a cluster
/// test's second request in, counted in the next minute.
pub async fn early_in_a_minute(room: std::time::Duration) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let into = std::time::Duration::from_millis((now.as_millis() % 60_000) as u64);
    let left = std::time::Duration::from_secs(60) - into;
    if left < room {
        tokio::time::sleep(left + std::time::Duration::from_millis(50)).await;
    }
}

pub async fn json_body(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert_eq!(content_type.as_deref(), Some("application/json"), "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts an OpenAI error envelope with this status, param and code; returns the message.
pub async fn assert_error(response: reqwest::Response, status: u16, param: Option<&str>, code: &str) -> String {
    let body = json_body(response, status).await;
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
    assert!(error["type"].is_string() && error.as_object().unwrap().len() == 4, "{body}");
    error["message"].as_str().unwrap().to_string()
}

pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

pub fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    encode(&DynamicImage::ImageRgb8(RgbImage::from_pixel(width, height, Rgb(rgb))), ImageFormat::Png)
}

/// A mask whose alpha is `alpha(x, y)`.
pub fn mask(width: u32, height: u32, alpha: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    let rgba = RgbaImage::from_fn(width, height, |x, y| image::Rgba([0, 0, 0, alpha(x, y)]));
    encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png)
}

pub fn data_url(bytes: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The images of a response, decoded.
pub fn images(body: &Value) -> Vec<DynamicImage> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(d["b64_json"].as_str().unwrap()).unwrap();
            image::load_from_memory(&bytes).unwrap()
        })
        .collect()
}

pub fn b64_bytes(entry: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(entry["b64_json"].as_str().unwrap()).unwrap()
}

pub fn file_part(bytes: Vec<u8>, name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()).mime_str("application/octet-stream").unwrap()
}

/// Reads the log of an `easel serve` started with JSON logs until it says where it listens
/// (`host:port`); every line must be JSON. Panics after `within`, or if the log ends first.
pub fn listening_address(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    within: std::time::Duration,
) -> String {
    let started = std::time::Instant::now();
    loop {
        assert!(started.elapsed() < within, "the server did not start within {within:?}");
        let line = lines.next().expect("the server exited before listening").unwrap();
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if let Some(address) = entry["fields"]["address"].as_str() {
            return address.to_string();
        }
    }
}

/// One `easel serve --config CONFIG` process, with JSON logs (kept beside the config, in
/// `CONFIG.log`, for a failing test's reader); killed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    /// `http://host:port`.
    pub address: String,
    pub config: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl ServeProcess {
    /// Starts the process with `env` added to its environment and waits until it listens.
    pub fn start(config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead as _, BufReader};
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
            .args(["serve", "--config"])
            .arg(config)
            .env("EASEL__SERVER__LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = format!("http://{}", listening_address(&mut lines, std::time::Duration::from_secs(60)));
        // Keep draining the log so the process never blocks on a full pipe.
        let log = config.with_extension("log");
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
            }
        });
        Self { child, address, config: config.to_path_buf(), env }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// SIGKILL: the process ends at once, mid-whatever.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.child.wait().unwrap()
    }

    /// `easel ARGS --config CONFIG` with the same environment; its standard output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny random model made by the real CLI (`easel models create-random --scale tiny`, with
/// `args` such as `--family flux-schnell --seed 5`), once per test binary and `args`, in a folder
/// that lives as long as the binary. Checks the CLI says the weights are random.
pub fn random_model(args: &[&str]) -> std::path::PathBuf {
    static DIRS: std::sync::Mutex<Vec<(String, tempfile::TempDir)>> = std::sync::Mutex::new(Vec::new());
    let key = args.join(" ");
    let mut dirs = DIRS.lock().unwrap();
    if let Some((_, dir)) = dirs.iter().find(|(k, _)| *k == key) {
        return dir.path().join("model");
    }
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(["models", "create-random", "--scale", "tiny"])
        .args(args)
        .arg("--out")
        .arg(dir.path().join("model"))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "create-random {key} failed: {said}");
    assert!(said.to_lowercase().contains("random"), "create-random must say the weights are random: {said}");
    let path = dir.path().join("model");
    dirs.push((key, dir));
    path
}

/// A `[[models]]` entry for a local model.
pub fn local_model(id: &str, options: serde_json::Map<String, Value>) -> easel_server::config::ModelConfig {
    easel_server::config::ModelConfig { id: id.into(), backend: "local".into(), response_format: None, options }
}

/// Polls `/readyz` until no model is still loading; returns its last status and body (200, or
/// 503 naming what failed to load).
pub async fn wait_loaded(app: &TestApp) -> (u16, String) {
    let started = std::time::Instant::now();
    loop {
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        let status = ready.status().as_u16();
        let body = ready.text().await.unwrap();
        if !body.contains("is still loading") {
            return (status, body);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "the model did not load: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// [`wait_loaded`], requiring every model to have loaded.
pub async fn wait_ready(app: &TestApp) {
    let (status, body) = wait_loaded(app).await;
    assert_eq!(status, 200, "a model failed to load: {body}");
}

/// A server with one local model `id` configured by `options` (later keys win), returned once
/// no model is still loading (check [`wait_ready`] where it must have loaded).
pub async fn spawn_local(id: &str, options: &[(&str, Value)]) -> TestApp {
    let options: serde_json::Map<String, Value> = options.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
    let model = local_model(id, options);
    let app = spawn_app_with(move |c| c.models = vec![model], Vec::new()).await;
    wait_loaded(&app).await;
    app
}

/// The `event:` names of a server-sent event stream, in order.
pub fn sse_event_kinds(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.strip_prefix("event: ")).collect()
}
