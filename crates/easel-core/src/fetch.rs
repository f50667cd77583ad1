//! Downloads of image URLs, for input images given as links and for providers that answer with
//! links.
//!
//! Fetching a client-supplied URL from a server is a classic SSRF hole: the server sits inside a
//! network the client cannot see (loopback services, the cloud metadata endpoint, private
//! ranges), and a host name says nothing about where it points. So four rules hold for every
//! download, and for every hop of a redirect chain:
//!
//! 1. **The name is allow-listed.** A [`HostPattern`] matches the URL's scheme (`https` always,
//!    plain `http` only where the entry says `http://`), port and host. A `*` stands for part of
//!    exactly **one** DNS label: `*.example.com` matches `a.example.com`, not `a.b.example.com`
//!    nor `example.com`, so an entry never admits hosts deeper than its author wrote.
//! 2. **The address is public.** Names are resolved by [`PublicResolver`], the only resolver the
//!    client has, which refuses a name if *any* of its addresses is loopback, private, link-local,
//!    CGNAT, multicast, unspecified, broadcast, documentation, benchmarking, cloud metadata or an
//!    IPv4-mapped, -compatible, NAT64 or 6to4 form of one (see [`non_public_range`]). The address
//!    it checked is the address the connection uses: there is no second lookup a rebinding DNS
//!    server could answer differently. Names never get an exception, so `localhost` allow-listed
//!    by name is still refused.
//! 3. **Private addresses only by their literal.** An entry that names an IP address exactly
//!    (`http://127.0.0.1:9000`, a local fake or an internal image store the operator chose) admits
//!    that address when the URL names it literally: the operator wrote the address, so nothing
//!    was resolved behind their back.
//! 4. **Redirects are followed by hand** (`redirect::Policy::none()`, at most
//!    [`MAX_REDIRECTS`]), each `Location` checked by rules 1-3 before it is requested.
//!
//! Proxies from the environment are ignored: through a proxy the proxy resolves the name, and the
//! address check would be meaningless. The body is capped while it streams and must sniff as
//! PNG, JPEG or WebP. Errors say only that a URL is not allowed or could not be downloaded: a
//! remote status, a resolved address or a connection error would let a client map the network
//! behind the server. The detail goes to the log, for the operator.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use url::{Host, Url};

use crate::client::ThreadClient;
use crate::imaging::sniff;

/// Redirect hops followed before a download is given up.
pub const MAX_REDIRECTS: usize = 5;

/// One allow-list entry: `host`, `*.host`, `prefix-*.host` (each `*` within one label), or an IP
/// address (`127.0.0.1`, `[::1]`), optionally `:port` and an `http://` prefix to allow plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    http: bool,
    /// Lower case; an IPv6 address in brackets, as [`Url::host_str`] writes it.
    host: String,
    port: Option<u16>,
    /// The address this entry names exactly, if it is an IP literal.
    address: Option<IpAddr>,
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
        let bad_port = || format!("allow-list entry '{text}': bad port");
        let (host, port) = if let Some(close) = rest.strip_prefix('[').and_then(|r| r.find(']')) {
            // `[v6]` or `[v6]:port`.
            let (host, after) = rest.split_at(close + 2);
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(bad_port)?)),
            }
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address: its last group is not a port.
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port.parse().map_err(|_| bad_port())?)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("allow-list entry '{text}': expected a host name"));
        }
        let host = host.to_ascii_lowercase();
        let address = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        let host = match address {
            // Written as `Url::host_str` writes it (`[::ffff:7f00:1]`, not `::ffff:127.0.0.1`).
            Some(IpAddr::V6(v6)) => Host::<String>::Ipv6(v6).to_string(),
            Some(IpAddr::V4(v4)) => Host::<String>::Ipv4(v4).to_string(),
            None if host.contains(['[', ']', ':']) => {
                return Err(format!("allow-list entry '{text}': not a host name or an IP address"));
            }
            None => {
                if host.split('.').any(str::is_empty) {
                    return Err(format!("allow-list entry '{text}': empty label in the host name"));
                }
                host
            }
        };
        Ok(Self { http, host, port, address })
    }

    /// Whether the URL's scheme, port and host name match this entry. Names only: where the name
    /// points is checked when it is resolved.
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
        scheme_ok && port_ok && host_matches(&self.host, &host.to_ascii_lowercase())
    }

    /// The IP address this entry names literally, if any.
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }
}

