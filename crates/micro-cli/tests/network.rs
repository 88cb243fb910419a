//! The network of clusters, for real: three `micro server` processes, each its own data
//! dir and loopback address, linked through delaying TCP relays (so "near" and "far" are
//! real round trips), the real helloworld in two of them, and the real `micro` CLI.
//!
//! Region A (near: 1 ms each way) and region B (far: 20 ms each way) both run helloworld;
//! region C runs none and listens for no link (it dials out, as behind a NAT). C's calls
//! go to A; A's instance dies and they go to B without an error; it comes back and they
//! return to A; a link cut mid-stream ends the stream with a clear error; the partition
//! heals by itself.

#![allow(clippy::unwrap_used)]

use micro_test::process::{Reaped, ServerProcess, binary};
use micro_test::relay::Relay;
use micro_test::{eventually, http, sibling_binary};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn micro() -> PathBuf {
    binary(env!("CARGO_BIN_EXE_micro"))
}

/// A cluster named `name`, exporting `micro`; listening for links on `ip` when given.
fn cluster(name: &str, ip: Option<&str>) -> ServerProcess {
    let b = ServerProcess::builder(micro())
        .env("MICRO_NETWORK_NAME", name)
        .env("MICRO_NETWORK_EXPORT", "micro")
        .env("MICRO_NETWORK_EVENTS", "micro/orders")
        .env("MICRO_LOG", "warn,micro_server::network=info");
    match ip {
        Some(ip) => b.env("MICRO_NETWORK_ADDRESS", format!("{ip}:0")).start(),
        None => b.start(),
    }
}

/// helloworld in `s` with the environment `env` (its service account's), answering
/// "Hello <name> from <region>".
async fn helloworld(s: &ServerProcess, env: &[(String, String)], region: &str) -> Reaped {
    let hw = Reaped::spawn(
        Command::new(sibling_binary("helloworld"))
            .envs(env.iter().cloned())
            .env("HELLOWORLD_REGION", region)
            .env("MICRO_REGISTER_TTL", "30")
            .env("MICRO_LOG", "warn")
            .stdout(Stdio::null()),
    );
    let up = eventually(Duration::from_secs(20), || async { hello(s).await.is_ok_and(|m| m.ends_with(region)) }).await;
    assert!(up, "helloworld of {region} did not come up");
    hw
}

/// Calls helloworld through the gateway of `s`: its greeting, or the error.
async fn hello(s: &ServerProcess) -> Result<String, String> {
    let r = http(
        &s.api,
        "POST",
        "/helloworld/greeter/hello",
        &[("Content-Type", "application/json")],
        br#"{"name":"net"}"#,
    )
    .await;
    if r.status != 200 {
        return Err(format!("{}: {}", r.status, r.body));
    }
    Ok(r.json()["message"].as_str().unwrap_or_default().to_string())
}

/// Joins `joiner` to `to` through `address` (a relay to its network listener).
async fn join(joiner: &micro_test::cli::Cli, to: &micro_test::cli::Cli, address: &str) -> String {
    let t = to.json(&["network", "token", "--ttl", "10m", "-o", "json"]).await;
    let token = t["token"].as_str().unwrap().to_string();
    let joined = joiner.json(&["network", "join", address, &token, "-o", "json"]).await;
    joined["peer"].as_str().unwrap().to_string()
}

