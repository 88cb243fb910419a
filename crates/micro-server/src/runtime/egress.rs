//! Where tenants' git sources may be fetched from: public hosts over HTTP(S). Internal,
//! loopback, link-local and other non-public addresses are refused unless the operator
//! allows them (`MICRO_RUNTIME_ALLOW_HOSTS`: host names, addresses and CIDRs), so a
//! tenant cannot make the server reach what only the server can reach.

use micro_core::{Code, Status};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const ID: &str = "runtime";

/// One entry of the operator's allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// A host name, as written in URLs (lower case).
    Host(String),
    /// An address range.
    Net(IpAddr, u8),
}

/// Parses `MICRO_RUNTIME_ALLOW_HOSTS` entries (`git.internal`, `10.1.2.3`, `10.0.0.0/8`,
/// `fd00::/8`).
pub(crate) fn parse_allowed(entries: &[String]) -> Result<Vec<Allowed>, String> {
    let mut out = Vec::new();
    for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (addr, bits) = match e.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (e, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        match (addr.parse::<IpAddr>(), bits) {
            (Ok(ip), None) => out.push(Allowed::Net(ip, if ip.is_ipv4() { 32 } else { 128 })),
            (Ok(ip), Some(b)) => {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits = b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("{e:?}: a bad prefix"))?;
                out.push(Allowed::Net(ip, bits));
            }
            (Err(_), None)
                if e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)) && !e.starts_with('.') =>
            {
                out.push(Allowed::Host(e.to_ascii_lowercase()))
            }
            _ => return Err(format!("{e:?}: give a host name, an address or a CIDR")),
        }
    }
    Ok(out)
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What kind of non-public address `ip` is (`None` for a public one).
pub(crate) fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if let Some(v4) = embedded_v4(v6) {
                internal_v4(v4)
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else if seg[0] & 0xff00 == 0xff00 {
                Some("multicast")
            } else if (seg[0] == 0x2001 && seg[1] == 0x0db8) || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0]) {
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address inside a mapped, compatible, NAT64 or 6to4 IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = v6.segments();
    let o = v6.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // ::ffff:a.b.c.d, ::a.b.c.d, and NAT64's 64:ff9b::a.b.c.d
    let mapped = seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0);
    if mapped || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(last)
    } else if seg[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])) // 6to4
    } else {
        None
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if (a == 192 && b == 0 && ip.octets()[2] == 0) || ip.is_documentation() || (a == 198 && (b & 0xfe) == 18) {
        Some("reserved")
    } else {
        None
    }
}

/// A tenant's git URL, checked: where git may connect (the addresses its host resolved
/// to, pinned so a second lookup cannot point elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    /// The URL to give git (normalised).
    pub(crate) url: String,
    /// `host:port:addr[,addr…]` for git's `http.curloptResolve`, when the host is a name.
    pub(crate) pin: Option<String>,
}

