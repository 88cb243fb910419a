//! Rate limits at the gateway: token buckets (governor's GCRA) from the rules a namespace
//! keeps in its config under `edge.ratelimits.<name>` (`micro ratelimit set …` writes
//! them). A rule limits the requests of each client address, each account, or the whole
//! namespace, to one service or route prefix or to everything; the gateway rereads a
//! namespace's rules at most once a second, keeping the buckets of unchanged rules.
//! With Redis among the backends, the nodes of a cluster share every bucket there (one
//! key per bucket, advanced by one script on the server's clock), so a rule holds across
//! nodes; without it, buckets are per node and on N nodes behind a balancer a client gets
//! up to N times a rule's rate. A node that cannot reach Redis counts on its own buckets
//! until it can again.
//!
//! A namespace on a plan is also held to its requests a month (`requests_per_month` of
//! its quota, `quota.<namespace>` in the `micro` namespace's config): once the month's
//! requests to its own services are spent, they are refused with a 429 until the month
//! ends or the plan changes (calls to the core and the products still pass, so its
//! people can sign in and change plan). The gateway asks once it knows which service a
//! request goes to, and by the same rule the meter counts by
//! (`usage::counts_against_quota`), so no path counts without being held. The
//! count is what the meter stored (it flushes every couple of seconds, and each gateway
//! rereads it at most every 2 s), so a namespace may go a few seconds'
//! requests past its quota.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use micro_core::config::Config;
use micro_core::{Code, Status};
use serde_json::Value;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Where a namespace keeps its rules, in its config.
pub const CONFIG_PATH: &str = "edge.ratelimits";

/// How long a namespace's count of the month's requests is used before it is read again.
pub(crate) const MONTH_REREAD: Duration = Duration::from_secs(2);

/// Whose requests a rule counts together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    /// Each client address.
    Ip,
    /// Each account (anonymous callers: each address).
    Account,
    /// The whole namespace.
    Namespace,
}

/// A rate-limit rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Requests per window.
    pub limit: NonZeroU32,
    /// The window the limit refills over.
    pub window: Duration,
    /// Requests allowed at once (default: the limit).
    pub burst: NonZeroU32,
    /// Whose requests count together.
    pub per: Per,
    /// Only requests to this service (default: all).
    pub service: Option<String>,
    /// Only paths under this prefix (default: all).
    pub route: Option<String>,
}

/// Parses a rule as kept in the config: `{"rate": "10/s", "burst": 20, "per": "ip",
/// "service": "shop", "route": "/shop/cart"}`; the error says what is wrong.
pub fn parse_rule(v: &Value) -> Result<Rule, String> {
    let o = v.as_object().ok_or("a rule is an object with a rate, like {\"rate\": \"10/s\"}")?;
    for k in o.keys() {
        if !["rate", "burst", "per", "service", "route"].contains(&k.as_str()) {
            return Err(format!("unknown field {k:?} (rate, burst, per, service, route)"));
        }
    }
    let rate =
        o.get("rate").and_then(Value::as_str).ok_or("rate is required, like \"10/s\", \"100/m\" or \"1000/h\"")?;
    let (n, unit) = rate.split_once('/').ok_or_else(|| format!("rate {rate:?}: use N/s, N/m or N/h"))?;
    let limit = n
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("rate {rate:?}: the count must be a whole number above 0"))?;
    let window = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        u => return Err(format!("rate {rate:?}: unknown unit {u:?} (s, m or h)")),
    };
    let burst = match o.get("burst") {
        None | Some(Value::Null) => limit,
        Some(b) => b
            .as_u64()
            .and_then(|b| u32::try_from(b).ok())
            .and_then(NonZeroU32::new)
            .ok_or_else(|| format!("burst {b}: a whole number above 0"))?,
    };
    let per = match o.get("per").and_then(Value::as_str).unwrap_or("ip") {
        "ip" => Per::Ip,
        "account" => Per::Account,
        "namespace" => Per::Namespace,
        p => return Err(format!("per {p:?}: ip, account or namespace")),
    };
    let (service, route) = crate::settings::scope(o)?;
    Ok(Rule { limit, window, burst, per, service, route })
}

type Buckets = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

