//! Acknowledged writes survive SIGKILL: the real `micro server` binary is killed in the
//! middle of a stream of store writes and event publishes, restarted on the same data
//! directory, and every acknowledged write is read back; and consumer groups redeliver
//! what was unacknowledged at the kill.

use micro::proto::events as epb;
use micro::proto::events::consume_request::Kind;
use micro_core::events::{Message, ReadOptions};
use micro_core::store::{Query, Record, Table};
use micro_test::process::{ServerProcess, binary};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The data services as the admin.
async fn admin_data(server: &ServerProcess) -> micro::data::Data {
    let token = server.admin_token().await;
    micro::data::Data::remote_with(&server.proxy, "micro", Some(std::sync::Arc::new(micro::data::StaticToken(token))))
}

/// `micro server` on free ports over a data dir of its own.
fn start() -> ServerProcess {
    ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro"))).start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let server = start();
    let data = admin_data(&server).await;
    let table = Table::new("micro", "durability");
    let acked_keys = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked_events = Arc::new(Mutex::new(Vec::<u64>::new()));

    // Writers run until the server dies under them.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, table, acked) = (data.store.clone(), table.clone(), acked_keys.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{w}/{i:06}");
                match store.write(&table, &Record::new(&key, key.as_bytes().to_vec()), None).await {
                    Ok(()) => acked.lock().unwrap().push(key),
                    Err(_) => return,
                }
            }
        }));
    }
    let (events, acked) = (data.events.clone(), acked_events.clone());
    writers.push(tokio::spawn(async move {
        for i in 0u64.. {
            let m = Message { payload: i.to_string().into_bytes(), ..Default::default() };
            match events.publish("micro", "orders", &m).await {
                Ok(e) => acked.lock().unwrap().push(e.seq),
                Err(_) => return,
            }
        }
    }));
    // Let a good number of writes land, then SIGKILL mid-stream.
    let enough = || acked_keys.lock().unwrap().len() > 300 && acked_events.lock().unwrap().len() > 50;
    assert!(micro_test::eventually(Duration::from_secs(20), || async { enough() }).await, "writes are acknowledged");
    let server = server.kill();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(15), w).await.expect("writers stop").unwrap();
    }
    let keys = acked_keys.lock().unwrap().clone();
    let seqs = acked_events.lock().unwrap().clone();

    let server = server.start();
    let data = admin_data(&server).await;
    let stored = data.store.list(&table, "", &Query::default()).await.expect("list after restart");
    let missing: Vec<&String> = keys.iter().filter(|k| stored.binary_search(k).is_err()).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
    let mut have = std::collections::HashSet::new();
    loop {
        let read = ReadOptions { limit: 500, offset_count: have.len() as u32, ..Default::default() };
        let page = data.events.read("micro", "orders", &read).await.expect("history after restart");
        if page.is_empty() {
            break;
        }
        have.extend(page.iter().map(|e| e.seq));
    }
    let lost: Vec<&u64> = seqs.iter().filter(|s| !have.contains(s)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged events lost", lost.len(), seqs.len());
    // And the server serves new writes after the crash.
    data.store.write(&table, &Record::new("after", b"1".to_vec()), None).await.expect("write after restart");
}

/// A member of an events consumer group speaking the wire protocol, as a consumer with
/// a window does: it asks for `window` deliveries up front and acks as it goes.
struct Member {
    requests: futures::channel::mpsc::UnboundedSender<epb::ConsumeRequest>,
    deliveries: tonic::Streaming<epb::Delivery>,
}

impl Member {
    async fn join(proxy: &str, token: &str, group: &str, window: u32) -> Member {
        let subscribe = epb::Subscribe {
            topic: "jobs".into(),
            group: group.into(),
            offset: Some(epb::Offset { value: "first".into() }),
            ack_wait_ms: 600_000,
            unlimited: true,
            window,
            ..Default::default()
        };
        let (requests, rx) = futures::channel::mpsc::unbounded();
        requests.unbounded_send(epb::ConsumeRequest { kind: Some(Kind::Subscribe(subscribe)) }).expect("subscribe");
        let deliveries = events_client(proxy, token).consume(in_micro(rx)).await.expect("consume").into_inner();
        Member { requests, deliveries }
    }

