//! Conformance of `events` backends: publish and sequence numbers, namespace isolation,
//! validation, history reads, start offsets, consumer groups, acks and nacks,
//! redelivery after the ack wait, the retry limit with its dead-letter topic, per-key
//! ordering and the groups' progress. Topics get unique names, so the suite can run
//! again and again against the same backend.

use futures::future::Either;
use futures::{FutureExt, StreamExt};
use micro_core::events::{
    ConsumeOptions, Delivery, Event, Events, GroupInfo, MAX_PAYLOAD, Message, Offset, ReadOptions,
};
use micro_core::store::now_ms;
use micro_core::{BoxStream, Code, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const NS: &str = "conformance-events";
const OTHER_NS: &str = "conformance-events-other";
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// How long a delivery that must arrive may take.
const PATIENCE: Duration = Duration::from_secs(5);

type Deliveries = BoxStream<Result<Delivery, Status>>;

/// Runs every check against `backend`; panics naming the broken behaviour.
pub async fn events(backend: Arc<dyn Events>) {
    let b = &*backend;
    futures::join!(
        publish_and_read(b),
        isolation(b),
        validation(b),
        offsets(b),
        groups(b),
        nack_and_ack_wait(b),
        dead_letter(b),
        key_order(b),
        key_order_across_members(b),
        progress(b),
    );
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn message(key: &str, payload: &str) -> Message {
    Message { key: key.to_string(), metadata: BTreeMap::new(), payload: payload.as_bytes().to_vec() }
}

fn options(group: &str) -> ConsumeOptions {
    ConsumeOptions {
        group: group.to_string(),
        offset: Offset::First,
        ack_wait: Duration::from_secs(10),
        ..ConsumeOptions::default()
    }
}

fn text(event: &Event) -> String {
    String::from_utf8_lossy(&event.payload).to_string()
}

async fn publish(b: &dyn Events, ns: &str, topic: &str, m: Message) -> Event {
    b.publish(ns, topic, &m).await.unwrap_or_else(|e| panic!("events: publish to {ns}/{topic} failed: {e}"))
}

async fn consume(b: &dyn Events, topic: &str, options: &ConsumeOptions) -> Deliveries {
    match b.consume(NS, topic, options).await {
        Ok(s) => s,
        Err(e) => panic!("events: consume {topic} (group {:?}) failed: {e}", options.group),
    }
}

async fn read(b: &dyn Events, ns: &str, topic: &str, options: ReadOptions) -> Vec<Event> {
    b.read(ns, topic, &options).await.unwrap_or_else(|e| panic!("events: read {ns}/{topic} {options:?} failed: {e}"))
}

/// The next delivery, which must come within [`PATIENCE`].
async fn next(stream: &mut Deliveries, what: &str) -> Delivery {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("events: {what}: the stream failed: {e}"),
        Ok(None) => panic!("events: {what}: the stream ended"),
        Err(_) => panic!("events: {what}: nothing delivered within {PATIENCE:?}"),
    }
}

/// Checks that nothing is delivered for [`QUIET`] (or `wait`).
async fn quiet(stream: &mut Deliveries, wait: Duration, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(wait, stream.next()).await {
        panic!("events: {what}: unexpected delivery {d:?}");
    }
}

async fn ack(d: &Delivery, what: &str) {
    d.ack().await.unwrap_or_else(|e| panic!("events: {what}: ack failed: {e}"));
}

async fn nack(d: &Delivery, what: &str) {
    d.nack().await.unwrap_or_else(|e| panic!("events: {what}: nack failed: {e}"));
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn expect_code<T>(result: Result<T, Status>, code: Code, what: &str) {
    match result {
        Ok(_) => panic!("events: {what}: succeeded, expected {code:?}"),
        Err(e) => assert_eq!(e.code(), code, "events: {what}: wrong error {e}"),
    }
}

async fn publish_and_read(b: &dyn Events) {
    let topic = unique("publish");
    let mut metadata = BTreeMap::new();
    metadata.insert("origin".to_string(), "conformance".to_string());
    let before = now_ms();
    let mut published = Vec::new();
    for i in 1..=10u64 {
        let key = if i % 2 == 0 { "even" } else { "" };
        let m = Message { key: key.to_string(), metadata: metadata.clone(), payload: format!("{{\"n\":{i}}}").into() };
        let event = publish(b, NS, &topic, m.clone()).await;
        assert_eq!(event.seq, i, "events: publish returns sequence numbers 1, 2, 3, …");
        assert_eq!(event.topic, topic, "events: publish returns the topic");
        assert_eq!((&event.key, &event.metadata, &event.payload), (&m.key, &m.metadata, &m.payload));
        published.push(event);
    }
    let after = now_ms();
    for e in &published {
        // Allow for a backend on another clock.
        assert!(
            e.timestamp + 5_000 >= before && e.timestamp <= after + 5_000,
            "events: timestamp {} is not Unix milliseconds around {before}..{after}",
            e.timestamp
        );
    }
    assert!(published.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "events: timestamps decrease");

    let all = read(b, NS, &topic, ReadOptions::default()).await;
    assert_eq!(all, published, "events: read returns the history as published");
    let first3 = read(b, NS, &topic, ReadOptions { limit: 3, ..ReadOptions::default() }).await;
    assert_eq!(seqs(&first3), vec![1, 2, 3], "events: read limit");
    let skipped = read(b, NS, &topic, ReadOptions { limit: 3, offset_count: 2, ..ReadOptions::default() }).await;
    assert_eq!(seqs(&skipped), vec![3, 4, 5], "events: read offset_count");
    let from8 = read(b, NS, &topic, ReadOptions { offset: Some(Offset::Seq(8)), ..ReadOptions::default() }).await;
    assert_eq!(seqs(&from8), vec![8, 9, 10], "events: read from Seq(8)");
    let new = read(b, NS, &topic, ReadOptions { offset: Some(Offset::New), ..ReadOptions::default() }).await;
    assert!(new.is_empty(), "events: read from New returns nothing");
    let ts = published[4].timestamp;
    let from_time = read(b, NS, &topic, ReadOptions { offset: Some(Offset::Time(ts)), ..ReadOptions::default() }).await;
    let expected = published.iter().find(|e| e.timestamp >= ts).map(|e| e.seq);
    assert_eq!(
        from_time.first().map(|e| e.seq),
        expected,
        "events: read from Time({ts}) starts at the first event at or after it"
    );
    assert_eq!(from_time.last().map(|e| e.seq), Some(10), "events: read from Time reads to the end");

    let topics = b.topics(NS).await.unwrap_or_else(|e| panic!("events: topics failed: {e}"));
    assert!(topics.contains(&topic), "events: topics lists {topic}: {topics:?}");
    expect_code(
        b.read(NS, &unique("never"), &ReadOptions::default()).await,
        Code::NotFound,
        "read of an unknown topic",
    );
}

async fn isolation(b: &dyn Events) {
    let topic = unique("isolated");
    publish(b, NS, &topic, message("", "one")).await;
    publish(b, NS, &topic, message("", "two")).await;
    expect_code(b.read(OTHER_NS, &topic, &ReadOptions::default()).await, Code::NotFound, "namespaces are isolated");
    let other = b.topics(OTHER_NS).await.unwrap_or_else(|e| panic!("events: topics failed: {e}"));
    assert!(!other.contains(&topic), "events: a topic shows in another namespace");
    let e = publish(b, OTHER_NS, &topic, message("", "other")).await;
    assert_eq!(e.seq, 1, "events: sequence numbers are per namespace");
    let mut stream = match b.consume(OTHER_NS, &topic, &options("")).await {
        Ok(s) => s,
        Err(e) => panic!("events: consume in {OTHER_NS} failed: {e}"),
    };
    let d = next(&mut stream, "isolation").await;
    assert_eq!(text(&d.event), "other", "events: a consumer sees another namespace's events");
    assert_eq!(read(b, NS, &topic, ReadOptions::default()).await.len(), 2, "events: namespaces are isolated");
}

async fn validation(b: &dyn Events) {
    let long = "x".repeat(257);
    for bad in ["", ".hidden", "has space", "star*", long.as_str()] {
        let what = format!("topic {bad:?}");
        expect_code(b.publish(NS, bad, &message("", "{}")).await, Code::InvalidArgument, &format!("publish to {what}"));
        expect_code(b.read(NS, bad, &ReadOptions::default()).await, Code::InvalidArgument, &format!("read of {what}"));
        expect_code(b.consume(NS, bad, &options("")).await, Code::InvalidArgument, &format!("consume of {what}"));
    }
    let topic = unique("valid");
    let oversize = Message { payload: vec![b'x'; MAX_PAYLOAD + 1], ..Message::default() };
    expect_code(b.publish(NS, &topic, &oversize).await, Code::InvalidArgument, "publish of an oversize payload");
    let long_key = Message { key: "k".repeat(300), ..message("", "{}") };
    expect_code(b.publish(NS, &topic, &long_key).await, Code::InvalidArgument, "publish with a 300-byte key");
    expect_code(b.consume(NS, &topic, &options("bad group!")).await, Code::InvalidArgument, "consume with a bad group");
    expect_code(b.read(NS, &topic, &ReadOptions::default()).await, Code::NotFound, "rejected publishes create nothing");
}

async fn offsets(b: &dyn Events) {
    let topic = unique("offsets");
    let mut published = Vec::new();
    for i in 1..=3 {
        published.push(publish(b, NS, &topic, message("", &format!("e{i}"))).await);
    }
    let start = |offset: Offset, group: &str| ConsumeOptions { offset, auto_ack: true, ..options(group) };

    let first_group = unique("first");
    let mut s = consume(b, &topic, &start(Offset::First, &first_group)).await;
    assert_eq!(next(&mut s, "offset First").await.event.seq, 1, "events: offset First starts at the first event");
    drop(s);
    // The group exists now: it resumes after what it acked, whatever the offset says.
    let mut s = consume(b, &topic, &start(Offset::First, &first_group)).await;
    assert_eq!(next(&mut s, "resuming a group").await.event.seq, 2, "events: an existing group resumes");
    drop(s);

    let mut s = consume(b, &topic, &start(Offset::Seq(2), &unique("seq"))).await;
    assert_eq!(next(&mut s, "offset Seq(2)").await.event.seq, 2, "events: offset Seq(2) starts at 2");
    drop(s);

    let ts = published[2].timestamp;
    let expected = published.iter().find(|e| e.timestamp >= ts).map_or(3, |e| e.seq);
    let mut s = consume(b, &topic, &start(Offset::Time(ts), &unique("time"))).await;
    assert_eq!(
        next(&mut s, "offset Time").await.event.seq,
        expected,
        "events: offset Time starts at the first event at or after it"
    );
    drop(s);

    let mut s = consume(b, &topic, &start(Offset::New, &unique("new"))).await;
    let mut private = consume(b, &topic, &start(Offset::New, "")).await;
    let mut private2 = consume(b, &topic, &start(Offset::New, "")).await;
    publish(b, NS, &topic, message("", "e4")).await;
    assert_eq!(next(&mut s, "offset New").await.event.seq, 4, "events: offset New skips earlier events");
    assert_eq!(next(&mut private, "offset New, private group").await.event.seq, 4, "events: private group, offset New");
    assert_eq!(next(&mut private2, "a second private group").await.event.seq, 4, "events: private groups are separate");
}

async fn groups(b: &dyn Events) {
    let topic = unique("groups");
    let shared = ConsumeOptions { offset: Offset::New, ..options(&unique("shared")) };
    let a = consume(b, &topic, &shared).await;
    let c = consume(b, &topic, &shared).await;
    let mut other = consume(b, &topic, &ConsumeOptions { offset: Offset::New, ..options(&unique("other")) }).await;

    // A member that works slowly, so its peer gets a share.
    async fn member(mut s: Deliveries) -> Vec<u64> {
        let mut got = Vec::new();
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(700), s.next()).await {
            let d = d.unwrap_or_else(|e| panic!("events: group member stream failed: {e}"));
            got.push(d.event.seq);
            tokio::time::sleep(Duration::from_millis(10)).await;
            ack(&d, "group member").await;
        }
        got
    }
    let publisher = async {
        for i in 1..=20 {
            publish(b, NS, &topic, message("", &format!("e{i}"))).await;
        }
    };
    let (got_a, got_c, ()) = futures::join!(member(a), member(c), publisher);
    let mut all: Vec<u64> = got_a.iter().chain(&got_c).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=20).collect::<Vec<_>>(),
        "events: a group gets each event exactly once ({got_a:?} + {got_c:?})"
    );
    assert!(
        !got_a.is_empty() && !got_c.is_empty(),
        "events: both members of a group get events ({got_a:?} / {got_c:?})"
    );

    let mut seen = Vec::new();
    for _ in 0..20 {
        let d = next(&mut other, "second group").await;
        seen.push(d.event.seq);
        ack(&d, "second group").await;
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>(), "events: every group gets every event, in order");
}

