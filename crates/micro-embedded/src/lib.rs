//! Embedded backends of Micro: everything `micro server` needs with no external system.
//!
//! The store, events, config, sync and blob metadata live in SQLite databases in WAL
//! mode under the data directory (one file per interface, so their writers never wait
//! for each other); blob contents are files beside them. The broker is in-process.
//! [`DataDir::memory`] gives the same backends entirely in memory, for tests.

mod db;

pub mod blob;
pub mod broker;
pub mod config;
pub mod events;
pub mod files;
pub mod store;
pub mod sync;

pub use db::{DataDir, Durability};
