//! Configuration: compiled-in defaults, then an optional TOML file (`--config`), then
//! environment variables `EASEL__SECTION__KEY`, then command-line flags.
//!
//! Two phases: [`Config`] is the serde shape with `deny_unknown_fields`, so a typo is an error and
//! not a silently ignored key; [`Config::validate`] is pure (no file system, network or model
//! loading) and returns the parsed values, [`Validated`], that `Application::build` uses as they
//! are, so nothing is parsed twice. `easel serve --check-config` runs `validate` and then checks
//! each model without serving it (`crate::backends::check`). Secrets never live in the file: it
//! names environment variables that hold them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use easel_core::fetch::HostPattern;
use easel_core::imaging::EncodeSettings;
use easel_core::limits;
use easel_core::service::ServiceSettings;
use easel_core::types::ResponseFormat;
use easel_wire::request::UnknownParams;

use crate::storage::blobs::Spec;
use crate::storage::db::Engine;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use url::Url;

/// What [`Config::validate`] parsed, used as it is by `Application::build`.
#[derive(Debug, Clone)]
pub struct Validated {
    pub bind: SocketAddr,
    /// `/metrics` on a listener of its own.
    pub metrics_bind: Option<SocketAddr>,
    pub allow_image_hosts: Vec<HostPattern>,
    pub service: ServiceSettings,
    /// `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// A folder, `file:///...` or `s3://bucket/prefix`.
    pub blobs: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub images: ImagesConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub tasks: TasksConfig,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Upstream providers, handed to the upstream backend as they are.
    #[serde(default)]
    pub providers: Vec<serde_json::Value>,
    /// The chat model that rewrites prompts for `-pe` models.
    #[serde(default)]
    pub prompt_enhancer: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: String,
    /// The base of hosted image URLs, as clients reach this server (default: `http://` + bind;
    /// required on a wildcard bind such as `0.0.0.0` or `[::]`).
    pub public_url: Option<Url>,
    /// `reject` (OpenAI's behaviour, 400 `unknown_parameter`) or `ignore`.
    pub unknown_parameters: UnknownParams,
    /// `response_format` when a request names none.
    pub default_response_format: ResponseFormat,
    /// The model for requests that name none (default: the first that serves the operation).
    pub default_model: Option<String>,
    /// The largest request body, in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Hosts input image URLs may be downloaded from (`host`, `*.host`, `http://host:port`).
    pub allow_image_hosts: Vec<String>,
    /// The largest image downloaded from a URL, in bytes.
    pub max_download_bytes: usize,
    /// Seconds between `:` keep-alive comments on streams.
    pub keep_alive_secs: u64,
    /// Serve without API keys even on a non-loopback address.
    pub insecure_no_auth: bool,
    /// `text` (default) or `json` (one JSON object a line, each with the request id).
    pub log_format: LogFormat,
    /// Seconds a client may take to send a request body; a stalled upload then gets a 400
    /// envelope instead of holding a connection (and a drain) forever.
    pub body_timeout_secs: u64,
    /// Seconds in-flight requests may take to finish after SIGTERM; new requests get a 503
    /// meanwhile, and the process exits 0 when they are done or the time is up.
    pub shutdown_grace_secs: u64,
    /// What this node does: `all` (default) serves the API and runs async tasks, `api` serves
    /// the API and leaves tasks to other nodes, `worker` runs tasks and serves only health and
    /// metrics (`easel serve --role`).
    pub role: Role,
    /// The web playground at `/` (`true`/`false`; unset: on when bound to a loopback address).
    pub playground: Option<bool>,
    /// Threads serving HTTP connections, each a single-threaded runtime given its share of the
    /// connections (`crate::lanes`); 0 (default): one per CPU core.
    pub http_threads: usize,
}

impl ServerConfig {
    /// Whether `/` serves the playground on this address (`[server] playground`).
    pub fn playground_on(&self, bind: SocketAddr) -> bool {
        self.playground.unwrap_or_else(|| bind.ip().is_loopback())
    }
}

