//! `bench-load <case> <target> <address> [options]` — drives one benchmark case for a fixed
//! time and prints one JSON line:
//!
//! ```text
//! {"case","target","ops","secs","rate","errors","p50_us","p90_us","p99_us","p999_us","max_us",
//!  "percentiles":[[0,µs],[10,µs],[25,µs],[50,µs],[75,µs],[90,µs],[95,µs],[99,µs],[99.9,µs],[99.99,µs],[100,µs]],
//!  "conns","size","subs","inflight", …case-specific fields}
//! ```
//!
//! `ops` counts successful operations only and `rate` is `ops / secs`; `errors` counts the
//! failed ones (their latencies are not recorded; the store, pubsub and events cases stop at
//! the first error instead, so theirs is always 0). Latencies are microseconds (u32), exact
//! (every sample kept), from a request's start (or, open loop, its scheduled time) to its
//! whole answer; `percentiles` is for latency-distribution plots.
//!
//! Cases and targets:
//! - `store-write`, `store-read` (B5): `micro` (the store service through the proxy) or
//!   `redis`; `--conns` connections, each with one request in flight (no pipelining).
//! - `pubsub` (B4): `micro` (the broker service) or `nats` (core); one publisher with
//!   `--inflight` publishes in flight, `--subs` subscribers; rate = messages received/s
//!   (no latencies).
//! - `events` (B4): `micro` (durable events) or `jetstream` (file storage); acknowledged
//!   publishes/s with `--inflight` in flight, while `--subs` consumer groups read along.
//! - `http` (B0, B1, B3): HTTP/1.1 keep-alive load on `--conns` connections against
//!   `<address>` (`host:port`); the target is a free label (`micro`, `nginx`, `floor`, …).
//!   `--path /x` (default `/`), `--method GET|POST` (POST sends `{"name":"xxx…"}` padded to
//!   `--size` bytes, `content-type: application/json`). `--rate 0` (default) is closed loop:
//!   each connection sends its next request when the previous answer arrived. `--rate R`
//!   is open loop at R requests/s in total, spread evenly over the connections; latency is
//!   measured from each request's scheduled send time (coordinated omission corrected, as
//!   wrk2 does), so a stalled server shows as latency. Non-2xx answers and socket errors are
//!   `errors` (a connection that failed is reopened). `--client raw` (default: a minimal
//!   hand-rolled HTTP/1.1 client, one task per connection; it costs about what wrk does per
//!   request) or `--client hyper` (`hyper::client::conn::http1`, about 1.5× the CPU per
//!   request). Requests may differ (B6): `--method GET|POST|PUT|PATCH|DELETE`, `--header
//!   'Name: value'` (repeatable), `--body TEMPLATE` (instead of the padded `{"name":…}`;
//!   `{n}` in it is `--seq` plus a counter shared by every connection: a number unique to
//!   the request; `{k}` is that number modulo `--keys K`, one of K users), `--paths FILE` (one path a line, taken in turns by that counter). Adds
//!   `rate_target`, `method`, `path` (the first), `paths` (how many), `client`; with `--rate`, also
//!   `send_lag_p50_us` and `send_lag_p99_us`: how late requests left after their scheduled
//!   time (a timerfd paces them to the microsecond; a large lag means the generator or its
//!   CPU was busy, or connections were still waiting for earlier answers).
//! - `rpc` (B2): service-to-service RPC, `helloworld` `Greeter.Hello` with `{name:"Alice"}`,
//!   `--inflight N` workers each keeping one call outstanding over one shared client (one
//!   HTTP/2 connection, multiplexed); rate = completed calls/s.
//!   - `micro`: `<address>` is a `micro server`'s service-facing (proxy) address, used as
//!     the registry only: a `micro::Client` over a `RemoteRegistry` there, as a service
//!     started against that server gets from `Running::client()`, resolves the helloworld
//!     nodes and calls them directly (not through the proxy). `--codec proto` (default:
//!     `Client::call_proto`, the protobuf codec, what a Rust service with the proto types
//!     uses) or `--codec json` (`Client::call_raw` with `application/grpc+json`).
//!   - `tonic`: a bare tonic client (`tonic::client::Grpc` over a `Channel`, prost codec)
//!     calling `<address>` where `bench-load tonic-server` runs. Adds `codec`.
//!
//! - `sse` (B7): realtime fan-out over server-sent events, `micro` (`--path
//!   /db/v1/{c}/subscribe`) or `pocketbase` (`--path /api/realtime`, `--topic` the
//!   collection): `--subs N` subscribers on a connection each, then one writer creating
//!   records (`POST --write-path`, `--body` with `{n}` and `{ts}`, the send time in µs) at
//!   `--rate R` a second for `--secs`; latencies are each delivery's arrival minus its `ts`;
//!   `--drain S` (5) to wait for the last deliveries. See `sse.rs` for the fields it adds.
//!
//! `bench-load tonic-server <address>` serves the same `helloworld.Greeter/Hello` (replies
//! `Hello <name>`) with bare tonic on a current-thread runtime, the peer of `rpc tonic`.
//!
//! Options: `--conns N` (50), `--secs S` (10), `--size B` (100), `--subs N` (1),
//! `--inflight N` (64), `--path P` (`/`), `--method M` (GET), `--rate R` (0), `--client C`
//! (raw), `--codec C` (proto), `--threads N` (runtime worker threads; default the CPUs this
//! process may run on, and 1 — e.g. under `taskset -c 1` — means a current-thread runtime),
//! `--header H`, `--body B`, `--paths F`, `--seq N` (0), `--write-path P`, `--topic T`,
//! `--drain S`.

