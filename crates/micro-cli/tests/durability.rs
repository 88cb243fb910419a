//! Acknowledged writes survive SIGKILL: the real `micro server` binary is killed in the
//! middle of a stream of store writes and event publishes, restarted on the same data
//! directory, and every acknowledged write is read back.

use micro_core::events::{Message, ReadOptions};
use micro_core::store::{Query, Record, Table};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Server {
    child: Child,
    proxy: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ADMIN_PASSWORD: &str = "durability-admin-password";

/// The data services as the admin.
async fn admin_data(proxy: &str) -> micro::data::Data {
    let token = micro_test::login(proxy, "micro", "admin", ADMIN_PASSWORD).await;
    micro::data::Data::remote_with(proxy, "micro", Some(std::sync::Arc::new(micro::data::StaticToken(token))))
}

/// Starts `micro server` on free ports over `dir`; returns it with its proxy address.
fn start(dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_micro"))
        .arg("server")
        .env("MICRO_DATA_DIR", dir)
        .env("MICRO_API_ADDRESS", "127.0.0.1:0")
        .env("MICRO_PROXY_ADDRESS", "127.0.0.1:0")
        .env("MICRO_WEB_ADDRESS", "127.0.0.1:0")
        .env("MICRO_LOG", "warn")
        .env("MICRO_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        .spawn()
        .expect("micro server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("banner");
    // "micro server: api http://127.0.0.1:X proxy 127.0.0.1:Y"
    let proxy = line.split_whitespace().last().expect("proxy address").to_string();
    Server { child, proxy }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let data = admin_data(&server.proxy).await;
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
    drop(server);
    for w in writers {
        tokio::time::timeout(Duration::from_secs(15), w).await.expect("writers stop").unwrap();
    }
    let keys = acked_keys.lock().unwrap().clone();
    let seqs = acked_events.lock().unwrap().clone();

    let server = start(dir.path());
    let data = admin_data(&server.proxy).await;
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
