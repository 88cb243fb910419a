//! Conformance suites: one per interface, run against every backend (embedded, in
//! memory, the server-backed clients, and the scale-out backends). Each suite panics
//! with a message naming the broken behaviour.
//!
//! Suites use their own namespaces (`conformance-*`), so a backend may hold other data.

pub mod blob;
pub mod broker;
pub mod config;
pub mod events;
pub mod store;
pub mod sync;