mod http;
mod rpc;
mod sse;

use futures::StreamExt;
use micro_core::store::{Query, Record, Store, Table};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Args {
    case: String,
    target: String,
    addr: String,
    conns: usize,
    secs: f64,
    size: usize,
    subs: usize,
    inflight: usize,
    path: String,
    method: String,
    rate: f64,
    client: String,
    codec: String,
    threads: usize,
    /// `--header 'Name: value'`, repeatable (http, sse).
    headers: Vec<String>,
    /// `--body TEMPLATE` (http, sse): the request body; `{n}` is the request's sequence number.
    body: Option<String>,
    /// `--paths FILE` (http): one path a line, taken in turns.
    paths: Option<String>,
    /// `--seq N` (http, sse): the first `{n}`.
    seq: u64,
    /// `--keys K` (http): `{k}` in `--body` is the request's number modulo K (default 1).
    keys: u64,
    /// `--write-path P` (sse): where the writer sends its records.
    write_path: String,
    /// `--topic T` (sse, pocketbase): the subscription.
    topic: String,
    /// `--drain S` (sse): how long to wait for late deliveries after the last write.
    drain: f64,
}

const USAGE: &str = "usage: bench-load <case> <target> <address> [--conns N] [--secs S] [--size B] [--subs N] \
[--inflight N] [--path P] [--method GET|POST|PATCH|PUT|DELETE] [--rate R] [--client raw|hyper] [--codec proto|json] \
[--threads N] [--header 'Name: value']... [--body TEMPLATE] [--paths FILE] [--seq N] [--keys K] [--write-path P] [--topic T] [--drain S]\n\
       bench-load tonic-server <address>";

