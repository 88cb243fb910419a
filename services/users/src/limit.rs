//! Counting attempts: a window per key in this node's memory (signups and attempts per
//! client address), and counters kept in the store for what must hold across the nodes
//! of a cluster (failed logins per address, mails per address).

use micro::Status;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Keys remembered at most; past it, the expired ones are forgotten, and if that is not
/// enough the tenth hit least recently (a flood of addresses cannot grow the map without
/// bound, nor empty it to reset a key it wants reset: the busiest keys stay).
const MAX_KEYS: usize = 100_000;

/// Hits per key within a sliding window, in this node's memory.
#[derive(Default)]
pub(crate) struct Window {
    hits: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl Window {
    /// Counts a hit of `key` at `now` (seconds) and says whether it is within `max` per
    /// `per` seconds (a refused hit is not counted).
    pub(crate) fn hit(&self, key: &str, max: u32, per: u64, now: u64) -> bool {
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        if hits.len() >= MAX_KEYS && !hits.contains_key(key) {
            hits.retain(|_, q| q.back().is_some_and(|t| now.saturating_sub(*t) < per));
            if hits.len() >= MAX_KEYS {
                let mut last: Vec<u64> = hits.values().filter_map(|q| q.back().copied()).collect();
                let cut = MAX_KEYS / 10;
                last.select_nth_unstable(cut);
                let before = last[cut];
                hits.retain(|_, q| q.back().is_some_and(|t| *t > before));
            }
        }
        let q = hits.entry(key.to_string()).or_default();
        while q.front().is_some_and(|t| now.saturating_sub(*t) >= per) {
            q.pop_front();
        }
        if q.len() >= max as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}

/// A counter kept in the store: how many times, since when.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Count {
    pub(crate) n: u32,
    pub(crate) since: u64,
}

/// The count at `key` within the last `per` seconds.
pub(crate) async fn read(store: &micro::data::StoreHandle, key: &str, per: u64, now: u64) -> Result<Count, Status> {
    match store.get(key).await {
        Ok(r) => {
            let c: Count = serde_json::from_slice(&r.value).unwrap_or_default();
            Ok(if now.saturating_sub(c.since) >= per { Count::default() } else { c })
        }
        Err(e) if e.code() == micro::Code::NotFound => Ok(Count::default()),
        Err(e) => Err(e),
    }
}

/// Adds one to the count at `key` (a new window of `per` seconds when the last is over).
pub(crate) async fn add(store: &micro::data::StoreHandle, key: &str, per: u64, now: u64) -> Result<Count, Status> {
    let mut c = read(store, key, per, now).await?;
    if c.n == 0 {
        c.since = now;
    }
    c.n += 1;
    let value = serde_json::to_vec(&c).map_err(|e| Status::internal(crate::NAME, e.to_string()))?;
    let left = per.saturating_sub(now.saturating_sub(c.since)).max(1);
    store.write(&micro_core::store::Record::new(key, value), Some(Duration::from_secs(left))).await?;
    Ok(c)
}

/// Takes one back from the count at `key` (an attempt that succeeded), keeping its window.
pub(crate) async fn sub(store: &micro::data::StoreHandle, key: &str, per: u64, now: u64) -> Result<(), Status> {
    let mut c = read(store, key, per, now).await?;
    if c.n == 0 {
        return Ok(());
    }
    c.n -= 1;
    let value = serde_json::to_vec(&c).map_err(|e| Status::internal(crate::NAME, e.to_string()))?;
    let left = per.saturating_sub(now.saturating_sub(c.since)).max(1);
    store.write(&micro_core::store::Record::new(key, value), Some(Duration::from_secs(left))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_lets_max_hits_through_then_slides() {
        let w = Window::default();
        assert!(w.hit("a", 2, 60, 100));
        assert!(w.hit("a", 2, 60, 110));
        assert!(!w.hit("a", 2, 60, 120));
        assert!(w.hit("b", 2, 60, 120));
        assert!(w.hit("a", 2, 60, 161));
        assert!(!w.hit("a", 2, 60, 162));
    }

    #[test]
    fn a_flood_of_keys_does_not_forget_the_recent_ones() {
        let w = Window::default();
        assert!(w.hit("target", 1, 600, 1000));
        for i in 0..MAX_KEYS + 10 {
            w.hit(&format!("k{i}"), 1, 600, 500 + (i as u64 % 400));
        }
        assert!(!w.hit("target", 1, 600, 1001), "the target's recent hit is remembered");
    }
}
