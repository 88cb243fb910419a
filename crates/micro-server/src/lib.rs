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

mod app;
mod auth;
mod backends;
mod config;
mod data;
pub mod gateway;
mod guard;
mod proxy;
mod reflection;
mod registry;
mod runtime;
mod shared_registry;
mod web;
mod websocket;

pub use app::{CORE_SERVICES, Running, start};
pub use auth::{ACCESS_TTL, ADMIN_PASSWORD_FILE, REFRESH_TTL};
pub use config::{Backends, Config, Secret};
pub use runtime::{RuntimeConfig, SandboxMode};

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
