//! Links to this node's API gateway — its OpenAPI documents — as the browser reaches it.
//!
//! The dashboard learns where the gateway listens from the registry: `micro server`
//! registers the core service `api` in namespace `micro` with the address the gateway is
//! bound to (metadata `address`). The browser reaches that port at the host it reached the
//! dashboard by (the two share a process and, with `MICRO_TLS`, a certificate), unless
//! the gateway listens on one address that host is not.
//!
//! A link carries no token and no header, so the gateway puts the browser in the
//! namespace of the host's subdomain, else `micro` (docs/edge.md, "OpenAPI"). Where that
//! is not the session's namespace, the page gives the URL with the `micro-namespace`
//! header to send instead of a link that would show another namespace's document.

use super::Page;
use maud::{Markup, html};
use micro_core::registry::Registry;
use std::net::{IpAddr, SocketAddr};

/// The gateway, as the browser reaches it.
pub(crate) struct Gateway {
    /// `http(s)://host:port`.
    origin: String,
    /// The namespace the gateway gives a request that names none, at that host.
    reached: String,
}

/// Where a document is.
#[derive(Debug, PartialEq)]
pub(crate) enum Link {
    /// A URL the browser opens as it is.
    Open(String),
    /// A URL to fetch with the `micro-namespace` header (a link would reach another
    /// namespace, named here).
    WithHeader { url: String, reached: String },
}

impl Gateway {
    /// This node's gateway, from the `api` core service's registration; `None` when the
    /// registry does not say where it is or the browser cannot be sent there.
    pub(crate) async fn of(page: &Page) -> Option<Gateway> {
        let registry = micro::registry::RemoteRegistry::on(page.web.channel(None).ok()?);
        let records = registry.get_service(micro_core::namespace::DEFAULT, "api").await.ok()?;
        let bound: SocketAddr = records.iter().find_map(|s| s.metadata.get("address")?.parse().ok())?;
        Gateway::at(page.host.as_ref(), page.secure, bound)
    }

    /// The gateway bound to `bound`, for a browser that reached the dashboard at `host`.
    fn at(host: Option<&http::uri::Authority>, secure: bool, bound: SocketAddr) -> Option<Gateway> {
        let host = browser_host(host.map(|a| a.host()), bound.ip())?;
        let scheme = if secure { "https" } else { "http" };
        Some(Gateway { origin: format!("{scheme}://{host}:{}", bound.port()), reached: host_namespace(&host) })
    }

    /// The OpenAPI document of `namespace`, or of one `service` of it (`None` for a name
    /// the gateway would not take).
    pub(crate) fn openapi(&self, namespace: &str, service: Option<&str>) -> Option<Link> {
        let path = match service {
            // Service names are letters, digits, `.`, `_` and `-`: nothing to encode.
            Some(s) => {
                micro_core::registry::validate_name(s).ok()?;
                format!("/openapi/{s}.json")
            }
            None => "/openapi.json".to_string(),
        };
        let url = format!("{}{path}", self.origin);
        Some(if self.reached == namespace {
            Link::Open(url)
        } else {
            Link::WithHeader { url, reached: self.reached.clone() }
        })
    }
}

/// The paragraph about the OpenAPI document of the page's namespace, or of one `service`
/// of it; nothing when the gateway is not known.
pub(crate) fn openapi(page: &Page, gateway: Option<&Gateway>, service: Option<&str>) -> Markup {
    let ns = &page.session.namespace;
    let Some(link) = gateway.and_then(|g| g.openapi(ns, service)) else { return html! {} };
    html! {
        p.openapi {
            "OpenAPI document of "
            @match service { Some(s) => { code { (s) } }, None => { "namespace " code { (ns) } } }
            ", from the gateway: "
            @match &link {
                Link::Open(url) => { a href=(url) { (url) } },
                Link::WithHeader { url, .. } => { code { "curl -H 'micro-namespace: " (ns) "' " (url) } },
            }
        }
        @if let Link::WithHeader { reached, .. } = &link {
            p.hint {
                "Opened as a link it would list namespace " code { (reached) } ": the gateway takes the namespace of a "
                "request without a token or header from its host's subdomain, else " code { "micro" } "."
            }
        }
    }
}