struct Limit {
    name: String,
    spec: Value,
    /// What the rule's shared buckets are named by: a changed rule starts afresh.
    digest: String,
    /// One cell every `period`.
    period: Duration,
    rule: Rule,
    /// The normalized path prefix the rule applies to (its service's, or its route).
    prefix: Option<String>,
    buckets: Buckets,
}

impl Limit {
    fn new(name: String, spec: Value, rule: Rule) -> Limit {
        // `limit` requests per window: one cell every window/limit, `burst` at once.
        let period = rule.window / rule.limit.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(rule.limit))
            .allow_burst(rule.burst);
        // A service's requests are those under its gateway path (`v1.shop` → `/v1/shop`).
        let prefix = match (&rule.route, &rule.service) {
            (Some(r), _) => Some(normalize(r)),
            (None, Some(s)) => Some(normalize(&s.replace('.', "/"))),
            (None, None) => None,
        };
        let buckets = RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>();
        let digest = crate::sha256_hex(spec.to_string().as_bytes())[..12].to_string();
        Limit { name, spec, digest, period, rule, prefix, buckets }
    }
}

/// What a request is limited by.
pub(crate) struct Request<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) path: &'a str,
    pub(crate) ip: Option<&'a str>,
    /// The caller's account: its namespace and id.
    pub(crate) account: Option<(&'a str, &'a str)>,
}

/// A path as rules match it: empty segments dropped, escapes decoded, letters lowercase,
/// `-` and `_` removed (the gateway routes `/shop//Cart/add` and `/shop/c-art/add` to the
/// same endpoint, so a rule must see them as one path).
pub(crate) fn normalize(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let seg = micro::form::unescape(seg).unwrap_or_else(|_| seg.to_string());
        out.push('/');
        out.extend(seg.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase));
    }
    if out.is_empty() { "/".into() } else { out }
}

/// The key a client address counts under: itself, or for IPv6 its /64 (one host gets a
/// whole /64 to pick addresses from).
fn ip_key(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        _ => format!("ip:{ip}"),
    }
}

/// The `RateLimit-Policy` and `RateLimit` headers of the tightest rule a request passed.
pub(crate) struct Passed {
    pub(crate) policy: String,
    pub(crate) state: String,
}

/// A request over a limit: the status (429) and its headers.
pub(crate) struct Refused {
    pub(crate) status: Status,
    pub(crate) retry_after: u64,
    pub(crate) policy: String,
    pub(crate) state: String,
}

/// The rules and buckets of every namespace. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RateLimits {
    rules: crate::settings::NamespaceSettings<Vec<Arc<Limit>>>,
    /// The cluster's shared buckets, when it has Redis.
    shared: Option<micro_redis::RedisEdge>,
    /// Each namespace's requests a month, and what it spent.
    month: Month,
}

/// The monthly requests quotas.
#[derive(Clone)]
struct Month {
    quotas: crate::settings::NamespaceSettings<crate::settings::PlanQuota>,
    meter: crate::usage::Meter,
    /// Each namespace's requests in a month, and when they were read.
    spent: Arc<std::sync::Mutex<std::collections::HashMap<NamespaceMonth, (std::time::Instant, u64)>>>,
}

/// A namespace and a month (`YYYY-MM`).
type NamespaceMonth = (String, String);

impl Month {
    /// The namespace's requests this month, read again when [`MONTH_REREAD`] old; `None`
    /// when they cannot be read (the request then passes).
    async fn spent(&self, ns: &str, now_ms: u64) -> Option<u64> {
        let key = (ns.to_string(), micro_core::time::month(now_ms));
        let cached = self.spent.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        if let Some((at, n)) = cached
            && at.elapsed() < MONTH_REREAD
        {
            return Some(n);
        }
        match self.meter.month(ns, now_ms).await {
            Ok(n) => {
                let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
                if spent.len() >= 10_000 && !spent.contains_key(&key) {
                    spent.retain(|_, (at, _)| at.elapsed() < MONTH_REREAD * 30);
                }
                spent.insert(key, (std::time::Instant::now(), n));
                Some(n)
            }
            Err(e) => {
                tracing::warn!(namespace = ns, error = %e, "cannot read the month's requests; letting requests pass");
                cached.map(|(_, n)| n)
            }
        }
    }

