//! `micro domain add|verify|list|remove`: the namespace's custom domains (Domains.*; see
//! docs/edge.md).

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::Result;
use clap::Subcommand;
use micro::proto::domains as pb;
use serde_json::json;

#[derive(Subcommand)]
pub(crate) enum DomainCmd {
    /// Claim a domain: micro domain add shop.example.com --service web
    Add {
        /// The domain, like shop.example.com.
        domain: String,
        /// The service its requests go to (default: the whole namespace).
        #[arg(long)]
        service: Option<String>,
    },
    /// Check the domain's TXT record; once verified, the gateway serves the domain.
    Verify {
        /// The domain.
        domain: String,
    },
    /// The namespace's domains: DOMAIN SERVICE VERIFIED TXT.
    List,
    /// Give a domain up.
    Remove {
        /// The domain.
        domain: String,
    },
    /// Obtain the domain's certificate again now (with ACME on).
    Renew {
        /// The domain.
        domain: String,
    },
}

fn as_json(d: &pb::Domain) -> serde_json::Value {
    json!({
        "domain": d.domain,
        "namespace": d.namespace,
        "service": d.service,
        "verified": d.verified,
        "txt": {"name": d.txt_name, "value": d.txt_value},
        "created": d.created,
        "certificate_expires": d.certificate_expires,
    })
}

fn err(e: tonic::Status) -> anyhow::Error {
    status_err(micro::status::from_tonic(&e))
}

pub(crate) async fn domain(c: &Ctx, cmd: DomainCmd) -> Result<()> {
    let mut client = pb::domains_client::DomainsClient::new(c.channel()?);
    match cmd {
        DomainCmd::Add { domain, service } => {
            let msg = pb::AddRequest { domain, service: service.unwrap_or_default() };
            let d = client.add(crate::auth::request(c, msg)?).await.map_err(err)?.into_inner();
            let text = if d.verified {
                format!("{} is verified and served", d.domain)
            } else {
                format!(
                    "{} is claimed; prove it with this DNS record, then run: micro domain verify {}\n  TXT {} \"{}\"",
                    d.domain, d.domain, d.txt_name, d.txt_value
                )
            };
            output::done(c.json, as_json(&d), Some(text));
        }
        DomainCmd::Verify { domain } => {
            let d = client.verify(crate::auth::request(c, pb::VerifyRequest { domain })?).await.map_err(err)?;
            let d = d.into_inner();
            output::done(c.json, as_json(&d), Some(format!("{} is verified and served", d.domain)));
        }
        DomainCmd::List => {
            let list = client.list(crate::auth::request(c, pb::ListRequest {})?).await.map_err(err)?.into_inner();
            if c.json {
                output::json(&json!(list.domains.iter().map(as_json).collect::<Vec<_>>()));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .domains
                .iter()
                .map(|d| {
                    vec![
                        d.domain.clone(),
                        if d.service.is_empty() { "*".into() } else { d.service.clone() },
                        d.verified.to_string(),
                        format!("{} \"{}\"", d.txt_name, d.txt_value),
                    ]
                })
                .collect();
            output::table(&["DOMAIN", "SERVICE", "VERIFIED", "TXT"], &rows);
        }
        DomainCmd::Renew { domain } => {
            let d = client.renew(crate::auth::request(c, pb::RenewRequest { domain })?).await.map_err(err)?;
            let d = d.into_inner();
            output::done(c.json, as_json(&d), Some(format!("{}'s certificate is being renewed", d.domain)));
        }
        DomainCmd::Remove { domain } => {
            let msg = pb::RemoveRequest { domain: domain.clone() };
            client.remove(crate::auth::request(c, msg)?).await.map_err(err)?;
            output::done(c.json, json!({"removed": domain}), Some(format!("{domain} removed")));
        }
    }
    Ok(())
}