async fn nack_and_ack_wait(b: &dyn Events) {
    let topic = unique("redeliver");
    let mut s = consume(b, &topic, &ConsumeOptions { offset: Offset::New, ..options(&unique("g")) }).await;
    publish(b, NS, &topic, message("", "x")).await;
    let d1 = next(&mut s, "first delivery").await;
    assert_eq!(d1.attempt, 1, "events: the first delivery is attempt 1");
    nack(&d1, "nack").await;
    let d2 = next(&mut s, "redelivery after nack").await;
    assert_eq!((d2.event.seq, d2.attempt), (d1.event.seq, 2), "events: a nacked event comes again as attempt 2");
    ack(&d2, "ack").await;

    // A nack with a delay.
    publish(b, NS, &topic, message("", "y")).await;
    let d = next(&mut s, "delivery before a delayed nack").await;
    let nacked = std::time::Instant::now();
    d.acker.nack(&d, Duration::from_millis(200)).await.unwrap_or_else(|e| panic!("events: nack with delay: {e}"));
    let again = next(&mut s, "redelivery after a delayed nack").await;
    assert_eq!((again.event.seq, again.attempt), (d.event.seq, 2), "events: delayed nack redelivers");
    assert!(nacked.elapsed() >= Duration::from_millis(150), "events: a nack delay is honoured");
    ack(&again, "ack").await;
    quiet(&mut s, QUIET, "acked events are not redelivered").await;

    // No ack within the ack wait: redelivered, to another member when the first is gone.
    let group = unique("slow");
    let short = ConsumeOptions { offset: Offset::New, ack_wait: Duration::from_millis(300), ..options(&group) };
    let mut alone = consume(b, &topic, &short).await;
    publish(b, NS, &topic, message("", "z")).await;
    let d1 = next(&mut alone, "delivery to be left unacked").await;
    let d2 = next(&mut alone, "redelivery after the ack wait").await;
    assert_eq!((d2.event.seq, d2.attempt), (d1.event.seq, 2), "events: an unacked event is redelivered, attempt 2");
    ack(&d2, "ack after redelivery").await;
    drop(alone);

    // Two members wait; the one that gets the event goes away without acking it.
    let first = consume(b, &topic, &short).await;
    let second = consume(b, &topic, &short).await;
    // Each member's stream comes back with its delivery: the peer stays a member while it
    // acks (a remote member that has left cannot ack any more).
    let wait = |mut s: Deliveries| async move { (s.next().await, s) }.boxed();
    let (a, c) = (wait(first), wait(second));
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(b, NS, &topic, message("", "w")).await;
    let ((got, gone), other) = match futures::future::select(a, c).await {
        Either::Left(done) | Either::Right(done) => done,
    };
    drop(gone);
    let d1 = match got {
        Some(Ok(d)) => d,
        other => panic!("events: two waiting members: no delivery ({other:?})"),
    };
    let delivered = std::time::Instant::now();
    let (d2, _peer) = match tokio::time::timeout(PATIENCE, other).await {
        Ok((Some(Ok(d)), peer)) => (d, peer),
        Ok((other, _)) => panic!("events: a dropped member's unacked event is not redelivered to its peer: {other:?}"),
        Err(_) => panic!("events: a dropped member's unacked event is not redelivered to its peer within {PATIENCE:?}"),
    };
    assert_eq!((d2.event.seq, d2.attempt), (d1.event.seq, 2), "events: the peer gets the event as attempt 2");
    assert!(delivered.elapsed() >= Duration::from_millis(250), "events: redelivered before the ack wait");
    ack(&d2, "ack after redelivery to a peer").await;
}

