//! Defect 9 (low/medium): half-sent requests stayed open forever on all three ports
//! (1,000 of them held 1,024 descriptors); in a data dir that already existed with mode
//! 0755, the databases, blobs and uploads were created 0644.

use super::*;
use micro_test::process::ServerProcess;
use std::os::unix::fs::PermissionsExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Whether the server closed `stream` (reads reach the end) within `wait`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_and_capped() {
    // The server under a 512-descriptor limit, as on a small machine: `prlimit` sets it
    // and executes the server in its place.
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("micro");
    let script = format!("#!/bin/sh\nexec prlimit --nofile=512:512 -- '{}' \"$@\"\n", micro().display());
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = ServerProcess::start(&wrapper, &[]);
    let ports = [s.api.clone(), s.proxy.clone(), s.web.clone()];
    let mut held = Vec::new();
    // Per port: silent connections, a request head never finished, an HTTP/2 preface
    // alone, and a flood past the connection cap.
    for addr in &ports {
        for i in 0..400 {
            let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else { continue };
            match i % 3 {
                0 => {}
                1 => {
                    let _ = c.write_all(b"POST /store/store/list HTTP/1.1\r\nHost: x\r\nContent-Le").await;
                }
                _ => {
                    let _ = c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                }
            }
            held.push(c);
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.pid())).map(|d| d.count()).unwrap_or(0);
    assert!(fds > 100 && fds < 500, "the server holds {fds} descriptors for 1,200 idle connections");
    // Over its connection cap, it still answers once the idle ones time out (below).
    // Every one of them is closed by the server within its header timeout.
    let closed = futures::future::join_all(held.iter_mut().map(|c| closed_by_server(c, Duration::from_secs(15)))).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} idle connections were still open after 15 s");
    // And it serves.
    let r = micro_test::http(&s.api, "GET", "/", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_an_existing_open_data_dir_are_private() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = ServerProcess::start_in(&micro(), dir, &[]);
    // Data in every part: an account, a record, an object, an event, a config secret.
    let admin = s.admin_token().await;
    let d = data(&s.proxy, "micro", Some(&admin));
    let t = micro_core::store::Table::new("micro", "modes");
    d.store.write(&t, &micro_core::store::Record::new("k", b"v".to_vec()), None).await.unwrap();
    let chunks = futures::StreamExt::boxed(futures::stream::iter([Ok(bytes::Bytes::from_static(b"object"))]));
    d.blob.put("micro", "modes", "o.txt", "text/plain", chunks).await.unwrap();
    let m = micro_core::events::Message { payload: b"{}".to_vec(), ..Default::default() };
    d.events.publish("micro", "modes", &m).await.unwrap();
    d.config.set("micro", "modes.secret", &serde_json::json!("hunter2"), true).await.unwrap();
    s.account("shop", "keeper", "user", &["admin"]).await;

    let root = s.data_dir();
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode(&root), 0o700, "the data dir");
    let mut open = Vec::new();
    let mut stack = vec![root.clone()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            if meta.file_type().is_symlink() {
                continue;
            }
            seen += 1;
            if meta.permissions().mode() & 0o077 != 0 {
                open.push(format!("{} {:o}", p.display(), meta.permissions().mode() & 0o777));
            }
            if meta.is_dir() {
                stack.push(p);
            }
        }
    }
    assert!(seen > 5, "the server wrote its files");
    assert!(open.is_empty(), "readable by others: {open:?}");
}
