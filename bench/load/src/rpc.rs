//! The `rpc` case (B2): service-to-service unary calls of `helloworld` `Greeter.Hello`,
//! through a registry-resolved Micro client or a bare tonic client; and the bare tonic
//! server (`bench-load tonic-server <address>`) that the latter calls.
//!
//! The messages are hand-written prost structs with the shape of
//! `examples/helloworld/proto/helloworld.proto`, so no protoc is needed; the tonic side
//! uses tonic's generic client and server pieces the way tonic-generated code does.

use crate::{Args, closed_loop, report};
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HelloRequest {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HelloReply {
    #[prost(string, tag = "1")]
    pub(crate) message: String,
}

const SERVICE: &str = "helloworld";
const ENDPOINT: &str = "Greeter.Hello";
/// The gRPC path of `helloworld` `Greeter.Hello` (what `micro::grpc_path` gives too).
const PATH: &str = "/helloworld.Greeter/Hello";
const NAME: &str = "Alice";
const WANT: &str = "Hello Alice";

type Call = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

fn check(message: &str) -> Result<(), String> {
    if message == WANT { Ok(()) } else { Err(format!("unexpected reply {message:?}")) }
}

/// A registry-resolved Micro client: nodes are looked up in the registry of the server at
/// `addr` (and cached, with a watch), then called directly over HTTP/2.
fn micro_call(addr: &str, codec: &str) -> Result<Call, String> {
    let registry = micro::registry::RemoteRegistry::new(addr).map_err(|e| e.to_string())?;
    let client = micro::Client::new(Arc::new(registry));
    let req = HelloRequest { name: NAME.into() };
    Ok(match codec {
        "proto" => Arc::new(move || {
            let (client, req) = (client.clone(), req.clone());
            Box::pin(async move {
                let r: HelloReply = client.call_proto(SERVICE, ENDPOINT, &req).await.map_err(|e| e.to_string())?;
                check(&r.message)
            })
        }),
        "json" => {
            let body = bytes::Bytes::from(format!(r#"{{"name":"{NAME}"}}"#));
            Arc::new(move || {
                let (client, body) = (client.clone(), body.clone());
                Box::pin(async move {
                    let out = client
                        .call_raw(
                            SERVICE,
                            ENDPOINT,
                            micro::metadata::CONTENT_TYPE_GRPC_JSON,
                            body,
                            &micro::CallOptions::default(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
                    check(v.get("message").and_then(|m| m.as_str()).unwrap_or_default())
                })
            })
        }
        c => return Err(format!("--codec {c}: use proto or json")),
    })
}

/// A bare tonic client: one `Channel` (one HTTP/2 connection), the prost codec.
async fn tonic_call(addr: &str) -> Result<Call, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let grpc = tonic::client::Grpc::new(channel);
    Ok(Arc::new(move || {
        let mut grpc = grpc.clone();
        Box::pin(async move {
            grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
            let path = http::uri::PathAndQuery::from_static(PATH);
            let req = tonic::Request::new(HelloRequest { name: NAME.into() });
            let res = grpc.unary(req, path, codec).await.map_err(|e| e.to_string())?;
            check(&res.into_inner().message)
        })
    }))
}

pub(crate) async fn run(a: &Args) -> Result<(), String> {
    let call = match a.target.as_str() {
        "micro" => micro_call(&a.addr, &a.codec)?,
        "tonic" => tonic_call(&a.addr).await?,
        t => return Err(format!("unknown rpc target {t}: use micro or tonic")),
    };
    // Resolve, connect and check the answer before the clock starts.
    call().await.map_err(|e| format!("first call: {e}"))?;
    let n = a.inflight.max(1);
    let (ops, secs, lat, errors) = closed_loop(n, a.secs, false, move |_, _| call()).await;
    let codec = if a.target == "tonic" { "proto" } else { a.codec.as_str() };
    report(a, ops, secs, lat, errors, serde_json::json!({ "codec": codec }));
    Ok(())
}

/// `Greeter.Hello`: `Hello <name>`.
struct Hello;

impl tonic::server::UnaryService<HelloRequest> for Hello {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        let name = req.into_inner().name;
        std::future::ready(if name.is_empty() {
            Err(tonic::Status::invalid_argument("name is required"))
        } else {
            Ok(tonic::Response::new(HelloReply { message: format!("Hello {name}") }))
        })
    }
}

/// The `helloworld.Greeter` service, routed by path the way tonic-generated servers are.
#[derive(Clone)]
struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

impl<B> tonic::codegen::Service<http::Request<B>> for Greeter
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == PATH {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<HelloReply, HelloRequest>::default());
                Ok(grpc.unary(Hello, req).await)
            })
        } else {
            Box::pin(async move {
                let mut res = http::Response::new(tonic::body::Body::default());
                let h = res.headers_mut();
                h.insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                h.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(res)
            })
        }
    }
}

/// `bench-load tonic-server <address>`: serves `Greeter` with bare tonic on a
/// current-thread runtime until killed.
pub(crate) fn tonic_server(addr: &str) -> Result<(), String> {
    let addr: std::net::SocketAddr = addr.parse().map_err(|_| format!("not an address: {addr}"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        eprintln!("bench-load: tonic-server listening on {addr}");
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(Greeter)
            .serve(addr)
            .await
            .map_err(|e| e.to_string())
    })
}
