//! The helloworld example: a proto-defined `Greeter` with a unary, a server-streaming
//! and a bidirectional endpoint.
//!
//! Run `micro server`, then `cargo run -p helloworld`, then
//! `micro call helloworld Greeter.Hello '{"name":"Alice"}'`.

use micro::Service;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Generated from `proto/helloworld.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("helloworld");
}

use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest, StreamRequest};

/// `HELLOWORLD_REGION`, when set, ends every greeting with ` from <region>` (so a
/// caller sees which of several instances answered).
struct Hello {
    from: String,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        Ok(Response::new(HelloReply { message: format!("Hello {name}{}", self.from) }))
    }

    type StreamStream = ReplyStream;

    async fn stream(&self, req: Request<StreamRequest>) -> Result<Response<ReplyStream>, Status> {
        let r = req.into_inner();
        if !(0..=1000).contains(&r.count) {
            return Err(Status::invalid_argument("count must be between 0 and 1000"));
        }
        let name = r.name;
        let s =
            tokio_stream::iter(0..r.count).map(move |i| Ok(HelloReply { message: format!("Hello {name} {}", i + 1) }));
        Ok(Response::new(Box::pin(s)))
    }

    type ChatStream = ReplyStream;

    async fn chat(&self, req: Request<Streaming<HelloRequest>>) -> Result<Response<ReplyStream>, Status> {
        let from = self.from.clone();
        let s = req.into_inner().map(move |m| m.map(|m| HelloReply { message: format!("Hello {}{from}", m.name) }));
        Ok(Response::new(Box::pin(s)))
    }
}

#[tokio::main]
async fn main() {
    let result = Service::new("helloworld")
        .grpc(GreeterServer::new(Hello {
            from: std::env::var("HELLOWORLD_REGION").map(|r| format!(" from {r}")).unwrap_or_default(),
        }))
        .descriptors(micro::include_descriptor!())
        .run()
        .await;
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
