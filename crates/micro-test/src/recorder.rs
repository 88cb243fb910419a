//! An attacker's listener for the attack suite: an HTTP/1.1 and h2c server on
//! `127.0.0.1:0` that records every request's headers (so a test can assert it captured
//! no credential) and answers each with `200`, an empty gRPC-ok trailer for gRPC calls,
//! and the `Set-Cookie` headers it was given (to try to plant cookies).

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};

/// A recording listener. Stops when dropped.
pub struct Recorder {
    /// `host:port` it listens on.
    pub address: String,
    seen: Arc<Mutex<Vec<http::request::Parts>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Listens on a free port; answers with `set_cookies` as `Set-Cookie` headers.
    pub async fn start(set_cookies: &[&str]) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let seen: Arc<Mutex<Vec<http::request::Parts>>> = Arc::default();
        let cookies: Arc<Vec<String>> = Arc::new(set_cookies.iter().map(|c| c.to_string()).collect());
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, cookies) = (log.clone(), cookies.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (parts, _) = req.into_parts();
                        let grpc = parts
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|c| c.starts_with("application/grpc"));
                        log.lock().unwrap_or_else(|e| e.into_inner()).push(parts);
                        let mut res = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                        for c in cookies.iter() {
                            if let Ok(v) = c.parse() {
                                res.headers_mut().append(http::header::SET_COOKIE, v);
                            }
                        }
                        if grpc {
                            res.headers_mut().insert("grpc-status", http::HeaderValue::from_static("13"));
                            res.headers_mut()
                                .insert("content-type", http::HeaderValue::from_static("application/grpc"));
                            *res.body_mut() = Full::new(Bytes::new());
                        }
                        async move { Ok::<_, std::convert::Infallible>(res) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { address, seen, task }
    }

    /// The requests received so far (their heads).
    pub fn requests(&self) -> Vec<http::request::Parts> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter().map(clone_parts).collect()
    }

    /// Every value of header `name` received so far.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|p| {
                p.headers.get_all(name).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect::<Vec<_>>()
            })
            .collect()
    }
}

fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::builder().method(p.method.clone()).uri(p.uri.clone()).version(p.version);
    if let Some(h) = req.headers_mut() {
        *h = p.headers.clone();
    }
    req.body(()).map(|r| r.into_parts().0).unwrap_or_else(|_| http::Request::new(()).into_parts().0)
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
