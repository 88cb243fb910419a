//! Registry implementations: in memory (inside the server, and for tests) and a client
//! of the `registry` service (for services outside the server).

mod memory;
mod remote;

pub use memory::MemoryRegistry;
pub use micro_core::registry::{Endpoint, Event, EventType, Node, Registry, Service};
pub use remote::RemoteRegistry;
