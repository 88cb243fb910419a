//! The Micro server as a library: the registry, the API gateway (HTTP/JSON) and the gRPC
//! proxy in one process, with embedded defaults.
//!
//! ```no_run
//! # async fn demo() -> Result<(), micro_server::Error> {
//! let config = micro_server::Config::from_env(|k| std::env::var(k).ok(), None)?;
//! let server = micro_server::start(config).await?;
//! println!("gateway on {}, proxy on {}", server.api_address(), server.proxy_address());
//! server.stop().await;
//! # Ok(()) }
//! ```

mod acme;
mod app;
mod auth;
mod backends;
pub mod cache;
mod cluster;
mod config;
mod data;
pub mod domains;
pub mod gateway;
mod grpc_health;
mod guard;
mod licence;
mod namespace_data;
mod network;
mod openapi;
mod products;
mod proxy;
pub mod ratelimit;
mod reflection;
mod registry;
mod revoke;
mod runtime;
mod sealed;
mod settings;
mod storage;
mod targets;
pub use targets::NodeLocal;
mod tls;
mod usage;
mod websocket;

pub use acme::{AcmeConfig, Challenge as AcmeChallenge};
pub use app::{CORE_SERVICES, Running, start};
pub use auth::keys::Signer;
pub use auth::{ACCESS_TTL, ADMIN_PASSWORD_FILE, REFRESH_TTL};
pub use config::{Backends, Config, Join, NetworkConfig, Secret};
pub use licence::{LICENSE_FILE, LicenceSettings};
pub use products::NAMES as PRODUCTS;
pub use runtime::{EgressMode, RuntimeConfig, SandboxMode};
pub use tls::TlsMode;

/// Makes every file this process creates from now on private to its user (umask 077:
/// files 0600, directories 0700), whatever the modes of the directories they are made
/// in. `micro server` calls it first: the data dir holds password hashes, keys, sealed
/// secrets and every tenant's data. Process-wide, so a library embedding the server
/// decides for itself.
pub fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// `bytes` in lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The SHA-256 of `data`, in lowercase hex.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&<sha2::Sha256 as sha2::Digest>::digest(data))
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not bind.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A core service failed to start.
    #[error(transparent)]
    Service(#[from] micro_core::Status),
}
