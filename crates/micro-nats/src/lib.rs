//! NATS backends of Micro, for server nodes that share their events and broker:
//! [`NatsEvents`] keeps events in JetStream streams (one per topic) read by durable pull
//! consumers (one per consumer group), and [`NatsBroker`] carries broker messages on core
//! NATS subjects with queue groups.
//!
//! One [`Nats`] connection per server node is shared by both; it reconnects on its own
//! when the NATS server restarts, and calls made while it is unreachable fail with
//! `Unavailable` (a 503) instead of hanging.

pub mod broker;
pub mod events;

pub use broker::NatsBroker;
pub use events::NatsEvents;

use micro_core::Status;
use std::time::Duration;

/// How long a request to NATS may take before it counts as unreachable (well inside a
/// caller's default 5 s deadline, so the caller sees 503, not a timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to NATS (with JetStream), shared by the backends of one node.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats").field("state", &self.client.connection_state()).finish()
    }
}

impl Nats {
    /// Connects to the NATS server at `url` (`nats://host:port`); `Unavailable` when it
    /// does not answer. Once connected, the client reconnects by itself with backoff.
    pub async fn connect(url: &str) -> Result<Nats, Status> {
        let options = async_nats::ConnectOptions::new()
            .name("micro-server")
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(6) as u32)).min(5_000))
            });
        let client = options
            .connect(url)
            .await
            .map_err(|e| Status::unavailable("nats", format!("cannot reach NATS at {}: {e}", redact(url))))?;
        let js = async_nats::jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        Ok(Nats { client, js })
    }
}

impl Nats {
    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        matches!(self.client.connection_state(), async_nats::connection::State::Connected)
    }

    /// `Unavailable` at once while the connection is down (calls would only queue up
    /// until it is back, or time out).
    fn connected(&self, id: &str) -> Result<(), Status> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Status::unavailable(id, format!("NATS is unreachable (connection {state:?}); retrying"))),
        }
    }
}

/// Whether `url` names a NATS server (`nats://…` or `tls://…`).
pub fn is_url(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

/// `url` without its user info, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// A failure to talk to NATS: `Unavailable`, so callers see a 503 and may retry.
fn unavailable(id: &str, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Status {
    Status::unavailable(id, format!("{what}: NATS did not answer ({e})")).with_source(e)
}

#[cfg(test)]
fn test_url() -> Option<String> {
    micro_conformance::backend_url("MICRO_TEST_NATS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable() {
        let started = std::time::Instant::now();
        let err = Nats::connect("nats://user:secret@127.0.0.1:1").await.expect_err("nobody listens on port 1");
        assert_eq!(err.code(), micro_core::Code::Unavailable);
        assert!(!err.detail().contains("secret"), "the password is not shown: {err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(is_url("nats://127.0.0.1:4222") && !is_url("postgres://x"));
    }
}
