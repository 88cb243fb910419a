//! A browser's push service for tests: Python (`push_endpoint.py`) with the browser's
//! keys, which checks each Web Push request's VAPID signature and decrypts its body with
//! `http_ece` (an implementation independent of the server's), and reports what it got.

use crate::process::Reaped;
use serde_json::Value;
use std::io::BufRead;
use std::time::{Duration, Instant};

/// A running push service with one browser's keys.
pub struct PushEndpoint {
    port: u16,
    /// The browser's public key (base64url).
    pub p256dh: String,
    /// The browser's authentication secret (base64url).
    pub auth: String,
    _dir: tempfile::TempDir,
    _process: Reaped,
}

impl PushEndpoint {
    /// Starts one; `None` (with a notice) where Python with http_ece is missing.
    pub fn start() -> Option<PushEndpoint> {
        let python = crate::smtp::python(&["http_ece", "cryptography"], "a push test")?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let script = dir.path().join("push_endpoint.py");
        std::fs::write(&script, include_str!("push_endpoint.py")).expect("the endpoint's script");
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&script).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        let mut process = Reaped::spawn(&mut cmd);
        let out = process.0.stdout.take().expect("its stdout");
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).expect("the endpoint's keys");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("the endpoint printed {line:?}: {e}"));
        Some(PushEndpoint {
            port: v["port"].as_u64().expect("a port") as u16,
            p256dh: v["p256dh"].as_str().expect("p256dh").to_string(),
            auth: v["auth"].as_str().expect("auth").to_string(),
            _dir: dir,
            _process: process,
        })
    }

    /// The endpoint URL of a subscription named `name` that answers `how`: `ok` (201),
    /// `gone` (410) or `fail` (500).
    pub fn url(&self, how: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{how}/{name}", self.port)
    }

    /// A browser's `PushSubscription` JSON for [`url`](Self::url)`(how, name)`.
    pub fn subscription(&self, how: &str, name: &str) -> Value {
        serde_json::json!({
            "endpoint": self.url(how, name),
            "expirationTime": null,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        })
    }

    /// Everything received so far: per request its `path`, `ttl`, `urgency`, `topic`,
    /// `encoding`, `vapid_key`, `sub`, and the decrypted `message` (or an `error`).
    pub async fn received(&self) -> Vec<Value> {
        let r = crate::http(&format!("127.0.0.1:{}", self.port), "GET", "/received", &[], b"").await;
        serde_json::from_str(&r.body).expect("the endpoint's list")
    }

    /// What came to subscription `name`, waiting up to 10 s for `n` requests.
    pub async fn to(&self, name: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<Value> = self
                .received()
                .await
                .into_iter()
                .filter(|r| r["path"].as_str().is_some_and(|p| p.rsplit('/').next() == Some(name)))
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
