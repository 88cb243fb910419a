//! `micro cluster token`: a one-time token a new machine joins the cluster with
//! (Cluster.Token; see docs/deploy.md).

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::Result;
use clap::Subcommand;
use micro::proto::cluster as pb;
use serde_json::json;

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Make a one-time join token: micro cluster token --ttl 1h
    Token {
        /// How long it is good for: like 90s, 30m, 1h, 2d (default 1h, at most 7d).
        #[arg(long)]
        ttl: Option<String>,
    },
}

/// Seconds of `90s`, `30m`, `1h`, `2d` or a bare number of seconds.
pub(crate) fn seconds(v: &str) -> Result<i64> {
    let v = v.trim();
    let (n, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&v[..i], &v[i..]),
        None => (v, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("--ttl {v:?}: give a number with s, m, h or d, like 1h"),
    };
    let n: i64 = n.parse().map_err(|_| anyhow::anyhow!("--ttl {v:?}: give a number with s, m, h or d, like 1h"))?;
    if n <= 0 {
        anyhow::bail!("--ttl {v:?}: give a positive duration");
    }
    Ok(n.saturating_mul(mult))
}

pub(crate) async fn cluster(c: &Ctx, cmd: ClusterCmd) -> Result<()> {
    let mut client = pb::cluster_client::ClusterClient::new(c.channel()?);
    match cmd {
        ClusterCmd::Token { ttl } => {
            let ttl_seconds = match ttl {
                Some(t) => seconds(&t)?,
                None => 0,
            };
            let msg = pb::TokenRequest { ttl_seconds };
            let reply = client
                .token(crate::auth::request(c, msg)?)
                .await
                .map_err(|e| status_err(micro::status::from_tonic(&e)))?
                .into_inner();
            let address = c.address.strip_prefix("https://").unwrap_or(&c.address);
            let text = format!(
                "{}\n\nOn the new machine, once, before it expires (Unix time {}):\n  MICRO_JOIN_TOKEN={} micro server --tls auto --join {address}\n(in the environment, not a flag: a command line is visible to every user of the machine)",
                reply.token, reply.expires, reply.token
            );
            output::done(
                c.json,
                json!({"token": reply.token, "expires": reply.expires, "ca_fingerprint": reply.ca_fingerprint}),
                Some(text),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::seconds("90s").unwrap(), 90);
        assert_eq!(super::seconds("30m").unwrap(), 1800);
        assert_eq!(super::seconds("2d").unwrap(), 172_800);
        assert_eq!(super::seconds("45").unwrap(), 45);
        for bad in ["", "1w", "h", "-1h", "0s"] {
            assert!(super::seconds(bad).is_err(), "{bad}");
        }
    }
}
