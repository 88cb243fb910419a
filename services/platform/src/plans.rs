//! Plans: Community (free), Personal and Team, each a set of quotas a namespace is held
//! to. The platform keeps each namespace's plan and writes its quotas where the core
//! enforces them: the `micro` namespace's config, at `quota.<namespace>` (the runtime
//! refuses a service past them, naming the quota and the plan that lifts it). Changing
//! plan takes effect at once. The limits of each plan are set in one place
//! (`Platform.Plans`); the defaults are documented in docs/platform.md.

use crate::team::Role;
use crate::{Shared, bad, decode, encode, operator};
use micro::{Code, Context, Service, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The plans, cheapest first.
pub const PLANS: [&str; 3] = ["community", "personal", "team"];

/// What a plan allows a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Services running at once.
    pub services: u32,
    /// Instances of one service.
    pub instances: u32,
    /// Memory of one instance, in MiB.
    pub memory_mb: u64,
    /// Requests through the gateway and the proxy per calendar month (UTC).
    pub requests_per_month: u64,
    /// Data kept (store, blobs, events), in MiB.
    pub storage_mb: u64,
    /// Build time per calendar month, in minutes.
    pub build_minutes: u64,
    /// CPU of one instance, in thousandths of a core (0: not limited).
    #[serde(default)]
    pub cpu_millis: u64,
    /// Processes and threads of one instance (0: the runtime's default).
    #[serde(default)]
    pub pids: u64,
    /// Where its services may connect: `internet` (public addresses and the platform's
    /// proxy; no host or private address) or `none` (the proxy only).
    #[serde(default)]
    pub egress: Egress,
}

/// Where a plan's services may connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Public addresses and the platform's proxy.
    #[default]
    Internet,
    /// The platform's proxy only.
    None,
}

/// The default limits of each plan.
pub fn defaults() -> BTreeMap<String, Limits> {
    let plan =
        |services, instances, memory_mb, requests_per_month, storage_mb, build_minutes, cpu_millis, pids| Limits {
            services,
            instances,
            memory_mb,
            requests_per_month,
            storage_mb,
            build_minutes,
            cpu_millis,
            pids,
            egress: Egress::Internet,
        };
    [
        ("community".to_string(), plan(2, 1, 256, 100_000, 100, 60, 500, 128)),
        ("personal".to_string(), plan(10, 3, 1024, 1_000_000, 1024, 300, 1000, 512)),
        ("team".to_string(), plan(50, 10, 4096, 10_000_000, 10_240, 1000, 2000, 2048)),
    ]
    .into()
}

const PLANS_KEY: &str = "_plans";

fn plan_key(ns: &str) -> String {
    format!("{ns}/plan")
}

/// Where the plans namespace `ns` was put on are kept (in the platform's table), each
/// under the time (clock seconds, 20 digits) it took effect.
pub fn plan_history_prefix(ns: &str) -> String {
    format!("{ns}/plan-history/")
}

/// A namespace's plan.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanReply {
    /// The namespace.
    pub namespace: String,
    /// Its plan.
    pub plan: String,
    /// What the plan allows.
    pub limits: Limits,
    /// What the namespace uses of it now.
    pub used: Used,
}

/// What a namespace uses of its plan.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Used {
    /// Services the runtime keeps for it.
    pub services: u32,
    /// Requests to its own services this calendar month (UTC), as metered so far
    /// (none when the server meters nothing).
    pub requests: Option<u64>,
    /// When the month's requests start again (Unix seconds).
    pub resets: i64,
    /// The time its builds took this month, in seconds.
    pub build_seconds: Option<u64>,
    /// What it keeps in the store and blobs, in bytes.
    pub storage_bytes: Option<u64>,
}

/// `Plan.Get` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    /// The namespace (yours or a team's you are a member of).
    pub namespace: String,
}

/// `Plan.Set` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    /// The namespace (yours, or a team's you own).
    pub namespace: String,
    /// `community`, `personal` or `team`.
    pub plan: String,
}

/// `Platform.Plans` request: given, they replace the plans' limits.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlansRequest {
    /// Each plan's limits.
    #[serde(default)]
    pub plans: Option<BTreeMap<String, Limits>>,
}

