//! Notifications as a service of the platform (`Push.*`): what the CLI and the dashboard
//! call, for the namespace's team (and the key for anyone).

use super::{NAME, Push, Report, SendRequest, Subscription, Who};
use micro::{Context, Service, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An empty message.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

/// `Push.Key` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct KeyReply {
    /// The namespace's VAPID public key (base64url): an app's `applicationServerKey`.
    pub public_key: String,
}

/// `Push.Subscriptions` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsRequest {
    /// Only this app user's (default: everyone's).
    #[serde(default)]
    pub user: Option<String>,
}

/// `Push.Subscriptions` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct SubscriptionsReply {
    /// The subscriptions (their push service's origin, not the whole endpoint), oldest first.
    pub subscriptions: Vec<Subscription>,
}

/// `Push.Unsubscribe` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeRequest {
    /// The subscription's id.
    pub id: String,
}

/// `Push.Messages` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagesRequest {
    /// How many of the latest (default 50, at most 200).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `Push.Messages` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct MessagesReply {
    /// The latest messages with their reports, newest first.
    pub messages: Vec<Report>,
}

fn caller(ctx: &Context) -> Result<&micro::auth::Caller, Status> {
    ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))
}

/// The push product's service.
pub fn service_with(service: Service, push: Arc<Push>) -> Service {
    let service = service.platform().version(env!("CARGO_PKG_VERSION"));
    let (key, send, subs, unsub, msgs) = (push.clone(), push.clone(), push.clone(), push.clone(), push);
    service
        .handle("Push.Key", move |ctx: Context, _: Empty| {
            let push = key.clone();
            async move {
                let c = caller(&ctx)?;
                Ok::<_, Status>(KeyReply { public_key: push.vapid(&c.namespace).await?.public })
            }
        })
        .handle("Push.Send", move |ctx: Context, req: SendRequest| {
            let push = send.clone();
            async move {
                let c = caller(&ctx)?;
                push.send(&Who { caller: c, ns: &c.namespace }, req).await
            }
        })
        .handle("Push.Subscriptions", move |ctx: Context, req: SubscriptionsRequest| {
            let push = subs.clone();
            async move {
                let c = caller(&ctx)?;
                let who = Who { caller: c, ns: &c.namespace };
                who.sender()?;
                Ok::<_, Status>(SubscriptionsReply {
                    subscriptions: push.subscriptions(&who, req.user.as_deref()).await?,
                })
            }
        })
        .handle("Push.Unsubscribe", move |ctx: Context, req: UnsubscribeRequest| {
            let push = unsub.clone();
            async move {
                let c = caller(&ctx)?;
                let who = Who { caller: c, ns: &c.namespace };
                who.sender()?;
                push.unsubscribe(&who, &req.id).await?;
                Ok::<_, Status>(Empty {})
            }
        })
        .handle("Push.Messages", move |ctx: Context, req: MessagesRequest| {
            let push = msgs.clone();
            async move {
                let c = caller(&ctx)?;
                let limit = req.limit.unwrap_or(50) as usize;
                Ok::<_, Status>(MessagesReply {
                    messages: push.messages(&Who { caller: c, ns: &c.namespace }, limit).await?,
                })
            }
        })
}
