//! A namespace's edge settings (rate limits, cache rules), kept in its config and read
//! by the gateway at most once a second per namespace: what the rate limits and the
//! response cache share.

use micro_core::config::Config;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a namespace's settings are used before they are read again.
pub(crate) const REREAD: Duration = Duration::from_secs(1);

/// At most this many namespaces' settings are kept in memory.
const MAX_NAMESPACES: usize = 10_000;

/// What a rule (a rate limit, a cache rule) applies to: its `service` (a valid service
/// name) and its `route` (a path prefix), each optional; the error says what is wrong.
pub(crate) fn scope(rule: &serde_json::Map<String, Value>) -> Result<(Option<String>, Option<String>), String> {
    let text = |k: &str| -> Result<Option<String>, String> {
        match rule.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{k} {other}: a string")),
        }
    };
    let service = text("service")?;
    if let Some(s) = &service {
        micro_core::registry::validate_name(s).map_err(|e| format!("service {s:?}: {}", e.detail()))?;
    }
    let route = text("route")?;
    if route.as_deref().is_some_and(|r| !r.starts_with('/')) {
        return Err("route: a path prefix starting with /".into());
    }
    Ok((service, route))
}

/// One quota of a namespace's plan (`quota.<namespace>` in the `micro` namespace's
/// config, as the platform writes it): its limit, the plan, and what lifts it.
#[derive(Debug, Default)]
pub(crate) struct PlanQuota {
    /// The limit (`None`: none).
    pub(crate) limit: Option<u64>,
    /// The plan it comes from.
    pub(crate) plan: Option<String>,
    /// What lifts it (a sentence).
    pub(crate) lift: Option<String>,
}

impl PlanQuota {
    /// Quota `field` of a namespace's quotas `v` (`None` when it has none).
    pub(crate) fn of(field: &str, v: Option<&Value>) -> PlanQuota {
        let Some(v) = v else { return PlanQuota::default() };
        PlanQuota {
            limit: v[field].as_u64(),
            plan: v["plan"].as_str().map(str::to_string),
            lift: v["lifts"][field].as_str().map(str::to_string),
        }
    }

    /// " on the <plan> plan", when it comes from one.
    pub(crate) fn on_plan(&self) -> String {
        self.plan.as_deref().map(|p| format!(" on the {p} plan")).unwrap_or_default()
    }

    /// "; <what lifts it>", when something does.
    pub(crate) fn lifted(&self) -> String {
        self.lift.as_deref().map(|l| format!("; {l}")).unwrap_or_default()
    }
}

/// Makes a namespace's settings from its config value (`None` when unset) and the ones
/// read before (to keep their state where unchanged).
type Build<T> = dyn Fn(&str, Option<&Value>, Option<&Arc<T>>) -> T + Send + Sync;

/// Each namespace's settings, and when they were read.
type Read<T> = Mutex<HashMap<String, (Instant, Arc<T>)>>;

/// The settings at one config path of every namespace. Cheap to clone.
pub(crate) struct NamespaceSettings<T> {
    config: Arc<dyn Config>,
    path: &'static str,
    /// Kept by the operator, in the `micro` namespace's config at `<path>.<namespace>`
    /// (a plan's quotas), not in each namespace's own.
    operators: bool,
    read: Arc<Read<T>>,
    build: Arc<Build<T>>,
}

impl<T> Clone for NamespaceSettings<T> {
    fn clone(&self) -> Self {
        NamespaceSettings {
            config: self.config.clone(),
            path: self.path,
            operators: self.operators,
            read: self.read.clone(),
            build: self.build.clone(),
        }
    }
}

impl<T: Default + Send + Sync + 'static> NamespaceSettings<T> {
    /// The settings at `path` of each namespace's config, made by `build`.
    pub(crate) fn new(
        config: Arc<dyn Config>,
        path: &'static str,
        build: impl Fn(&str, Option<&Value>, Option<&Arc<T>>) -> T + Send + Sync + 'static,
    ) -> Self {
        NamespaceSettings { config, path, operators: false, read: Arc::default(), build: Arc::new(build) }
    }

    /// The settings the operator keeps for each namespace at `<path>.<namespace>` of the
    /// `micro` namespace's config, made by `build`.
    pub(crate) fn operators(
        config: Arc<dyn Config>,
        path: &'static str,
        build: impl Fn(&str, Option<&Value>, Option<&Arc<T>>) -> T + Send + Sync + 'static,
    ) -> Self {
        NamespaceSettings { operators: true, ..Self::new(config, path, build) }
    }

    /// The namespace's settings, read again when a second old.
    pub(crate) async fn get(&self, ns: &str) -> Arc<T> {
        let old = self.read.lock().unwrap_or_else(|e| e.into_inner()).get(ns).cloned();
        if let Some((at, s)) = &old
            && at.elapsed() < REREAD
        {
            return s.clone();
        }
        let previous = old.map(|(_, s)| s);
        let read = match self.operators {
            true => self.config.get(micro_core::namespace::DEFAULT, &format!("{}.{ns}", self.path), false).await,
            false => self.config.get(ns, self.path, false).await,
        };
        let fresh = match read {
            Ok(v) => Arc::new((self.build)(ns, v.as_ref(), previous.as_ref())),
            Err(e) => {
                // The config is away: the last settings hold (none, if never read), and it
                // is asked again in a second, not on every request.
                tracing::warn!(namespace = ns, path = self.path, error = %e, "cannot read the settings; keeping the last ones");
                previous.unwrap_or_default()
            }
        };
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        // Callers may name any namespace: the map stays bounded.
        if read.len() >= MAX_NAMESPACES && !read.contains_key(ns) {
            read.retain(|_, (at, _)| at.elapsed() < REREAD * 60);
            if read.len() >= MAX_NAMESPACES {
                read.clear();
            }
        }
        read.insert(ns.to_string(), (Instant::now(), fresh.clone()));
        fresh
    }
}