/// A node's part in a cluster sharing one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts and answers requests; runs no async tasks.
    Api,
    /// Runs async tasks; serves only `/healthz`, `/readyz` and `/metrics`.
    Worker,
    #[default]
    All,
}

impl Role {
    pub fn serves_api(self) -> bool {
        self != Self::Worker
    }

    pub fn runs_tasks(self) -> bool {
        self != Self::Api
    }
}

/// Async tasks (`Prefer: respond-async`, the DashScope routes), on nodes whose role runs them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Tasks this node runs at once.
    pub concurrency: usize,
    /// Seconds a claimed task stays this node's without renewal; renewed every third of it while
    /// the task runs. A node that dies holds its task this long before another takes it over.
    pub lease_secs: u64,
    /// Whether a task whose node died while running it (its lease ran out) runs once more;
    /// otherwise it fails.
    pub retry_running: bool,
    /// Milliseconds between looks for queued tasks (a task submitted to this node starts at
    /// once) and for leases run out.
    pub poll_interval_ms: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self { concurrency: 4, lease_secs: 30, retry_running: true, poll_interval_ms: 1000 }
    }
}

impl TasksConfig {
    pub fn settings(&self) -> crate::tasks::Settings {
        crate::tasks::Settings {
            concurrency: self.concurrency,
            lease: std::time::Duration::from_secs(self.lease_secs),
            retry_running: self.retry_running,
            poll: std::time::Duration::from_millis(self.poll_interval_ms),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Per-key limits (set on each key: `easel keys create|update`, `/admin/v1/keys`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// How long a request's quota reservation is held before any node's sweep releases it (the
    /// node that made it died). Longer than the slowest generation.
    pub reservation_ttl_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { reservation_ttl_secs: 3600 }
    }
}

/// `GET /metrics` in Prometheus' text format.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// An address of its own (no API key asked there, so keep it private); without it the
    /// main listener serves `/metrics` to any valid API key.
    pub bind: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, bind: None }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: None,
            unknown_parameters: UnknownParams::Reject,
            default_response_format: ResponseFormat::B64Json,
            default_model: None,
            max_body_bytes: 64 * 1024 * 1024,
            allow_image_hosts: Vec::new(),
            max_download_bytes: 25 * 1024 * 1024,
            keep_alive_secs: 5,
            insecure_no_auth: false,
            log_format: LogFormat::Text,
            body_timeout_secs: 60,
            shutdown_grace_secs: 30,
            role: Role::All,
            playground: None,
            http_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where the embedded defaults live: `easel.db` (SQLite) and `blobs/`.
    pub data_dir: PathBuf,
    /// A database URL, `sqlite://...` or `postgres://user@host:port/db`, instead of
    /// `data_dir/easel.db`.
    pub database: Option<String>,
    /// Where hosted images live, instead of `data_dir/blobs`: a folder, `file:///...`, or
    /// `s3://bucket/prefix` with the endpoint and credentials in `AWS_*` environment variables.
    pub blobs: Option<String>,
    /// Seconds hosted image URLs stay valid.
    pub url_ttl_secs: u64,
    /// Seconds between sweeps that delete expired hosted images.
    pub sweep_interval_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./easel-data"),
            database: None,
            blobs: None,
            url_ttl_secs: 3600,
            sweep_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// An environment variable holding the key that signs hosted image URLs. Nodes sharing a
    /// blob store must share it; without it a key is generated in `data_dir`.
    pub url_signing_key_env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Backend calls in flight at once when `n` is fanned out.
    pub fan_out: usize,
    /// JPEG quality when a request gives no `output_compression`.
    pub jpeg_quality: u8,
    /// WebP quality when a request gives no `output_compression`.
    pub webp_quality: u8,
    /// libwebp method, 0 (fastest) to 6 (smallest).
    pub webp_method: u8,
    /// The most pixels an input image may have.
    pub max_input_pixels: u64,
    /// The most input images an edit may carry, whatever the model (OpenAI: 16).
    pub max_input_images: usize,
    /// The most bytes one input image may take once decoded (checked on its header, before
    /// any pixel buffer exists).
    pub max_decoded_bytes: u64,
    /// Image decodes (and the pixel work after them) running at once across all requests;
    /// 0 = twice the CPU cores.
    pub max_concurrent_decodes: usize,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        let encode = easel_core::imaging::EncodeSettings::default();
        Self {
            fan_out: 4,
            jpeg_quality: encode.jpeg_quality,
            webp_quality: encode.webp_quality,
            webp_method: encode.webp_method,
            max_input_pixels: limits::MAX_INPUT_PIXELS,
            max_input_images: limits::MAX_INPUT_IMAGES,
            max_decoded_bytes: ServiceSettings::default().max_decoded_bytes,
            max_concurrent_decodes: 0,
        }
    }
}

