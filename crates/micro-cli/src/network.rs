//! `micro network token|revoke-token|join|remove|nodes|routes|services|graph`: the
//! network of clusters this one peers with (network.Network; see docs/network.md).

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Result, bail};
use clap::Subcommand;
use micro::proto::network as pb;
use serde_json::json;

/// The environment variable `micro network join` takes the token from when it is not given.
const TOKEN_ENV: &str = "MICRO_NETWORK_TOKEN";

#[derive(Subcommand)]
pub(crate) enum NetworkCmd {
    /// Make a join token another cluster joins this one with: micro network token --ttl 1h
    Token {
        /// How long it is good for: like 90s, 30m, 1h, 2d (default 1h, at most 7d).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a join token not used yet: micro network revoke-token <id>
    RevokeToken {
        /// The token's id (`micro network token` prints it).
        id: String,
    },
    /// Join the cluster at an address with its token: MICRO_NETWORK_TOKEN=<token> micro network join host:7443
    ///
    /// This cluster dials the other one, and keeps dialling it after restarts and link
    /// failures. Prefer the token in MICRO_NETWORK_TOKEN to the argument: a command line is
    /// visible to every user of the machine.
    Join {
        /// host:port of the other cluster's network listener.
        address: String,
        /// Its join token (default: MICRO_NETWORK_TOKEN; a command line is visible to every user of the machine).
        token: Option<String>,
    },
    /// Remove a peer, cutting its links and refusing it from then on: micro network remove <name>
    Remove {
        /// The peer's name.
        name: String,
    },
    /// This cluster and its peers, with their links: micro network nodes
    Nodes,
    /// Every route this cluster knows, the best of each service first: micro network routes --service orders
    Routes {
        /// Only this namespace's.
        #[arg(long)]
        namespace: Option<String>,
        /// Only this service's.
        #[arg(long)]
        service: Option<String>,
    },
    /// The services callable here, this cluster's and the network's: micro network services
    Services {
        /// Only this namespace's.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// The network as this cluster sees it: micro network graph [--dot | --svg]
    Graph {
        /// Print it in Graphviz dot: micro network graph --dot | dot -Tpng > network.png
        #[arg(long, conflicts_with = "svg")]
        dot: bool,
        /// Print it as an SVG picture: micro network graph --svg > network.svg
        #[arg(long)]
        svg: bool,
    },
}

fn err(e: tonic::Status) -> anyhow::Error {
    status_err(micro::status::from_tonic(&e))
}

/// A byte count for people: `512 B`, `1.5 kB`, `2.0 MB`, `3.1 GB`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// Milliseconds with one decimal, or `-` for none measured.
fn ms(v: f64) -> String {
    if v > 0.0 { format!("{v:.1} ms") } else { "-".into() }
}

/// A cell that is `-` when empty.
fn cell(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

/// How long from `now` until `then` (Unix seconds), roughly: `in 59m`, or `expired`.
fn until(then: i64, now: i64) -> String {
    let s = then - now;
    match s {
        i64::MIN..=0 => "expired".into(),
        1..60 => format!("in {s}s"),
        60..3600 => format!("in {}m", s / 60),
        3600..86_400 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86_400),
    }
}

/// The text form of `micro network nodes`' exports.
fn exports_line(exports: &[String]) -> String {
    if exports.is_empty() {
        "exports: none (set MICRO_NETWORK_EXPORT)".into()
    } else {
        format!("exports: {}", exports.join(", "))
    }
}

/// A node's row: NAME DIRECTION ADDRESS STATE RTT CALLS ERRORS IN OUT.
fn node_row(n: &pb::Node) -> Vec<String> {
    if n.local {
        return [n.name.as_str(), "-", "-", "this cluster", "-", "-", "-", "-", "-"].map(String::from).to_vec();
    }
    vec![
        n.name.clone(),
        cell(&n.direction),
        cell(&n.address),
        if n.connected { "up".into() } else { "down".into() },
        if n.connected { ms(n.rtt_ms) } else { "-".into() },
        n.calls.to_string(),
        n.errors.to_string(),
        bytes(n.bytes_in),
        bytes(n.bytes_out),
    ]
}

fn node_json(n: &pb::Node) -> serde_json::Value {
    json!({
        "name": n.name,
        "local": n.local,
        "address": n.address,
        "direction": n.direction,
        "connected": n.connected,
        "rtt_ms": n.rtt_ms,
        "since": n.since,
        "bytes_in": n.bytes_in,
        "bytes_out": n.bytes_out,
        "calls": n.calls,
        "errors": n.errors,
        "fingerprint": n.fingerprint,
    })
}

fn route_json(r: &pb::Route) -> serde_json::Value {
    json!({
        "namespace": r.namespace,
        "service": r.service,
        "via": r.via,
        "path": r.path,
        "metric_ms": r.metric_ms,
        "best": r.best,
        "versions": r.versions,
    })
}

fn service_json(s: &pb::Service) -> serde_json::Value {
    json!({
        "namespace": s.namespace,
        "name": s.name,
        "cluster": s.cluster,
        "via": s.via,
        "metric_ms": s.metric_ms,
        "hops": s.hops,
        "local": s.local,
    })
}

fn graph_json(g: &pb::GraphReply) -> serde_json::Value {
    let edges: Vec<serde_json::Value> =
        g.edges.iter().map(|e| json!({"from": e.from, "to": e.to, "rtt_ms": e.rtt_ms, "up": e.up})).collect();
    json!({"name": g.name, "nodes": g.nodes, "edges": edges, "dot": g.dot, "svg": g.svg})
}

/// The graph's edges as aligned lines: `a -- b  2.1 ms  up`.
fn graph_lines(edges: &[pb::Edge]) -> Vec<String> {
    let pairs: Vec<String> = edges.iter().map(|e| format!("{} -- {}", e.from, e.to)).collect();
    let rtts: Vec<String> = edges.iter().map(|e| ms(e.rtt_ms)).collect();
    let w = pairs.iter().map(String::len).max().unwrap_or(0);
    let r = rtts.iter().map(String::len).max().unwrap_or(0);
    edges
        .iter()
        .zip(pairs.iter().zip(&rtts))
        .map(|(e, (p, t))| format!("{p:w$}  {t:>r$}  {}", if e.up { "up" } else { "down" }))
        .collect()
}

pub(crate) async fn network(c: &Ctx, cmd: NetworkCmd) -> Result<()> {
    let mut client = pb::network_client::NetworkClient::new(c.channel()?);
    match cmd {
        NetworkCmd::Token { ttl } => {
            let ttl_seconds = match ttl {
                Some(t) => crate::cluster::seconds(&t)?,
                None => 0,
            };
            let msg = pb::TokenRequest { ttl_seconds };
            let reply = client.token(crate::auth::request(c, msg)?).await.map_err(err)?.into_inner();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let address = if reply.address.is_empty() { "<address>" } else { reply.address.as_str() };
            let text = format!(
                "{token}\n\nid {id} (micro network revoke-token {id}); expires at Unix time {expires} ({left})\n\
                 On the other cluster, once, before it expires:\n  micro network join {address} {token}\n\
                 (or give the token in {TOKEN_ENV} and leave it off: a command line is visible to every user of the machine)",
                token = reply.token,
                id = reply.id,
                expires = reply.expires,
                left = until(reply.expires, now),
            );
            output::done(
                c.json,
                json!({"token": reply.token, "id": reply.id, "expires": reply.expires, "address": reply.address}),
                Some(text),
            );
        }
        NetworkCmd::RevokeToken { id } => {
            let msg = pb::RevokeTokenRequest { id: id.clone() };
            client.revoke_token(crate::auth::request(c, msg)?).await.map_err(err)?;
            output::done(c.json, json!({"revoked": id}), Some(format!("token {id} revoked")));
        }
        NetworkCmd::Join { address, token } => {
            let token = match token.filter(|t| !t.is_empty()) {
                Some(t) => t,
                None => match std::env::var(TOKEN_ENV) {
                    Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                    _ => bail!(
                        "no join token: set {TOKEN_ENV} (or give it after the address); `micro network token` on the other cluster makes one"
                    ),
                },
            };
            let msg = pb::JoinRequest { address: address.clone(), token };
            let reply = client.join(crate::auth::request(c, msg)?).await.map_err(err)?.into_inner();
            output::done(
                c.json,
                json!({"peer": reply.peer, "address": address}),
                Some(format!("joined {}", reply.peer)),
            );
        }
        NetworkCmd::Remove { name } => {
            let msg = pb::RemoveRequest { name: name.clone() };
            client.remove(crate::auth::request(c, msg)?).await.map_err(err)?;
            output::done(c.json, json!({"removed": name}), Some(format!("{name} removed")));
        }
        NetworkCmd::Nodes => {
            let reply = client.nodes(crate::auth::request(c, pb::NodesRequest {})?).await.map_err(err)?.into_inner();
            if c.json {
                let nodes: Vec<serde_json::Value> = reply.nodes.iter().map(node_json).collect();
                output::json(&json!({"nodes": nodes, "exports": reply.exports}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = reply.nodes.iter().map(node_row).collect();
            output::table(&["NAME", "DIRECTION", "ADDRESS", "STATE", "RTT", "CALLS", "ERRORS", "IN", "OUT"], &rows);
            println!("{}", exports_line(&reply.exports));
        }
        NetworkCmd::Routes { namespace, service } => {
            let msg =
                pb::RoutesRequest { namespace: namespace.unwrap_or_default(), service: service.unwrap_or_default() };
            let reply = client.routes(crate::auth::request(c, msg)?).await.map_err(err)?.into_inner();
            if c.json {
                output::json(&json!({"routes": reply.routes.iter().map(route_json).collect::<Vec<_>>()}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = reply
                .routes
                .iter()
                .map(|r| {
                    vec![
                        r.namespace.clone(),
                        r.service.clone(),
                        cell(&r.via),
                        cell(&r.path.join(" > ")),
                        format!("{:.1} ms", r.metric_ms),
                        if r.best { "*".into() } else { String::new() },
                    ]
                })
                .collect();
            output::table(&["NAMESPACE", "SERVICE", "VIA", "PATH", "METRIC", "BEST"], &rows);
        }
        NetworkCmd::Services { namespace } => {
            let msg = pb::ServicesRequest { namespace: namespace.unwrap_or_default() };
            let reply = client.services(crate::auth::request(c, msg)?).await.map_err(err)?.into_inner();
            if c.json {
                output::json(&json!({"services": reply.services.iter().map(service_json).collect::<Vec<_>>()}));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = reply
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.namespace.clone(),
                        s.name.clone(),
                        cell(&s.cluster),
                        if s.local { "-".into() } else { cell(&s.via) },
                        s.hops.to_string(),
                        if s.local { "-".into() } else { format!("{:.1} ms", s.metric_ms) },
                    ]
                })
                .collect();
            output::table(&["NAMESPACE", "SERVICE", "CLUSTER", "VIA", "HOPS", "METRIC"], &rows);
        }
        NetworkCmd::Graph { dot, svg } => {
            let reply = client.graph(crate::auth::request(c, pb::GraphRequest {})?).await.map_err(err)?.into_inner();
            if c.json {
                output::json(&graph_json(&reply));
            } else if dot {
                print!("{}", reply.dot);
                if !reply.dot.ends_with('\n') {
                    println!();
                }
            } else if svg {
                print!("{}", reply.svg);
                if !reply.svg.ends_with('\n') {
                    println!();
                }
            } else if reply.edges.is_empty() {
                println!(
                    "{}: no links yet (micro network token, then micro network join on the other cluster)",
                    reply.name
                );
            } else {
                for line in graph_lines(&reply.edges) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1500), "1.5 kB");
        assert_eq!(bytes(2_000_000), "2.0 MB");
        assert_eq!(bytes(3_100_000_000), "3.1 GB");
    }

    #[test]
    fn times_left() {
        assert_eq!(until(100, 100), "expired");
        assert_eq!(until(145, 100), "in 45s");
        assert_eq!(until(100 + 3599, 100), "in 59m");
        assert_eq!(until(100 + 3600, 100), "in 1h");
        assert_eq!(until(100 + 7 * 86_400, 100), "in 7d");
    }

    #[test]
    fn exports() {
        assert_eq!(exports_line(&[]), "exports: none (set MICRO_NETWORK_EXPORT)");
        assert_eq!(exports_line(&["a".into(), "b".into()]), "exports: a, b");
    }

    #[test]
    fn node_rows() {
        let local = pb::Node { name: "here".into(), local: true, ..Default::default() };
        assert_eq!(node_row(&local)[..4], ["here", "-", "-", "this cluster"]);
        let peer = pb::Node {
            name: "eu".into(),
            direction: "out".into(),
            address: "eu.example.com:7443".into(),
            connected: true,
            rtt_ms: 2.14,
            calls: 10,
            errors: 1,
            bytes_in: 1500,
            bytes_out: 12,
            ..Default::default()
        };
        assert_eq!(node_row(&peer), ["eu", "out", "eu.example.com:7443", "up", "2.1 ms", "10", "1", "1.5 kB", "12 B"]);
        let down = pb::Node { name: "us".into(), direction: "in".into(), rtt_ms: 9.0, ..Default::default() };
        assert_eq!(node_row(&down)[1..5], ["in", "-", "down", "-"]);
    }

    #[test]
    fn graph_edges() {
        let edges = vec![
            pb::Edge { from: "a".into(), to: "bb".into(), rtt_ms: 2.14, up: true },
            pb::Edge { from: "bb".into(), to: "c".into(), rtt_ms: 0.0, up: false },
            pb::Edge { from: "a".into(), to: "d".into(), rtt_ms: 12.0, up: true },
        ];
        assert_eq!(graph_lines(&edges), ["a -- bb   2.1 ms  up", "bb -- c        -  down", "a -- d   12.0 ms  up"]);
        assert!(graph_lines(&[]).is_empty());
    }
}
