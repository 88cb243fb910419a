//! The product's management as a service of the platform (`Apps.*`): what the dashboard
//! and `micro app …` call. A deploy's archive comes as a blob of the caller's namespace
//! (the CLI streams it to the blob service first); the sites themselves are served by the
//! gateway.

use super::{App, Apps, Deploy, NAME, Who, no_app};
use futures::StreamExt;
use micro::{Code, Context, Service, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The bucket a deploy's archive is put in before `Apps.Deploy`.
pub const UPLOADS: &str = "apps-uploads";

/// `Apps.Deploy` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The app.
    pub name: String,
    /// The key of the tar archive (gzipped or not) in the namespace's `apps-uploads`
    /// bucket; it is deleted once read.
    pub archive: String,
    /// A preview: stored and served at `<name>--<deploy>`, not made current.
    #[serde(default)]
    pub preview: bool,
}

/// `Apps.Deploy` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct DeployReply {
    /// The deploy.
    pub deploy: Deploy,
    /// The app after it.
    pub app: App,
}

/// A request naming an app.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    /// The app.
    pub name: String,
}

/// `Apps.Rollback` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The app.
    pub name: String,
    /// The deploy to serve again (default: the one before the current).
    #[serde(default)]
    pub to: Option<String>,
}

/// `Apps.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    /// The namespace's apps.
    pub apps: Vec<App>,
}

/// `Apps.Get` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct GetReply {
    /// The app.
    pub app: App,
    /// Its deploys, newest first.
    pub deploys: Vec<Deploy>,
}

/// An empty message.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

fn caller(ctx: &Context) -> Result<&micro::auth::Caller, Status> {
    ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))
}

/// The apps product's service, on `apps` (the gateway serves the sites).
pub fn service_with(service: Service, apps: Arc<Apps>) -> Service {
    let service = service.platform().version(env!("CARGO_PKG_VERSION"));
    let (list, get, deploy, rollback, delete) = (apps.clone(), apps.clone(), apps.clone(), apps.clone(), apps);
    service
        .handle("Apps.List", move |ctx: Context, _: Empty| {
            let apps = list.clone();
            async move {
                let c = caller(&ctx)?;
                Ok::<_, Status>(ListReply { apps: apps.list(&Who { caller: c, ns: &c.namespace }).await? })
            }
        })
        .handle("Apps.Get", move |ctx: Context, req: NameRequest| {
            let apps = get.clone();
            async move {
                let c = caller(&ctx)?;
                Who { caller: c, ns: &c.namespace }.team()?;
                let app = apps.app(&c.namespace, &req.name).await?.ok_or_else(|| no_app(&req.name))?;
                Ok::<_, Status>(GetReply { app, deploys: apps.deploys(&c.namespace, &req.name).await? })
            }
        })
        .handle("Apps.Deploy", move |ctx: Context, req: DeployRequest| {
            let apps = deploy.clone();
            async move {
                let c = caller(&ctx)?;
                let who = Who { caller: c, ns: &c.namespace };
                who.deployer()?;
                micro_core::blob::validate_key(&req.archive)?;
                let (info, chunks) = apps.blob.get(&c.namespace, UPLOADS, &req.archive).await?;
                if info.size > super::MAX_SITE + (super::MAX_FILES as u64) * 1024 {
                    return Err(
                        Status::new(Code::ResourceExhausted, NAME, "the archive is too large").with_http_status(413)
                    );
                }
                let parts: Vec<bytes::Bytes> =
                    chunks.collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
                let _ = apps.blob.delete(&c.namespace, UPLOADS, &req.archive).await;
                let (deploy, app) =
                    apps.deploy(&who, &req.name, bytes::Bytes::from(parts.concat()), req.preview).await?;
                Ok(DeployReply { deploy, app })
            }
        })
        .handle("Apps.Rollback", move |ctx: Context, req: RollbackRequest| {
            let apps = rollback.clone();
            async move {
                let c = caller(&ctx)?;
                apps.rollback(&Who { caller: c, ns: &c.namespace }, &req.name, req.to).await
            }
        })
        .handle("Apps.Delete", move |ctx: Context, req: NameRequest| {
            let apps = delete.clone();
            async move {
                let c = caller(&ctx)?;
                apps.delete(&Who { caller: c, ns: &c.namespace }, &req.name).await?;
                Ok::<_, Status>(Empty {})
            }
        })
}
