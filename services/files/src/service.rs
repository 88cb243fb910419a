//! The product's management as a service of the platform (`Files.*`): what the
//! dashboard and `micro files …` call. The files themselves come and go over HTTP
//! (`/files/v1/…`), which the gateway serves.

use super::{File, Files, Settings, Who};
use micro::{Context, Service, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `Files.List` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// Only the files of this owner (an app user's or an account's id).
    #[serde(default)]
    pub owner: Option<String>,
    /// Only the files attached to this record (`collection/id`).
    #[serde(default)]
    pub record: Option<String>,
}

/// `Files.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    /// The files, newest first.
    pub files: Vec<File>,
}

/// A request naming a file.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    /// The file's id.
    pub id: String,
}

/// An empty message.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

fn caller(ctx: &Context) -> Result<&micro::auth::Caller, Status> {
    ctx.caller().ok_or_else(|| Status::internal(super::NAME, "the service runs without an authorizer"))
}

/// The files product's service, on `files` (what the gateway serves too).
pub fn service_with(service: Service, files: Arc<Files>) -> Service {
    let service = service.platform().version(env!("CARGO_PKG_VERSION"));
    let (list, get, delete, settings, save) = (files.clone(), files.clone(), files.clone(), files.clone(), files);
    service
        .handle("Files.List", move |ctx: Context, req: ListRequest| {
            let files = list.clone();
            async move {
                let c = caller(&ctx)?;
                let who = Who { caller: c, ns: &c.namespace };
                let listed = files.list(&who, req.owner, req.record).await?;
                Ok::<_, Status>(ListReply { files: listed.into_iter().map(|f| who.shown(f)).collect() })
            }
        })
        .handle("Files.Get", move |ctx: Context, req: IdRequest| {
            let files = get.clone();
            async move {
                let c = caller(&ctx)?;
                let who = Who { caller: c, ns: &c.namespace };
                let f = files.readable(&who, &req.id).await?;
                Ok::<_, Status>(who.shown(f))
            }
        })
        .handle("Files.Delete", move |ctx: Context, req: IdRequest| {
            let files = delete.clone();
            async move {
                let c = caller(&ctx)?;
                let who = Who { caller: c, ns: &c.namespace };
                let f = files.managed(&who, &req.id).await?;
                files.delete(&c.namespace, &f.id).await?;
                Ok::<_, Status>(Empty {})
            }
        })
        .handle("Files.Settings", move |ctx: Context, _: Empty| {
            let files = settings.clone();
            async move {
                let c = caller(&ctx)?;
                files.team_settings(&Who { caller: c, ns: &c.namespace }).await
            }
        })
        .handle("Files.SaveSettings", move |ctx: Context, req: Settings| {
            let files = save.clone();
            async move {
                let c = caller(&ctx)?;
                files.save_settings(&Who { caller: c, ns: &c.namespace }, req).await
            }
        })
}
