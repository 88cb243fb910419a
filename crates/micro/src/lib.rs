//! Micro: a gRPC-native framework for writing microservices.
//!
//! A service is a name plus handlers. Handlers come from protos (tonic-generated
//! servers, callable with protobuf or JSON) or from plain serde types (JSON). On start a
//! service registers with the registry under a TTL lease and keeps it alive; on SIGTERM
//! it deregisters, then drains in-flight calls. Every server also answers
//! `grpc.health.v1.Health`, gRPC reflection, `Debug.Health` and `Debug.Stats`.
//!
//! ```no_run
//! use micro::{Context, Service, Status};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Request { name: String }
//!
//! #[derive(serde::Serialize, schemars::JsonSchema)]
//! struct Reply { message: String }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Status> {
//!     Service::new("greeter")
//!         .handle("Greeter.Hello", |_ctx: Context, req: Request| async move {
//!             Ok(Reply { message: format!("Hello {}", req.name) })
//!         })
//!         .run()
//!         .await
//! }
//! ```
//!
//! | Module | What |
//! |---|---|
//! | [`Service`] | the builder: handlers, registration, lifecycle |
//! | [`Client`] | calls by service name: discovery, balancing, deadlines, retries |
//! | [`registry`] | in-memory and remote registries |
//! | [`Router`] | the codec-aware request router every server uses |

pub mod auth;
mod client;
pub mod data;
pub mod debug;
pub mod edge;
pub mod form;
pub mod frame;
mod handler;
pub mod layer;
pub mod log;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod proto;
pub mod registry;
mod router;
pub mod schema;
pub mod server;
mod service;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod transcode;
pub mod web;

pub use client::{CallOptions, Channel, Client, DEFAULT_TIMEOUT, LocalService, Target, Transport};
pub use handler::{Context, namespace, namespace_of};
pub use micro_core::{Code, Status, metadata};
pub use router::{LayeredRouter, Router, RouterBuilder, grpc_path, json_error, json_response, split_grpc_path};
pub use service::{DEFAULT_TTL, Running, Service, Stopping};

/// Where services and the CLI find the server when `MICRO_SERVER` is unset.
pub const DEFAULT_SERVER: &str = "127.0.0.1:8081";

/// The encoded descriptor set written by `micro_build::compile` in the calling crate.
#[macro_export]
macro_rules! include_descriptor {
    () => {
        include_bytes!(concat!(env!("OUT_DIR"), "/micro_descriptor.bin"))
    };
}

pub use schemars;
pub use serde_json;
