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

/// One API call through the gateway (`Connection: close`): its status, or `None` when
/// the connection failed or closed without an answer.
async fn try_call(api: &str, bearer: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(api).await.ok()?;
    let req = format!(
        "POST /registry/Registry/GetService HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nAuthorization: {bearer}\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{{\"name\":\"proxy\"}}"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    // A whole answer: its head, and its body as long as it says.
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))?
        .parse()
        .ok()?;
    if body.len() < length {
        return None;
    }
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The requests `micro usage` counts for `service`/`endpoint` with a 2xx answer.
async fn metered(cli: &micro_test::cli::Cli, service: &str, endpoint: &str) -> u64 {
    let v = cli.json(&["usage", "--since", "all", "--by", "service,endpoint,status", "-o", "json"]).await;
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["service"] == service && r["endpoint"] == endpoint && r["status"] == "2xx")
        .and_then(|r| r["requests"].as_u64())
        .unwrap_or(0)
}

/// SIGKILL during steady traffic through the gateway (HTTP) and the proxy (gRPC) loses
/// and doubles no metered request: after a restart `micro usage` counts what the clients
/// saw succeed, plus at most the requests the kill cut off (a request is recorded before
/// its answer leaves, so one cut off after its record is counted though its client saw
/// an error) — and no more flushes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_requests_survive_sigkill() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let server = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro"))).env("MICRO_USAGE_FLUSH", "1").start();
    let token = server.admin_token().await;
    let data = admin_data(&server).await;
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let (http_ok, http_cut, grpc_ok, grpc_cut) = (0, 1, 2, 3);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (api, bearer, counts) = (server.api.clone(), format!("Bearer {token}"), counts.clone());
        clients.push(tokio::spawn(async move {
            loop {
                match try_call(&api, &bearer).await {
                    Some(200) => counts[http_ok].fetch_add(1, Ordering::SeqCst),
                    Some(other) => panic!("the gateway answered {other}"),
                    None => return counts[http_cut].fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for w in 0..2 {
        let (store, counts) = (data.store.clone(), counts.clone());
        clients.push(tokio::spawn(async move {
            let table = Table::new("micro", "metered");
            for i in 0.. {
                match store.write(&table, &Record::new(format!("w{w}/{i}"), b"x".to_vec()), None).await {
                    Ok(()) => counts[grpc_ok].fetch_add(1, Ordering::SeqCst),
                    Err(_) => return counts[grpc_cut].fetch_add(1, Ordering::SeqCst),
                };
            }
            0
        }));
    }
    // Steady traffic over several flushes, then SIGKILL at a moment of no flush's choosing.
    let busy = || counts[http_ok].load(Ordering::SeqCst) > 150 && counts[grpc_ok].load(Ordering::SeqCst) > 150;
    assert!(micro_test::eventually(Duration::from_secs(30), || async { busy() }).await, "traffic flows");
    let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 1000;
    tokio::time::sleep(Duration::from_millis(1000 + u64::from(jitter))).await;
    let server = server.kill();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(15), c).await.expect("clients stop").expect("a client");
    }
    let n = |i: usize| counts[i].load(Ordering::SeqCst);
    let server = server.start();
    let cli = server.admin_cli().await;
    for (service, endpoint, ok, cut) in [
        ("registry", "Registry.GetService", n(http_ok), n(http_cut)),
        ("store", "Store.Write", n(grpc_ok), n(grpc_cut)),
    ] {
        // What the killed process left is stored at the restart's first flush.
        let mut seen = 0;
        for _ in 0..50 {
            seen = metered(&cli, service, endpoint).await;
            if seen >= ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(seen >= ok, "{service}: {ok} requests succeeded, {seen} metered: requests were lost");
        assert!(seen <= ok + cut, "{service}: {ok} succeeded and {cut} were cut off, {seen} metered: counted twice");
    }
    // Later flushes add nothing to what the clients sent before the kill.
    let before = (metered(&cli, "registry", "Registry.GetService").await, metered(&cli, "store", "Store.Write").await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = (metered(&cli, "registry", "Registry.GetService").await, metered(&cli, "store", "Store.Write").await);
    assert_eq!(before, after);
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
