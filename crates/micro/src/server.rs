//! Serving HTTP/1.1 and HTTP/2 (h2c, or over TLS with [`serve_tls`]) on a listener until
//! shutdown, then draining.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::body::Body;

/// The address of the client a request came from (a request extension set by [`serve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The client presented a TLS certificate that the listener's client verifier accepted
/// (a request extension set by [`serve_tls`]; only a listener configured to verify client
/// certificates asks for one, such as a cluster node's proxy, where it means the caller
/// is another node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCertified;

/// The header the edges (gateway, proxy) set to the client's IP address, replacing any
/// value the client sent.
pub const CLIENT_ADDRESS: &str = "micro-client-address";

/// Sets [`CLIENT_ADDRESS`] from the connection's peer (dropping a client-supplied one).
pub fn stamp_client_address<B>(req: &mut Request<B>) {
    req.headers_mut().remove(CLIENT_ADDRESS);
    if let Some(PeerAddr(a)) = req.extensions().get::<PeerAddr>().copied()
        && let Ok(v) = http::HeaderValue::from_str(&a.ip().to_string())
    {
        req.headers_mut().insert(CLIENT_ADDRESS, v);
    }
}

/// How long in-flight calls get to finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new connection may stay silent, and an HTTP/1 request's head may take to
/// arrive, before the connection is closed (idle clients cannot hold descriptors forever).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections one listener holds at once: `MICRO_MAX_CONNECTIONS` when set
/// (at most the process's descriptor limit less 256 kept for everything else), else 4096
/// or a quarter of the descriptor limit when that is lower (a server has several
/// listeners and backends); connections over it are closed at once.
pub fn max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let asked = std::env::var("MICRO_MAX_CONNECTIONS").ok().and_then(|v| v.trim().parse::<u64>().ok());
    match asked {
        Some(n) => n.clamp(16, soft.saturating_sub(256).max(16)) as usize,
        None => (soft.saturating_sub(64) / 4).clamp(16, 4096) as usize,
    }
}

/// Raises the process's soft limit of open descriptors to its hard limit (as Go's runtime
/// does for its programs), so that as many connections fit as the system allows. A server
/// calls it once as it starts.
pub fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "the descriptor limit stays as it was");
        }
    }
}

/// Serves `svc` on `listener` until `shutdown` resolves, then stops accepting and waits
/// (up to [`DRAIN_TIMEOUT`]) for in-flight requests to finish. A connection that sends
/// nothing, or an HTTP/1 request head that does not arrive, within [`HEADER_TIMEOUT`] is
/// closed; at most [`max_connections`] are open at once.
pub async fn serve<S, F>(listener: TcpListener, svc: S, shutdown: impl Future<Output = ()>)
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_tls(listener, None, svc, shutdown).await
}

/// Like [`serve`], speaking TLS with `tls` when given (HTTP/2 or HTTP/1.1 by ALPN). A
/// handshake must finish within [`HEADER_TIMEOUT`]; a client that speaks plain HTTP to
/// the TLS port gets a plain 400 saying so, not a hang.
pub async fn serve_tls<S, F>(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    svc: S,
    shutdown: impl Future<Output = ()>,
) where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_streams(listener, tls, svc, shutdown, MAX_STREAMS).await
}

/// Streams an HTTP/2 connection may have open at once, unless a server says otherwise.
pub const MAX_STREAMS: u32 = 1024;

/// Like [`serve_tls`], with at most `streams` streams open on one HTTP/2 connection (a
/// service whose callers hold many long streams through one connection, like the
/// gateway's subscribers to the database, needs more than [`MAX_STREAMS`]).
pub async fn serve_streams<S, F>(
    listener: TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    svc: S,
    shutdown: impl Future<Output = ()>,
    streams: u32,
) where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(HEADER_TIMEOUT);
    let builder = std::sync::Arc::new(builder);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections()));
    tokio::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Said once per thousand refusals: a flood must not flood the log too.
            if refused.is_multiple_of(1000) {
                tracing::warn!(%peer, refused = refused + 1, "too many connections; closing new ones");
            }
            refused += 1;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first = asked.clone();
        let secure = acceptor.is_some();
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (io, certified): (Box<dyn Io>, bool) = match acceptor {
                None => (Box::new(stream), false),
                Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, handshake(acceptor, stream)).await {
                    Ok(Some(tls)) => {
                        // Only a listener with a client verifier asks for certificates,
                        // and a presented one that does not verify fails the handshake.
                        let certified = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                        (Box::new(tls), certified)
                    }
                    Ok(None) => return,
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                first.store(true, std::sync::atomic::Ordering::Relaxed);
                req.extensions_mut().insert(PeerAddr(peer));
                if certified {
                    req.extensions_mut().insert(ClientCertified);
                }
                // Over TLS the scheme is https, whatever the client says (pages mark their
                // cookies `Secure` by it).
                if secure {
                    req.headers_mut().insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
                }
                let fut = svc(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_svc);
            let conn = watcher.watch(conn.into_owned());
            tokio::pin!(conn);
            // A connection that has not sent a whole request (a head, or an HTTP/2
            // preface and a stream) within the timeout is dropped, which closes it.
            let done = tokio::select! {
                r = &mut conn => Some(r),
                _ = tokio::time::sleep(HEADER_TIMEOUT) => None,
            };
            let result = match done {
                Some(r) => r,
                None if !asked.load(std::sync::atomic::Ordering::Relaxed) => return,
                None => conn.await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
    }
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// The TLS side of a connection, or `None` when it ended: a client speaking plain HTTP is
/// told in plain HTTP to use `https://` (a TLS record starts with 0x16, an HTTP request
/// with a letter), and a failed handshake is logged.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    mut stream: tokio::net::TcpStream,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    if first[0] != 0x16 {
        if first[0].is_ascii_alphabetic() {
            let st = micro_core::Status::bad_request("micro", "this port speaks TLS: use https://");
            let body = st.to_json();
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
        return None;
    }
    match acceptor.accept(stream).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Listens for SIGINT and SIGTERM from now on (the handlers are installed before this
/// returns, so a signal that arrives before the future is awaited is not lost); the
/// future resolves on either.
pub fn signals() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves on SIGINT or SIGTERM (received once this is first awaited; see [`signals`]).
pub async fn signal() {
    signals().await
}
