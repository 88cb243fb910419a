//! The `network` core service: join tokens, peers, and what the network looks like.

use super::{Network, link};
use micro::proto::network as pb;
use micro_core::Status;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);

/// The `network` core service (the micro namespace's admins: see the guard).
pub(crate) struct NetworkService {
    pub(crate) network: Network,
}

fn t(s: Status) -> tonic::Status {
    micro::status::to_tonic(&s)
}

fn ms(us: u64) -> f64 {
    (us as f64 / 100.0).round() / 10.0
}

/// The graph's edges, undirected: (a, b) with a < b, to the measured round trip of this
/// cluster's own links (0 for the others), and whether they are up.
type Edges = BTreeMap<(String, String), (f64, bool)>;

/// The clusters and the edges between them.
fn edges(net: &Network) -> (BTreeSet<String>, Edges) {
    let me = net.name().to_string();
    let state = net.lock();
    let mut nodes = BTreeSet::from([me.clone()]);
    let mut edges = BTreeMap::new();
    let pair = |a: &str, b: &str| if a < b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
    for (name, p) in &state.peers {
        nodes.insert(name.clone());
        let rtt = p.link.as_ref().map(|l| ms(l.rtt_us.load(Ordering::Relaxed))).unwrap_or(0.0);
        edges.insert(pair(&me, name), (rtt, p.link.is_some()));
        for a in p.learned.values() {
            for w in a.path.windows(2) {
                nodes.insert(w[1].clone());
                edges.entry(pair(&w[0], &w[1])).or_insert((0.0, true));
            }
        }
    }
    (nodes, edges)
}

/// The graph as an SVG picture: the clusters on a circle, this one first.
fn svg(me: &str, nodes: &BTreeSet<String>, edges: &Edges) -> String {
    let order: Vec<&String> =
        std::iter::once(nodes.iter().find(|n| *n == me)).flatten().chain(nodes.iter().filter(|n| *n != me)).collect();
    // Two or fewer clusters need no height.
    let (w, h, r) = (480.0_f64, if order.len() <= 2 { 120.0_f64 } else { 360.0 }, 130.0_f64);
    let at = |i: usize| {
        if order.len() == 1 {
            return (w / 2.0, h / 2.0);
        }
        // Two face each other across the middle; more go round a circle, this one on top.
        let a = if order.len() == 2 {
            std::f64::consts::PI * (i as f64 + 1.0)
        } else {
            -std::f64::consts::FRAC_PI_2 + (i as f64) * std::f64::consts::TAU / order.len() as f64
        };
        (w / 2.0 + r * a.cos(), h / 2.0 + r * a.sin())
    };
    let pos: BTreeMap<&str, (f64, f64)> = order.iter().enumerate().map(|(i, n)| (n.as_str(), at(i))).collect();
    let links = edges.values().filter(|(_, up)| *up).count();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\" aria-label=\"The network seen from {me}: {} clusters, {links} links up\"><title>The network seen from {me}</title>",
        order.len()
    );
    for ((a, b), (rtt, up)) in edges {
        let (Some(p), Some(q)) = (pos.get(a.as_str()), pos.get(b.as_str())) else { continue };
        let style = if *up { "stroke=\"#2563eb\"" } else { "stroke=\"#dc2626\" stroke-dasharray=\"4 4\"" };
        out.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" {style} stroke-width=\"2\"/>",
            p.0, p.1, q.0, q.1
        ));
        if *rtt > 0.0 {
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#374151\">{rtt:.1} ms</text>",
                (p.0 + q.0) / 2.0,
                (p.1 + q.1) / 2.0 - 4.0
            ));
        }
    }
    for (n, (x, y)) in &pos {
        let fill = if *n == me { "#2563eb" } else { "#e5e7eb" };
        let text = if *n == me { "#ffffff" } else { "#111827" };
        // Names are a-z, 0-9 and - (validated), nothing to escape.
        // A box as wide as the name (about 7 px a character at 12 px).
        let bw = 24.0 + 7.0 * n.len() as f64;
        out.push_str(&format!(
            "<g class=\"cluster\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"28\" rx=\"14\" fill=\"{fill}\" stroke=\"#1f2937\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{text}\">{n}</text></g>",
            x - bw / 2.0,
            y - 14.0,
            y + 4.0
        ));
    }
    out.push_str("</svg>");
    out
}