/// One `[[models]]` entry: `id`, `backend`, the model's defaults, and the backend's own keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    pub id: String,
    pub backend: String,
    /// `response_format` when a request names none, instead of `server.default_response_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl Config {
    /// Defaults, then `file` (if any), then `EASEL__SECTION__KEY` environment variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("EASEL__").split("__"));
        let config: Config = figment.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
    }

    /// Pure checks: addresses parse, ids are unique, values are in range. Returns what it
    /// parsed.
    pub fn validate(&self) -> anyhow::Result<Validated> {
        let bind = parse_addr(&self.server.bind, "server.bind")?;
        // Hosted image URLs default to `http://<bind>`, which names no reachable host on a wildcard.
        anyhow::ensure!(
            !bind.ip().is_unspecified() || self.server.public_url.is_some(),
            "server.bind {bind} listens on every address, so hosted image URLs (response_format=url) cannot be \
             made from it: set server.public_url to the base URL clients reach this server at (e.g. https://images.example.com)"
        );
        let metrics_bind = match (&self.metrics.bind, self.metrics.enabled) {
            (Some(addr), true) => Some(parse_addr(addr, "metrics.bind")?),
            _ => None,
        };
        let images = &self.images;
        anyhow::ensure!(images.webp_method <= 6, "images.webp_method must be 0 to 6");
        anyhow::ensure!((1..=100).contains(&images.jpeg_quality), "images.jpeg_quality must be 1 to 100");
        anyhow::ensure!(images.webp_quality <= 100, "images.webp_quality must be 0 to 100");
        anyhow::ensure!(images.fan_out >= 1, "images.fan_out must be at least 1");
        anyhow::ensure!(images.max_input_images >= 1, "images.max_input_images must be at least 1");
        anyhow::ensure!(images.max_input_pixels >= 1, "images.max_input_pixels must be at least 1");
        anyhow::ensure!(images.max_decoded_bytes >= 1, "images.max_decoded_bytes must be at least 1");
        anyhow::ensure!(self.storage.url_ttl_secs >= 1, "storage.url_ttl_secs must be at least 1");
        anyhow::ensure!(self.server.body_timeout_secs >= 1, "server.body_timeout_secs must be at least 1");
        anyhow::ensure!(self.tasks.concurrency >= 1, "tasks.concurrency must be at least 1");
        anyhow::ensure!(self.tasks.lease_secs >= 1, "tasks.lease_secs must be at least 1");
        anyhow::ensure!(self.tasks.poll_interval_ms >= 10, "tasks.poll_interval_ms must be at least 10");
        Engine::of(&self.database_url())?;
        Spec::parse(&self.blobs())?;
        let allow_image_hosts = self
            .server
            .allow_image_hosts
            .iter()
            .map(|h| HostPattern::parse(h).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut ids = std::collections::HashSet::new();
        for model in &self.models {
            anyhow::ensure!(!model.id.trim().is_empty(), "a [[models]] entry has an empty id");
            anyhow::ensure!(ids.insert(&model.id), "model '{}' is configured twice", model.id);
        }
        if let Some(default) = &self.server.default_model {
            anyhow::ensure!(ids.contains(default), "server.default_model '{default}' is not a configured model");
        }
        let service = ServiceSettings {
            default_response_format: self.server.default_response_format,
            max_input_images: images.max_input_images,
            max_input_pixels: images.max_input_pixels,
            max_decoded_bytes: images.max_decoded_bytes,
            max_concurrent_decodes: match images.max_concurrent_decodes {
                0 => ServiceSettings::default_concurrent_decodes(),
                n => n,
            },
            fan_out: images.fan_out,
            encode: EncodeSettings {
                jpeg_quality: images.jpeg_quality,
                webp_quality: images.webp_quality,
                webp_method: images.webp_method,
            },
        };
        Ok(Validated {
            bind,
            metrics_bind,
            allow_image_hosts,
            service,
            database_url: self.database_url(),
            blobs: self.blobs(),
        })
    }

    pub fn database_url(&self) -> String {
        self.storage
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.storage.data_dir.join("easel.db").display()))
    }

    /// Where hosted images live: `storage.blobs`, or `data_dir/blobs`.
    pub fn blobs(&self) -> String {
        match &self.storage.blobs {
            Some(spec) => spec.clone(),
            None => self.storage.data_dir.join("blobs").display().to_string(),
        }
    }
}

