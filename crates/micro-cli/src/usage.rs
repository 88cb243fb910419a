//! `micro usage`: what the gateway and the proxy metered in the namespace (Usage.Query).

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Result, anyhow, bail};
use clap::Args;
use micro::proto::usage as pb;
use serde_json::json;

/// `micro usage` flags.
#[derive(Args)]
pub(crate) struct UsageArgs {
    /// From: a duration back from now (30m, 24h, 7d), Unix seconds, or `all`.
    #[arg(long, default_value = "24h")]
    since: String,
    /// Until: a duration back from now or Unix seconds (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Group by these, comma-separated: namespace, service, endpoint, account, status.
    #[arg(long, default_value = "service,endpoint,status")]
    by: String,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Every namespace (the server's admins only).
    #[arg(long)]
    all: bool,
}

/// Unix seconds of `s`: a duration back from `now`, or Unix seconds.
fn parse_time(s: &str, now: i64) -> Result<i64> {
    let s = s.trim();
    if s == "all" {
        return Ok(1);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| anyhow!("usage: {s:?} is not a time"));
    }
    let back = match s.strip_suffix('d') {
        Some(days) => {
            let d: f64 =
                days.parse().map_err(|_| anyhow!("usage: {s:?} is not a time: use 30m, 24h, 7d or Unix seconds"))?;
            if !(d > 0.0 && d <= 3660.0) {
                bail!("usage: {s:?} is not a time: use 30m, 24h, 7d or Unix seconds");
            }
            (d * 86_400.0) as i64
        }
        None => crate::cli::parse_duration(s)
            .map_err(|_| anyhow!("usage: {s:?} is not a time: use 30m, 24h, 7d or Unix seconds"))?
            .as_secs()
            .max(1) as i64,
    };
    Ok((now - back).max(1))
}

pub(crate) async fn usage(c: &Ctx, args: UsageArgs) -> Result<()> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let since = parse_time(&args.since, now)?;
    let until = args.until.as_deref().map(|u| parse_time(u, now)).transpose()?.unwrap_or(0);
    if until != 0 && since >= until {
        bail!("usage: --since must be before --until");
    }
    let group_by: Vec<String> = args.by.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let msg = pb::QueryRequest {
        since,
        until,
        group_by: group_by.clone(),
        all_namespaces: args.all,
        service: args.service.unwrap_or_default(),
    };
    let mut client = pb::usage_client::UsageClient::new(c.channel()?);
    let res = client
        .query(crate::auth::request(c, msg)?)
        .await
        .map_err(|e| status_err(micro::status::from_tonic(&e)))?
        .into_inner();
    let total = res.total.unwrap_or_default();
    if c.json {
        let row = |r: &pb::Row| {
            let mut v = json!({"requests": r.requests, "bytes_in": r.bytes_in, "bytes_out": r.bytes_out});
            for g in &group_by {
                let value = match g.as_str() {
                    "namespace" => &r.namespace,
                    "service" => &r.service,
                    "endpoint" => &r.endpoint,
                    "account" => &r.account,
                    "status" => &r.status,
                    _ => continue,
                };
                v[g] = json!(value);
            }
            v
        };
        let rows: Vec<serde_json::Value> = res.rows.iter().map(row).collect();
        output::json(&json!({"since": since, "until": until, "rows": rows, "total": row(&total)}));
        return Ok(());
    }
    let mut header: Vec<String> = group_by.iter().map(|g| g.to_ascii_uppercase()).collect();
    header.extend(["REQUESTS", "BYTES_IN", "BYTES_OUT"].map(String::from));
    let cell = |r: &pb::Row, g: &str| -> String {
        let v = match g {
            "namespace" => &r.namespace,
            "service" => &r.service,
            "endpoint" => &r.endpoint,
            "account" => &r.account,
            "status" => &r.status,
            _ => return String::new(),
        };
        if v.is_empty() { "-".into() } else { v.clone() }
    };
    let mut rows: Vec<Vec<String>> = res
        .rows
        .iter()
        .map(|r| {
            let mut cells: Vec<String> = group_by.iter().map(|g| cell(r, g)).collect();
            cells.extend([r.requests.to_string(), r.bytes_in.to_string(), r.bytes_out.to_string()]);
            cells
        })
        .collect();
    let mut last: Vec<String> = group_by.iter().map(|_| String::new()).collect();
    if let Some(first) = last.first_mut() {
        *first = "TOTAL".into();
    }
    last.extend([total.requests.to_string(), total.bytes_in.to_string(), total.bytes_out.to_string()]);
    rows.push(last);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    output::table(&header, &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000", 1800000000).unwrap(), 1700000000);
        assert_eq!(parse_time("1h", 10_000).unwrap(), 10_000 - 3600);
        assert_eq!(parse_time("2d", 1_000_000).unwrap(), 1_000_000 - 172_800);
        assert_eq!(parse_time("all", 5).unwrap(), 1);
        assert!(parse_time("yesterday", 5).is_err());
        assert!(parse_time("-3d", 5).is_err());
    }
}