#[tonic::async_trait]
impl pb::network_server::Network for NetworkService {
    async fn token(
        &self,
        req: tonic::Request<pb::TokenRequest>,
    ) -> Result<tonic::Response<pb::TokenReply>, tonic::Status> {
        let Some(address) = self.network.inner.address.clone() else {
            return Err(t(Status::new(
                micro_core::Code::FailedPrecondition,
                "network",
                "this cluster takes no links: set MICRO_NETWORK_ADDRESS (where other clusters reach it) and restart",
            )));
        };
        let ttl = match req.get_ref().ttl_seconds {
            0 => DEFAULT_TTL,
            s if s < 0 || s as u64 > MAX_TTL.as_secs() => {
                return Err(t(Status::bad_request("network", "ttl: give 1 second to 7 days")));
            }
            s => Duration::from_secs(s as u64),
        };
        let by =
            micro::auth::Caller::of(&req).and_then(|c| c.account.as_ref()).map(|a| a.id.clone()).unwrap_or_default();
        let (token, id, expires) = link::make_token(&self.network, ttl, &by).await.map_err(t)?;
        tracing::info!(by = %by, id = %id, expires, "made a network join token");
        Ok(tonic::Response::new(pb::TokenReply { token, id, expires: expires as i64, address }))
    }

    async fn revoke_token(
        &self,
        req: tonic::Request<pb::RevokeTokenRequest>,
    ) -> Result<tonic::Response<pb::RevokeTokenReply>, tonic::Status> {
        link::revoke_token(&self.network, req.get_ref().id.trim()).await.map_err(t)?;
        Ok(tonic::Response::new(pb::RevokeTokenReply {}))
    }

    async fn join(
        &self,
        req: tonic::Request<pb::JoinRequest>,
    ) -> Result<tonic::Response<pb::JoinReply>, tonic::Status> {
        let r = req.get_ref();
        let address = r.address.trim();
        let valid =
            address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid {
            return Err(t(Status::bad_request("network", format!("address {address:?}: give host:port"))));
        }
        let peer = link::join(&self.network, address, &r.token).await.map_err(t)?;
        Ok(tonic::Response::new(pb::JoinReply { peer }))
    }

    async fn remove(
        &self,
        req: tonic::Request<pb::RemoveRequest>,
    ) -> Result<tonic::Response<pb::RemoveReply>, tonic::Status> {
        let name = req.get_ref().name.trim();
        super::validate_name(name).map_err(|e| t(Status::bad_request("network", format!("name {e}"))))?;
        self.network.remove_peer(name).await.map_err(t)?;
        Ok(tonic::Response::new(pb::RemoveReply {}))
    }

    async fn nodes(
        &self,
        _: tonic::Request<pb::NodesRequest>,
    ) -> Result<tonic::Response<pb::NodesReply>, tonic::Status> {
        let net = &self.network;
        let mut nodes = vec![pb::Node {
            name: net.name().to_string(),
            local: true,
            address: net.inner.address.clone().unwrap_or_default(),
            connected: true,
            fingerprint: net.inner.identity.fingerprint.clone(),
            ..Default::default()
        }];
        let state = net.lock();
        for (name, p) in &state.peers {
            nodes.push(pb::Node {
                name: name.clone(),
                local: false,
                address: p.record.address.clone().unwrap_or_default(),
                direction: if p.record.address.is_some() { "out" } else { "in" }.to_string(),
                connected: p.link.is_some() && p.send.is_some(),
                rtt_ms: p.link.as_ref().map(|l| ms(l.rtt_us.load(Ordering::Relaxed))).unwrap_or(0.0),
                since: p.since as i64,
                bytes_in: p.stats.bytes_in.load(Ordering::Relaxed),
                bytes_out: p.stats.bytes_out.load(Ordering::Relaxed),
                calls: p.stats.calls.load(Ordering::Relaxed),
                errors: p.stats.errors.load(Ordering::Relaxed),
                fingerprint: p.record.fingerprint.clone(),
            });
        }
        Ok(tonic::Response::new(pb::NodesReply { nodes, exports: net.inner.exports.clone() }))
    }

