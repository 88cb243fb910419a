//! Per-namespace quotas, as the platform (or an operator) sets them in the `micro`
//! namespace's config at `quota.<namespace>`: how many services, instances of one service,
//! the memory, CPU (thousandths of a core) and processes of one instance, and build
//! minutes a month; where its code may connect (`egress`: `internet` or `none`). Without
//! one, only the runtime's own limits hold ([`DEFAULT_PIDS`] processes an instance).
//!
//! ```json
//! {"plan": "community", "services": 2, "instances": 1, "memory_mb": 256,
//!  "cpu_millis": 500, "pids": 128,
//!  "lifts": {"services": "the personal plan allows 10: micro plan set personal"}}
//! ```

use super::ID;
use super::cgroup::Limits;
use micro::proto::runtime as pb;
use micro_core::{Code, Status};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A namespace's quota.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Quota {
    /// The plan it comes from, named in refusals.
    #[serde(default)]
    plan: Option<String>,
    /// Services at once.
    #[serde(default)]
    services: Option<u64>,
    /// Instances of one service.
    #[serde(default)]
    instances: Option<u64>,
    /// Memory of one instance, in MiB.
    #[serde(default)]
    memory_mb: Option<u64>,
    /// CPU of one instance, in thousandths of a core.
    #[serde(default)]
    cpu_millis: Option<u64>,
    /// Processes (and threads) of one instance.
    #[serde(default)]
    pids: Option<u64>,
    /// Build time a calendar month (UTC), in minutes.
    #[serde(default)]
    build_minutes: Option<u64>,
    /// Where its code may connect (default: the public internet).
    #[serde(default)]
    egress: super::firewall::Egress,
    /// For each quota, what lifts it (a sentence).
    #[serde(default)]
    lifts: BTreeMap<String, String>,
}

/// The processes (and threads) an instance may have without a quota saying otherwise.
pub(crate) const DEFAULT_PIDS: u64 = 4096;

impl Quota {
    /// What each instance of a service with `memory` bytes (0: none) may use.
    pub(crate) fn limits(&self, memory: u64) -> Limits {
        Limits {
            memory,
            cpu_millis: self.cpu_millis.unwrap_or(0),
            pids: self.pids.filter(|p| *p > 0).unwrap_or(DEFAULT_PIDS),
        }
    }

    /// Where the namespace's code may connect.
    pub(crate) fn egress(&self) -> super::firewall::Egress {
        self.egress
    }

    /// Namespace `ns`'s quota, read from `config` now (changes take effect at once).
    pub(crate) async fn of(config: &dyn micro_core::config::Config, ns: &str) -> Result<Quota, Status> {
        match config.get(micro_core::namespace::DEFAULT, &format!("quota.{ns}"), false).await? {
            Some(v) => serde_json::from_value(v).map_err(|e| {
                Status::internal(ID, format!("the quota of {ns} (micro config quota.{ns}) is unreadable: {e}"))
            }),
            None => Ok(Quota::default()),
        }
    }

    /// " on the <plan> plan", when the quota comes from one.
    fn on_plan(&self) -> String {
        self.plan.as_deref().map(|p| format!(" on the {p} plan")).unwrap_or_default()
    }

    /// A refusal: `what`, then what lifts quota `field`.
    fn refuse(&self, field: &str, what: String) -> Status {
        let lift = self.lifts.get(field).map(|l| format!("; {l}")).unwrap_or_default();
        Status::new(Code::ResourceExhausted, ID, format!("{what}{lift}"))
    }

    /// Checks a service's instances and memory; an instance without a memory limit gets
    /// the quota's.
    pub(crate) fn admit(&self, ns: &str, spec: &mut pb::Service) -> Result<(), Status> {
        if let Some(max) = self.instances
            && u64::from(spec.instances.max(1)) > max
        {
            let what = format!(
                "{} asks for {} instances: namespace {ns} may run {max} of a service{}",
                spec.name,
                spec.instances,
                self.on_plan()
            );
            return Err(self.refuse("instances", what));
        }
        if let Some(mb) = self.memory_mb {
            let max = mb.saturating_mul(1 << 20);
            if spec.memory == 0 {
                spec.memory = max;
            } else if spec.memory > max {
                let what = format!(
                    "{} asks for {} MiB an instance: namespace {ns} may give {mb} MiB{}",
                    spec.name,
                    spec.memory >> 20,
                    self.on_plan()
                );
                return Err(self.refuse("memory_mb", what));
            }
        }
        Ok(())
    }

    /// The build time namespace `ns` may still use this month, having used `used` (`None`:
    /// no quota); refused when it used it all.
    pub(crate) fn builds_left(&self, ns: &str, used: Duration, now_ms: u64) -> Result<Option<Duration>, Status> {
        let Some(minutes) = self.build_minutes else { return Ok(None) };
        let max = Duration::from_secs(minutes.saturating_mul(60));
        if used >= max {
            let next = micro_core::time::utc(micro_core::time::next_month(now_ms));
            let what = format!(
                "namespace {ns} has used its {minutes} build minutes this month{}; they start again on {} UTC",
                self.on_plan(),
                next.get(..10).unwrap_or_default()
            );
            return Err(self.refuse("build_minutes", what));
        }
        Ok(Some(max - used))
    }

    /// Checks one more service in a namespace running `running`.
    pub(crate) fn admit_another(&self, ns: &str, running: usize) -> Result<(), Status> {
        match self.services {
            Some(max) if running as u64 >= max => Err(self.refuse(
                "services",
                format!("namespace {ns} may run {max} services{} and runs {running}", self.on_plan()),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_quota_and_the_plan_that_lifts_it() {
        let q: Quota = serde_json::from_value(serde_json::json!({
            "plan": "community", "services": 2, "instances": 1, "memory_mb": 256,
            "lifts": {"services": "the personal plan allows 10: micro plan set personal"}
        }))
        .unwrap();
        let e = q.admit_another("acme", 2).unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(
            e.detail(),
            "namespace acme may run 2 services on the community plan and runs 2; \
             the personal plan allows 10: micro plan set personal"
        );
        assert!(q.admit_another("acme", 1).is_ok());
        let mut spec = pb::Service { name: "api".into(), instances: 2, ..Default::default() };
        assert!(q.admit("acme", &mut spec).unwrap_err().detail().contains("may run 1 of a service"));
        spec.instances = 1;
        q.admit("acme", &mut spec).unwrap();
        assert_eq!(spec.memory, 256 << 20, "the quota's memory is the instance's limit");
        let minutes: Quota =
            serde_json::from_value(serde_json::json!({"plan": "community", "build_minutes": 2})).unwrap();
        let now = 1_700_000_000_000;
        assert_eq!(minutes.builds_left("shop", Duration::from_secs(30), now).unwrap(), Some(Duration::from_secs(90)));
        let spent = minutes.builds_left("shop", Duration::from_secs(120), now).unwrap_err();
        assert!(spent.detail().contains("has used its 2 build minutes this month on the community plan"), "{spent:?}");
        assert_eq!(Quota::default().builds_left("shop", Duration::from_secs(1 << 20), now).unwrap(), None);
        spec.memory = 512 << 20;
        assert!(q.admit("acme", &mut spec).unwrap_err().detail().contains("may give 256 MiB"));
        assert!(Quota::default().admit_another("x", 1000).is_ok());
    }
}
