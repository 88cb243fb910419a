//! Conformance suites: one per contract of `micro-core`, run against every backend
//! (embedded, in memory, the server-backed clients, and the scale-out backends). Each
//! suite panics with a message naming the broken behaviour.
//!
//! Suites use their own namespaces (`conformance-*`), so a backend may hold other data.
//!
//! This crate depends on `micro-core` alone, so every backend can run the suites in its
//! tests without depending on the server (which depends on the backends).
//!
//! ```no_run
//! # async fn f(store: std::sync::Arc<dyn micro_core::store::Store>) {
//! micro_conformance::store::store(store).await;
//! # }
//! ```

pub mod blob;
pub mod broker;
pub mod config;
pub mod events;
pub mod registry;
pub mod store;
pub mod sync;

use std::future::Future;
use std::time::Duration;

/// The URL of an external backend for a test, from the environment variable `var`
/// (like `MICRO_TEST_POSTGRES`). Without it the test should skip: this prints a notice and
/// gives `None`, unless `MICRO_TEST_REQUIRE_BACKENDS` is set (CI), where it panics.
pub fn backend_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(),
                "{var} is not set but MICRO_TEST_REQUIRE_BACKENDS is"
            );
            eprintln!("notice: skipping a test of an external backend: {var} is not set");
            None
        }
    }
}

/// Polls `f` every 50 ms until it returns `true`, for at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