    async fn routes(
        &self,
        req: tonic::Request<pb::RoutesRequest>,
    ) -> Result<tonic::Response<pb::RoutesReply>, tonic::Status> {
        let (ns, svc) = (req.get_ref().namespace.trim(), req.get_ref().service.trim());
        let wanted = |k: &(String, String)| (ns.is_empty() || k.0 == ns) && (svc.is_empty() || k.1 == svc);
        let net = &self.network;
        let me = net.name().to_string();
        let state = net.lock();
        let mut routes: Vec<pb::Route> = Vec::new();
        for (k, l) in state.local.iter().filter(|(k, _)| wanted(k)) {
            routes.push(pb::Route {
                namespace: k.0.clone(),
                service: k.1.clone(),
                via: String::new(),
                path: vec![me.clone()],
                metric_ms: 0.0,
                best: true,
                versions: l.versions.clone(),
            });
        }
        for (peer, p) in &state.peers {
            let rtt = p.link.as_ref().map(|l| l.rtt_us.load(Ordering::Relaxed)).unwrap_or(0);
            for (k, a) in p.learned.iter().filter(|(k, _)| wanted(k)) {
                routes.push(pb::Route {
                    namespace: k.0.clone(),
                    service: k.1.clone(),
                    via: peer.clone(),
                    path: a.path.clone(),
                    metric_ms: ms(a.metric.saturating_add(rtt)),
                    best: false,
                    versions: a.versions.clone(),
                });
            }
        }
        drop(state);
        routes.sort_by(|a, b| {
            (&a.namespace, &a.service, !a.via.is_empty(), a.metric_ms)
                .partial_cmp(&(&b.namespace, &b.service, !b.via.is_empty(), b.metric_ms))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        // The first of each service is the one calls take.
        let mut seen = BTreeSet::new();
        for r in &mut routes {
            r.best = seen.insert((r.namespace.clone(), r.service.clone()));
        }
        Ok(tonic::Response::new(pb::RoutesReply { routes }))
    }

    async fn services(
        &self,
        req: tonic::Request<pb::ServicesRequest>,
    ) -> Result<tonic::Response<pb::ServicesReply>, tonic::Status> {
        let ns = req.get_ref().namespace.trim().to_string();
        let routes = self
            .routes(tonic::Request::new(pb::RoutesRequest { namespace: ns, service: String::new() }))
            .await?
            .into_inner()
            .routes;
        let services = routes
            .into_iter()
            .filter(|r| r.best)
            .map(|r| pb::Service {
                local: r.via.is_empty(),
                cluster: r.path.last().cloned().unwrap_or_default(),
                hops: if r.via.is_empty() { 0 } else { r.path.len() as u32 },
                namespace: r.namespace,
                name: r.service,
                via: r.via,
                metric_ms: r.metric_ms,
            })
            .collect();
        Ok(tonic::Response::new(pb::ServicesReply { services }))
    }

    async fn graph(
        &self,
        _: tonic::Request<pb::GraphRequest>,
    ) -> Result<tonic::Response<pb::GraphReply>, tonic::Status> {
        let net = &self.network;
        let (nodes, edges) = edges(net);
        let mut dot = String::from("graph network {\n");
        for n in &nodes {
            let style = if n == net.name() { " [style=filled, fillcolor=\"#2563eb\", fontcolor=white]" } else { "" };
            dot.push_str(&format!("  \"{n}\"{style};\n"));
        }
        for ((a, b), (rtt, up)) in &edges {
            let mut attrs = Vec::new();
            if *rtt > 0.0 {
                attrs.push(format!("label=\"{rtt:.1} ms\""));
            }
            if !up {
                attrs.push("style=dashed, color=red".to_string());
            }
            let attrs = if attrs.is_empty() { String::new() } else { format!(" [{}]", attrs.join(", ")) };
            dot.push_str(&format!("  \"{a}\" -- \"{b}\"{attrs};\n"));
        }
        dot.push_str("}\n");
        let picture = svg(net.name(), &nodes, &edges);
        let edges = edges.into_iter().map(|((from, to), (rtt_ms, up))| pb::Edge { from, to, rtt_ms, up }).collect();
        Ok(tonic::Response::new(pb::GraphReply {
            name: net.name().to_string(),
            nodes: nodes.into_iter().collect(),
            edges,
            dot,
            svg: picture,
        }))
    }
}
