//! One configured provider: where it is, its key, its HTTP client and its result-image fetcher.
//!
//! Each provider owns one HTTP client per thread ([`ThreadClient`]), shared by every model and
//! target that uses it, so connections (and TLS sessions) are pooled and reused across requests
//! (a relayed call does not pay a handshake) and stay on the thread that serves them.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use easel_core::backend::Capabilities;
use easel_core::client::ThreadClient;
use easel_core::fetch::{HostPattern, ImageFetcher};
use reqwest::RequestBuilder;
use url::Url;

use crate::config::{ProviderConfig, ProviderKind, Secret, api_key, secs};
use crate::resilience::RetryPolicy;

#[derive(Debug)]
pub struct Provider {
    pub id: String,
    pub kind: ProviderKind,
    /// The API root, without a trailing slash.
    pub base: String,
    key: Option<Secret>,
    client: ThreadClient,
    pub fetcher: ImageFetcher,
    /// The most bytes read from one response (`max_response_bytes`).
    pub max_response_bytes: usize,
    pub policy: RetryPolicy,
    pub circuit_failures: u32,
    pub circuit_cooldown: Duration,
    pub poll_interval: Duration,
    pub poll_max_interval: Duration,
    /// Whether any host is allowed for result downloads.
    pub downloads: bool,
    /// The inline or named profile from config (kind `openai`).
    pub profile: Option<serde_json::Value>,
    /// Kind `easel`: the node's models and what each accepts, once the node has answered
    /// `GET /models` ([`crate::node::learn`]).
    pub node_models: OnceLock<HashMap<String, Capabilities>>,
}

impl Provider {
    pub fn from_config(c: ProviderConfig) -> anyhow::Result<Self> {
        let owner = format!("provider '{}'", c.id);
        if c.id.trim().is_empty() {
            bail!("a provider has an empty 'id'");
        }
        let url = Url::parse(c.base_url.trim()).with_context(|| format!("{owner}: 'base_url' is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("{owner}: 'base_url' must be http or https");
        }
        let base = normalise_base(c.kind, &url);
        let key = api_key(c.api_key_env.as_deref(), &owner)?;
        let default_timeout = match c.kind {
            ProviderKind::Openai => 180.0,
            ProviderKind::Dashscope => 300.0,
            ProviderKind::Easel => 600.0,
        };
        let policy = RetryPolicy {
            timeout: secs(c.timeout_secs, default_timeout, "timeout_secs")?,
            retries: c.retries.unwrap_or(2),
            backoff_base: secs(c.backoff_base_secs, 0.5, "backoff_base_secs")?,
            backoff_max: secs(c.backoff_max_secs, 8.0, "backoff_max_secs")?,
            retry_after_max: secs(c.retry_after_max_secs, 20.0, "retry_after_max_secs")?,
        };
        let connect = secs(c.connect_timeout_secs, 10.0, "connect_timeout_secs")?;
        let client = ThreadClient::new(move || {
            reqwest::Client::builder()
                .connect_timeout(connect)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
                .build()
        })
        .with_context(|| format!("{owner}: building the HTTP client"))?;
        let mut allow = Vec::new();
        let hosts = c.allow_hosts.unwrap_or_else(|| match c.kind {
            // DashScope's result links: dashscope-result-<region>.oss-<region>.aliyuncs.com
            // (a `*` stands for part of one label only).
            ProviderKind::Dashscope => vec!["dashscope-result*.oss-*.aliyuncs.com".to_string()],
            ProviderKind::Openai | ProviderKind::Easel => Vec::new(),
        });
        let downloads = !hosts.is_empty();
        for entry in &hosts {
            allow.push(HostPattern::parse(entry).map_err(|e| anyhow::anyhow!("{owner}: allow_hosts: {e}"))?);
        }
        let max_bytes = c.max_image_bytes.unwrap_or(32 * 1024 * 1024);
        let max_response_bytes = c.max_response_bytes.unwrap_or(crate::http::DEFAULT_MAX_RESPONSE_BYTES);
        if max_response_bytes == 0 {
            bail!("{owner}: 'max_response_bytes' must be at least 1");
        }
        let fetcher = ImageFetcher::new(allow, max_bytes, policy.timeout.min(Duration::from_secs(120)))
            .with_context(|| format!("{owner}: building the image fetcher"))?;
        if c.profile.is_some() && c.kind == ProviderKind::Dashscope {
            bail!("{owner}: 'profile' applies to kind \"openai\" only; DashScope models are recognised by name");
        }
        Ok(Self {
            id: c.id,
            kind: c.kind,
            base,
            key,
            client,
            fetcher,
            max_response_bytes,
            policy,
            circuit_failures: c.circuit_failures.unwrap_or(5),
            circuit_cooldown: secs(c.circuit_cooldown_secs, 30.0, "circuit_cooldown_secs")?,
            poll_interval: secs(c.poll_interval_secs, 2.0, "poll_interval_secs")?,
            poll_max_interval: secs(c.poll_max_interval_secs, 10.0, "poll_max_interval_secs")?,
            downloads,
            profile: c.profile,
            node_models: OnceLock::new(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn authed(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.key {
            Some(key) => request.bearer_auth(&key.0),
            None => request,
        }
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.authed(self.client.local().post(self.url(path)))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.authed(self.client.local().get(self.url(path)))
    }
}

/// OpenAI-style roots keep their path (a bare host gets `/v1`); DashScope's root is the host, with
/// `/api/v1` and `/compatible-mode/v1` stripped, since its image paths start at `/api/v1`.
fn normalise_base(kind: ProviderKind, url: &Url) -> String {
    let text = url.as_str().trim_end_matches('/').to_string();
    let path = url.path().trim_end_matches('/');
    match kind {
        ProviderKind::Openai | ProviderKind::Easel if path.is_empty() => format!("{text}/v1"),
        ProviderKind::Openai | ProviderKind::Easel => text,
        ProviderKind::Dashscope => {
            let mut root = text;
            for suffix in ["/compatible-mode/v1", "/api/v1"] {
                if let Some(stripped) = root.strip_suffix(suffix) {
                    root = stripped.to_string();
                }
            }
            root
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(normalise_base(ProviderKind::Openai, &u("https://api.openai.com")), "https://api.openai.com/v1");
        assert_eq!(normalise_base(ProviderKind::Openai, &u("https://api.x.ai/v1/")), "https://api.x.ai/v1");
        assert_eq!(
            normalise_base(ProviderKind::Dashscope, &u("https://dashscope-intl.aliyuncs.com/api/v1")),
            "https://dashscope-intl.aliyuncs.com"
        );
        assert_eq!(
            normalise_base(ProviderKind::Dashscope, &u("https://dashscope.aliyuncs.com/compatible-mode/v1")),
            "https://dashscope.aliyuncs.com"
        );
    }
}
