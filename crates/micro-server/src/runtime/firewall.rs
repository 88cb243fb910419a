//! Where tenants' code may connect. Each namespace's code runs as a user of its own
//! (see `sandbox`), so the host's packet filter can tell its connections apart by owner:
//! the runtime keeps two chains of its own (`iptables` and `ip6tables`, legacy first),
//! and jumps to one of them for each namespace's user from `OUTPUT`.
//!
//! - `MICRO-<tag>` (egress `internet`): the server's proxy and gateway, the name servers, the
//!   operator's allowed networks (`MICRO_RUNTIME_ALLOW_HOSTS` addresses and CIDRs), and
//!   the public internet; never the host's own addresses (the gateway and other tenants'
//!   instances among them, and whatever listens on loopback) nor private, link-local or
//!   shared networks.
//! - `MICRO-<tag>-N` (egress `none`): the server's proxy and gateway only.
//!
//! Both pass a TCP segment that is no new connection (the answers of an instance to the
//! gateway). Calls between services therefore go through the proxy (`MICRO_CALLS=proxy`
//! in instances' environment), which applies the namespaces' rules. The tag comes from
//! the data dir, so servers sharing a host keep apart (their users do too: see
//! `sandbox::first_uid`).

use super::egress::Allowed;
use micro_core::Status;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use tokio::process::Command;

const ID: &str = "runtime";

/// How the operator wants egress filtered (`MICRO_RUNTIME_EGRESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressMode {
    /// Filtered where it can be (a root server running each namespace as its own user,
    /// with `iptables` and `ip6tables`), else not.
    #[default]
    Auto,
    /// Filtered, or the server does not start.
    On,
    /// Not filtered.
    Off,
}

impl std::str::FromStr for EgressMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EgressMode::Auto),
            "on" => Ok(EgressMode::On),
            "off" => Ok(EgressMode::Off),
            _ => Err(format!("{s:?}: use auto, on or off")),
        }
    }
}

/// Where a namespace's code may connect (its plan's `egress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Egress {
    /// The public internet, the proxy and the name servers.
    #[default]
    Internet,
    /// The proxy only.
    None,
}

/// Networks no tenant reaches on egress `internet` (besides the host's own addresses).
const DENIED_V4: [&str; 11] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// (With the internal IPv4 networks as NAT64 and 6to4 carry them.)
const DENIED_V6: [&str; 15] = [
    "::1/128",
    "::/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "64:ff9b::a00:0/104",
    "64:ff9b::7f00:0/104",
    "64:ff9b::a9fe:0/112",
    "64:ff9b::ac10:0/108",
    "64:ff9b::c0a8:0/112",
    "2002:a00::/24",
    "2002:7f00::/24",
    "2002:a9fe::/32",
    "2002:ac10::/28",
    "2002:c0a8::/32",
];

/// One family's filter program and its rules.
#[derive(Debug)]
struct Table {
    program: PathBuf,
    v6: bool,
}

/// The packet filter for tenants' code.
#[derive(Debug)]
pub(crate) struct Firewall {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    On {
        tables: Vec<Table>,
        chain: String,
        /// What each user was given last.
        given: std::sync::Mutex<BTreeMap<u32, Egress>>,
        /// One change at a time.
        changing: tokio::sync::Mutex<()>,
    },
    /// Why there is none.
    Off(String),
}

fn find(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
}

/// Runs `program` with `args`; its error output on failure.
async fn run(program: &PathBuf, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("{} {}: {}", program.display(), args.join(" "), err.lines().next().unwrap_or("failed").trim()))
    }
}

impl Firewall {
    /// No filter, for `why`.
    pub(crate) fn off(why: impl Into<String>) -> Firewall {
        Firewall { kind: Kind::Off(why.into()) }
    }