fn parse_addr(text: &str, key: &str) -> anyhow::Result<SocketAddr> {
    text.parse().map_err(|e| anyhow::anyhow!("{key} '{text}' is not an address like 127.0.0.1:8080: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_needs_public_url() {
        for bind in ["0.0.0.0:8080", "[::]:8080"] {
            let mut config = Config::default();
            config.server.bind = bind.into();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("server.public_url"), "{error}");
            config.server.public_url = Some("https://images.example.com".parse().unwrap());
            config.validate().unwrap();
        }
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn a_model_may_set_its_own_response_format() {
        figment::Jail::expect_with(|jail| {
            let models = "[[models]]\nid = \"d\"\nbackend = \"upstream\"\nresponse_format = \"url\"\ntargets = []\n\
                          [[models]]\nid = \"g\"\nbackend = \"upstream\"\ntargets = []\n";
            jail.create_file("easel.toml", models)?;
            let config = Config::load(Some(Path::new("easel.toml"))).unwrap();
            assert_eq!(config.models[0].response_format, Some(ResponseFormat::Url));
            assert!(!config.models[0].options.contains_key("response_format"), "not a backend key");
            assert_eq!(config.models[1].response_format, None);
            jail.create_file(
                "bad.toml",
                "[[models]]\nid = \"d\"\nbackend = \"upstream\"\nresponse_format = \"png\"\n",
            )?;
            assert!(Config::load(Some(Path::new("bad.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment's Jail fixes the closure's error type")]
    fn defaults_validate_and_env_overrides() {
        let config = Config::default();
        assert_eq!(config.validate().unwrap().bind.port(), 8080);
        figment::Jail::expect_with(|jail| {
            jail.create_file("easel.toml", "[server]\nbind = \"127.0.0.1:9000\"\n[[models]]\nid = \"m\"\nbackend = \"local\"\nfamily = \"sd-turbo\"\n")?;
            jail.set_env("EASEL__SERVER__UNKNOWN_PARAMETERS", "ignore");
            let config = Config::load(Some(Path::new("easel.toml"))).unwrap();
            assert_eq!(config.server.bind, "127.0.0.1:9000");
            assert_eq!(config.server.unknown_parameters, UnknownParams::Ignore);
            assert_eq!(config.models[0].options["family"], "sd-turbo");
            jail.create_file("bad.toml", "[server]\nbindd = \"x\"\n")?;
            assert!(Config::load(Some(Path::new("bad.toml"))).unwrap_err().to_string().contains("bindd"));
            Ok(())
        });
    }
}