    /// Refused when a request to `service` counts against namespace `ns`'s quota and
    /// its month's requests are spent; the refusal names the plan to `member`s only.
    async fn check(&self, ns: &str, service: &str, member: bool) -> Result<(), Refused> {
        if !crate::usage::counts_against_quota(service) {
            return Ok(());
        }
        let quota = self.quotas.get(ns).await;
        let Some(limit) = quota.limit else { return Ok(()) };
        let now = micro_core::store::now_ms();
        let Some(spent) = self.spent(ns, now).await else { return Ok(()) };
        if spent < limit {
            return Ok(());
        }
        let next = micro_core::time::next_month(now);
        let retry_after = next.saturating_sub(now).div_ceil(1000);
        let date = micro_core::time::utc(next);
        let date = date.get(..10).unwrap_or_default();
        let detail = if member {
            let (plan, lift) = (quota.on_plan(), quota.lifted());
            format!(
                "namespace {ns} has made its {limit} requests this month{plan}; they start again on {date} UTC{lift}"
            )
        } else {
            format!("namespace {ns} has made its requests for this month; they start again on {date} UTC")
        };
        Err(Refused {
            status: Status::new(Code::ResourceExhausted, "api", detail),
            retry_after,
            policy: format!("\"requests-per-month\";w={}", retry_after.max(1)),
            state: format!("\"requests-per-month\";r=0;t={retry_after}"),
        })
    }
}

/// When a failure of the shared buckets was last logged (Unix seconds): once in ten
/// seconds is enough.
static WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn warn_unshared(e: &Status) {
    let now = micro_core::store::now_ms() / 1000;
    let last = WARNED.load(std::sync::atomic::Ordering::Relaxed);
    if now >= last + 10
        && WARNED
            .compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %e, "the shared rate-limit buckets are unreachable; counting on this node's");
    }
}

/// A namespace's limits from its rules, keeping the buckets of unchanged ones.
fn limits(ns: &str, specs: Option<&Value>, previous: Option<&Arc<Vec<Arc<Limit>>>>) -> Vec<Arc<Limit>> {
    let mut limits = Vec::new();
    let Some(Value::Object(specs)) = specs else { return limits };
    for (name, spec) in specs {
        if let Some(same) = previous.and_then(|p| p.iter().find(|l| l.name == *name && l.spec == *spec)) {
            same.buckets.retain_recent();
            limits.push(same.clone());
            continue;
        }
        match parse_rule(spec) {
            Ok(rule) => limits.push(Arc::new(Limit::new(name.clone(), spec.clone(), rule))),
            Err(e) => tracing::warn!(namespace = ns, rule = %name, error = %e, "ignoring a malformed rate limit"),
        }
    }
    // Rules for each client or account first: a client over its own limit must not
    // spend what the namespace as a whole may use.
    limits.sort_by_key(|l| l.rule.per == Per::Namespace);
    limits
}

impl RateLimits {
    pub(crate) fn new(
        config: Arc<dyn Config>,
        shared: Option<micro_redis::RedisEdge>,
        meter: crate::usage::Meter,
    ) -> RateLimits {
        let month = Month {
            quotas: crate::settings::NamespaceSettings::operators(config.clone(), "quota", |_, v, _| {
                crate::settings::PlanQuota::of("requests_per_month", v)
            }),
            meter,
            spent: Arc::default(),
        };
        RateLimits { rules: crate::settings::NamespaceSettings::new(config, CONFIG_PATH, limits), shared, month }
    }

