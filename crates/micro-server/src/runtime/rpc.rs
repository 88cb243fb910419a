//! The runtime's gRPC service. The core guard has already checked the caller's rights in
//! the namespace the call acts in: an admin or developer to change, also a viewer to read.

use super::{Caller, ID, Runtime};
use futures::{Stream, StreamExt};
use micro::proto::runtime as pb;
use micro_core::Status as MicroStatus;
use std::io::Write;
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};

fn t(s: MicroStatus) -> Status {
    micro::status::to_tonic(&s)
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The caller, as the core's authorizer verified it.
fn caller<T>(req: &Request<T>) -> Option<Caller> {
    let verified = micro::auth::Caller::of(req)?;
    let operator = verified.is_operator();
    let account = verified.account.as_ref()?;
    Some(Caller { namespace: account.namespace.clone(), id: account.id.clone(), operator })
}

#[tonic::async_trait]
impl pb::runtime_server::Runtime for Runtime {
    async fn create(&self, req: Request<pb::CreateRequest>) -> Result<Response<pb::CreateResponse>, Status> {
        let ns = micro::namespace(&req);
        let who = caller(&req);
        let spec = req.into_inner().service.unwrap_or_default();
        let service = self.create(&ns, spec, who).await.map_err(t)?;
        Ok(Response::new(pb::CreateResponse { service: Some(service) }))
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<pb::ReadResponse>, Status> {
        let ns = micro::namespace(&req);
        // A viewer sees services, not the values of their environment (secrets, often).
        let deployer = micro::auth::Caller::of(&req)
            .and_then(|c| c.account.as_ref().map(|a| a.may_deploy_in(&ns)))
            .unwrap_or(false);
        let mut services = Runtime::read(self, &ns, &req.into_inner().name).map_err(t)?;
        if !deployer {
            for s in &mut services {
                for v in s.env.values_mut() {
                    *v = "(hidden: developers and admins see it)".into();
                }
            }
        }
        Ok(Response::new(pb::ReadResponse { services, isolation: self.isolation(&ns) }))
    }

    async fn update(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        let ns = micro::namespace(&req);
        let who = caller(&req);
        let spec = req.into_inner().service.unwrap_or_default();
        let service = Runtime::update(self, &ns, spec, who).await.map_err(t)?;
        Ok(Response::new(pb::UpdateResponse { service: Some(service) }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let ns = micro::namespace(&req);
        Runtime::delete(self, &ns, &req.into_inner().name).await.map_err(t)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    type LogsStream = Stream_<pb::LogRecord>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let count = if r.count == 0 { 100 } else { r.count as usize };
        let (tail, mut rx) = Runtime::logs(self, &ns, &r.name, r.build, count).map_err(t)?;
        let follow = r.follow;
        let s = async_stream::stream! {
            for line in tail {
                yield Ok(pb::LogRecord { line, ..Default::default() });
            }
            if follow {
                loop {
                    match rx.recv().await {
                        Ok(rec) => yield Ok(rec),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            yield Ok(pb::LogRecord { line: format!("[runtime] {n} lines skipped (reading too slowly)"), ..Default::default() });
                        }
                        Err(_) => break,
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(s)))
    }

    async fn upload(&self, req: Request<Streaming<pb::UploadRequest>>) -> Result<Response<pb::UploadResponse>, Status> {
        let mut chunks = req.into_inner();
        let dir = self.upload_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Status::internal(e.to_string()))?;
        let tmp = dir.join(format!(".{}.part", uuid::Uuid::new_v4()));
        let result = async {
            let mut file = std::fs::File::create(&tmp).map_err(|e| Status::internal(e.to_string()))?;
            let mut hash = sha2::Sha256::default();
            let mut size = 0u64;
            while let Some(c) = chunks.next().await {
                let c = c?;
                size += c.chunk.len() as u64;
                if size > self.inner.config.upload_max {
                    return Err(t(MicroStatus::new(
                        micro_core::Code::ResourceExhausted,
                        ID,
                        format!(
                            "the source is over {} MiB; is a build folder missing from .gitignore?",
                            self.inner.config.upload_max >> 20
                        ),
                    )));
                }
                sha2::Digest::update(&mut hash, &c.chunk);
                file.write_all(&c.chunk).map_err(|e| Status::internal(e.to_string()))?;
            }
            file.sync_all().map_err(|e| Status::internal(e.to_string()))?;
            let id = crate::hex(&sha2::Digest::finalize(hash));
            if size == 0 {
                return Err(t(MicroStatus::bad_request(ID, "an empty upload")));
            }
            std::fs::rename(&tmp, self.upload_path(&id)).map_err(|e| Status::internal(e.to_string()))?;
            self.share_upload(&id).await.map_err(t)?;
            Ok(pb::UploadResponse { id, size })
        }
        .await;
        let _ = std::fs::remove_file(&tmp);
        Ok(Response::new(result?))
    }

    async fn suspend(&self, req: Request<pb::SuspendRequest>) -> Result<Response<pb::SuspendResponse>, Status> {
        let ns = micro::namespace(&req);
        if !micro::auth::Caller::of(&req).is_some_and(|c| c.is_operator()) {
            return Err(t(MicroStatus::new(
                micro_core::Code::PermissionDenied,
                ID,
                "suspending a namespace is for the platform's operators",
            )));
        }
        let r = req.into_inner();
        let services = Runtime::suspend(self, &ns, r.suspended, &r.reason).await.map_err(t)?;
        Ok(Response::new(pb::SuspendResponse { services }))
    }

    type DownloadStream = Stream_<pb::DownloadResponse>;

    async fn download(&self, req: Request<pb::DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let ns = micro::namespace(&req);
        let id = req.into_inner().id;
        // Only the uploads of this namespace's services.
        let owned = Runtime::read(self, &ns, "").map_err(t)?.iter().any(|s| s.upload == id);
        if !owned {
            return Err(t(MicroStatus::not_found(ID, format!("no upload {id} in {ns}"))));
        }
        self.fetch_upload(&id).await.map_err(t)?;
        let data = tokio::fs::read(self.upload_path(&id)).await.map_err(|e| Status::not_found(e.to_string()))?;
        let chunks: Vec<_> =
            data.chunks(1 << 20).map(|c| Ok(pb::DownloadResponse { chunk: c.to_vec() })).collect::<Vec<_>>();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}