async fn dead_letter(b: &dyn Events) {
    // Nacked up to the limit: to `<topic>.dead`.
    let topic = unique("dl");
    let group = unique("g");
    let limited = ConsumeOptions { offset: Offset::New, max_deliver: 2, ..options(&group) };
    let mut s = consume(b, &topic, &limited).await;
    let mut metadata = BTreeMap::new();
    metadata.insert("m".to_string(), "1".to_string());
    let original =
        publish(b, NS, &topic, Message { key: "k1".into(), metadata, payload: b"{\"bad\":1}".to_vec() }).await;
    let d1 = next(&mut s, "dead letter, attempt 1").await;
    nack(&d1, "dead letter, attempt 1").await;
    let d2 = next(&mut s, "dead letter, attempt 2").await;
    assert_eq!(d2.attempt, 2);
    nack(&d2, "dead letter, attempt 2").await;
    quiet(&mut s, QUIET, "an event past its retry limit is not delivered again").await;
    let dead_topic = format!("{topic}.dead");
    let dead = wait_for_dead_letter(b, &dead_topic).await;
    assert_eq!((&dead.payload, &dead.key), (&original.payload, &original.key), "events: dead letter copies the event");
    let meta = |k: &str| dead.metadata.get(k).cloned().unwrap_or_default();
    assert_eq!(meta("m"), "1", "events: dead letter keeps the metadata");
    assert_eq!(meta("dead-letter-topic"), topic, "events: dead-letter-topic metadata");
    assert_eq!(meta("dead-letter-seq"), original.seq.to_string(), "events: dead-letter-seq metadata");
    assert_eq!(meta("attempts"), "2", "events: attempts metadata");
    // It counts as done: the group moves on.
    let later = publish(b, NS, &topic, message("", "fine")).await;
    let d = next(&mut s, "after a dead letter").await;
    assert_eq!(d.event.seq, later.seq, "events: a dead-lettered event is done for the group");
    ack(&d, "after a dead letter").await;

    // Never acked, limit 1, a named dead-letter topic.
    let topic = unique("dl-wait");
    let dead_topic = unique("dead-letters");
    let limited = ConsumeOptions {
        offset: Offset::New,
        max_deliver: 1,
        ack_wait: Duration::from_millis(300),
        dead_letter: Some(dead_topic.clone()),
        ..options(&unique("g"))
    };
    let mut s = consume(b, &topic, &limited).await;
    publish(b, NS, &topic, message("", "lost")).await;
    let d = next(&mut s, "dead letter after the ack wait").await;
    quiet(&mut s, Duration::from_millis(900), "an event past its retry limit is not delivered again").await;
    drop(d);
    let dead = wait_for_dead_letter(b, &dead_topic).await;
    assert_eq!(text(&dead), "lost", "events: the named dead-letter topic gets the event");
    assert_eq!(dead.metadata.get("attempts").map(String::as_str), Some("1"));
}

