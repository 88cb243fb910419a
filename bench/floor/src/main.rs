//! The physical floor for the benchmarks: a minimal hyper 1.x HTTP/1.1 server on a
//! current-thread tokio runtime that answers `200 hello` to every request.
//!
//! It is both the "ours" side of B0 (compared with nginx `return 200`) and the upstream
//! that the gateway and nginx `proxy_pass` forward to in B1.
//!
//! Usage: `bench-floor [ADDR]` (default `127.0.0.1:9000`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const DEFAULT_ADDR: &str = "127.0.0.1:9000";
const BODY: &[u8] = b"hello";

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(BODY))))
}

async fn serve(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // E.g. out of file descriptors: back off instead of spinning.
                eprintln!("bench-floor: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Best effort: a socket that refuses TCP_NODELAY still works, only slower.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // A connection closed by the client mid-request is not an error worth reporting.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(hello)).await;
        });
    }
}

fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or(DEFAULT_ADDR)
        .parse()
        .expect("usage: bench-floor [ADDR] with ADDR like 127.0.0.1:9000");
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cannot start the tokio runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await.expect("cannot bind the listen address");
        eprintln!("bench-floor: listening on {addr}");
        serve(listener).await;
    });
}