fn args(argv: Vec<String>) -> Result<Args, String> {
    let mut it = argv.into_iter();
    let (case, target, addr) = match (it.next(), it.next(), it.next()) {
        (Some(c), Some(t), Some(a)) => (c, t, a),
        _ => return Err(USAGE.into()),
    };
    let mut a = Args {
        case,
        target,
        addr,
        conns: 50,
        secs: 10.0,
        size: 100,
        subs: 1,
        inflight: 64,
        path: "/".into(),
        method: "GET".into(),
        rate: 0.0,
        client: "raw".into(),
        codec: "proto".into(),
        threads: 0,
        headers: Vec::new(),
        body: None,
        paths: None,
        seq: 0,
        keys: 1,
        write_path: "/".into(),
        topic: String::new(),
        drain: 5.0,
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let n = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: not a number: {v}"));
        let f = |v: &str| {
            v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0).ok_or(format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--conns" => a.conns = n(&v)?,
            "--size" => a.size = n(&v)?,
            "--subs" => a.subs = n(&v)?,
            "--inflight" => a.inflight = n(&v)?,
            "--threads" => a.threads = n(&v)?,
            "--secs" => a.secs = f(&v)?,
            "--rate" => a.rate = f(&v)?,
            "--path" if v.starts_with('/') => a.path = v,
            "--path" => return Err(format!("--path must start with /: {v}")),
            "--method" => a.method = v.to_ascii_uppercase(),
            "--client" => a.client = v,
            "--codec" => a.codec = v,
            "--header" if v.contains(':') => a.headers.push(v),
            "--header" => return Err(format!("--header must be 'Name: value': {v}")),
            "--body" => a.body = Some(v),
            "--paths" => a.paths = Some(v),
            "--seq" => a.seq = v.parse::<u64>().map_err(|_| format!("--seq: not a number: {v}"))?,
            "--keys" => a.keys = v.parse::<u64>().map_err(|_| format!("--keys: not a number: {v}"))?,
            "--write-path" if v.starts_with('/') => a.write_path = v,
            "--write-path" => return Err(format!("--write-path must start with /: {v}")),
            "--topic" => a.topic = v,
            "--drain" => a.drain = f(&v)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// Latencies in microseconds, merged from every worker.
#[derive(Default)]
struct Lat(Vec<u32>);

/// The percentiles listed in the output's `percentiles`.
const PERCENTS: [f64; 11] = [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];

impl Lat {
    fn add(&mut self, since: Instant) {
        self.push(since.elapsed());
    }
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }
    fn merge(&mut self, other: Lat) {
        if self.0.is_empty() {
            self.0 = other.0;
        } else {
            self.0.extend(other.0);
        }
    }
    /// The latency at `p` percent (0 = min, 100 = max) of the sorted samples.
    fn at(sorted: &[u32], p: f64) -> u32 {
        if sorted.is_empty() {
            return 0;
        }
        let i = ((sorted.len() - 1) as f64 * p / 100.0) as usize;
        sorted[i.min(sorted.len() - 1)]
    }
    /// `p50_us`, `p90_us`, `p99_us`, `p999_us`, `max_us` and `percentiles`.
    fn summary(mut self) -> serde_json::Map<String, serde_json::Value> {
        self.0.sort_unstable();
        let s = &self.0;
        let mut m = serde_json::Map::new();
        for (k, p) in [("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("p999_us", 99.9), ("max_us", 100.0)] {
            m.insert(k.into(), Lat::at(s, p).into());
        }
        let pairs: Vec<serde_json::Value> = PERCENTS
            .iter()
            .map(|&p| {
                let pct = if p.fract() == 0.0 { serde_json::json!(p as u64) } else { serde_json::json!(p) };
                serde_json::json!([pct, Lat::at(s, p)])
            })
            .collect();
        m.insert("percentiles".into(), pairs.into());
        m
    }
}

/// Prints the result line: the common fields, the latency summary, then `extra`'s fields.
fn report(a: &Args, ops: u64, secs: f64, lat: Lat, errors: u64, extra: serde_json::Value) {
    let mut line = serde_json::json!({
        "case": a.case, "target": a.target, "ops": ops, "secs": secs,
        "rate": if secs > 0.0 { (ops as f64 / secs).round() } else { 0.0 }, "errors": errors,
    });
    if let Some(m) = line.as_object_mut() {
        m.extend(lat.summary());
        m.extend(
            serde_json::json!({ "conns": a.conns, "size": a.size, "subs": a.subs, "inflight": a.inflight })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        if let serde_json::Value::Object(x) = extra {
            m.extend(x);
        }
    }
    println!("{line}");
}

/// Runs `n` workers calling `op(worker, i)` until the time is up. With `fatal`, the first
/// error ends the process; otherwise errors are counted (and their latencies dropped).
/// Returns (successful ops, seconds, latencies, errors).
async fn closed_loop<F, Fut>(n: usize, secs: f64, fatal: bool, op: F) -> (u64, f64, Lat, u64)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..n {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Lat::default();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match op(w, i).await {
                    Ok(()) => lat.add(t),
                    Err(e) if fatal => {
                        eprintln!("bench-load: {e}");
                        std::process::exit(1);
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("bench-load: worker {w}: {e}");
                        }
                        errors += 1;
                        // Do not spin on a target that fails at once.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Lat::default();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.merge(l);
            errors += e;
        }
    }
    (all.0.len() as u64, start.elapsed().as_secs_f64(), all, errors)
}

/// The admin's token when `MICRO_ADMIN_PASSWORD` is set (the data services need it).
async fn token_source(addr: &str) -> Result<Option<Arc<dyn micro::data::TokenSource>>, String> {
    let Ok(password) = std::env::var("MICRO_ADMIN_PASSWORD") else { return Ok(None) };
    use micro::proto::auth as pb;
    let mut client = pb::auth_client::AuthClient::new(micro::data::channel(addr).map_err(|e| e.to_string())?);
    let req = pb::TokenRequest { id: "admin".into(), secret: password, ..Default::default() };
    let token = client.token(req).await.map_err(|e| e.to_string())?.into_inner().access_token;
    Ok(Some(Arc::new(micro::data::StaticToken(token))))
}

async fn store(a: &Args) -> Result<(), String> {
    let value = vec![b'x'; a.size];
    let keys = 10_000u64;
    match a.target.as_str() {
        "micro" => {
            let source = token_source(&a.addr).await?;
            let stores: Vec<_> = (0..a.conns)
                .map(|_| {
                    micro::data::channel_with(&a.addr, source.clone())
                        .map(|c| micro::data::RemoteStore::new(c, "micro"))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let stores = Arc::new(stores);
            let table = Table::new("micro", "bench");
            // Seed the keys reads will ask for.
            for k in 0..keys {
                stores[0]
                    .write(&table, &Record::new(format!("k{k}"), value.clone()), None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let write = a.case == "store-write";
            let (ops, secs, lat, _) = closed_loop(a.conns, a.secs, true, move |w, i| {
                let (stores, table, value) = (stores.clone(), table.clone(), value.clone());
                async move {
                    let key = format!("k{}", (w as u64 * 7919 + i) % keys);
                    let s = &stores[w];
                    if write {
                        s.write(&table, &Record::new(key, value), None).await.map_err(|e| e.to_string())
                    } else {
                        s.read(&table, &key, &Query::default()).await.map(|_| ()).map_err(|e| e.to_string())
                    }
                }
            })
            .await;
            report(a, ops, secs, lat, 0, serde_json::Value::Null);
        }
        "redis" => {
            let client = redis::Client::open(format!("redis://{}/", a.addr)).map_err(|e| e.to_string())?;
            let mut conns = Vec::new();
            for _ in 0..a.conns {
                conns.push(client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?);
            }
            {
                let mut c = conns[0].clone();
                for k in 0..keys {
                    let _: () = redis::cmd("SET")
                        .arg(format!("k{k}"))
                        .arg(&value)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            let conns = Arc::new(conns);
            let write = a.case == "store-write";
            let (ops, secs, lat, _) = closed_loop(a.conns, a.secs, true, move |w, i| {
                let (conns, value) = (conns.clone(), value.clone());
                async move {
                    let key = format!("k{}", (w as u64 * 7919 + i) % keys);
                    let mut c = conns[w].clone();
                    if write {
                        redis::cmd("SET").arg(key).arg(value).query_async::<()>(&mut c).await.map_err(|e| e.to_string())
                    } else {
                        redis::cmd("GET")
                            .arg(key)
                            .query_async::<Vec<u8>>(&mut c)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                }
            })
            .await;
            report(a, ops, secs, lat, 0, serde_json::Value::Null);
        }
        t => return Err(format!("unknown store target {t}")),
    }
    Ok(())
}

/// Counts what `subs` subscribers receive while one publisher keeps `inflight`
/// publishes going; returns messages received per second (all subscribers).
async fn pubsub(a: &Args) -> Result<(), String> {
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let subject = format!("bench.{}", std::process::id());
    let publish: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync> = match a
        .target
        .as_str()
    {
        "nats" => {
            let nc = async_nats::connect(&a.addr).await.map_err(|e| e.to_string())?;
            for _ in 0..a.subs {
                let mut sub = nc.subscribe(subject.clone()).await.map_err(|e| e.to_string())?;
                let r = received.clone();
                tokio::spawn(async move {
                    while sub.next().await.is_some() {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            nc.flush().await.map_err(|e| e.to_string())?;
            let (nc, subject, payload) = (nc.clone(), subject.clone(), payload.clone());
            Arc::new(move || {
                let (nc, subject, payload) = (nc.clone(), subject.clone(), payload.clone());
                Box::pin(async move { nc.publish(subject, payload).await.map_err(|e| e.to_string()) })
            })
        }
        "micro" => {
            let ch = micro::data::channel_with(&a.addr, token_source(&a.addr).await?).map_err(|e| e.to_string())?;
            let broker = micro::data::RemoteBroker::new(ch);
            use micro_core::broker::Broker;
            for _ in 0..a.subs {
                let mut s = broker.subscribe("micro", &subject, None).await.map_err(|e| e.to_string())?;
                let r = received.clone();
                tokio::spawn(async move {
                    while s.next().await.is_some() {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let m =
                micro_core::broker::Message { topic: subject.clone(), payload: payload.to_vec(), ..Default::default() };
            Arc::new(move || {
                let (b, m) = (broker.clone(), m.clone());
                Box::pin(async move { b.publish("micro", &m).await.map_err(|e| e.to_string()) })
            })
        }
        t => return Err(format!("unknown pubsub target {t}")),
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.secs);
    let mut tasks = Vec::new();
    for _ in 0..a.inflight {
        let (publish, stop) = (publish.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(e) = publish().await {
                    eprintln!("bench-load: publish: {e}");
                    std::process::exit(1);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    // Let in-flight messages arrive, but count only those delivered within 1 s more.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = received.load(Ordering::Relaxed);
    report(a, got, secs + 1.0, Lat::default(), 0, serde_json::Value::Null);
    Ok(())
}

async fn events(a: &Args) -> Result<(), String> {
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);
    let topic = format!("bench-{}", std::process::id());
    let consumed = Arc::new(AtomicU64::new(0));
    let publish: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync> = match a
        .target
        .as_str()
    {
        "jetstream" => {
            let nc = async_nats::connect(&a.addr).await.map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(nc);
            let stream = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: topic.clone(),
                    subjects: vec![topic.clone()],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            for g in 0..a.subs {
                let consumer = stream
                    .create_consumer(async_nats::jetstream::consumer::pull::Config {
                        durable_name: Some(format!("g{g}")),
                        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let c = consumed.clone();
                tokio::spawn(async move {
                    let Ok(mut msgs) = consumer.messages().await else { return };
                    while let Some(Ok(m)) = msgs.next().await {
                        let _ = m.ack().await;
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let (js, topic, payload) = (js.clone(), topic.clone(), payload.clone());
            Arc::new(move || {
                let (js, topic, payload) = (js.clone(), topic.clone(), payload.clone());
                Box::pin(async move {
                    let ack = js.publish(topic, payload).await.map_err(|e| e.to_string())?;
                    ack.await.map(|_| ()).map_err(|e| e.to_string())
                })
            })
        }
        "micro" => {
            use micro_core::events::Events;
            let ch = micro::data::channel_with(&a.addr, token_source(&a.addr).await?).map_err(|e| e.to_string())?;
            let ev = micro::data::RemoteEvents::new(ch);
            for g in 0..a.subs {
                let opts = micro_core::events::ConsumeOptions { group: format!("g{g}"), ..Default::default() };
                let mut s = ev.consume("micro", &topic, &opts).await.map_err(|e| e.to_string())?;
                let c = consumed.clone();
                tokio::spawn(async move {
                    while let Some(Ok(d)) = s.next().await {
                        let _ = d.ack().await;
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let m = micro_core::events::Message { payload: payload.to_vec(), ..Default::default() };
            Arc::new(move || {
                let (ev, topic, m) = (ev.clone(), topic.clone(), m.clone());
                Box::pin(async move { ev.publish("micro", &topic, &m).await.map(|_| ()).map_err(|e| e.to_string()) })
            })
        }
        t => return Err(format!("unknown events target {t}")),
    };
    let (ops, secs, lat, _) = closed_loop(a.inflight, a.secs, true, move |_, _| publish()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("bench-load: consumed {} across {} groups", consumed.load(Ordering::Relaxed), a.subs);
    report(a, ops, secs, lat, 0, serde_json::Value::Null);
    Ok(())
}

async fn run(a: Args) -> Result<(), String> {
    match a.case.as_str() {
        "store-write" | "store-read" => store(&a).await,
        "pubsub" => pubsub(&a).await,
        "events" => events(&a).await,
        "http" => http::run(&a).await,
        "sse" => sse::run(&a).await,
        "rpc" => rpc::run(&a).await,
        c => Err(format!("unknown case {c}")),
    }
}

/// A current-thread runtime for one thread (the load generator pinned to one CPU),
/// else a multi-thread one.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("tonic-server") {
        let Some(addr) = argv.get(1) else {
            eprintln!("bench-load: {USAGE}");
            std::process::exit(2);
        };
        if let Err(e) = rpc::tonic_server(addr) {
            eprintln!("bench-load: tonic-server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let a = match args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-load: {e}");
            std::process::exit(2);
        }
    };
    let r = match runtime(a.threads) {
        Ok(rt) => rt.block_on(run(a)),
        Err(e) => Err(format!("cannot start the tokio runtime: {e}")),
    };
    if let Err(e) = r {
        eprintln!("bench-load: {e}");
        std::process::exit(1);
    }
}