    /// Sets the chains up (again: a restarted server rebuilds its own). `proxy`: the
    /// addresses tenants reach the server at (its proxy and gateway); `per_user`: each namespace runs as a user
    /// of its own under a root server. `Err` (the server does not start) only for
    /// [`EgressMode::On`].
    pub(crate) async fn setup(
        mode: EgressMode,
        tag: &str,
        proxy: &[SocketAddr],
        allowed: &[Allowed],
        per_user: bool,
    ) -> Result<Firewall, String> {
        let fail = |why: String| if mode == EgressMode::On { Err(why) } else { Ok(Firewall::off(why)) };
        if mode == EgressMode::Off {
            return Ok(Firewall::off("the operator turned it off: MICRO_RUNTIME_EGRESS=off"));
        }
        if !per_user {
            return fail(
                "namespaces do not run as users of their own (a root server without MICRO_RUNTIME_UID)".into(),
            );
        }
        let pick = |legacy: &str, plain: &str| find(legacy).or_else(|| find(plain));
        let (Some(v4), Some(v6)) = (pick("iptables-legacy", "iptables"), pick("ip6tables-legacy", "ip6tables")) else {
            return fail("iptables is not installed: scripts/sandbox-setup installs it".into());
        };
        let chain = format!("MICRO-{tag}");
        let tables = vec![Table { program: v4, v6: false }, Table { program: v6, v6: true }];
        for t in &tables {
            if let Err(e) = Self::build(t, &chain, proxy, allowed).await {
                return fail(format!("the packet filter does not work here: {e}"));
            }
        }
        Ok(Firewall { kind: Kind::On { tables, chain, given: Default::default(), changing: Default::default() } })
    }

    /// Makes (or empties) and fills one family's two chains.
    async fn build(t: &Table, chain: &str, proxy: &[SocketAddr], allowed: &[Allowed]) -> Result<(), String> {
        let none = format!("{chain}-N");
        for c in [chain, none.as_str()] {
            if run(&t.program, &["-w", "-N", c]).await.is_err() {
                run(&t.program, &["-w", "-F", c]).await?;
            }
            // Answers on connections made to it (no new connection) pass.
            run(&t.program, &["-w", "-A", c, "-p", "tcp", "!", "--syn", "-j", "RETURN"]).await?;
            for addr in proxy.iter().filter(|a| a.is_ipv6() == t.v6) {
                let port = addr.port().to_string();
                if addr.ip().is_unspecified() {
                    let local = ["-m", "addrtype", "--dst-type", "LOCAL"];
                    let mut args = vec!["-w", "-A", c, "-p", "tcp", "--dport", &port];
                    args.extend(local);
                    args.extend(["-j", "RETURN"]);
                    run(&t.program, &args).await?;
                } else {
                    let ip = addr.ip().to_string();
                    run(&t.program, &["-w", "-A", c, "-p", "tcp", "-d", &ip, "--dport", &port, "-j", "RETURN"]).await?;
                }
            }
        }
        // Egress `none`: nothing else.
        run(&t.program, &["-w", "-A", &none, "-j", "REJECT"]).await?;
        // Egress `internet`: the name servers, the operator's networks, then no internal
        // address.
        for ns in name_servers().into_iter().filter(|ip| ip.is_ipv6() == t.v6) {
            let ip = ns.to_string();
            for proto in ["udp", "tcp"] {
                run(&t.program, &["-w", "-A", chain, "-p", proto, "-d", &ip, "--dport", "53", "-j", "RETURN"]).await?;
            }
        }
        for a in allowed {
            if let Allowed::Net(ip, bits) = a
                && ip.is_ipv6() == t.v6
            {
                let net = format!("{ip}/{bits}");
                run(&t.program, &["-w", "-A", chain, "-d", &net, "-j", "RETURN"]).await?;
            }
        }
        run(&t.program, &["-w", "-A", chain, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "REJECT"]).await?;
        for net in if t.v6 { &DENIED_V6[..] } else { &DENIED_V4[..] } {
            run(&t.program, &["-w", "-A", chain, "-d", net, "-j", "REJECT"]).await?;
        }
        Ok(())
    }

