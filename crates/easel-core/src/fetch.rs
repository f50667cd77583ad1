//! Downloads of image URLs, for input images given as links and for providers that answer with
//! links.
//!
//! Fetching a client-supplied URL from a server is a classic SSRF hole, so nothing is fetched
//! unless its host matches the configured allow-list: `https` always, plain `http` only where the
//! entry says `http://`. Redirects are followed only to allowed hosts, the body is capped while it
//! streams, and the bytes must sniff as PNG, JPEG or WebP.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use url::Url;

use crate::imaging::sniff;

/// One allow-list entry: `host`, `*.host`, `prefix-*.host`, optionally `:port` and an `http://`
/// prefix to allow plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    http: bool,
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (http, rest) = match text.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some(("https", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(format!("allow-list entry '{text}': unsupported scheme '{scheme}'"));
            }
            None => (false, text),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.contains(']') || host.ends_with(']') => {
                let port = port.parse().map_err(|_| format!("allow-list entry '{text}': bad port"))?;
                (host, Some(port))
            }
            _ => (rest, None),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("allow-list entry '{text}': expected a host name"));
        }
        Ok(Self { http, host: host.to_ascii_lowercase(), port })
    }

    pub fn matches(&self, url: &Url) -> bool {
        let scheme_ok = match url.scheme() {
            "https" => true,
            "http" => self.http,
            _ => false,
        };
        let Some(host) = url.host_str() else {
            return false;
        };
        let port_ok = self.port.is_none_or(|p| url.port_or_known_default() == Some(p));
        scheme_ok && port_ok && glob(&self.host, &host.to_ascii_lowercase())
    }
}

/// `*` matches any run of characters (dots included).
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the URL's host is not on this server's allow-list for image downloads")]
    NotAllowed,
    #[error("the download failed with HTTP status {0}")]
    Status(u16),
    #[error("the image is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the download is not a PNG, JPEG or WebP image")]
    NotAnImage,
    #[error("the download failed: {0}")]
    Network(String),
}

/// An HTTP client that only fetches images from allowed hosts.
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    client: reqwest::Client,
    allow: Arc<Vec<HostPattern>>,
    max_bytes: usize,
}

impl ImageFetcher {
    pub fn new(allow: Vec<HostPattern>, max_bytes: usize, timeout: Duration) -> anyhow::Result<Self> {
        let allow = Arc::new(allow);
        let policy_allow = Arc::clone(&allow);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if policy_allow.iter().any(|p| p.matches(attempt.url())) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder().redirect(policy).timeout(timeout).build()?;
        Ok(Self { client, allow, max_bytes })
    }

    pub fn allows(&self, url: &Url) -> bool {
        self.allow.iter().any(|p| p.matches(url))
    }

    pub async fn fetch(&self, url: &Url) -> Result<Bytes, FetchError> {
        if !self.allows(url) {
            return Err(FetchError::NotAllowed);
        }
        let response = self.client.get(url.clone()).send().await.map_err(|e| FetchError::Network(e.to_string()))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::NotAllowed);
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if response.content_length().is_some_and(|len| len > self.max_bytes as u64) {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FetchError::Network(e.to_string()))?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(FetchError::TooLarge(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        if sniff(&body).is_none() {
            return Err(FetchError::NotAnImage);
        }
        Ok(body.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn patterns() {
        let p = HostPattern::parse("dashscope-result-*.aliyuncs.com").unwrap();
        assert!(p.matches(&url("https://dashscope-result-wlcb.oss-cn-wulanchabu.aliyuncs.com/a.png")));
        assert!(!p.matches(&url("http://dashscope-result-wlcb.aliyuncs.com/a.png")));
        assert!(!p.matches(&url("https://evil.com/dashscope-result-x.aliyuncs.com")));
        assert!(!p.matches(&url("https://aliyuncs.com.evil.com/")));
        let local = HostPattern::parse("http://127.0.0.1:8123").unwrap();
        assert!(local.matches(&url("http://127.0.0.1:8123/x.png")));
        assert!(!local.matches(&url("http://127.0.0.1:8124/x.png")));
        assert!(HostPattern::parse("ftp://x").is_err());
    }
}