    /// Takes a cell for `key` from `l`'s bucket (the cluster's, else this node's):
    /// whether it passed, the cells left, and the wait for the next.
    async fn take(&self, ns: &str, l: &Limit, key: String) -> (bool, u32, Duration) {
        if let Some(edge) = &self.shared {
            let bucket = format!("{ns}:{}:{}:{key}", l.name, l.digest);
            match edge.take(&bucket, l.period, l.rule.burst.get()).await {
                Ok(t) => return (t.allowed, t.remaining, t.retry_after),
                Err(e) => warn_unshared(&e),
            }
        }
        match l.buckets.check_key(&key) {
            Ok(snapshot) => (true, snapshot.remaining_burst_capacity(), Duration::ZERO),
            Err(not_until) => (false, 0, not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// Counts `req` against every rule of its namespace that applies; refused when one
    /// is exhausted (its cell is not taken from the others' buckets after that).
    /// Refused when a request of namespace `ns` to `service` (where the gateway routed
    /// it) counts against its plan's requests a month and they are spent; the refusal
    /// names the plan only to a `member` of the namespace.
    pub(crate) async fn month(&self, ns: &str, service: &str, member: bool) -> Result<(), Refused> {
        if !self.month.meter.is_on() {
            return Ok(());
        }
        self.month.check(ns, service, member).await
    }

    pub(crate) async fn check(&self, req: &Request<'_>) -> Result<Option<Passed>, Refused> {
        let limits = self.rules.get(req.namespace).await;
        if limits.is_empty() {
            return Ok(None);
        }
        let path = normalize(req.path);
        let mut tightest: Option<(u32, Passed)> = None;
        for l in limits.iter() {
            let r = &l.rule;
            if let Some(prefix) = &l.prefix
                && prefix != "/"
                && !path.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            {
                continue;
            }
            // Accounts by namespace and id (ids are unique within a namespace only).
            let key = match (r.per, req.account) {
                (Per::Namespace, _) => String::new(),
                (Per::Account, Some((ns, id))) => format!("account:{ns}/{id}"),
                (Per::Account, None) | (Per::Ip, _) => ip_key(req.ip.unwrap_or("")),
            };
            let window = r.window.as_secs();
            let policy = format!("\"{}\";q={};w={window}", l.name, r.limit);
            let (allowed, remaining, wait) = self.take(req.namespace, l, key).await;
            if allowed {
                if tightest.as_ref().is_none_or(|(left, _)| remaining < *left) {
                    let state = format!("\"{}\";r={remaining}", l.name);
                    tightest = Some((remaining, Passed { policy, state }));
                }
                continue;
            }
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let detail = format!(
                "rate limit {} exceeded ({} requests per {window} s); retry in {retry_after} s",
                l.name, r.limit
            );
            return Err(Refused {
                status: Status::new(Code::ResourceExhausted, "api", detail),
                retry_after,
                state: format!("\"{}\";r=0;t={retry_after}", l.name),
                policy,
            });
        }
        Ok(tightest.map(|(_, p)| p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_match_as_the_gateway_routes_them() {
        for p in ["/shop/cart/add", "//shop/Cart/add", "/shop//c-art/ADD", "/shop/%63art/add", "/SHOP/cart_/add"] {
            assert_eq!(normalize(p), "/shop/cart/add", "{p}");
        }
        assert_eq!(normalize(""), "/");
        assert_eq!(ip_key("2001:db8:1:2:3:4:5:6"), "ip:2001:db8:1:2::/64");
        assert_eq!(ip_key("192.0.2.7"), "ip:192.0.2.7");
    }

    #[test]
    fn rules_parse_and_bad_ones_say_why() {
        let r =
            parse_rule(&json!({"rate": "10/s", "burst": 20, "per": "account", "service": "shop", "route": "/shop"}))
                .unwrap();
        assert_eq!((r.limit.get(), r.window, r.burst.get(), r.per), (10, Duration::from_secs(1), 20, Per::Account));
        assert_eq!(parse_rule(&json!({"rate": "5/m"})).unwrap().burst.get(), 5, "burst defaults to the limit");
        for (bad, why) in [
            (json!("10/s"), "object"),
            (json!({}), "rate is required"),
            (json!({"rate": "ten/s"}), "whole number"),
            (json!({"rate": "0/s"}), "above 0"),
            (json!({"rate": "10/d"}), "unknown unit"),
            (json!({"rate": "10"}), "N/s"),
            (json!({"rate": "10/s", "burst": 0}), "burst"),
            (json!({"rate": "10/s", "per": "planet"}), "ip, account or namespace"),
            (json!({"rate": "10/s", "route": "shop"}), "starting with /"),
            (json!({"rate": "10/s", "service": "bad name"}), "service"),
            (json!({"rate": "10/s", "colour": "red"}), "unknown field"),
        ] {
            let e = parse_rule(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
