//! Registry implementations: in memory (inside the server, and for tests), in a shared
//! store (server nodes sharing PostgreSQL), and a client of the `registry` service (for
//! services outside the server). All pass `micro_conformance::registry`.

mod memory;
mod remote;
mod shared;

pub use memory::MemoryRegistry;
pub use micro_core::registry::{Endpoint, Event, EventType, Node, Registry, Service};
pub use remote::RemoteRegistry;
pub use shared::SharedRegistry;
