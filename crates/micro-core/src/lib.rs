//! Contracts of Micro.
//!
//! This crate holds what every part of Micro agrees on and what other implementations
//! build against: the wire [`Status`] with its fixed [`Code`] table, the metadata keys
//! carried on every call, namespaces, and the service interfaces: [`Registry`](registry::Registry),
//! [`Store`](store::Store), [`Events`](events::Events), [`Broker`](broker::Broker),
//! [`Config`](config::Config), [`Sync`](sync::Sync) and [`Blob`](blob::Blob). It has few dependencies and changes rarely.
//!
//! ```
//! use micro_core::{Code, Status};
//!
//! let status = Status::not_found("helloworld", "no such user");
//! assert_eq!(status.code(), Code::NotFound);
//! assert_eq!(status.http_status(), 404);
//! let body: serde_json::Value = serde_json::from_slice(&status.to_json()).unwrap();
//! assert_eq!(body["status"], "Not Found");
//! ```

pub mod auth;
pub mod blob;
pub mod broker;
pub mod config;
pub mod events;
pub mod licence;
pub mod metadata;
pub mod meter;
pub mod money;
pub mod namespace;
pub mod registry;
mod status;
pub mod store;
pub mod sync;
pub mod time;

pub use status::{Code, Status, reason};

/// A boxed, sendable stream, as returned by watch and streaming interfaces.
pub type BoxStream<T> = futures::stream::BoxStream<'static, T>;