async fn wait_for_dead_letter(b: &dyn Events, dead_topic: &str) -> Event {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(events) = b.read(NS, dead_topic, &ReadOptions::default()).await
            && let Some(e) = events.first()
        {
            assert_eq!(events.len(), 1, "events: one dead letter expected in {dead_topic}: {events:?}");
            return e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "events: nothing reached the dead-letter topic {dead_topic}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn key_order(b: &dyn Events) {
    let topic = unique("keys");
    let published = [("a", "a1"), ("b", "b1"), ("a", "a2"), ("", "n1"), ("a", "a3"), ("b", "b2")];
    for (key, payload) in published {
        publish(b, NS, &topic, message(key, payload)).await;
    }
    let mut s = consume(b, &topic, &options(&unique("g"))).await;
    let mut acked = BTreeSet::new();
    let mut nacked = BTreeSet::new();
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while acked.len() < published.len() {
        let d = next(&mut s, "keyed events").await;
        let (key, payload) = (d.event.key.clone(), text(&d.event));
        if !key.is_empty() {
            // The earliest event of this key that is not done must be this one.
            let earliest = published.iter().find(|(k, p)| *k == key && !acked.contains(*p)).map(|(_, p)| *p);
            assert_eq!(
                earliest,
                Some(payload.as_str()),
                "events: {payload} was delivered while an earlier event of key {key} is pending"
            );
        }
        // Nack the first delivery of a1 and a2; ack everything else.
        if (payload == "a1" || payload == "a2") && nacked.insert(payload.clone()) {
            nack(&d, "keyed nack").await;
            continue;
        }
        order.entry(key).or_default().push(payload.clone());
        ack(&d, "keyed ack").await;
        acked.insert(payload);
    }
    assert_eq!(order.get("a"), Some(&vec!["a1".to_string(), "a2".into(), "a3".into()]), "events: key a in order");
    assert_eq!(order.get("b"), Some(&vec!["b1".to_string(), "b2".into()]), "events: key b in order");
}

async fn key_order_across_members(b: &dyn Events) {
    let topic = unique("keys-members");
    for (key, payload) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
        publish(b, NS, &topic, message(key, payload)).await;
    }
    let group = options(&unique("g"));
    let mut m1 = consume(b, &topic, &group).await;
    let mut m2 = consume(b, &topic, &group).await;
    let d1 = next(&mut m1, "keyed, first member").await;
    assert_eq!(text(&d1.event), "a1", "events: the first event goes first");
    let d2 = next(&mut m2, "keyed, second member").await;
    assert_eq!(text(&d2.event), "b1", "events: a2 must wait while a1 is unacked; b1 may go");
    quiet(&mut m2, QUIET, "a2 while a1 is unacked").await;
    ack(&d1, "a1").await;
    let d3 = next(&mut m2, "keyed, after the ack").await;
    assert_eq!(text(&d3.event), "a2", "events: a2 follows once a1 is acked");
    ack(&d2, "b1").await;
    ack(&d3, "a2").await;
}

