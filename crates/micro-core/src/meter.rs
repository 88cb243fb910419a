//! Service-hours: how long each service of a namespace was deployed, as the runtime
//! records it and billing counts it. A service runs from when it is created (or brought
//! back after being stopped for an unpaid bill) to when it is deleted (or stopped); each
//! such run is one record, keyed by its service and start, so writing it again (a
//! restart, a retry) changes nothing. Times are [`crate::time::clock`] seconds.

use crate::store::Table;
use serde::{Deserialize, Serialize};

/// One run of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRun {
    /// The service's name.
    pub service: String,
    /// When it started (Unix seconds).
    pub from: u64,
    /// When it ended; none while it runs.
    #[serde(default)]
    pub to: Option<u64>,
}

/// Where the runtime keeps the runs (in its own database, shared in a cluster).
pub fn runs_table() -> Table {
    Table::new("runtime", "service-hours")
}

/// The key of a run of `service` of namespace `ns` that started at `from`.
pub fn run_key(ns: &str, service: &str, from: u64) -> String {
    format!("{ns}/{service}/{from:020}")
}

/// The prefix of every run of namespace `ns` (with `service`, of that service only).
pub fn runs_prefix(ns: &str, service: Option<&str>) -> String {
    match service {
        Some(s) => format!("{ns}/{s}/"),
        None => format!("{ns}/"),
    }
}
