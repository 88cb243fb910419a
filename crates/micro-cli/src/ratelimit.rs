//! `micro ratelimit set|list|delete`: the gateway's rate limits of a namespace, kept in its
//! config under `edge.ratelimits.<name>` (see docs/edge.md).

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use micro_server::ratelimit::{CONFIG_PATH, parse_rule};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub(crate) enum RatelimitCmd {
    /// Set (or replace) a rule: micro ratelimit set api --rate 10/s --per ip
    Set {
        /// The rule's name (letters, digits, - and _).
        name: String,
        /// Requests per second, minute or hour: 10/s, 100/m, 1000/h.
        #[arg(long)]
        rate: String,
        /// Requests allowed at once (default: the rate's count).
        #[arg(long)]
        burst: Option<u32>,
        /// Whose requests count together: ip, account or namespace.
        #[arg(long, default_value = "ip")]
        per: String,
        /// Only requests to this service.
        #[arg(long)]
        service: Option<String>,
        /// Only paths under this prefix (like /shop/cart).
        #[arg(long)]
        route: Option<String>,
    },
    /// List the namespace's rules.
    List,
    /// Delete a rule.
    Delete {
        /// The rule's name.
        name: String,
    },
}

fn check_name(name: &str) -> Result<()> {
    crate::cli::check_rule_name("ratelimit", name)
}

pub(crate) async fn ratelimit(c: &Ctx, cmd: RatelimitCmd) -> Result<()> {
    let config = c.data().config;
    match cmd {
        RatelimitCmd::Set { name, rate, burst, per, service, route } => {
            check_name(&name)?;
            let mut rule = json!({"rate": rate, "per": per});
            if let Some(b) = burst {
                rule["burst"] = json!(b);
            }
            if let Some(s) = service {
                rule["service"] = json!(s);
            }
            if let Some(r) = route {
                rule["route"] = json!(r);
            }
            parse_rule(&rule).map_err(|e| anyhow!("ratelimit: {e}"))?;
            config.set(&c.namespace, &format!("{CONFIG_PATH}.{name}"), &rule, false).await.map_err(status_err)?;
            output::done(c.json, json!({"set": name, "rule": rule}), Some(format!("rate limit {name} set")));
        }
        RatelimitCmd::List => {
            let rules = match config.get(&c.namespace, CONFIG_PATH, false).await.map_err(status_err)? {
                Some(Value::Object(o)) => o,
                _ => serde_json::Map::new(),
            };
            if c.json {
                output::json(&Value::Object(rules));
                return Ok(());
            }
            let field = |r: &Value, k: &str| r.get(k).map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()));
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|(name, r)| {
                    vec![
                        name.clone(),
                        field(r, "rate").unwrap_or_default(),
                        field(r, "burst").unwrap_or_else(|| "-".into()),
                        field(r, "per").unwrap_or_else(|| "ip".into()),
                        field(r, "service").unwrap_or_else(|| "*".into()),
                        field(r, "route").unwrap_or_else(|| "*".into()),
                    ]
                })
                .collect();
            output::table(&["NAME", "RATE", "BURST", "PER", "SERVICE", "ROUTE"], &rows);
        }
        RatelimitCmd::Delete { name } => {
            check_name(&name)?;
            let path = format!("{CONFIG_PATH}.{name}");
            if config.get(&c.namespace, &path, false).await.map_err(status_err)?.is_none() {
                bail!("ratelimit: no rule {name:?} in namespace {}", c.namespace);
            }
            config.delete(&c.namespace, &path).await.map_err(status_err)?;
            output::done(c.json, json!({"deleted": name}), Some(format!("rate limit {name} deleted")));
        }
    }
    Ok(())
}
