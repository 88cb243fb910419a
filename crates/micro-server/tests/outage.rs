//! Backends restarting under load: a node shares PostgreSQL and NATS while a writer and
//! a publisher keep going. PostgreSQL is restarted (the machine's own cluster, with
//! `pg_ctlcluster`) and NATS is stopped and started again (a private `nats-server` with
//! JetStream in a temp dir). During each outage calls fail with `Unavailable` (a 503 with
//! the JSON body through the gateway), afterwards they succeed again without help, and
//! every acknowledged write and published event is still there.
//!
//! This file is its own test binary, so no other test shares the restarted PostgreSQL.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_core::Code;
use micro_core::events::{Message, ReadOptions};
use micro_core::store::{Query, Record, Table};
use micro_test::TestServer;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether a tool is installed; without it the test skips, except in CI, where it fails.
fn have(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "{tool} is needed by this test");
        eprintln!("notice: skipping: {tool} is not available");
    }
    ok
}

/// A private NATS server with JetStream, its data in a temp dir.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut n = Nats { child: None, port, dir: tempfile::tempdir().unwrap() };
        n.run();
        n
    }

    fn run(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The machine's PostgreSQL cluster (`<version> main`), restarted through `pg_ctlcluster`.
fn restart_postgres() {
    let versions = std::fs::read_dir("/etc/postgresql").unwrap();
    let version = versions.flatten().next().unwrap().file_name().to_string_lossy().to_string();
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart", "--mode", "fast"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster restart failed");
}

/// What the load saw: acknowledged keys (or event sequence numbers), and the codes of
/// the calls that failed.
#[derive(Default)]
struct Seen {
    acked: Vec<(String, u64)>,
    failed: Vec<Code>,
    last_ok: Option<Instant>,
}

/// Waits until the load has had some of its calls acknowledged (it runs before the outage).
async fn running(seen: &Mutex<Seen>) {
    let acked = || std::future::ready(seen.lock().unwrap().acked.len() >= 20);
    assert!(micro_test::eventually(Duration::from_secs(10), acked).await, "the load runs");
}

/// Runs `f` until `stop`, recording what it acknowledged and how it failed.
fn load<F, Fut>(stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>, mut f: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(String, u64), micro_core::Status>> + Send,
{
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let r = tokio::time::timeout(Duration::from_secs(15), f(n)).await;
            {
                let mut s = seen.lock().unwrap();
                match r {
                    Ok(Ok(acked)) => {
                        s.acked.push(acked);
                        s.last_ok = Some(Instant::now());
                    }
                    Ok(Err(e)) => s.failed.push(e.code()),
                    Err(_) => s.failed.push(Code::DeadlineExceeded),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Waits until the load has succeeded again after `since`.
async fn recovered(seen: &Mutex<Seen>, since: Instant, what: &str) {
    let ok = micro_test::eventually(Duration::from_secs(60), || async {
        seen.lock().unwrap().last_ok.is_some_and(|t| t > since)
    })
    .await;
    assert!(ok, "{what}: calls did not succeed again on their own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_restart_under_load_and_nothing_acknowledged_is_lost() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    if !have("nats-server", "--version") || !have("pg_ctlcluster", "--help") {
        return;
    }
    let mut nats = Nats::start();
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_outage_{}", std::process::id())).await;
    let (db_url, nats_url) = (schema.url.clone(), nats.url());
    let s = TestServer::start_with(move |c| {
        c.backends.database = Some(micro_server::Secret(db_url));
        c.backends.events = Some(micro_server::Secret(nats_url.clone()));
        c.backends.broker = Some(micro_server::Secret(nats_url));
    })
    .await;
    let data = s.admin_data("micro").await;
    let token = s.admin_token().await;
    let table = Table::new("micro", "outage");

    // PostgreSQL restarts while records are written.
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Seen::default())));
    let writer = {
        let (store, table) = (data.store.clone(), table.clone());
        load(stop.clone(), seen.clone(), move |n| {
            let (store, table) = (store.clone(), table.clone());
            async move {
                let key = format!("k{n}");
                store.write(&table, &Record::new(key.clone(), n.to_string().into_bytes()), None).await?;
                Ok((key, n))
            }
        })
    };
    running(&seen).await;
    let restarted = Instant::now();
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    recovered(&seen, restarted + Duration::from_millis(100), "PostgreSQL").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let seen_pg = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen_pg.acked.len() > 20, "the writer ran: {} writes", seen_pg.acked.len());
    assert!(
        seen_pg.failed.iter().all(|c| *c == Code::Unavailable),
        "failures during the outage are Unavailable: {:?}",
        seen_pg.failed
    );
    for (key, n) in &seen_pg.acked {
        let r = data.store.read(&table, key, &Query::default()).await;
        let value = r.unwrap_or_else(|e| panic!("acknowledged write {key} is lost: {e}"));
        assert_eq!(value[0].value, n.to_string().into_bytes());
    }
    eprintln!("PostgreSQL restart: {} writes acknowledged, {} failed", seen_pg.acked.len(), seen_pg.failed.len());

    // NATS goes away while events are published; the gateway answers 503 meanwhile.
    let topic = format!("outage-{}", std::process::id());
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Seen::default())));
    let publisher = {
        let (events, topic) = (data.events.clone(), topic.clone());
        load(stop.clone(), seen.clone(), move |n| {
            let (events, topic) = (events.clone(), topic.clone());
            async move {
                let m = Message { payload: format!("{{\"n\":{n}}}").into_bytes(), ..Message::default() };
                let e = events.publish("micro", &topic, &m).await?;
                Ok((String::from_utf8_lossy(&e.payload).to_string(), e.seq))
            }
        })
    };
    running(&seen).await;
    nats.stop();
    let down = Instant::now();
    let (mut during, mut last) = (None, String::new());
    while down.elapsed() < Duration::from_secs(20) {
        let body = format!(r#"{{"topic":"{topic}","payload":"e30="}}"#);
        let auth = format!("Bearer {token}");
        let r = micro_test::http(
            &s.api(),
            "POST",
            "/events/events/publish",
            &[("authorization", auth.as_str())],
            body.as_bytes(),
        )
        .await;
        if r.status == 503 {
            during = Some(r);
            break;
        }
        last = format!("{} {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = during.unwrap_or_else(|| panic!("the gateway answers 503 while NATS is down, not {last}"));
    assert_eq!(during.json()["code"], 503, "{}", during.body);
    assert!(during.json()["detail"].as_str().is_some_and(|d| d.contains("NATS")), "{}", during.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    nats.run();
    recovered(&seen, restarted, "NATS").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let seen_nats = std::mem::take(&mut *seen.lock().unwrap());
    assert!(!seen_nats.failed.is_empty(), "publishing failed while NATS was down");
    assert!(
        seen_nats.failed.iter().all(|c| *c == Code::Unavailable),
        "failures during the outage are Unavailable: {:?}",
        seen_nats.failed
    );
    let history =
        data.events.read("micro", &topic, &ReadOptions { limit: 10_000, ..ReadOptions::default() }).await.unwrap();
    for (payload, seq) in &seen_nats.acked {
        let e = history.iter().find(|e| e.seq == *seq);
        assert_eq!(
            e.map(|e| String::from_utf8_lossy(&e.payload).to_string()).as_deref(),
            Some(payload.as_str()),
            "published event {seq} is lost"
        );
    }
    eprintln!("NATS restart: {} events acknowledged, {} failed", seen_nats.acked.len(), seen_nats.failed.len());
    s.server.stop().await;
    schema.drop().await;
}
