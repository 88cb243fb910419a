//! Teams, as the person who logged in: `micro team …` calls the platform's `Team.*`
//! endpoints from the person's own namespace (the identity a team's admins cannot forge)
//! for the current namespace; `micro namespace switch` trades the person's token for their
//! account in a team's namespace (kept per namespace) or goes back to their own; `micro
//! plan` shows and changes the current namespace's plan.

use crate::auth::refreshed;
use crate::cli::{Ctx, status_err};
use crate::envs::{Credentials, Envs};
use anyhow::{Result, anyhow, bail};
use serde_json::json;

/// The person who logged in, with fresh tokens.
async fn person(c: &Ctx) -> Result<Credentials> {
    let mut envs = Envs::load()?;
    let env = envs.current();
    let creds = env.person.or(env.credentials).ok_or_else(|| anyhow!("log in first: micro login"))?;
    let fresh = refreshed(c, creds).await?;
    envs.current_mut().person = Some(fresh.clone());
    envs.save()?;
    Ok(fresh)
}

/// A context acting as `p` in their own namespace.
fn as_person(c: &Ctx, p: &Credentials) -> Ctx {
    Ctx { namespace: p.namespace.clone(), token: Some(p.access_token.clone()), ..c.clone() }
}

/// `micro team <command> [--flags]`: `Team.<Command>` of the platform, for the current
/// namespace unless the command names none (`create`, `namespaces`).
pub(crate) async fn team(c: &Ctx, args: &[String]) -> Result<()> {
    let Some(command) = args.first() else {
        bail!("usage: micro team create|invite|accept|members|set-role|remove|transfer|namespaces [--flags]");
    };
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        return crate::dynamic::run(c, &["platform".into(), "team".into(), "--help".into()]).await;
    }
    let p = person(c).await?;
    let mut call: Vec<String> = vec!["platform".into(), "team".into()];
    call.extend(args.iter().cloned());
    let names_team = !matches!(command.as_str(), "create" | "namespaces");
    if names_team && !args.iter().any(|a| a == "--namespace" || a.starts_with("--namespace=")) {
        call.push(format!("--namespace={}", c.namespace));
    }
    crate::dynamic::run(&as_person(c, &p), &call).await
}

/// `micro namespace switch <name>`.
pub(crate) async fn switch(c: &Ctx, name: &str) -> Result<()> {
    micro_core::namespace::validate(name).map_err(|e| anyhow!("{}", e.detail()))?;
    let p = person(c).await?;
    let mut envs = Envs::load()?;
    let creds = if name == p.namespace {
        p.clone()
    } else if let Some(kept) = envs.current().switched.get(name).cloned() {
        refreshed(c, kept).await?
    } else {
        let reply = as_person(c, &p)
            .client()
            .call_json("platform", "Team.Switch", &json!({"namespace": name}))
            .await
            .map_err(status_err)?;
        let field = |k: &str| reply[k].as_str().map(str::to_string).ok_or_else(|| anyhow!("Team.Switch gave no {k}"));
        Credentials {
            account: field("id")?,
            namespace: name.to_string(),
            access_token: field("access_token")?,
            refresh_token: field("refresh_token")?,
            expiry: reply["expiry"].as_u64().unwrap_or(0),
        }
    };
    let env = envs.current_mut();
    if name != p.namespace {
        env.switched.insert(name.to_string(), creds.clone());
    }
    env.namespace = name.to_string();
    env.credentials = Some(creds.clone());
    envs.save()?;
    crate::output::done(
        c.json,
        json!({"namespace": name, "account": creds.account}),
        Some(format!("now in {name} as {}", creds.account)),
    );
    Ok(())
}

/// `micro plan [set <plan> | list]`, for the current namespace.
pub(crate) async fn plan(c: &Ctx, args: &[String]) -> Result<()> {
    let p = person(c).await?;
    let (endpoint, body) = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => ("Plan.Get", json!({"namespace": c.namespace})),
        ["set", plan] => ("Plan.Set", json!({"namespace": c.namespace, "plan": plan})),
        ["list"] => ("Plan.List", json!({})),
        _ => bail!("usage: micro plan [set community|personal|team | list]"),
    };
    let reply = as_person(c, &p).client().call_json("platform", endpoint, &body).await.map_err(status_err)?;
    if c.json || endpoint == "Plan.List" {
        crate::output::json(&reply);
        return Ok(());
    }
    let l = &reply["limits"];
    println!(
        "namespace {} is on the {} plan",
        reply["namespace"].as_str().unwrap_or(""),
        reply["plan"].as_str().unwrap_or("")
    );
    println!("  {:<24} {} of {}", "services running", reply["used"]["services"], l["services"]);
    if let Some(n) = reply["used"]["requests"].as_u64() {
        let resets = reply["used"]["resets"].as_u64().unwrap_or(0) * 1000;
        let date = micro_core::time::utc(resets);
        println!(
            "  {:<24} {n} of {} (they start again on {} UTC)",
            "requests this month",
            l["requests_per_month"],
            date.get(..10).unwrap_or_default()
        );
    } else {
        println!("  {:<24} {} (not metered here)", "requests a month", l["requests_per_month"]);
    }
    let mib = |b: u64| b.div_ceil(1 << 20);
    match reply["used"]["storage_bytes"].as_u64() {
        Some(bytes) => println!("  {:<24} {} MiB of {} MiB", "storage", mib(bytes), l["storage_mb"]),
        None => println!("  {:<24} {} MiB", "storage", l["storage_mb"]),
    }
    match reply["used"]["build_seconds"].as_u64() {
        Some(secs) => println!("  {:<24} {} of {}", "build minutes this month", secs.div_ceil(60), l["build_minutes"]),
        None => println!("  {:<24} {}", "build minutes a month", l["build_minutes"]),
    }
    for (what, key, unit) in [
        ("instances of a service", "instances", ""),
        ("memory of an instance", "memory_mb", " MiB"),
        ("cpu of an instance", "cpu_millis", " thousandths of a core"),
        ("processes of an instance", "pids", ""),
    ] {
        println!("  {what:<24} {}{unit}", l[key]);
    }
    let egress = match l["egress"].as_str() {
        Some("none") => "none (the platform's proxy only)",
        _ => "internet (public addresses and the platform's proxy)",
    };
    println!("  {:<24} {egress}", "network egress");
    Ok(())
}
