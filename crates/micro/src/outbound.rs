//! Requests a server makes to addresses its tenants name (an identity provider, a
//! browser's push service): the one way products reach outside.
//!
//! Only public addresses are reached: an URL naming a private, loopback, link-local,
//! shared, benchmarking or documentation address is refused before anything is sent, and
//! a name that resolves to one is refused when connecting (so what is checked is what is
//! connected to: a tenant cannot aim the server at the network it runs in, nor rebind a
//! name to it). HTTPS only, no credentials in the URL, bounded time and answer size.
//! [`Outbound::new`] with `private` lifts the address and scheme rules, for an operator
//! whose providers live on a private network, and for tests.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a request went nowhere.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL is not one the server fetches (scheme, credentials, a private address).
    #[error("{0}")]
    Refused(String),
    /// No answer in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// The address could not be reached (or resolves to no public address).
    #[error("{0} cannot be reached: {1}")]
    Unreachable(String, String),
    /// The answer was unreadable or over the size allowed.
    #[error("the answer of {0} is unreadable or too large: {1}")]
    Unreadable(String, String),
}

/// An answer: its status, headers and body.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: http::StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body (at most the size asked for).
    pub body: Bytes,
}

/// Checks an URL the server is asked to fetch: `https` (or `http` where `private`), no
/// credentials, and no literal address off the public internet (unless `private`).
/// Returns it parsed, or why not in words naming `what`.
pub fn check_url(what: &str, u: &str, private: bool) -> Result<url::Url, String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("{what} {u:?}: {e}"))?;
    let scheme_ok = parsed.scheme() == "https" || (private && parsed.scheme() == "http");
    if !scheme_ok || parsed.host_str().is_none() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{what} {u:?}: an https:// URL without credentials"));
    }
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = ip
        && !private
        && !public(ip)
    {
        return Err(format!("{what} {u:?}: not a public address"));
    }
    Ok(parsed)
}

/// Whether `ip` is on the public internet: not loopback, private, link-local, shared
/// (100.64/10), benchmarking (198.18/15), documentation, multicast, reserved or
/// unspecified, nor an IPv6 form of one (mapped, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`).
pub fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
            // NAT64 (the well-known prefix), 6to4, SIIT (`::ffff:0:a.b.c.d`) and the old
            // IPv4-compatible form (`::a.b.c.d`) carry an IPv4 address: judge that.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return public(embedded(s[1], s[2]));
            }
            if s[0..4] == [0, 0, 0, 0] && ((s[4] == 0xffff && s[5] == 0) || s[4..6] == [0, 0]) {
                return public(embedded(s[6], s[7]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]))
        }
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;

/// Resolves names to public addresses only (unless private ones are allowed).
#[derive(Clone)]
struct Resolver {
    private: bool,
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let private = self.private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.filter(|a| private || public(a.ip())).collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other(format!("{} has no public address", name.as_str())));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// A client for requests to addresses tenants name. Cheap to clone (one pool).
#[derive(Clone)]
pub struct Outbound {
    client: Client<Https, Full<Bytes>>,
    private: bool,
    timeout: Duration,
}

impl Outbound {
    /// A client whose requests (each: connecting, answering and reading the answer) take
    /// `timeout` at most; `private` lets it reach private addresses and plain HTTP.
    pub fn new(private: bool, timeout: Duration) -> Outbound {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots.clone()).with_no_client_auth())
            .or_else(|_| {
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            })
            // The ring provider supports TLS 1.3 always; nothing would be safe without it.
            .unwrap_or_else(|_| std::process::abort());
        let mut http = HttpConnector::new_with_resolver(Resolver { private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // Few idle connections per host, not kept long: the hosts are the tenants' choice.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        Outbound { client, private, timeout }
    }

    /// Whether private addresses and plain HTTP are allowed.
    pub fn private(&self) -> bool {
        self.private
    }

    /// Checks `u` as this client would (see [`check_url`]).
    pub fn check(&self, what: &str, u: &str) -> Result<url::Url, String> {
        check_url(what, u, self.private)
    }

    /// Sends `req` and reads at most `most` bytes of its answer.
    pub async fn send(&self, req: http::Request<Full<Bytes>>, most: usize) -> Result<Answer, OutboundError> {
        let uri = req.uri().to_string();
        check_url("URL", &uri, self.private).map_err(OutboundError::Refused)?;
        let res = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| OutboundError::Timeout(uri.clone()))?
            .map_err(|e| OutboundError::Unreachable(uri.clone(), format!("{e:?}")))?;
        let (parts, body) = res.into_parts();
        let body = tokio::time::timeout(self.timeout, Limited::new(body, most).collect())
            .await
            .map_err(|_| OutboundError::Timeout(uri.clone()))?
            .map_err(|e| OutboundError::Unreadable(uri, e.to_string()))?
            .to_bytes();
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "198.18.0.1",
            "198.19.255.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "100::1",
            "::7f00:1",
            "::a00:1",
            "::ffff:0:7f00:1",
            "64:ff9b:1::a00:1",
            "fec0::1",
        ] {
            assert!(!public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "::808:808"] {
            assert!(public(ip.parse().unwrap()), "{ip}");
        }
        assert!(check_url("issuer", "http://accounts.example.com", false).is_err());
        assert!(check_url("issuer", "https://169.254.169.254/latest", false).is_err());
        assert!(check_url("issuer", "https://[64:ff9b::a9fe:a9fe]/latest", false).is_err());
        assert!(check_url("issuer", "https://user:pw@accounts.example.com", false).is_err());
        assert!(check_url("issuer", "https://accounts.example.com", false).is_ok());
        assert!(check_url("issuer", "http://127.0.0.1:9000", true).is_ok());
    }
}