/// The host the browser reaches a gateway bound to `bound` at: the host it reached the
/// dashboard by when the gateway listens on every address, or on loopback and the
/// browser came by loopback too; else the gateway's own address.
fn browser_host(browser: Option<&str>, bound: IpAddr) -> Option<String> {
    let loopback = |h: &str| {
        h == "localhost"
            || h.ends_with(".localhost")
            || h.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    match browser {
        Some(h) if bound.is_unspecified() || (bound.is_loopback() && loopback(h)) => Some(h.to_string()),
        // Listening everywhere, but which of its names the browser knows is not known.
        _ if bound.is_unspecified() => None,
        _ => Some(match bound {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        }),
    }
}

/// The namespace the gateway gives a request without a token or `micro-namespace` header
/// at `host`: the first label of a name of three labels or more (`shop.example.com`) when
/// it is a namespace's name and not `www`, else `micro` — the gateway's rule.
fn host_namespace(host: &str) -> String {
    let labels: Vec<&str> = host.split('.').collect();
    let is_ip = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok();
    if labels.len() >= 3 && !is_ip && labels[0] != "www" && micro_core::namespace::validate(labels[0]).is_ok() {
        return labels[0].to_string();
    }
    micro_core::namespace::DEFAULT.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(host: &str, secure: bool, bound: &str) -> Option<Gateway> {
        let authority: http::uri::Authority = host.parse().unwrap();
        Gateway::at(Some(&authority), secure, bound.parse().unwrap())
    }

    #[test]
    fn links_follow_the_browsers_host_and_the_gateways_port() {
        let open = |host, secure, bound, ns, service| gateway(host, secure, bound).unwrap().openapi(ns, service);
        // Loopback: the browser's own name for it (which the local CA's certificate covers).
        assert_eq!(
            open("127.0.0.1:8082", false, "127.0.0.1:8080", "micro", Some("helloworld")),
            Some(Link::Open("http://127.0.0.1:8080/openapi/helloworld.json".into()))
        );
        assert_eq!(
            open("localhost:8082", true, "127.0.0.1:8080", "micro", None),
            Some(Link::Open("https://localhost:8080/openapi.json".into()))
        );
        assert_eq!(
            open("[::1]:8082", false, "[::1]:8080", "micro", None),
            Some(Link::Open("http://[::1]:8080/openapi.json".into()))
        );
        // Listening everywhere: the name the browser used.
        assert_eq!(
            open("node1.example:8082", false, "0.0.0.0:80", "micro", None),
            Some(Link::Open("http://node1.example:80/openapi.json".into()))
        );
        // Listening on one other address: that address.
        assert_eq!(
            open("localhost:8082", false, "192.0.2.7:8080", "micro", None),
            Some(Link::Open("http://192.0.2.7:8080/openapi.json".into()))
        );
        // A name the gateway would not take is not linked.
        assert_eq!(open("localhost:8082", false, "127.0.0.1:8080", "micro", Some("a/../b")), None);
        // Listening everywhere, and the browser named no host: nowhere to send it.
        assert!(Gateway::at(None, false, "0.0.0.0:8080".parse().unwrap()).is_none());
        assert!(Gateway::at(None, false, "127.0.0.1:8080".parse().unwrap()).is_some());
    }

    #[test]
    fn a_namespace_a_link_cannot_reach_gets_the_header() {
        let link = |host, ns| gateway(host, false, "0.0.0.0:8080").unwrap().openapi(ns, Some("cart"));
        assert_eq!(
            link("127.0.0.1:8082", "shop"),
            Some(Link::WithHeader { url: "http://127.0.0.1:8080/openapi/cart.json".into(), reached: "micro".into() })
        );
        assert_eq!(
            link("shop.example.com", "shop"),
            Some(Link::Open("http://shop.example.com:8080/openapi/cart.json".into()))
        );
        assert_eq!(
            link("dash.example.com", "micro"),
            Some(Link::WithHeader {
                url: "http://dash.example.com:8080/openapi/cart.json".into(),
                reached: "dash".into()
            })
        );
        for (host, ns) in [("example.com", "micro"), ("www.example.com", "micro"), ("10.1.2.3", "micro")] {
            assert_eq!(host_namespace(host), ns, "{host}");
        }
    }
}
