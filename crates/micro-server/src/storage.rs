//! The storage quota: a namespace on a plan keeps at most its `storage_mb` of data in the
//! store and blobs (`quota.<namespace>` in the `micro` namespace's config). A write that
//! would take it past is refused with a 429 naming the quota and the plan that lifts it;
//! deletes always pass. A record counts its key, value and metadata, an object its
//! content, key and content type.
//!
//! What a namespace keeps is summed where the data is (the backends' [`Store::size`] and
//! [`Blob::size`]), one sum at a time per namespace and at most every [`REREAD`]; what it
//! writes meanwhile is added as it writes (a blob's bytes as they stream in, so parallel
//! uploads share one allowance). While a sum runs, or when one fails, the last one (with
//! what was written since) answers.

use crate::settings::{NamespaceSettings, PlanQuota};
use micro_core::blob::Blob;
use micro_core::config::Config;
use micro_core::store::Store;
use micro_core::{Code, Status};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a namespace's sum is used (with what it wrote since) before it is made again.
pub(crate) const REREAD: Duration = Duration::from_secs(10);

/// What a namespace keeps, as last summed plus what it wrote since.
#[derive(Clone, Copy, Debug)]
struct Kept {
    /// When it was last summed (or a sum was last tried).
    at: Instant,
    bytes: u64,
    /// Whether a sum is running.
    summing: bool,
}

/// The storage quotas of every namespace. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StorageQuota {
    limits: NamespaceSettings<PlanQuota>,
    store: Arc<dyn Store>,
    blob: Arc<dyn Blob>,
    kept: Arc<Mutex<HashMap<String, Kept>>>,
}

/// A namespace's allowance while it writes: what it may keep in all.
#[derive(Clone)]
pub(crate) struct Allowance {
    quota: StorageQuota,
    namespace: String,
    /// The most it may keep, in bytes, with the refusal's words.
    max: Option<(u64, Arc<PlanQuota>)>,
}

impl StorageQuota {
    /// The quotas in `config`, of the data in `store` and `blob`.
    pub(crate) fn new(config: Arc<dyn Config>, store: Arc<dyn Store>, blob: Arc<dyn Blob>) -> StorageQuota {
        let limits = NamespaceSettings::operators(config, "quota", |_, v, _| PlanQuota::of("storage_mb", v));
        StorageQuota { limits, store, blob, kept: Arc::default() }
    }

    /// What namespace `ns` keeps now: summed again when [`REREAD`] old, by one caller
    /// while the others use the last sum.
    pub(crate) async fn kept(&self, ns: &str) -> Result<u64, Status> {
        let last = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            match kept.get_mut(ns) {
                Some(k) if k.summing || k.at.elapsed() < REREAD => return Ok(k.bytes),
                Some(k) => {
                    k.summing = true;
                    Some(k.bytes)
                }
                None => {
                    if kept.len() >= 10_000 {
                        kept.retain(|_, k| k.at.elapsed() < REREAD);
                    }
                    kept.insert(ns.to_string(), Kept { at: Instant::now(), bytes: 0, summing: true });
                    None
                }
            }
        };
        let summed = async { Ok::<_, Status>(self.store.size(ns).await?.saturating_add(self.blob.size(ns).await?)) };
        let result = summed.await;
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let entry = kept.entry(ns.to_string()).or_insert(Kept { at: Instant::now(), bytes: 0, summing: false });
        entry.summing = false;
        entry.at = Instant::now();
        match result {
            Ok(n) => {
                entry.bytes = n;
                Ok(n)
            }
            // The last sum (and what was written since) holds until the next try.
            Err(e) => match last {
                Some(_) => {
                    tracing::warn!(namespace = ns, error = %e, "cannot sum the namespace's data; using the last sum");
                    Ok(entry.bytes)
                }
                None => {
                    kept.remove(ns);
                    Err(e)
                }
            },
        }
    }

    /// Namespace `ns`'s allowance, refused when it keeps its whole quota already.
    pub(crate) async fn allowance(&self, ns: &str) -> Result<Allowance, Status> {
        let limit = self.limits.get(ns).await;
        let Some(max) = limit.limit.map(|mb| mb.saturating_mul(1 << 20)) else {
            return Ok(Allowance { quota: self.clone(), namespace: ns.to_string(), max: None });
        };
        let allowance = Allowance { quota: self.clone(), namespace: ns.to_string(), max: Some((max, limit)) };
        match self.kept(ns).await {
            Ok(kept) if kept >= max => Err(allowance.refusal(kept)),
            Ok(_) => Ok(allowance),
            Err(e) => {
                // Never summed: the store is away, and the write will say so.
                tracing::warn!(namespace = ns, error = %e, "cannot sum the namespace's data");
                Ok(allowance)
            }
        }
    }

    /// Refused when namespace `ns`, writing `adding` bytes, would keep more than its plan
    /// allows; else counted as written.
    pub(crate) async fn admit(&self, ns: &str, adding: u64) -> Result<(), Status> {
        self.allowance(ns).await?.take(adding)
    }
}

impl Allowance {
    /// Counts `bytes` more as kept; refused (and not counted) past the quota.
    pub(crate) fn take(&self, bytes: u64) -> Result<(), Status> {
        let Some((max, _)) = &self.max else { return Ok(()) };
        let mut kept = self.quota.kept.lock().unwrap_or_else(|e| e.into_inner());
        let Some(k) = kept.get_mut(&self.namespace) else { return Ok(()) };
        let after = k.bytes.saturating_add(bytes);
        if after > *max {
            let now = k.bytes;
            drop(kept);
            return Err(self.refusal(now));
        }
        k.bytes = after;
        Ok(())
    }

    fn refusal(&self, kept: u64) -> Status {
        let Some((max, limit)) = &self.max else { return Status::internal("store", "no quota") };
        let mib = |b: u64| b.div_ceil(1 << 20);
        let (plan, lift) = (limit.on_plan(), limit.lifted());
        Status::new(
            Code::ResourceExhausted,
            "store",
            format!(
                "namespace {} keeps {} MiB of data (store and blobs) and may keep {} MiB{plan}: delete some to write more{lift}",
                self.namespace,
                mib(kept),
                mib(*max)
            ),
        )
    }
}