/// The region C's helloworld calls reach now.
async fn reached(c: &ServerProcess) -> Option<String> {
    hello(c).await.ok().and_then(|m| m.rsplit(' ').next().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_regions_fail_over_and_back() {
    let a = cluster("region-a", Some("127.0.0.2"));
    let b = cluster("region-b", Some("127.0.0.3"));
    let c = cluster("region-c", None);
    assert!(c.network.is_empty(), "C listens for no link");
    let near = Relay::start_on("127.0.0.4:0", a.network.parse().unwrap(), Duration::from_millis(1)).await;
    let far = Relay::start_on("127.0.0.4:0", b.network.parse().unwrap(), Duration::from_millis(20)).await;

    // (Instances of a service share its account: the name is the account's.)
    let env_a = a.service_env("micro", "helloworld").await;
    let mut hw_a = Some(helloworld(&a, &env_a, "a").await);
    let _hw_b = helloworld(&b, &b.service_env("micro", "helloworld").await, "b").await;
    // C runs no helloworld: the gateway says so.
    assert!(hello(&c).await.unwrap_err().starts_with("404"));

    let (ca, cb, cc) = (a.admin_cli().await, b.admin_cli().await, c.admin_cli().await);
    let joined = join(&cc, &ca, &near.addr().to_string()).await;
    assert_eq!(joined, "region-a");
    join(&cc, &cb, &far.addr().to_string()).await;

    // Both routes arrive; calls take the near one once the round trips are measured.
    let both = eventually(Duration::from_secs(10), || async {
        let r = cc.json(&["network", "routes", "--service", "helloworld", "-o", "json"]).await;
        r["routes"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert!(both, "{}", cc.ok(&["network", "routes"]).await);
    let to_a = eventually(Duration::from_secs(10), || async { reached(&c).await.as_deref() == Some("a") }).await;
    assert!(to_a, "calls from C do not go to A: {}", cc.ok(&["network", "routes"]).await);
    let routes = cc.json(&["network", "routes", "--service", "helloworld", "-o", "json"]).await;
    let best: Vec<&serde_json::Value> =
        routes["routes"].as_array().unwrap().iter().filter(|r| r["best"] == true).collect();
    assert_eq!(best.len(), 1, "{routes}");
    assert_eq!(best[0]["via"], "region-a", "{routes}");
    // What C was told names clusters, never an address.
    let text = routes.to_string();
    for addr in [&a.api, &a.proxy, &a.network, &b.api, &b.proxy, &b.network] {
        let port = addr.rsplit(':').next().unwrap();
        assert!(!text.contains(&format!(":{port}")), "{addr} leaked: {text}");
    }
    // Events of the shared topic published in C reach A (and B).
    cc.ok(&["publish", "orders", r#"{"id":"order-1"}"#]).await;
    let arrived = |cli: &'static str, id: &'static str| {
        let cli = if cli == "a" { &ca } else { &cb };
        async move { cli.ok(&["events", "read", "orders", "-o", "json"]).await.contains(id) }
    };
    assert!(eventually(Duration::from_secs(10), || arrived("a", "order-1")).await, "order-1 did not reach A");
    assert!(eventually(Duration::from_secs(10), || arrived("b", "order-1")).await, "order-1 did not reach B");
    let read = ca.ok(&["events", "read", "orders", "-o", "json"]).await;
    assert!(read.contains("region-c"), "the event says where it came from: {read}");

    // gRPC through C's proxy too, as the CLI calls.
    let v = cc.json(&["call", "helloworld", "Greeter.Hello", r#"{"name":"grpc"}"#, "-o", "json"]).await;
    assert_eq!(v["message"], "Hello grpc from a");
    // The caller crossed as who it is at C (its token did not): A meters it as C's admin.
    let seen = eventually(Duration::from_secs(15), || async {
        ca.ok(&["usage", "--by", "account", "-o", "json"]).await.contains("admin@region-c")
    })
    .await;
    assert!(seen, "A does not know the call as C's admin's: {}", ca.ok(&["usage", "--by", "account"]).await);

    // A's instance dies: calls go to B at once, without an error.
    drop(hw_a.take());
    let killed = Instant::now();
    let mut moved = None;
    while killed.elapsed() < Duration::from_secs(6) {
        let r = hello(&c).await;
        let m = r.unwrap_or_else(|e| panic!("a call failed {:?} after A's instance died: {e}", killed.elapsed()));
        if m.ends_with("from b") && moved.is_none() {
            moved = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = moved.expect("calls never moved to B");
    assert!(moved < Duration::from_secs(3), "calls moved to B after {moved:?}");
    // And A's route is withdrawn within the bound.
    let routes = cc.json(&["network", "routes", "--service", "helloworld", "-o", "json"]).await;
    let vias: Vec<&str> = routes["routes"].as_array().unwrap().iter().filter_map(|r| r["via"].as_str()).collect();
    assert_eq!(vias, ["region-b"], "{routes}");

    // A's instance comes back: calls return to A.
    let _hw_a = helloworld(&a, &env_a, "a").await;
    let back = eventually(Duration::from_secs(10), || async { reached(&c).await.as_deref() == Some("a") }).await;
    assert!(back, "calls did not return to A: {}", cc.ok(&["network", "routes"]).await);

    // A stream through the link, cut mid-way: a clear error, no hang.
    let client = micro::Client::via_proxy(c.proxy.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tx.send(bytes::Bytes::from_static(br#"{"name":"s1"}"#)).await.unwrap();
    let opts = micro::CallOptions { timeout: Some(Duration::from_secs(30)), ..Default::default() };
    let mut replies = client
        .stream_json("helloworld", "Greeter.Chat", tokio_stream::wrappers::ReceiverStream::new(rx), &opts)
        .await
        .unwrap();
    use futures::StreamExt;
    let first = replies.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Hello s1 from a"), "{first:?}");
    near.cut();
    let cut = Instant::now();
    let _ = tx.send(bytes::Bytes::from_static(br#"{"name":"s2"}"#)).await;
    let next =
        tokio::time::timeout(Duration::from_secs(8), replies.next()).await.expect("the stream hung after the cut");
    let err = match next {
        Some(Err(e)) => e,
        other => panic!("the cut stream did not fail: {other:?}"),
    };
    assert!(cut.elapsed() < Duration::from_secs(5), "the error came after {:?}", cut.elapsed());
    assert!(err.detail().contains("link"), "{err}");
    // An event published while the link is cut...
    cc.ok(&["publish", "orders", r#"{"id":"order-2"}"#]).await;
    // Meanwhile calls go to B...
    let to_b = eventually(Duration::from_secs(5), || async { reached(&c).await.as_deref() == Some("b") }).await;
    assert!(to_b, "calls did not move to B when A's link was cut");
    // ... and once the path is back, the link heals by itself and calls return to A.
    near.restore();
    let healed = eventually(Duration::from_secs(15), || async { reached(&c).await.as_deref() == Some("a") }).await;
    assert!(healed, "the link did not heal: {}", cc.ok(&["network", "nodes"]).await);
    // ... and the event published meanwhile arrives then (at least once).
    assert!(eventually(Duration::from_secs(20), || arrived("a", "order-2")).await, "order-2 never reached A");

    // What C sees of the network.
    let nodes = cc.json(&["network", "nodes", "-o", "json"]).await;
    let names: Vec<&str> = nodes["nodes"].as_array().unwrap().iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["region-c", "region-a", "region-b"], "{nodes}");
    let peer_a = nodes["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "region-a").unwrap();
    assert_eq!(peer_a["direction"], "out");
    assert!(peer_a["connected"] == true && peer_a["calls"].as_u64().unwrap() > 0, "{peer_a}");
    let rtt_a = peer_a["rtt_ms"].as_f64().unwrap();
    let rtt_b = nodes["nodes"][2]["rtt_ms"].as_f64().unwrap();
    assert!(rtt_a < rtt_b && rtt_b >= 40.0, "near {rtt_a} ms, far {rtt_b} ms");
    let graph = cc.ok(&["network", "graph", "--dot"]).await;
    assert!(
        graph.contains("\"region-a\" -- \"region-c\"") && graph.contains("\"region-b\" -- \"region-c\""),
        "{graph}"
    );
    let services = cc.json(&["network", "services", "-o", "json"]).await;
    assert!(services.to_string().contains("region-a"), "{services}");
    // Per-link numbers in /metrics.
    let m = http(&c.api, "GET", "/metrics", &[], b"").await;
    assert!(m.body.contains("micro_network_link_rtt_seconds{peer=\"region-a\"}"), "{}", m.body);
    // A and B see C as a peer that dials them.
    let nodes = ca.json(&["network", "nodes", "-o", "json"]).await;
    assert!(nodes.to_string().contains("region-c"), "{nodes}");

    let graph = cc.json(&["network", "graph", "-o", "json"]).await;
    assert!(graph["svg"].as_str().unwrap().starts_with("<svg"), "{graph}");
    assert_eq!(graph["name"], "region-c");
    // A token not used yet can be revoked (and then is no more).
    let t = ca.json(&["network", "token", "-o", "json"]).await;
    let id = t["id"].as_str().unwrap();
    assert_eq!(ca.json(&["network", "revoke-token", id, "-o", "json"]).await["revoked"], id);
    let again = ca.fails(&["network", "revoke-token", id]).await;
    assert!(again.contains("no unused join token"), "{again}");
    let refused = cc.fails(&["network", "join", &near.addr().to_string(), t["token"].as_str().unwrap()]).await;
    assert!(refused.contains("refused the join"), "{refused}");

    // B leaves C's network: removed, its routes go at once.
    assert_eq!(cc.json(&["network", "remove", "region-b", "-o", "json"]).await["removed"], "region-b");
    let routes = cc.json(&["network", "routes", "-o", "json"]).await;
    assert!(!routes.to_string().contains("region-b"), "{routes}");

    // C is killed right after an event is published: it remembers its peers, links again
    // on its restart, and the event still goes.
    cc.ok(&["publish", "orders", r#"{"id":"order-3"}"#]).await;
    let c = c.kill().start();
    let again = eventually(Duration::from_secs(15), || async { reached(&c).await.as_deref() == Some("a") }).await;
    assert!(again, "C did not link again after a restart");
    assert!(eventually(Duration::from_secs(20), || arrived("a", "order-3")).await, "order-3 was lost with C");
}