    /// The next delivery, or `None` when none comes within 10 s.
    async fn next(&mut self) -> Option<epb::Delivery> {
        let next = tokio::time::timeout(Duration::from_secs(10), self.deliveries.message()).await;
        next.ok().map(|d| d.expect("the stream goes on").expect("a delivery"))
    }

    fn send(&self, kind: Kind) {
        self.requests.unbounded_send(epb::ConsumeRequest { kind: Some(kind) }).expect("the call is open");
    }

    fn ack(&self, d: &epb::Delivery) {
        self.send(Kind::Ack(epb::Ack { token: d.token.clone(), ..Default::default() }));
    }
}

fn events_client(proxy: &str, token: &str) -> epb::events_client::EventsClient<micro::data::Ch> {
    let source = Arc::new(micro::data::StaticToken(token.to_string()));
    epb::events_client::EventsClient::new(micro::data::channel_with(proxy, Some(source)).expect("channel"))
}

fn in_micro<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("micro-namespace", "micro".parse().expect("namespace"));
    req
}

/// `Events.Groups` for the topic, within 5 s; `None` when it does not answer.
async fn groups(proxy: &str, token: &str) -> Option<Vec<epb::GroupInfo>> {
    let mut client = events_client(proxy, token);
    let call = client.groups(in_micro(epb::GroupsRequest { topic: "jobs".into() }));
    let groups = tokio::time::timeout(Duration::from_secs(5), call).await.ok()?;
    Some(groups.expect("groups").into_inner().groups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_events_are_redelivered_after_sigkill_with_any_window() {
    const WINDOWS: [u32; 5] = [1, 2, 16, 64, 400];
    let server = start();
    let token = server.admin_token().await;
    let data = admin_data(&server).await;
    for i in 0..500 {
        let m = Message { payload: format!("{{\"n\":{i}}}").into_bytes(), ..Default::default() };
        data.events.publish("micro", "jobs", &m).await.expect("publish");
    }
    // One group per window to try after the crash: each takes 400 events and acks 300.
    let mut members = Vec::new();
    for window in WINDOWS {
        let mut member = Member::join(&server.proxy, &token, &format!("w{window}"), 400).await;
        for i in 0..400 {
            let d = member.next().await.expect("400 deliveries before the crash");
            if i < 300 {
                member.ack(&d);
            }
        }
        members.push(member);
    }
    let acked = || async {
        let groups = groups(&server.proxy, &token).await.unwrap_or_default();
        groups.len() == WINDOWS.len() && groups.iter().all(|g| g.acked == 300 && g.pending == 100)
    };
    assert!(micro_test::eventually(Duration::from_secs(20), acked).await, "the acks are applied");
    // SIGKILL with the members connected and 200 events outstanding per group.
    let server = server.kill();
    drop(members);

    let server = server.start();
    let token = server.admin_token().await;
    for window in WINDOWS {
        let group = format!("w{window}");
        let mut member = Member::join(&server.proxy, &token, &group, window).await;
        let mut seen = Vec::new();
        while seen.len() < 200 {
            let Some(d) = member.next().await else {
                panic!("window {window}: {} of the 200 outstanding events redelivered, then nothing", seen.len());
            };
            member.ack(&d);
            member.send(Kind::Pull(epb::Pull { count: 1 }));
            seen.push(d.event.expect("event").seq);
            if seen.len() % 50 == 1 {
                let answered = groups(&server.proxy, &token).await.is_some();
                assert!(answered, "window {window}: Events.Groups answers while a member is connected");
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (301..=500).collect::<Vec<_>>(), "window {window}: each unacked event once");
        let done = || async {
            let groups = groups(&server.proxy, &token).await.unwrap_or_default();
            groups.iter().any(|g| g.name == group && g.acked == 500 && g.pending == 0 && g.lag == 0)
        };
        assert!(micro_test::eventually(Duration::from_secs(10), done).await, "window {window}: the acks are applied");
    }
}
