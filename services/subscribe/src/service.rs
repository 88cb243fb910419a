//! The lists and their subscribers as a service of the platform (`Lists.*`,
//! `Subscribers.*`): what the CLI calls (`micro subscribe …`), for the namespace's team.

use super::{Campaign, CampaignReport, List, NAME, Subscribe, Subscriber, Who};
use micro::{Context, Service, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A request naming a list.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    /// The list.
    pub name: String,
}

/// `Lists.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    /// The namespace's lists.
    pub lists: Vec<List>,
}

/// `Subscribers.List` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribersRequest {
    /// The list.
    pub list: String,
}

/// `Subscribers.Add` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// The list.
    pub list: String,
    /// The address.
    pub email: String,
    /// The name.
    #[serde(default)]
    pub name: String,
}

/// `Subscribers.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct SubscribersReply {
    /// Its subscribers, oldest first.
    pub subscribers: Vec<Subscriber>,
}

/// `Subscribers.Export` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ExportReply {
    /// The subscribers as CSV.
    pub csv: String,
}

/// `Campaigns.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct CampaignsReply {
    /// The namespace's campaigns, newest first.
    pub campaigns: Vec<Campaign>,
}

/// `Campaigns.Send` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendCampaignRequest {
    /// The campaign (a draft).
    pub name: String,
    /// When it goes (Unix seconds; default now).
    #[serde(default)]
    pub at: Option<u64>,
}

/// An empty message.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

fn caller(ctx: &Context) -> Result<&micro::auth::Caller, Status> {
    ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))
}

/// The subscribe product's service; its client sends the product's mails.
pub fn service_with(service: Service, sub: Arc<Subscribe>) -> Service {
    let service = service.platform().version(env!("CARGO_PKG_VERSION"));
    match service.client() {
        Ok(c) => {
            let _ = sub.client.set(c);
        }
        Err(e) => tracing::warn!(service = NAME, error = %e, "no client: no mail will be sent"),
    }
    let (save, lists, delete, subs, export) = (sub.clone(), sub.clone(), sub.clone(), sub.clone(), sub.clone());
    let (c_save, c_list, c_send, c_cancel, c_delete, c_report) =
        (sub.clone(), sub.clone(), sub.clone(), sub.clone(), sub.clone(), sub.clone());
    let (worker, sync) = ((*sub).clone(), service.sync());
    let add = sub.clone();
    service
        .handle("Lists.Save", move |ctx: Context, req: List| {
            let sub = save.clone();
            async move {
                let c = caller(&ctx)?;
                sub.save_list(&Who { caller: c, ns: &c.namespace }, req).await
            }
        })
        .handle("Lists.List", move |ctx: Context, _: Empty| {
            let sub = lists.clone();
            async move {
                let c = caller(&ctx)?;
                Who { caller: c, ns: &c.namespace }.manager()?;
                Ok::<_, Status>(ListReply { lists: sub.lists(&c.namespace).await? })
            }
        })
        .handle("Lists.Delete", move |ctx: Context, req: NameRequest| {
            let sub = delete.clone();
            async move {
                let c = caller(&ctx)?;
                sub.delete_list(&Who { caller: c, ns: &c.namespace }, &req.name).await?;
                Ok::<_, Status>(Empty {})
            }
        })
        .handle("Subscribers.List", move |ctx: Context, req: SubscribersRequest| {
            let sub = subs.clone();
            async move {
                let c = caller(&ctx)?;
                let subscribers = sub.subscribers(&Who { caller: c, ns: &c.namespace }, &req.list).await?;
                Ok::<_, Status>(SubscribersReply { subscribers })
            }
        })
        .handle("Subscribers.Add", move |ctx: Context, req: AddRequest| {
            let sub = add.clone();
            async move {
                let c = caller(&ctx)?;
                sub.add_subscriber(&Who { caller: c, ns: &c.namespace }, &req.list, &req.email, &req.name).await
            }
        })
        .handle("Subscribers.Export", move |ctx: Context, req: SubscribersRequest| {
            let sub = export.clone();
            async move {
                let c = caller(&ctx)?;
                Ok::<_, Status>(ExportReply { csv: sub.export(&Who { caller: c, ns: &c.namespace }, &req.list).await? })
            }
        })
        .handle("Campaigns.Save", move |ctx: Context, req: Campaign| {
            let sub = c_save.clone();
            async move {
                let c = caller(&ctx)?;
                sub.save_campaign(&Who { caller: c, ns: &c.namespace }, req).await
            }
        })
        .handle("Campaigns.List", move |ctx: Context, _: Empty| {
            let sub = c_list.clone();
            async move {
                let c = caller(&ctx)?;
                Ok::<_, Status>(CampaignsReply {
                    campaigns: sub.campaigns(&Who { caller: c, ns: &c.namespace }).await?,
                })
            }
        })
        .handle("Campaigns.Send", move |ctx: Context, req: SendCampaignRequest| {
            let sub = c_send.clone();
            async move {
                let c = caller(&ctx)?;
                sub.send_campaign(&Who { caller: c, ns: &c.namespace }, &req.name, req.at).await
            }
        })
        .handle("Campaigns.Cancel", move |ctx: Context, req: NameRequest| {
            let sub = c_cancel.clone();
            async move {
                let c = caller(&ctx)?;
                sub.cancel_campaign(&Who { caller: c, ns: &c.namespace }, &req.name).await
            }
        })
        .handle("Campaigns.Delete", move |ctx: Context, req: NameRequest| {
            let sub = c_delete.clone();
            async move {
                let c = caller(&ctx)?;
                sub.delete_campaign(&Who { caller: c, ns: &c.namespace }, &req.name).await?;
                Ok::<_, Status>(Empty {})
            }
        })
        .handle("Campaigns.Report", move |ctx: Context, req: NameRequest| {
            let sub = c_report.clone();
            async move {
                let c = caller(&ctx)?;
                let report: CampaignReport = sub.report(&Who { caller: c, ns: &c.namespace }, &req.name).await?;
                Ok::<_, Status>(report)
            }
        })
        // One node of the cluster sends the campaigns due.
        .background(move |stopping| super::campaigns::run(worker, sync, stopping))
}
