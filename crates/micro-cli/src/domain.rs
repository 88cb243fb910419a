//! `micro domain add|verify|list|remove`: the namespace's custom domains (Domains.*; see
//! docs/edge.md); `micro hosting`: where its services are public (docs/platform.md).

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

#[derive(Subcommand)]
pub(crate) enum HostingCmd {
    /// The namespace's services, their public addresses and whether each is private.
    List,
    /// Make a service public, or (without one) every service not set otherwise.
    Public {
        /// The service (default: the namespace's default).
        service: Option<String>,
    },
    /// Make a service private (its namespace's accounts only), or (without one) every
    /// service not set otherwise.
    Private {
        /// The service (default: the namespace's default).
        service: Option<String>,
    },
    /// Let a service follow the namespace's default again.
    Default {
        /// The service.
        service: String,
    },
}

fn hosting_json(h: &pb::HostingResponse) -> serde_json::Value {
    let services: Vec<serde_json::Value> = h
        .services
        .iter()
        .map(|s| {
            json!({"name": s.name, "private": s.private, "explicit": s.explicit, "url": s.url, "running": s.running})
        })
        .collect();
    json!({"namespace": h.namespace, "domain": h.domain, "private": h.private, "services": services})
}

fn visibility(private: bool) -> &'static str {
    if private { "private" } else { "public" }
}

pub(crate) async fn hosting(c: &Ctx, cmd: HostingCmd) -> Result<()> {
    let mut client = pb::domains_client::DomainsClient::new(c.channel()?);
    let (service, set) = match cmd {
        HostingCmd::List => {
            let h = client.hosting(crate::auth::request(c, pb::HostingRequest {})?).await.map_err(err)?.into_inner();
            if c.json {
                output::json(&hosting_json(&h));
                return Ok(());
            }
            let domain = if h.domain.is_empty() {
                "this server hosts nothing at names of its own (MICRO_HOSTING_DOMAIN); paths on the gateway only"
                    .to_string()
            } else {
                format!("hosted at *.{}.{}", h.namespace, h.domain)
            };
            println!(
                "namespace {}: services are {} unless set otherwise; {domain}",
                h.namespace,
                visibility(h.private)
            );
            let rows: Vec<Vec<String>> = h
                .services
                .iter()
                .map(|s| {
                    let how = if s.explicit { "" } else { " (default)" };
                    vec![
                        s.name.clone(),
                        format!("{}{how}", visibility(s.private)),
                        if s.running { "yes".into() } else { "no".into() },
                        if s.url.is_empty() { "-".into() } else { s.url.clone() },
                    ]
                })
                .collect();
            output::table(&["SERVICE", "VISIBILITY", "RUNNING", "URL"], &rows);
            return Ok(());
        }
        HostingCmd::Public { service } => (service, "public"),
        HostingCmd::Private { service } => (service, "private"),
        HostingCmd::Default { service } => (Some(service), "default"),
    };
    let msg = pb::SetHostingRequest { service: service.clone().unwrap_or_default(), visibility: set.to_string() };
    let h = client.set_hosting(crate::auth::request(c, msg)?).await.map_err(err)?.into_inner();
    let text = match service {
        None => format!("namespace {}'s services are now {set} unless set otherwise", h.namespace),
        Some(s) => {
            let now = h.services.iter().find(|x| x.name == s).is_some_and(|x| x.private);
            let how = if set == "default" { " (the namespace's default)" } else { "" };
            format!("{s} is now {}{how}", visibility(now))
        }
    };
    output::done(c.json, hosting_json(&h), Some(text));
    Ok(())
}
