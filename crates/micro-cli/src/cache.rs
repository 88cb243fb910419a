//! `micro cache set|list|delete|purge`: the gateway's response cache rules of a namespace,
//! kept in its config under `edge.cache.rules.<name>` (see docs/edge.md).

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use micro_server::cache::{CONFIG_PATH, parse_rule};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub(crate) enum CacheCmd {
    /// Set (or replace) a rule: micro cache set items --route /shop/items --ttl 30s
    Set {
        /// The rule's name (letters, digits, - and _).
        name: String,
        /// How long an answer is kept: 30s, 5m, 1h (at most 24h).
        #[arg(long)]
        ttl: String,
        /// Only paths under this prefix (like /shop/items; / for everything).
        #[arg(long)]
        route: Option<String>,
        /// Only requests to this service.
        #[arg(long)]
        service: Option<String>,
        /// Request headers whose values make different answers, comma-separated.
        #[arg(long)]
        vary: Option<String>,
    },
    /// List the namespace's rules.
    List,
    /// Delete a rule.
    Delete {
        /// The rule's name.
        name: String,
    },
    /// Drop every answer the namespace has in the cache (on every node, within a second).
    Purge,
}

fn check_name(name: &str) -> Result<()> {
    crate::cli::check_rule_name("cache", name)
}

pub(crate) async fn cache(c: &Ctx, cmd: CacheCmd) -> Result<()> {
    let config = c.data().config;
    let rules = format!("{CONFIG_PATH}.rules");
    match cmd {
        CacheCmd::Set { name, ttl, route, service, vary } => {
            check_name(&name)?;
            let mut rule = json!({ "ttl": ttl });
            if let Some(r) = route {
                rule["route"] = json!(r);
            }
            if let Some(s) = service {
                rule["service"] = json!(s);
            }
            if let Some(v) = vary {
                let headers: Vec<&str> = v.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
                rule["vary"] = json!(headers);
            }
            parse_rule(&rule).map_err(|e| anyhow!("cache: {e}"))?;
            config.set(&c.namespace, &format!("{rules}.{name}"), &rule, false).await.map_err(status_err)?;
            output::done(c.json, json!({"set": name, "rule": rule}), Some(format!("cache rule {name} set")));
        }
        CacheCmd::List => {
            let found = match config.get(&c.namespace, &rules, false).await.map_err(status_err)? {
                Some(Value::Object(o)) => o,
                _ => serde_json::Map::new(),
            };
            if c.json {
                output::json(&Value::Object(found));
                return Ok(());
            }
            let field = |r: &Value, k: &str| match r.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                _ => "-".into(),
            };
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|(name, r)| {
                    vec![name.clone(), field(r, "ttl"), field(r, "route"), field(r, "service"), field(r, "vary")]
                })
                .collect();
            output::table(&["NAME", "TTL", "ROUTE", "SERVICE", "VARY"], &rows);
        }
        CacheCmd::Delete { name } => {
            check_name(&name)?;
            let path = format!("{rules}.{name}");
            if config.get(&c.namespace, &path, false).await.map_err(status_err)?.is_none() {
                bail!("cache: no rule {name:?} in namespace {}", c.namespace);
            }
            config.delete(&c.namespace, &path).await.map_err(status_err)?;
            output::done(c.json, json!({"deleted": name}), Some(format!("cache rule {name} deleted")));
        }
        CacheCmd::Purge => {
            let now = micro_core::store::now_ms();
            config.set(&c.namespace, &format!("{CONFIG_PATH}.purged"), &json!(now), false).await.map_err(status_err)?;
            output::done(
                c.json,
                json!({"purged": now}),
                Some(format!("the cached answers of namespace {} are dropped", c.namespace)),
            );
        }
    }
    Ok(())
}
