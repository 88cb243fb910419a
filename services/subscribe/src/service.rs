//! The lists and their subscribers as a service of the platform (`Lists.*`,
//! `Subscribers.*`): what the CLI calls (`micro subscribe …`), for the namespace's team.

use super::{List, NAME, Subscribe, Subscriber, Who};
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
    let (save, lists, delete, subs, export) = (sub.clone(), sub.clone(), sub.clone(), sub.clone(), sub);
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
        .handle("Subscribers.Export", move |ctx: Context, req: SubscribersRequest| {
            let sub = export.clone();
            async move {
                let c = caller(&ctx)?;
                Ok::<_, Status>(ExportReply { csv: sub.export(&Who { caller: c, ns: &c.namespace }, &req.list).await? })
            }
        })
}
