//! A server-sent events subscription read over a raw socket: each `data:` line's JSON as
//! it comes (an `event: error` as `{"action": "error"}` followed by its data).

use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An open subscription; dropping it closes the connection.
pub struct Events {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    /// `GET path` at `addr` as the holder of `token` in namespace `ns`.
    pub async fn open(addr: &str, path: &str, token: Option<&str>, ns: &str) -> Events {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nMicro-Namespace: {ns}\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut head = true;
            loop {
                let n = match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // A refusal before any event is a plain answer: an error event with it.
                if head {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let text = String::from_utf8_lossy(&buf[..end]).to_string();
                    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    if status != 200 {
                        let _ = tx.send(json!({"action": "error", "status": status}));
                        return;
                    }
                    buf.drain(..end + 4);
                    head = false;
                }
                while let Some(at) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=at).collect();
                    let line = String::from_utf8_lossy(&line).trim().to_string();
                    if let Some(data) = line.strip_prefix("data: ") {
                        let _ = tx.send(serde_json::from_str(data).unwrap_or(Value::String(data.to_string())));
                    } else if line.starts_with("event: error") {
                        let _ = tx.send(json!({"action": "error"}));
                    }
                }
            }
        });
        Events { rx, task }
    }

    /// The next event (within 10 s; panics otherwise or when the stream ended).
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open")
    }

    /// The next event within `wait`: `None` when nothing came, or the stream ended.
    pub async fn within(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }

    /// Whether nothing comes within `wait` (else the event that came).
    pub async fn quiet(&mut self, wait: Duration) -> Result<(), Value> {
        match self.within(wait).await {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}
