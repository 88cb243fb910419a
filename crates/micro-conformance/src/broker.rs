//! Conformance of `broker` backends.

use futures::StreamExt;
use micro_core::Code;
use micro_core::broker::{Broker, Message};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static RUN: AtomicU64 = AtomicU64::new(0);

fn namespace() -> String {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("conformance-broker-{}-{n}", t % 1_000_000_000_000)
}

fn msg(topic: &str, n: u32) -> Message {
    Message { topic: topic.into(), payload: n.to_string().into_bytes(), ..Default::default() }
}

async fn next(s: &mut micro_core::BoxStream<Result<Message, micro_core::Status>>) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(2), s.next()).await.ok().flatten().map(|r| r.expect("message"))
}

/// Runs every broker check against `broker`.
pub async fn broker(broker: Arc<dyn Broker>) {
    let ns = namespace();
    // Nobody listening: the message is gone, not an error.
    broker.publish(&ns, &msg("news", 0)).await.expect("publish without subscribers");

    let mut a = broker.subscribe(&ns, "news", None).await.expect("subscribe");
    let mut b = broker.subscribe(&ns, "news", None).await.expect("subscribe");
    let mut q1 = broker.subscribe(&ns, "news", Some("workers")).await.expect("queue subscribe");
    let mut q2 = broker.subscribe(&ns, "news", Some("workers")).await.expect("queue subscribe");
    let mut other_ns = broker.subscribe(&format!("{ns}-other"), "news", None).await.expect("subscribe");
    // Remote backends subscribe asynchronously; give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 1..=10 {
        let mut m = msg("news", n);
        m.metadata.insert("n".into(), n.to_string());
        broker.publish(&ns, &m).await.expect("publish");
    }
    for (name, s) in [("a", &mut a), ("b", &mut b)] {
        for n in 1..=10 {
            let m = next(s).await.unwrap_or_else(|| panic!("subscriber {name} missed message {n}"));
            assert_eq!(m.payload, n.to_string().into_bytes(), "subscriber {name} gets every message in order");
            assert_eq!(m.metadata.get("n"), Some(&n.to_string()), "metadata arrives");
            assert_eq!(m.topic, "news");
        }
    }
    // The queue group shares the ten messages: each exactly once.
    let mut seen = Vec::new();
    for s in [&mut q1, &mut q2] {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
            seen.push(String::from_utf8(m.expect("message").payload).expect("utf8"));
        }
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
    let expected: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
    assert_eq!(seen, expected, "each message to exactly one member of the queue group");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other_ns.next()).await.is_err(),
        "another namespace sees nothing"
    );
    // A dropped subscriber does not break publishing.
    drop(a);
    broker.publish(&ns, &msg("news", 11)).await.expect("publish after a subscriber left");
    assert!(next(&mut b).await.is_some(), "the remaining subscriber still gets messages");
    // Bad input.
    let err = broker.publish(&ns, &msg("bad topic!", 1)).await.expect_err("bad topic");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = broker.subscribe(&ns, "", None).await.err().expect("empty topic");
    assert_eq!(err.code(), Code::InvalidArgument);
    let big = Message { topic: "news".into(), payload: vec![0; 2 * 1024 * 1024], ..Default::default() };
    assert_eq!(broker.publish(&ns, &big).await.expect_err("oversize").code(), Code::InvalidArgument);
}