/// Checks a tenant's git URL: HTTP(S) only, to a public address or one the operator
/// allows. The error says why, for the tenant.
pub(crate) async fn check(raw: &str, allowed: &[Allowed]) -> Result<Remote, Status> {
    let denied = |why: String| Status::new(Code::PermissionDenied, ID, why);
    let lower = raw.to_ascii_lowercase();
    if lower.starts_with("file:") || raw.starts_with('/') || !raw.contains("://") && !raw.contains('@') {
        return Err(denied(format!(
            "{raw}: sources on the server (file://, paths) are only for admins of namespace micro; \
             run a local folder (micro run ./dir uploads it) or an https:// git URL"
        )));
    }
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(denied(format!("{raw}: git sources of a namespace other than micro are https:// or http:// URLs")));
    }
    // One parser decides the host, and git gets its serialisation: what is checked is
    // what is fetched.
    if raw.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'\\') {
        return Err(Status::bad_request(ID, format!("{raw:?} is not a valid URL")));
    }
    let url = url::Url::parse(raw).map_err(|e| Status::bad_request(ID, format!("{raw}: {e}")))?;
    let port = url.port_or_known_default().ok_or_else(|| Status::bad_request(ID, format!("{raw}: no port")))?;
    let (name, ips): (Option<String>, Vec<IpAddr>) = match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            let found = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::lookup_host((&*d, port)))
                .await
                .map_err(|_| Status::unavailable(ID, format!("resolving {d}: timed out")))?
                .map_err(|e| Status::unavailable(ID, format!("resolving {d}: {e}")))?;
            let mut ips: Vec<IpAddr> = found.map(|a: SocketAddr| a.ip()).collect();
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                return Err(Status::unavailable(ID, format!("{d} has no address")));
            }
            (Some(d), ips)
        }
        Some(url::Host::Ipv4(ip)) => (None, vec![IpAddr::V4(ip)]),
        Some(url::Host::Ipv6(ip)) => (None, vec![IpAddr::V6(ip)]),
        None => return Err(Status::bad_request(ID, format!("{raw}: no host"))),
    };
    let host_allowed = name.as_ref().is_some_and(|n| allowed.iter().any(|a| *a == Allowed::Host(n.clone())));
    if !host_allowed {
        for ip in &ips {
            let Some(kind) = internal(*ip) else { continue };
            if allowed.iter().any(|a| matches!(a, Allowed::Net(net, bits) if in_net(*ip, *net, *bits))) {
                continue;
            }
            let shown = name.as_deref().map(|n| format!("{n} resolves to {ip}")).unwrap_or_else(|| ip.to_string());
            return Err(denied(format!(
                "{shown}, a {kind} address: git sources on internal, loopback and link-local hosts are refused \
                 (the operator can allow hosts with MICRO_RUNTIME_ALLOW_HOSTS)"
            )));
        }
    }
    let pin = name.map(|n| {
        let addrs: Vec<String> =
            ips.iter().map(|ip| if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() }).collect();
        format!("{n}:{port}:{}", addrs.join(","))
    });
    Ok(Remote { url: url.to_string(), pin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for (ip, internal_kind) in [
            ("127.0.0.1", true),
            ("10.2.3.4", true),
            ("172.16.0.1", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("0.0.0.0", true),
            ("100.64.0.1", true),
            ("::1", true),
            ("::", true),
            ("fe80::1", true),
            ("fd00::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("2002:7f00:1::", true),
            ("140.82.121.3", false),
            ("2606:4700::1111", false),
        ] {
            assert_eq!(internal(ip.parse().unwrap()).is_some(), internal_kind, "{ip}");
        }
    }

    #[test]
    fn allow_lists() {
        let a = parse_allowed(&["git.internal".into(), " 10.0.0.0/8".into(), "127.0.0.1".into(), "fd00::/8".into()])
            .unwrap();
        assert_eq!(a[0], Allowed::Host("git.internal".into()));
        assert!(in_net("10.9.9.9".parse().unwrap(), "10.0.0.0".parse().unwrap(), 8));
        assert!(!in_net("11.0.0.1".parse().unwrap(), "10.0.0.0".parse().unwrap(), 8));
        assert!(in_net("fd12::1".parse().unwrap(), "fd00::".parse().unwrap(), 8));
        assert!(parse_allowed(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_allowed(&["bad host!".into()]).is_err());
    }

    #[tokio::test]
    async fn urls() {
        let refused = |r: Result<Remote, Status>| r.unwrap_err().code();
        assert_eq!(refused(check("file:///srv/repo.git", &[]).await), Code::PermissionDenied);
        assert_eq!(refused(check("/srv/repo.git", &[]).await), Code::PermissionDenied);
        assert_eq!(refused(check("ssh://git@example.com/a.git", &[]).await), Code::PermissionDenied);
        assert_eq!(refused(check("http://127.0.0.1:9/a.git", &[]).await), Code::PermissionDenied);
        assert_eq!(refused(check("http://[::1]:9/a.git", &[]).await), Code::PermissionDenied);
        assert_eq!(refused(check("http://localhost:9/a.git", &[]).await), Code::PermissionDenied);
        assert_eq!(refused(check("http://0x7f000001/a.git", &[]).await), Code::PermissionDenied);
        let ok = check("http://127.0.0.1:9/a.git", &parse_allowed(&["127.0.0.0/8".into()]).unwrap()).await.unwrap();
        assert_eq!(ok, Remote { url: "http://127.0.0.1:9/a.git".into(), pin: None });
        let ok = check("http://localhost:9/a.git", &parse_allowed(&["localhost".into()]).unwrap()).await.unwrap();
        assert!(ok.pin.unwrap().starts_with("localhost:9:"));
    }
}
