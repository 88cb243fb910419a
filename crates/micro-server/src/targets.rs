//! Where a registered node may point. A node's address is where the proxy and the
//! gateway send other people's requests, so a tenant must not be able to register one
//! at the server's own listeners (the dashboard, the proxy's core services) or at
//! link-local and cloud metadata addresses: that would turn the gateway into a way in
//! (server-side request forgery).

use micro_core::{Code, Status};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Whether tenants' nodes may be anywhere on the server's host (`MICRO_NODE_LOCAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeLocal {
    /// Any address of the host (a developer's server, tenants' services run by hand).
    #[default]
    Any,
    /// On the host, only the ports the runtime gave the namespace's instances (a hosted
    /// platform: a tenant cannot point its service at another's instance, or at what
    /// listens on the host, and have the gateway or the proxy connect there for it).
    Runtime,
}

impl std::str::FromStr for NodeLocal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(NodeLocal::Any),
            "runtime" => Ok(NodeLocal::Runtime),
            _ => Err(format!("{s:?}: use any or runtime")),
        }
    }
}

/// The ports of this host the runtime gave its instances, by namespace, and whether a
/// tenant's node on the host must be one of them. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct LocalNodes {
    on: bool,
    ports: Arc<Mutex<HashMap<u16, String>>>,
}

impl LocalNodes {
    pub(crate) fn new(mode: NodeLocal) -> LocalNodes {
        LocalNodes { on: mode == NodeLocal::Runtime, ports: Arc::default() }
    }

    /// Whether tenants' nodes on the host are held to the runtime's ports.
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// Port `port` is an instance of namespace `ns` now.
    pub(crate) fn give(&self, port: u16, ns: &str) {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).insert(port, ns.to_string());
    }

    /// The instance on `port` of namespace `ns` ended.
    pub(crate) fn take_back(&self, port: u16, ns: &str) {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        if ports.get(&port).is_some_and(|n| n == ns) {
            ports.remove(&port);
        }
    }

    /// Refused when a node of namespace `ns` (not `micro`) at `address` is on this host
    /// but not at a port the runtime gave `ns`, or is named (a name could later resolve to
    /// the host). Checked at registration and before each connection.
    pub(crate) fn admit(&self, ns: &str, address: &str) -> Result<(), Status> {
        if !self.on || ns == micro_core::namespace::DEFAULT {
            return Ok(());
        }
        let Some((host, port)) = Targets::split(address) else {
            return Err(refuse(address, "is not host:port"));
        };
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Err(refuse(address, "is a name: a tenant's node is an address here (MICRO_NODE_LOCAL=runtime)"));
        };
        let own = self.ports.lock().unwrap_or_else(|e| e.into_inner()).get(&port).is_some_and(|n| n == ns);
        if !own && on_this_host(ip) {
            return Err(refuse(
                address,
                &format!("is on the server's host but no instance the runtime runs for namespace {ns}"),
            ));
        }
        Ok(())
    }
}

/// Whether `ip` is one of this host's addresses (loopback, unspecified, or one a socket
/// can be bound to here).
fn on_this_host(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The addresses nodes may not have: the server's own listeners, and a deny list of
/// networks (by default link-local, which holds the cloud metadata endpoints, and the
/// unspecified address); `MICRO_NODE_DENY` replaces the list.
#[derive(Clone, Debug)]
pub(crate) struct Targets {
    own: Vec<SocketAddr>,
    /// The names this server's listeners go by (`host:port`, like the proxy's advertised
    /// address, which this process serves in-process).
    names: Vec<String>,
    deny: Vec<Net>,
    /// Where on this host tenants' nodes may be.
    pub(crate) local: LocalNodes,
}

/// A network, `address/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// The default deny list.
pub(crate) const DEFAULT_DENY: &str = "169.254.0.0/16,fe80::/10,0.0.0.0/8,::/128,fc00::/7";

impl Net {
    /// Parses `a.b.c.d/n`, `x::/n` or a bare address.
    pub(crate) fn parse(s: &str) -> Result<Net, String> {
        let (a, p) = s.trim().split_once('/').map(|(a, p)| (a, Some(p))).unwrap_or((s.trim(), None));
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not an address or a network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses a comma-separated deny list.
pub(crate) fn parse_list(s: &str) -> Result<Vec<Net>, String> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(Net::parse).collect()
}

fn refuse(address: &str, why: &str) -> Status {
    Status::new(Code::PermissionDenied, "registry", format!("node address {address:?} {why}"))
}

impl Targets {
    /// Nodes may point neither at `own` listeners nor into `deny`.
    pub(crate) fn new(own: Vec<SocketAddr>, deny: Vec<Net>) -> Targets {
        Targets { own, names: Vec::new(), deny, local: LocalNodes::default() }
    }

    /// Tenants' nodes on this host are held to `local`.
    pub(crate) fn local(mut self, local: LocalNodes) -> Targets {
        self.local = local;
        self
    }

    /// Nodes may not have these `host:port` names either (whatever they resolve to).
    pub(crate) fn naming(mut self, names: Vec<String>) -> Targets {
        self.names = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        self
    }

    /// The host and port of a node address (`host:port`, `[v6]:port` or `http://host:port/…`).
    fn split(address: &str) -> Option<(String, u16)> {
        let rest = address.split_once("://").map(|(_, r)| r).unwrap_or(address);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
        if let Some(v6) = authority.strip_prefix('[') {
            let (host, port) = v6.split_once("]:")?;
            return Some((host.to_string(), port.parse().ok()?));
        }
        let (host, port) = authority.rsplit_once(':')?;
        Some((host.to_ascii_lowercase(), port.parse().ok()?))
    }

    /// Checks an address whose host is an IP literal or `localhost` (the gateway's check
    /// before each request); other names pass here and are checked when registered.
    pub(crate) fn check_literal(&self, address: &str) -> Result<(), Status> {
        let Some((host, port)) = Self::split(address) else {
            return Err(refuse(address, "is not host:port"));
        };
        if self.names.iter().any(|n| Self::split(n) == Some((host.clone(), port))) {
            return Err(refuse(address, "is one of the server's own listeners"));
        }
        let ip = match host.as_str() {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            h => match h.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Ok(()),
            },
        };
        self.check_ip(address, ip, port)
    }

    /// Checks a node address at registration: literals as [`Targets::check_literal`], names
    /// by every address they resolve to.
    pub(crate) async fn check(&self, address: &str) -> Result<(), Status> {
        self.check_literal(address)?;
        let Some((host, port)) = Self::split(address) else { return Ok(()) };
        if host == "localhost" || host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        // A name: whatever it resolves to now must pass (one that does not resolve is
        // let through; calls to it fail like calls to any dead node).
        if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
            for a in addrs {
                self.check_ip(address, a.ip(), port)?;
            }
        }
        Ok(())
    }

    fn check_ip(&self, address: &str, ip: IpAddr, port: u16) -> Result<(), Status> {
        if self.deny.iter().any(|n| n.contains(ip)) {
            return Err(refuse(address, "is in a network nodes may not use"));
        }
        let local = ip.is_loopback() || ip.is_unspecified();
        if self.own.iter().any(|o| o.port() == port && (local || o.ip().is_unspecified() || o.ip() == ip)) {
            return Err(refuse(address, "is one of the server's own listeners"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        let own = vec!["127.0.0.1:8080".parse().unwrap(), "0.0.0.0:8082".parse().unwrap()];
        Targets::new(own, parse_list(DEFAULT_DENY).unwrap())
    }

    #[test]
    fn on_the_host_a_tenants_node_is_an_instance_the_runtime_gave_it() {
        let any = LocalNodes::new(NodeLocal::Any);
        assert!(any.admit("shop", "127.0.0.1:9").is_ok(), "off: anything goes");
        let l = LocalNodes::new(NodeLocal::Runtime);
        l.give(40001, "shop");
        assert!(l.admit("shop", "127.0.0.1:40001").is_ok());
        assert!(l.admit("shop", "http://127.0.0.1:40001/x").is_ok());
        for (ns, bad, why) in [
            ("blog", "127.0.0.1:40001", "no instance the runtime runs for namespace blog"),
            ("shop", "127.0.0.1:5432", "no instance"),
            ("shop", "127.0.0.2:40002", "no instance"),
            ("shop", "[::1]:5432", "no instance"),
            ("shop", "[::ffff:127.0.0.1]:5432", "no instance"),
            ("shop", "0.0.0.0:5432", "no instance"),
            ("shop", "localhost:40001", "is a name"),
            ("shop", "db.example.com:5432", "is a name"),
            ("shop", "nonsense", "not host:port"),
        ] {
            let e = l.admit(ns, bad).unwrap_err();
            assert!(e.detail().contains(why), "{ns} {bad}: {e:?}");
        }
        assert!(l.admit("micro", "127.0.0.1:5432").is_ok(), "the operators' services are theirs");
        assert!(l.admit("shop", "203.0.113.9:443").is_ok(), "elsewhere: the deny list decides");
        l.take_back(40001, "blog");
        assert!(l.admit("shop", "127.0.0.1:40001").is_ok(), "only its own namespace gives a port back");
        l.take_back(40001, "shop");
        assert!(l.admit("shop", "127.0.0.1:40001").is_err());
    }

    #[test]
    fn the_proxys_advertised_name_is_refused_whatever_it_resolves_to() {
        let t = targets().naming(vec!["node-7.internal:8081".into()]);
        for bad in ["node-7.internal:8081", "NODE-7.internal:8081", "http://node-7.internal:8081/x"] {
            assert!(t.check_literal(bad).is_err(), "{bad}");
        }
        assert!(t.check_literal("node-7.internal:9000").is_ok());
        assert!(t.check_literal("node-8.internal:8081").is_ok());
    }

    #[test]
    fn own_listeners_and_denied_networks_are_refused() {
        let t = targets();
        for bad in [
            "127.0.0.1:8080",
            "localhost:8080",
            "http://127.0.0.1:8082",
            "http://[::1]:8082/x",
            "10.1.2.3:8082",
            "169.254.169.254:80",
            "http://169.254.169.254/latest/meta-data",
            "[fe80::1]:80",
            "0.0.0.0:9000",
            "[::ffff:169.254.169.254]:80",
            "nonsense",
        ] {
            assert!(t.check_literal(bad).is_err(), "{bad}");
        }
        for good in ["127.0.0.1:9090", "http://127.0.0.1:9090", "10.0.0.5:8080", "example.com:443", "[::1]:9000"] {
            assert!(t.check_literal(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn networks_parse_and_match() {
        let n = Net::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.1.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("nope").is_err());
        assert!(Net::parse("::1").unwrap().contains("::1".parse().unwrap()));
    }
}
