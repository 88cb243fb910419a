//! `bench-load <case> <target> <address> [options]` — drives one benchmark case for a fixed
//! time and prints one JSON line: `{"case","target","ops","secs","rate","p50_us","p99_us"}`.
//!
//! Cases and targets:
//! - `store-write`, `store-read` (B5): `micro` (the store service through the proxy) or
//!   `redis`; `--conns` connections, each with one request in flight (no pipelining).
//! - `pubsub` (B4): `micro` (the broker service) or `nats` (core); one publisher with
//!   `--inflight` publishes in flight, `--subs` subscribers; rate = messages received/s.
//! - `events` (B4): `micro` (durable events) or `jetstream` (file storage); acknowledged
//!   publishes/s with `--inflight` in flight, while `--subs` consumer groups read along.

use futures::StreamExt;
use micro_core::store::{Query, Record, Store, Table};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Args {
    case: String,
    target: String,
    addr: String,
    conns: usize,
    secs: f64,
    size: usize,
    subs: usize,
    inflight: usize,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (case, target, addr) = match (it.next(), it.next(), it.next()) {
        (Some(c), Some(t), Some(a)) => (c, t, a),
        _ => return Err(
            "usage: bench-load <case> <target> <address> [--conns N] [--secs S] [--size B] [--subs N] [--inflight N]"
                .into(),
        ),
    };
    let mut a = Args { case, target, addr, conns: 50, secs: 10.0, size: 100, subs: 1, inflight: 64 };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let n = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--conns" => a.conns = n(&v)?,
            "--size" => a.size = n(&v)?,
            "--subs" => a.subs = n(&v)?,
            "--inflight" => a.inflight = n(&v)?,
            "--secs" => a.secs = v.parse().map_err(|_| format!("--secs: not a number: {v}"))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// Latencies in microseconds, merged from every worker.
#[derive(Default)]
struct Lat(Vec<u32>);

impl Lat {
    fn add(&mut self, since: Instant) {
        self.0.push(since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    fn pct(&mut self, p: f64) -> u32 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        self.0[((self.0.len() - 1) as f64 * p) as usize]
    }
}

fn report(a: &Args, ops: u64, secs: f64, mut lat: Lat) {
    let line = serde_json::json!({
        "case": a.case, "target": a.target, "ops": ops, "secs": secs,
        "rate": (ops as f64 / secs).round(), "p50_us": lat.pct(0.5), "p99_us": lat.pct(0.99),
        "conns": a.conns, "size": a.size, "subs": a.subs,
    });
    println!("{line}");
}

/// Runs `n` workers calling `op(worker, i)` until the time is up.
async fn closed_loop<F, Fut>(n: usize, secs: f64, op: F) -> (u64, f64, Lat)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..n {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Lat::default();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if let Err(e) = op(w, i).await {
                    eprintln!("bench-load: {e}");
                    std::process::exit(1);
                }
                lat.add(t);
                i += 1;
            }
            lat
        }));
    }
    let mut all = Lat::default();
    for t in tasks {
        if let Ok(l) = t.await {
            all.0.extend(l.0);
        }
    }
    (all.0.len() as u64, start.elapsed().as_secs_f64(), all)
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
            let (ops, secs, lat) = closed_loop(a.conns, a.secs, move |w, i| {
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
            report(a, ops, secs, lat);
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
            let (ops, secs, lat) = closed_loop(a.conns, a.secs, move |w, i| {
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
            report(a, ops, secs, lat);
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
    report(a, got, secs + 1.0, Lat::default());
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
    let (ops, secs, lat) = closed_loop(a.inflight, a.secs, move |_, _| publish()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("bench-load: consumed {} across {} groups", consumed.load(Ordering::Relaxed), a.subs);
    report(a, ops, secs, lat);
    Ok(())
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-load: {e}");
            std::process::exit(2);
        }
    };
    let r = match a.case.as_str() {
        "store-write" | "store-read" => store(&a).await,
        "pubsub" => pubsub(&a).await,
        "events" => events(&a).await,
        c => Err(format!("unknown case {c}")),
    };
    if let Err(e) = r {
        eprintln!("bench-load: {e}");
        std::process::exit(1);
    }
}