/// The entry as it means: `https://host`, `http://host:port`.
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", if self.http { "http" } else { "https" }, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// Label by label: the same number of labels, and each `*` matches characters within its label
/// only (a label that is `*` alone matches any one non-empty label).
fn host_matches(pattern: &str, host: &str) -> bool {
    let (mut p, mut h) = (pattern.split('.'), host.split('.'));
    loop {
        match (p.next(), h.next()) {
            (None, None) => return true,
            (Some(p), Some(h)) if !h.is_empty() && label_glob(p, h) => {}
            _ => return false,
        }
    }
}

/// `*` matches any run of characters; called on single labels, so never across a dot.
fn label_glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && label_glob(tail, &rest[i..]))
        }
    }
}

/// The name of the non-public range `ip` falls in, or `None` for a public unicast address.
///
/// IPv4: this network (0/8, the unspecified address included), private (10/8, 172.16/12,
/// 192.168/16), CGNAT (100.64/10, where some clouds put their metadata), loopback (127/8),
/// link-local (169.254/16, with the metadata address 169.254.169.254), IETF protocol
/// assignments (192.0.0/24), documentation (192.0.2/24, 198.51.100/24, 203.0.113/24), the 6to4
/// relay (192.88.99/24), benchmarking (198.18/15), multicast (224/4), reserved (240/4) and
/// broadcast. IPv6: unspecified, loopback, the IPv4-compatible (::/96) forms, IPv4-mapped
/// (::ffff:0:0/96), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) forms judged by the IPv4 address
/// they carry, the local NAT64 prefix, discard-only, unique local (fc00::/7, with AWS's metadata
/// fd00:ec2::254), link-local and site-local, multicast, the IETF protocol assignments (Teredo and
/// benchmarking inside), documentation, and everything outside global unicast (2000::/3).
pub fn non_public_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let n = u32::from(ip);
    let within = |net: [u8; 4], bits: u32| n >> (32 - bits) == u32::from(Ipv4Addr::from(net)) >> (32 - bits);
    Some(match () {
        () if ip == Ipv4Addr::new(169, 254, 169, 254) => "cloud metadata",
        () if ip.is_unspecified() => "unspecified",
        () if ip.is_broadcast() => "broadcast",
        () if a == 0 => "this network",
        () if ip.is_loopback() => "loopback",
        () if ip.is_private() => "private",
        () if within([100, 64, 0, 0], 10) => "shared address space (CGNAT)",
        () if ip.is_link_local() => "link-local",
        () if [a, b, c] == [192, 0, 0] => "IETF protocol assignments",
        () if [a, b, c] == [192, 0, 2] || [a, b, c] == [198, 51, 100] || [a, b, c] == [203, 0, 113] => "documentation",
        () if [a, b, c] == [192, 88, 99] => "6to4 relay anycast",
        () if within([198, 18, 0, 0], 15) => "benchmarking",
        () if ip.is_multicast() => "multicast",
        () if a >= 240 => "reserved",
        () => return None,
    })
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    Some(match s {
        _ if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) => "cloud metadata",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // ::ffff:a.b.c.d reaches a.b.c.d over IPv4: judged as that address.
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => return v4_range(embedded(hi, lo)),
        // ::a.b.c.d, deprecated and never routed.
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        // A NAT64 gateway forwards 64:ff9b::a.b.c.d to a.b.c.d.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return v4_range(embedded(hi, lo)),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64",
        // 2002:AABB:CCDD::/48 is the 6to4 network of AA.BB.CC.DD.
        [0x2002, hi, lo, ..] => return v4_range(embedded(hi, lo)),
        [0x100, 0, 0, 0, ..] => "discard-only",
        [first, ..] if first & 0xfe00 == 0xfc00 => "unique local",
        [first, ..] if first & 0xffc0 == 0xfe80 => "link-local",
        [first, ..] if first & 0xffc0 == 0xfec0 => "site-local",
        [first, ..] if first & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0x0db8, ..] => "documentation",
        [0x3fff, second, ..] if second & 0xf000 == 0 => "documentation",
        [0x2001, second, ..] if second < 0x200 => "IETF protocol assignments",
        [first, ..] if first & 0xe000 != 0x2000 => "reserved",
        _ => return None,
    })
}

