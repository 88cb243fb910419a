//! The network of clusters, for the operators (admins of `micro`): the graph of the
//! clusters this one links to (a picture), its peers with their links' round trips and
//! counters, and the routes calls take. Everything comes from the `network` core
//! service as the signed-in account; others get the refusal it gives.
//!
//! `GET /network`.

use super::html;
use super::{Form, Page, page_response};
use axum::body::Body;
use http::{Response, StatusCode};
use maud::{PreEscaped, html};
use micro::proto::network::{self as pb, network_client::NetworkClient};
use micro_core::Status;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /network`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => overview(page).await,
        _ => super::not_found(page),
    }
}

/// Nothing to submit here (joins and removals are the CLI's).
pub(crate) async fn post(page: &Page, _form: &Form) -> Response<Body> {
    super::not_found(page)
}

/// Human bytes.
fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

async fn fetch(page: &Page) -> Result<(pb::NodesReply, pb::RoutesReply, pb::GraphReply), Status> {
    let tonic = |e: tonic::Status| micro::status::from_tonic(&e);
    let mut client = NetworkClient::new(page.channel()?);
    let mut req = page.request(pb::NodesRequest {});
    req.set_timeout(TIMEOUT);
    let nodes = client.nodes(req).await.map_err(tonic)?.into_inner();
    let mut req = page.request(pb::RoutesRequest::default());
    req.set_timeout(TIMEOUT);
    let routes = client.routes(req).await.map_err(tonic)?.into_inner();
    let mut req = page.request(pb::GraphRequest {});
    req.set_timeout(TIMEOUT);
    let graph = client.graph(req).await.map_err(tonic)?.into_inner();
    Ok((nodes, routes, graph))
}

async fn overview(page: &Page) -> Response<Body> {
    let (nodes, routes, graph) = match fetch(page).await {
        Ok(f) => f,
        Err(e) => {
            let body = html! { (html::error(&e)) p { "The network is the server's operators' (admins of micro)." } };
            return page_response(super::status_code(&e), html::layout(page, "Network", "network", body));
        }
    };
    let peers: Vec<&pb::Node> = nodes.nodes.iter().filter(|n| !n.local).collect();
    let up = peers.iter().filter(|n| n.connected).count();
    let body = html! {
        p role="status" {
            "This cluster is " strong { (graph.name) } ", linked to " (up) " of " (peers.len()) " peers. "
            @if nodes.exports.is_empty() {
                "It offers no namespace to them (set MICRO_NETWORK_EXPORT)."
            } @else {
                "It offers the services of " (nodes.exports.join(", ")) "."
            }
        }
        figure.network {
            // The picture is the server's own SVG: cluster names are a-z, 0-9 and -.
            (PreEscaped(graph.svg.clone()))
            figcaption { "Blue: up (with the measured round trip of this cluster's links); red, dashed: down." }
        }
        h2 { "Peers" }
        @if peers.is_empty() {
            p { "No peers yet: " code { "micro network token" } " on one cluster, " code { "micro network join <address> <token>" } " on the other." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "Direction" } th { "State" } th { "Round trip" } th { "Calls" } th { "Errors" } th { "In" } th { "Out" } } }
                tbody {
                    @for n in &peers {
                        tr {
                            td { (n.name) }
                            td { @if n.direction == "out" { "dials " (n.address) } @else { "dials this cluster" } }
                            td { @if n.connected { "up" } @else { strong { "down" } } }
                            td { @if n.connected && n.rtt_ms > 0.0 { (format!("{:.1} ms", n.rtt_ms)) } @else { "-" } }
                            td { (n.calls) } td { (n.errors) } td { (bytes(n.bytes_in)) } td { (bytes(n.bytes_out)) }
                        }
                    }
                }
            }
        }
        h2 { "Routes" }
        @if routes.routes.is_empty() {
            p { "No routes: no exported service here, and none advertised by a peer." }
        } @else {
            table {
                thead { tr { th { "Namespace" } th { "Service" } th { "Via" } th { "Path" } th { "Metric" } th { "Taken" } } }
                tbody {
                    @for r in &routes.routes {
                        tr {
                            td { (r.namespace) } td { (r.service) }
                            td { @if r.via.is_empty() { "this cluster" } @else { (r.via) } }
                            td { (r.path.join(" › ")) }
                            td { (format!("{:.1} ms", r.metric_ms)) }
                            td { @if r.best { "yes" } }
                        }
                    }
                }
            }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Network", "network", body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::bytes(999), "999 B");
        assert_eq!(super::bytes(1_500), "1.5 kB");
        assert_eq!(super::bytes(2_000_000), "2.0 MB");
    }
}