    /// Gives user `uid` (a namespace's) egress `egress` from now on: its new
    /// connections go by the chain of `egress`. Idempotent; `Err` when the filter
    /// refused the change (the code must then not start).
    pub(crate) async fn apply(&self, uid: u32, egress: Egress) -> Result<(), Status> {
        let Kind::On { tables, chain, given, changing } = &self.kind else { return Ok(()) };
        let _one = changing.lock().await;
        if given.lock().unwrap_or_else(|e| e.into_inner()).get(&uid) == Some(&egress) {
            return Ok(());
        }
        let user = uid.to_string();
        let none = format!("{chain}-N");
        let target = match egress {
            Egress::Internet => chain.as_str(),
            Egress::None => none.as_str(),
        };
        let failed = |e: String| Status::internal(ID, format!("egress of uid {uid}: {e}"));
        let hook = |op: &'static str, c: &str| -> Vec<String> {
            let mut args = vec!["-w".to_string(), op.to_string(), "OUTPUT".to_string()];
            if op == "-I" {
                args.push("1".into());
            }
            args.extend(["-m", "owner", "--uid-owner", &user, "-j", c].map(str::to_string));
            args
        };
        let other = if target == chain.as_str() { none.as_str() } else { chain.as_str() };
        for t in tables {
            let run_args = |args: Vec<String>| {
                let program = t.program.clone();
                async move {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    run(&program, &args).await
                }
            };
            // The new jump first, then the old ones go: never a moment without one.
            run_args(hook("-I", target)).await.map_err(failed)?;
            for _ in 0..64 {
                if run_args(hook("-D", other)).await.is_err() {
                    break;
                }
            }
            // Jumps to the same chain from before a restart: all but one go.
            for _ in 1..self.count(t, &user, target).await.min(64) {
                run_args(hook("-D", target)).await.map_err(failed)?;
            }
        }
        given.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, egress);
        Ok(())
    }

    /// How many jumps of `user` to `chain` table `t`'s OUTPUT has.
    async fn count(&self, t: &Table, user: &str, chain: &str) -> usize {
        let Ok(out) = Command::new(&t.program).args(["-w", "-S", "OUTPUT"]).env_clear().output().await else {
            return 0;
        };
        let want = format!("--uid-owner {user} -j {chain}");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.ends_with(&want)).count()
    }

    /// Whether egress is filtered.
    pub(crate) fn is_on(&self) -> bool {
        matches!(self.kind, Kind::On { .. })
    }

    /// The filter in force for the code of user `uid` (none yet: a namespace that ran
    /// nothing), as `micro status` shows it.
    pub(crate) fn describe(&self, uid: Option<u32>) -> String {
        match &self.kind {
            Kind::On { given, .. } => {
                match uid.and_then(|u| given.lock().unwrap_or_else(|e| e.into_inner()).get(&u).copied()) {
                    Some(Egress::Internet) => {
                        "egress: internet (the server's proxy and gateway, and public addresses; no other address of the host, no private network)".into()
                    }
                    Some(Egress::None) => "egress: none (the server's proxy and gateway only)".into(),
                    None => "egress: filtered by the plan from the next start".into(),
                }
            }
            Kind::Off(why) => format!("egress: not filtered ({why})"),
        }
    }
}

/// The name servers of `/etc/resolv.conf`.
fn name_servers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().split('%').next().and_then(|ip| ip.parse().ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_egress_parse() {
        assert_eq!("on".parse::<EgressMode>().unwrap(), EgressMode::On);
        assert!("yes".parse::<EgressMode>().unwrap_err().contains("auto, on or off"));
        let e: Egress = serde_json::from_str("\"none\"").unwrap();
        assert_eq!(e, Egress::None);
        assert!(serde_json::from_str::<Egress>("\"lan\"").is_err());
        assert_eq!(Firewall::off("x").describe(Some(1)), "egress: not filtered (x)");
    }
}