/// The groups of `topic` once `ready` holds for them, or after [`PATIENCE`] as they are
/// then (acks may reach a remote backend after `ack` returns).
async fn groups_when(b: &dyn Events, topic: &str, ready: impl Fn(&[GroupInfo]) -> bool) -> Vec<GroupInfo> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let groups = b.groups(NS, topic).await.unwrap_or_else(|e| panic!("events: groups of {topic} failed: {e}"));
        if ready(&groups) || tokio::time::Instant::now() >= deadline {
            return groups;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks a group's progress when events `1..=done` and `extra` are acked, the next ones
/// up to at least `delivered` are out, and `last` events were published. A backend may
/// deliver ahead of its members (prefetch): `delivered` is then higher, and so is
/// `pending` by as much.
fn check_progress(g: &GroupInfo, done: u64, extra: u64, delivered: u64, last: u64, what: &str) {
    assert_eq!(g.acked, done, "events: {what}: acked is the highest sequence number up to which all are acked: {g:?}");
    assert!(
        (delivered..=last).contains(&g.delivered),
        "events: {what}: delivered is the highest sequence number handed out ({delivered}): {g:?}"
    );
    assert_eq!(
        g.pending,
        g.delivered - done - extra,
        "events: {what}: pending counts the delivered events not acked yet: {g:?}"
    );
    assert_eq!(g.lag, last - done - extra, "events: {what}: lag counts the events not done yet: {g:?}");
}

async fn progress(b: &dyn Events) {
    let topic = unique("progress");
    expect_code(b.groups(NS, &topic).await, Code::NotFound, "groups of an unknown topic");
    let base = unique("g");
    let (first, second) = (format!("{base}-a"), format!("{base}-b"));
    let mut a = consume(b, &topic, &options(&first)).await;
    expect_code(b.groups(NS, &topic).await, Code::NotFound, "groups of a topic nothing was published to");
    for i in 1..=10 {
        publish(b, NS, &topic, message("", &format!("e{i}"))).await;
    }
    // The first group: 1-5 delivered, 1-3 acked, 4 and 5 held.
    let mut held = Vec::new();
    for seq in 1..=5 {
        let d = next(&mut a, "progress, first group").await;
        assert_eq!(d.event.seq, seq, "events: a group gets the events in order");
        if seq <= 3 {
            ack(&d, "progress, first group").await;
        } else {
            held.push(d);
        }
    }
    // The second: 1 and 2 delivered and acked, then its member leaves.
    let mut s = consume(b, &topic, &options(&second)).await;
    for _ in 0..2 {
        let d = next(&mut s, "progress, second group").await;
        ack(&d, "progress, second group").await;
    }
    drop(s);
    // A private group holding an event is not listed.
    let mut private = consume(b, &topic, &options("")).await;
    let private_delivery = next(&mut private, "progress, private group").await;

    let settled =
        |g: &[GroupInfo]| g.len() == 2 && g[0].acked == 3 && g[1].acked == 2 && g[1].members.is_none_or(|m| m == 0);
    let groups = groups_when(b, &topic, settled).await;
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, [first.as_str(), second.as_str()], "events: groups lists each named group once, by name");
    check_progress(&groups[0], 3, 0, 5, 10, "the first group");
    check_progress(&groups[1], 2, 0, 2, 10, "the second group");
    if let Some(n) = groups[0].members {
        assert_eq!(n, 1, "events: the first group has one member: {:?}", groups[0]);
    }
    if let Some(n) = groups[1].members {
        assert_eq!(n, 0, "events: the second group's member left: {:?}", groups[1]);
    }

    // 5 acked before 4: the floor stays at 3, the lag shrinks by one.
    ack(&held[1], "progress, out of order").await;
    let groups = groups_when(b, &topic, |g| g.first().is_some_and(|g| g.lag == 6)).await;
    check_progress(&groups[0], 3, 1, 5, 10, "the first group after an ack out of order");
    ack(&held[0], "progress, in order again").await;
    let groups = groups_when(b, &topic, |g| g.first().is_some_and(|g| g.acked == 5)).await;
    check_progress(&groups[0], 5, 0, 5, 10, "the first group with 1-5 acked");
    ack(&private_delivery, "progress, private group").await;
}
