//! The registry contract: registering, lookups, deregistering, leases, namespaces,
//! versions, watches and bad input.

use futures::StreamExt;
use micro_core::registry::{Event, EventType, Node, Registry, Service};
use micro_core::{BoxStream, Code, Status};
use std::sync::Arc;
use std::time::Duration;

fn service(name: &str, version: &str, nodes: &[&str]) -> Service {
    Service {
        name: name.into(),
        version: version.into(),
        nodes: nodes
            .iter()
            .map(|id| Node { id: id.to_string(), address: "127.0.0.1:1".into(), metadata: Default::default() })
            .collect(),
        ..Default::default()
    }
}

fn node_ids(found: &[Service]) -> Vec<String> {
    let mut ids: Vec<String> = found.iter().flat_map(|s| s.nodes.iter().map(|n| n.id.clone())).collect();
    ids.sort();
    ids
}

/// The next event of `w` (within 5 s: a polling registry may take a moment).
async fn next(w: &mut BoxStream<Result<Event, Status>>, what: &str) -> Event {
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("{what}: no event ({other:?})"),
    }
}

/// Runs the registry suite against `r`.
pub async fn registry(r: Arc<dyn Registry>) {
    let ns = format!("conformance-reg-{}", std::process::id());
    let other = format!("{ns}-other");
    let long = Duration::from_secs(60);
    let mut watch = r.watch(&ns, Some("greeter")).await.expect("watch");

    // Registering: nodes add up; lookups and the list see them.
    r.register(&ns, &service("greeter", "1", &["a"]), long).await.expect("register a");
    let e = next(&mut watch, "a registers").await;
    assert_eq!((e.kind, e.service.name.as_str()), (EventType::Create, "greeter"), "{e:?}");
    r.register(&ns, &service("greeter", "1", &["b"]), long).await.expect("register b");
    assert_eq!(node_ids(&r.get_service(&ns, "greeter").await.expect("found")), ["a", "b"], "both nodes");
    assert!(r.list_services(&ns).await.expect("list").iter().any(|s| s.name == "greeter"), "listed");
    // Registering again refreshes, it does not duplicate.
    r.register(&ns, &service("greeter", "1", &["a"]), long).await.expect("refresh a");
    assert_eq!(node_ids(&r.get_service(&ns, "greeter").await.expect("found")), ["a", "b"], "no duplicate");

    // Versions are kept apart.
    r.register(&ns, &service("greeter", "2", &["c"]), long).await.expect("register v2");
    let found = r.get_service(&ns, "greeter").await.expect("found");
    let mut versions: Vec<&str> = found.iter().map(|s| s.version.as_str()).collect();
    versions.sort();
    assert_eq!(versions, ["1", "2"], "{found:?}");

    // Namespaces are separate.
    let err = r.get_service(&other, "greeter").await.expect_err("another namespace has none");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(r.list_services(&other).await.expect("list").is_empty(), "another namespace lists nothing");

    // Deregistering removes the named nodes only; the last one takes the service along.
    r.deregister(&ns, &service("greeter", "1", &["a"])).await.expect("deregister a");
    assert_eq!(node_ids(&r.get_service(&ns, "greeter").await.expect("found")), ["b", "c"]);
    r.deregister(&ns, &service("greeter", "1", &["b"])).await.expect("deregister b");
    r.deregister(&ns, &service("greeter", "2", &["c"])).await.expect("deregister c");
    let err = r.get_service(&ns, "greeter").await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let mut deleted = false;
    for _ in 0..10 {
        if next(&mut watch, "nodes go").await.kind == EventType::Delete {
            deleted = true;
            break;
        }
    }
    assert!(deleted, "the watch hears the nodes go");

    // A node whose lease runs out goes by itself (and the watch hears it).
    r.register(&ns, &service("greeter", "1", &["brief"]), Duration::from_secs(1)).await.expect("register brief");
    let gone = crate::eventually(Duration::from_secs(10), || async {
        r.get_service(&ns, "greeter").await.is_err_and(|e| e.code() == Code::NotFound)
    })
    .await;
    assert!(gone, "an expired node is no longer found");

    // Bad input is refused, and nothing is registered.
    let mut bad = service("bad name/", "1", &["x"]);
    assert_eq!(r.register(&ns, &bad, long).await.expect_err("bad name").code(), Code::InvalidArgument);
    bad.name = "fine".into();
    bad.nodes.clear();
    assert!(r.register(&ns, &bad, long).await.is_err(), "a registration without nodes");
    assert!(r.register("Bad NS", &service("fine", "1", &["x"]), long).await.is_err(), "a bad namespace");
    assert!(r.get_service(&ns, "fine").await.is_err(), "nothing was registered");
}