/// A name whose addresses are not all public: the resolver's error, found again in reqwest's
/// error chain so the download fails as "not allowed" rather than as a network failure.
#[derive(Debug, thiserror::Error)]
#[error("'{name}' resolves to {address}, in the {range} range")]
pub struct NonPublicAddress {
    pub name: String,
    pub address: IpAddr,
    pub range: &'static str,
}

/// The fetcher's only resolver: the system's (`getaddrinfo`, through tokio), refusing any name
/// with a non-public address. reqwest connects to the addresses it returns, so what was checked
/// is what is used.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if let Some((address, range)) = addrs.iter().find_map(|a| non_public_range(a.ip()).map(|r| (a.ip(), r))) {
                return Err(
                    Box::new(NonPublicAddress { name, address, range }) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            if addrs.is_empty() {
                return Err(format!("'{name}' has no addresses").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why a download failed, in words safe to show the client who sent the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not on the allow-list, a name with a non-public address, or a redirect to either.
    #[error("the URL is not allowed")]
    NotAllowed,
    #[error("the image is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the download is not a PNG, JPEG or WebP image")]
    NotAnImage,
    /// The host did not answer with the image (a failed connection, a timeout, an error status,
    /// a broken body, too many redirects). `transient` when trying again may help (network
    /// failures, 408, 429, 5xx). The cause is logged, never told.
    #[error("the image could not be downloaded")]
    Unavailable { transient: bool },
}

/// An HTTP client that only fetches images from allowed hosts at public addresses.
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    client: ThreadClient,
    allow: Arc<Vec<HostPattern>>,
    max_bytes: usize,
    /// For the whole download, every redirect hop included.
    timeout: Duration,
}

impl ImageFetcher {
    pub fn new(allow: Vec<HostPattern>, max_bytes: usize, timeout: Duration) -> anyhow::Result<Self> {
        let client = ThreadClient::new(move || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(PublicResolver)
                .no_proxy()
                .timeout(timeout)
                .build()
        })?;
        Ok(Self { client, allow: Arc::new(allow), max_bytes, timeout })
    }

    /// Whether the allow-list admits the URL's scheme, port and host name. Where a name points is
    /// checked only when it is fetched.
    pub fn allows(&self, url: &Url) -> bool {
        self.allow.iter().any(|p| p.matches(url))
    }

    /// For a URL the allow-list refuses although an entry names its host, with another scheme or
    /// port: in plain words, the entry that names it and the one that would allow it, for the
    /// operator who wrote the list (a provider's result links). `None` when the URL is allowed
    /// or no entry names its host: then nothing is said beyond "not allowed".
    pub fn near_miss(&self, url: &Url) -> Option<String> {
        let scheme = url.scheme();
        if self.allows(url) || !matches!(scheme, "http" | "https") {
            return None;
        }
        let host = url.host_str()?.to_ascii_lowercase();
        let port = url.port_or_known_default()?;
        let listed = self.allow.iter().find(|p| host_matches(&p.host, &host))?;
        Some(format!(
            "host '{host}' is listed as '{listed}', but the URL is {scheme} on port {port}; the entry '{scheme}://{host}:{port}' would allow it"
        ))
    }

    /// Rules 1 and 3 of the module docs for one hop; rule 2 is the resolver's, at connect time.
    fn check(&self, url: &Url) -> Result<(), FetchError> {
        let matching = || self.allow.iter().filter(|p| p.matches(url));
        if matching().next().is_none() {
            tracing::info!(host = url.host_str().unwrap_or(""), "image download refused: the host is not allow-listed");
            return Err(FetchError::NotAllowed);
        }
        let literal = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(Host::Domain(_)) => return Ok(()),
            None => return Err(FetchError::NotAllowed),
        };
        match non_public_range(literal) {
            Some(range) if !matching().any(|p| p.address() == Some(literal)) => {
                tracing::info!(address = %literal, range, "image download refused: a non-public address not named by the allow-list");
                Err(FetchError::NotAllowed)
            }
            _ => Ok(()),
        }
    }

    pub async fn fetch(&self, url: &Url) -> Result<Bytes, FetchError> {
        tokio::time::timeout(self.timeout, self.follow(url)).await.unwrap_or_else(|_| {
            tracing::info!(host = url.host_str().unwrap_or(""), "image download failed: it took too long");
            Err(FetchError::Unavailable { transient: true })
        })
    }

    /// Requests `url`, following redirects by hand, each hop checked before it is requested.
    async fn follow(&self, url: &Url) -> Result<Bytes, FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            self.check(&url)?;
            let response = self.client.local().get(url.clone()).send().await.map_err(|e| failure(&url, &e))?;
            let status = response.status();
            if status.is_redirection() {
                let next = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok());
                let Some(next) = next else {
                    tracing::info!(host = url.host_str().unwrap_or(""), %status, "image download failed: a redirect without a usable Location");
                    return Err(FetchError::Unavailable { transient: false });
                };
                url = next;
                continue;
            }
            if !status.is_success() {
                tracing::info!(host = url.host_str().unwrap_or(""), %status, "image download failed");
                let transient = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
                return Err(FetchError::Unavailable { transient });
            }
            return self.read(&url, response).await;
        }
        tracing::info!(
            host = url.host_str().unwrap_or(""),
            "image download failed: more than {MAX_REDIRECTS} redirects"
        );
        Err(FetchError::Unavailable { transient: false })
    }

    async fn read(&self, url: &Url, response: reqwest::Response) -> Result<Bytes, FetchError> {
        if response.content_length().is_some_and(|len| len > self.max_bytes as u64) {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failure(url, &e))?;
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

/// A reqwest error as a [`FetchError`]: the resolver's refusal is "not allowed", anything else
/// "could not be downloaded"; the detail goes to the log only.
fn failure(url: &Url, error: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<NonPublicAddress>() {
            tracing::info!(host = url.host_str().unwrap_or(""), reason = %refused, "image download refused: a non-public address");
            return FetchError::NotAllowed;
        }
        source = e.source();
    }
    tracing::info!(host = url.host_str().unwrap_or(""), error = %error_chain(error), "image download failed");
    FetchError::Unavailable { transient: true }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn patterns() {
        let p = HostPattern::parse("dashscope-result-*.oss-*.aliyuncs.com").unwrap();
        assert!(p.matches(&url("https://dashscope-result-wlcb.oss-cn-wulanchabu.aliyuncs.com/a.png")));
        assert!(!p.matches(&url("http://dashscope-result-wlcb.oss-cn-wulanchabu.aliyuncs.com/a.png")));
        assert!(!p.matches(&url("https://evil.com/dashscope-result-x.aliyuncs.com")));
        assert!(!p.matches(&url("https://dashscope-result-x.oss-y.aliyuncs.com.evil.com/")));
        let local = HostPattern::parse("http://127.0.0.1:8123").unwrap();
        assert!(local.matches(&url("http://127.0.0.1:8123/x.png")));
        assert!(!local.matches(&url("http://127.0.0.1:8124/x.png")));
        assert_eq!(local.address(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let v6 = HostPattern::parse("http://[::1]:8123").unwrap();
        assert!(v6.matches(&url("http://[::1]:8123/x.png")));
        assert_eq!(v6.address(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(HostPattern::parse("[0:0::1]").unwrap(), HostPattern::parse("[::1]").unwrap());
        let mapped = HostPattern::parse("[::ffff:127.0.0.1]").unwrap();
        assert!(mapped.matches(&url("https://[::ffff:7f00:1]/x.png")));
        assert!(!mapped.matches(&url("https://127.0.0.1/x.png")));
        assert!(HostPattern::parse("ftp://x").is_err());
        assert!(HostPattern::parse("a..b").is_err());
    }

    #[test]
    fn a_near_miss_names_the_entry_and_the_one_that_would_allow_it() {
        let f = fetcher(&["127.0.0.1".into(), "http://cdn.example.com:9000".into()]);
        let hint = f.near_miss(&url("http://127.0.0.1:8080/x.png")).unwrap();
        assert_eq!(
            hint,
            "host '127.0.0.1' is listed as 'https://127.0.0.1', but the URL is http on port 8080; the entry 'http://127.0.0.1:8080' would allow it"
        );
        let hint = f.near_miss(&url("https://cdn.example.com/x.png")).unwrap();
        assert!(
            hint.contains("listed as 'http://cdn.example.com:9000'") && hint.contains("https on port 443"),
            "{hint}"
        );
        // Nothing names the host, or the URL is allowed: nothing to say beyond "not allowed".
        assert_eq!(f.near_miss(&url("http://10.0.0.1:8080/x.png")), None);
        assert_eq!(f.near_miss(&url("https://127.0.0.1/x.png")), None);
        assert_eq!(f.near_miss(&url("ftp://127.0.0.1/x.png")), None);
    }

    #[test]
    fn a_wildcard_matches_exactly_one_label() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches(&url("https://a.example.com/x.png")));
        assert!(p.matches(&url("https://A.Example.COM/x.png")));
        assert!(!p.matches(&url("https://a.b.example.com/x.png")), "two labels");
        assert!(!p.matches(&url("https://example.com/x.png")), "no label");
        assert!(!p.matches(&url("https://aexample.com/x.png")));
        let prefix = HostPattern::parse("cdn-*.example.com").unwrap();
        assert!(prefix.matches(&url("https://cdn-eu.example.com/")));
        assert!(!prefix.matches(&url("https://cdn-eu.evil.example.com/")));
        assert!(!prefix.matches(&url("https://cdn-eu.evil.com.example.com/")));
        // A wildcard never stands for an address.
        let glob = HostPattern::parse("http://127.0.0.*").unwrap();
        assert!(glob.matches(&url("http://127.0.0.1/")));
        assert_eq!(glob.address(), None);
    }

    #[test]
    fn every_non_public_range_is_named() {
        let refused = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.1.2.3", "private"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.254", "shared address space (CGNAT)"),
            ("100.100.100.200", "shared address space (CGNAT)"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.1", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("::ffff:100.64.1.1", "shared address space (CGNAT)"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("2002:7f00:1::1", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("100::1", "discard-only"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001::1", "IETF protocol assignments"),
            ("2001:2::1", "IETF protocol assignments"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("4000::1", "reserved"),
        ];
        for (text, range) in refused {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(non_public_range(ip), Some(range), "{text}");
        }
        for public in
            ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "172.32.0.1", "198.20.0.1", "223.255.255.1"]
                .into_iter()
                .chain([
                    "2606:4700::1111",
                    "2a00:1450:4001::1",
                    "::ffff:8.8.8.8",
                    "64:ff9b::808:808",
                    "2002:808:808::1",
                ])
        {
            assert_eq!(non_public_range(public.parse().unwrap()), None, "{public}");
        }
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1: `/img.png` is a PNG, `/to?<url>` redirects to
    /// `<url>`, everything else is 404. Counts requests.
    async fn server() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (status, extra, body): (&str, String, &[u8]) = if path == "/img.png" {
                        ("200 OK", String::new(), b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR")
                    } else if let Some(target) = path.strip_prefix("/to?") {
                        ("302 Found", format!("Location: {target}\r\n"), b"")
                    } else {
                        ("404 Not Found", String::new(), b"missing")
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.write_all(body).await;
                });
            }
        });
        (port, hits)
    }

    fn fetcher(allow: &[String]) -> ImageFetcher {
        let allow = allow.iter().map(|a| HostPattern::parse(a).unwrap()).collect();
        ImageFetcher::new(allow, 1 << 20, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_and_the_literal_address_is_allowed() {
        let (port, hits) = server().await;
        let f = fetcher(&[format!("http://localhost:{port}"), format!("http://127.0.0.1:{port}")]);
        let by_name = f.fetch(&url(&format!("http://localhost:{port}/img.png"))).await;
        assert!(matches!(by_name, Err(FetchError::NotAllowed)), "{by_name:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing was connected to");
        let by_address = f.fetch(&url(&format!("http://127.0.0.1:{port}/img.png"))).await.unwrap();
        assert!(by_address.starts_with(b"\x89PNG"));
        // A wildcard that happens to match the address does not name it.
        let glob = fetcher(&[format!("http://127.0.0.*:{port}")]);
        let err = glob.fetch(&url(&format!("http://127.0.0.1:{port}/img.png"))).await.unwrap_err();
        assert!(matches!(err, FetchError::NotAllowed), "{err:?}");
        // The IPv4-mapped form of a named address is another address, and not allowed.
        let mapped = fetcher(&[format!("http://127.0.0.1:{port}")]);
        let err = mapped.fetch(&url(&format!("http://[::ffff:127.0.0.1]:{port}/img.png"))).await.unwrap_err();
        assert!(matches!(err, FetchError::NotAllowed), "{err:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn every_redirect_hop_is_checked() {
        let (port, hits) = server().await;
        let f = fetcher(&[format!("http://127.0.0.1:{port}"), format!("http://localhost:{port}")]);
        // Allowed host → a name on the allow-list that resolves to loopback.
        let hop = url(&format!("http://127.0.0.1:{port}/to?http://localhost:{port}/img.png"));
        assert!(matches!(f.fetch(&hop).await, Err(FetchError::NotAllowed)));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "the redirect was not followed");
        // Allowed host → an address no entry names.
        let hop = url(&format!("http://127.0.0.1:{port}/to?http://127.0.0.2:{port}/img.png"));
        assert!(matches!(f.fetch(&hop).await, Err(FetchError::NotAllowed)));
        // Redirects within the allow-list are followed, relative ones included.
        let hop = url(&format!("http://127.0.0.1:{port}/to?/img.png"));
        assert!(f.fetch(&hop).await.unwrap().starts_with(b"\x89PNG"));
        // A loop ends.
        let looping = url(&format!("http://127.0.0.1:{port}/to?/to?/to?/to?/to?/to?/to?/img.png"));
        assert!(matches!(f.fetch(&looping).await, Err(FetchError::Unavailable { transient: false })));
    }

    #[tokio::test]
    async fn errors_tell_nothing_about_the_remote_side() {
        let (port, _) = server().await;
        let f = fetcher(&[format!("http://127.0.0.1:{port}"), "http://127.0.0.1:1".into()]);
        let missing = f.fetch(&url(&format!("http://127.0.0.1:{port}/missing"))).await.unwrap_err();
        assert!(matches!(missing, FetchError::Unavailable { transient: false }), "{missing:?}");
        let refused = f.fetch(&url("http://127.0.0.1:1/img.png")).await.unwrap_err();
        assert!(matches!(refused, FetchError::Unavailable { transient: true }), "{refused:?}");
        for e in [missing, refused] {
            let text = e.to_string();
            assert_eq!(text, "the image could not be downloaded");
        }
    }
}