/// `Platform.Plans` / `Plan.List` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlansReply {
    /// Each plan's limits.
    pub plans: BTreeMap<String, Limits>,
}

/// The quotas the core enforces for a namespace on `plan`, with for each one the plan
/// that lifts it.
fn quota(plan: &str, plans: &BTreeMap<String, Limits>) -> Value {
    let limits = plans.get(plan).cloned().unwrap_or_else(|| defaults()["community"].clone());
    let fields = |l: &Limits| -> [(&'static str, u64); 8] {
        [
            ("services", l.services.into()),
            ("instances", l.instances.into()),
            ("memory_mb", l.memory_mb),
            ("requests_per_month", l.requests_per_month),
            ("storage_mb", l.storage_mb),
            ("build_minutes", l.build_minutes),
            ("cpu_millis", l.cpu_millis),
            ("pids", l.pids),
        ]
    };
    let mut q = json!({"plan": plan, "egress": limits.egress});
    let mut lifts = serde_json::Map::new();
    let above = PLANS.iter().skip_while(|p| **p != plan).skip(1);
    for (field, value) in fields(&limits) {
        q[field] = json!(value);
        for next in above.clone() {
            if let Some(l) = plans.get(*next)
                && let Some((_, v)) = fields(l).into_iter().find(|(f, _)| *f == field)
                && v > value
            {
                lifts.insert(field.into(), json!(format!("the {next} plan allows {v}: micro plan set {next}")));
                break;
            }
        }
    }
    q["lifts"] = Value::Object(lifts);
    q
}

impl Shared {
    async fn plans(&self) -> Result<BTreeMap<String, Limits>, Status> {
        match self.store.get(PLANS_KEY).await {
            Ok(r) => decode(&r.value),
            Err(e) if e.code() == Code::NotFound => Ok(defaults()),
            Err(e) => Err(e),
        }
    }

    async fn plan_of(&self, ns: &str) -> Result<String, Status> {
        match self.store.get(&plan_key(ns)).await {
            Ok(r) => decode(&r.value),
            Err(e) if e.code() == Code::NotFound => Ok("community".into()),
            Err(e) => Err(e),
        }
    }

    /// Puts namespace `ns` on `plan`: its quotas where the core reads them, at once.
    pub(crate) async fn set_plan(&self, ns: &str, plan: &str) -> Result<(), Status> {
        let plans = self.plans().await?;
        if !plans.contains_key(plan) {
            return Err(bad(format!("unknown plan {plan:?}: choose {}", PLANS.join(", "))));
        }
        // The team plan is a paid feature of the self-hosted platform.
        if plan == "team" {
            self.licence.check("team")?;
        }
        self.store.put(&plan_key(ns), encode(&plan)?).await?;
        // Kept with the time it took effect: billing charges the dearest plan a namespace
        // held in a period, so a plan dropped just before the bill is no way round it.
        let at = micro_core::time::clock();
        self.store.put(&format!("{}{at:020}", plan_history_prefix(ns)), encode(&plan)?).await?;
        self.config.set(&format!("quota.{ns}"), &quota(plan, &plans)).await
    }

    /// The caller's right to see (`least` viewer) or change (`least` owner) `ns`'s plan.
    async fn may(&self, ctx: &Context, ns: &str, least: Role) -> Result<(), Status> {
        micro_core::namespace::validate(ns)?;
        if ctx.caller().is_some_and(|c| c.is_operator()) {
            return Ok(());
        }
        let me = self.person(ctx).await?;
        if self.home_of(&me).await?.as_deref() == Some(ns) {
            return Ok(());
        }
        self.role_in(ns, &me, least).await.map(drop)
    }

    async fn plan_get(&self, ctx: &Context, req: GetRequest) -> Result<PlanReply, Status> {
        self.may(ctx, &req.namespace, Role::Viewer).await?;
        let plan = self.plan_of(&req.namespace).await?;
        let limits = self.plans().await?.remove(&plan).unwrap_or_else(|| defaults()["community"].clone());
        let month = self.month_of(&req.namespace).await;
        let used = Used {
            services: self.services_of(&req.namespace).await?,
            requests: month.as_ref().filter(|m| m.metered).map(|m| m.requests),
            resets: month.as_ref().map_or(0, |m| m.resets),
            build_seconds: month.as_ref().map(|m| m.build_seconds),
            storage_bytes: month.as_ref().map(|m| m.storage_bytes),
        };
        Ok(PlanReply { namespace: req.namespace, plan, limits, used })
    }

    /// How many services the runtime keeps for `ns` (asked as an operator).
    async fn services_of(&self, ns: &str) -> Result<u32, Status> {
        let channel = self.channel.as_ref().map_err(Clone::clone)?.clone();
        let mut runtime = micro::proto::runtime::runtime_client::RuntimeClient::new(channel);
        let req = crate::signup::request(ns, micro::proto::runtime::ReadRequest::default())?;
        let read = runtime.read(req).await.map_err(|e| micro::status::from_tonic(&e))?;
        Ok(read.into_inner().services.len() as u32)
    }

    /// What `ns` used this month of what its plan holds (asked as an operator); none when
    /// it cannot be read.
    async fn month_of(&self, ns: &str) -> Option<micro::proto::usage::MonthResponse> {
        let month = async {
            let channel = self.channel.as_ref().map_err(Clone::clone)?.clone();
            let mut usage = micro::proto::usage::usage_client::UsageClient::new(channel);
            let req = crate::signup::request(ns, micro::proto::usage::MonthRequest {})?;
            usage.month(req).await.map(|r| r.into_inner()).map_err(|e| micro::status::from_tonic(&e))
        };
        month.await.inspect_err(|e| tracing::warn!(namespace = ns, error = %e, "cannot read the month's use")).ok()
    }

    async fn plan_set(&self, ctx: &Context, req: SetRequest) -> Result<PlanReply, Status> {
        self.may(ctx, &req.namespace, Role::Owner).await?;
        self.set_plan(&req.namespace, &req.plan).await?;
        self.plan_get(ctx, GetRequest { namespace: req.namespace }).await
    }

    async fn plans_update(&self, ctx: &Context, req: PlansRequest) -> Result<PlansReply, Status> {
        operator(ctx)?;
        if let Some(plans) = req.plans {
            if PLANS.iter().any(|p| !plans.contains_key(*p)) || plans.len() != PLANS.len() {
                return Err(bad(format!("give the limits of exactly these plans: {}", PLANS.join(", "))));
            }
            self.store.put(PLANS_KEY, encode(&plans)?).await?;
        }
        Ok(PlansReply { plans: self.plans().await? })
    }
}

/// The plan handlers on `service`.
pub(crate) fn handlers(service: Service, shared: Arc<Shared>) -> Service {
    let (get, set, plans, list) = (shared.clone(), shared.clone(), shared.clone(), shared);
    service
        .handle("Plan.Get", move |ctx: Context, req: GetRequest| {
            let sh = get.clone();
            async move { sh.plan_get(&ctx, req).await }
        })
        .handle("Plan.Set", move |ctx: Context, req: SetRequest| {
            let sh = set.clone();
            async move { sh.plan_set(&ctx, req).await }
        })
        .handle("Plan.List", move |_ctx: Context, _: crate::team::Done| {
            let sh = list.clone();
            async move { Ok::<_, Status>(PlansReply { plans: sh.plans().await? }) }
        })
        .handle("Platform.Plans", move |ctx: Context, req: PlansRequest| {
            let sh = plans.clone();
            async move { sh.plans_update(&ctx, req).await }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_name_the_plan_that_lifts_them() {
        let q = quota("community", &defaults());
        assert_eq!((q["plan"].as_str(), q["services"].as_u64()), (Some("community"), Some(2)));
        assert_eq!(q["lifts"]["services"], "the personal plan allows 10: micro plan set personal");
        assert_eq!(q["egress"], "internet", "every plan reaches the internet unless the operator says otherwise");
        let top = quota("team", &defaults());
        assert!(top["lifts"].as_object().unwrap().is_empty());
    }
}
