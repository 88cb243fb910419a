//! The storage quota: a namespace on a plan keeps at most its `storage_mb` of data in the
//! store and blobs (`quota.<namespace>` in the `micro` namespace's config). A write that
//! would take it past is refused with a 429 naming the quota and the plan that lifts it;
//! deletes always pass. What a namespace keeps is summed where the data is (the backends'
//! [`Store::size`] and [`Blob::size`]) at most every [`REREAD`], and what it writes
//! meanwhile is added to it, so a burst of writes cannot go past between two sums. A blob's
//! size is known only once stored: an upload is admitted while the namespace is under its
//! quota, and counted after.

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

/// The storage quotas of every namespace. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StorageQuota {
    limits: NamespaceSettings<PlanQuota>,
    store: Arc<dyn Store>,
    blob: Arc<dyn Blob>,
    /// Each namespace's bytes kept, when they were summed, and what it wrote since.
    kept: Arc<Mutex<HashMap<String, (Instant, u64)>>>,
}

impl StorageQuota {
    /// The quotas in `config`, of the data in `store` and `blob`.
    pub(crate) fn new(config: Arc<dyn Config>, store: Arc<dyn Store>, blob: Arc<dyn Blob>) -> StorageQuota {
        let limits = NamespaceSettings::operators(config, "quota", |_, v, _| PlanQuota::of("storage_mb", v));
        StorageQuota { limits, store, blob, kept: Arc::default() }
    }

    /// What namespace `ns` keeps now (summed again when [`REREAD`] old).
    async fn kept(&self, ns: &str) -> Result<u64, Status> {
        let cached = self.kept.lock().unwrap_or_else(|e| e.into_inner()).get(ns).copied();
        if let Some((at, n)) = cached
            && at.elapsed() < REREAD
        {
            return Ok(n);
        }
        let n = self.store.size(ns).await?.saturating_add(self.blob.size(ns).await?);
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= 10_000 && !kept.contains_key(ns) {
            kept.retain(|_, (at, _)| at.elapsed() < REREAD);
        }
        kept.insert(ns.to_string(), (Instant::now(), n));
        Ok(n)
    }

    /// Refused when namespace `ns`, writing `adding` bytes, would keep more than its plan
    /// allows; else counted as written.
    pub(crate) async fn admit(&self, ns: &str, adding: u64) -> Result<(), Status> {
        let limit = self.limits.get(ns).await;
        let Some(max) = limit.limit.map(|mb| mb.saturating_mul(1 << 20)) else { return Ok(()) };
        let kept = match self.kept(ns).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(namespace = ns, error = %e, "cannot sum the namespace's data; letting the write pass");
                return Ok(());
            }
        };
        if kept.saturating_add(adding) > max {
            let mib = |b: u64| b.div_ceil(1 << 20);
            let (plan, lift) = (limit.on_plan(), limit.lifted());
            return Err(Status::new(
                Code::ResourceExhausted,
                "store",
                format!(
                    "namespace {ns} keeps {} MiB of data (store and blobs) and may keep {} MiB{plan}: delete some to write more{lift}",
                    mib(kept),
                    mib(max)
                ),
            ));
        }
        self.written(ns, adding);
        Ok(())
    }

    /// Adds `bytes` written by namespace `ns` to what it keeps.
    pub(crate) fn written(&self, ns: &str, bytes: u64) {
        if let Some((_, n)) = self.kept.lock().unwrap_or_else(|e| e.into_inner()).get_mut(ns) {
            *n = n.saturating_add(bytes);
        }
    }
}
