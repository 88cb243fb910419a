//! Links: TLS 1.3 with the clusters' own CAs, the joins, the route exchange, and calls
//! in both directions.

use super::{
    DEAD_AFTER, FromNetwork, HDR_CALLER, HDR_PATH, HDR_UNDELIVERED, Identity, MAX_HOPS, Message, Network, PING_EVERY,
    PeerRecord, REPLAY_LIMIT, Stats, Undelivered, now, offerable, send, table, validate_name,
};
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use micro_core::Status;
use micro_core::store::{Query, Record};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::body::Body;

/// The name every cluster's network certificate is for, and links ask for (SNI).
pub(super) const SERVER_NAME: &str = "network.micro-network.internal";
/// The connection a peer sends its calls (and the route exchange) on.
const ALPN_CALLS: &[u8] = b"h2";
/// The connection the dialling peer answers this cluster's calls on.
const ALPN_REVERSE: &[u8] = b"micro-network-reverse/1";
const TOKEN_PREFIX: &str = "micro-net1";
/// The longest line on a link (a batch of routes).
const MAX_LINE: usize = 4 << 20;
/// Route entries taken from one peer per second, at most (more wait: flow control
/// slows the sender down).
const ROUTES_PER_SECOND: u64 = 5_000;

type Send2 = hyper::client::conn::http2::SendRequest<Body>;

/// HTTP/2 pings on every link connection: one unanswered this long closes it, and
/// with it the calls on it (a path that went dark sends no reset to end them).
const KEEP_ALIVE: Duration = Duration::from_secs(1);

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal("network", e.to_string())
}

/// This cluster's network identity: a certificate from its network CA.
pub(super) fn identity(ca: &crate::tls::Ca) -> Result<Identity, crate::Error> {
    let (chain, key) = ca.issue(&[SERVER_NAME.to_string()], true)?;
    let key = micro::tls::certified_pem(chain.as_bytes(), key.as_bytes(), "the network certificate")?;
    Ok(Identity {
        ca_pem: ca.cert_pem.clone(),
        fingerprint: crate::cluster::fingerprint(&ca.der()?),
        key: Arc::new(key),
    })
}

/// Shows this cluster's certificate, as server and as client.
#[derive(Debug)]
struct Own(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Own {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Own {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Takes any client certificate whose key signs the handshake: which peer (if any) it
/// is, is decided right after, against the peers' CAs (a cluster joining shows a
/// certificate of a CA not known yet).
#[derive(Debug)]
struct AnyClient {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyClient {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A peer's CA: exactly one certificate, a CA's (a bundle would let one peer be
/// trusted for another's certificates). Returns it, DER.
pub(super) fn one_ca(ca_pem: &str) -> Result<CertificateDer<'static>, Status> {
    let bad = |why: &str| Status::bad_request("network", format!("a peer's CA certificate: {why}"));
    let mut certs = micro::tls::certificates_pem(ca_pem.as_bytes(), "a peer's CA certificate")?;
    if certs.len() != 1 {
        return Err(bad("give exactly one certificate"));
    }
    let der = certs.remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|_| bad("unreadable"))?;
    if !parsed.is_ca() {
        return Err(bad("not a CA's"));
    }
    Ok(der)
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, Status> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(one_ca(ca_pem)?).map_err(|e| Status::bad_request("network", format!("a peer's CA certificate: {e}")))?;
    Ok(roots)
}

/// Checks client certificates against a peer's CA alone.
pub(super) fn peer_verifier(ca_pem: &str) -> Result<Arc<dyn ClientCertVerifier>, Status> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), micro::tls::provider())
        .build()
        .map_err(|e| Status::bad_request("network", format!("a peer's CA certificate: {e}")))
}

/// The network listener's TLS: 1.3 only, this cluster's certificate, any client
/// certificate (see [`AnyClient`]).
fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, Status> {
    let provider = micro::tls::provider();
    let mut c = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(internal)?
        .with_client_cert_verifier(Arc::new(AnyClient { provider }))
        .with_cert_resolver(Arc::new(Own(id.key.clone())));
    c.alpn_protocols = vec![ALPN_CALLS.to_vec(), ALPN_REVERSE.to_vec()];
    Ok(Arc::new(c))
}

/// A link's TLS as the dialling side: 1.3 only, trusting the peer's CA alone (or, for a
/// join, the CA of the token's fingerprint), showing this cluster's certificate.
fn client_config(
    id: &Identity,
    peer_ca: Option<&str>,
    pinned: Option<&str>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, Status> {
    let provider = micro::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(internal)?;
    let builder = match (peer_ca, pinned) {
        (Some(ca), _) => builder.with_root_certificates(roots(ca)?),
        (None, Some(fp)) => builder.dangerous().with_custom_certificate_verifier(Arc::new(crate::cluster::Pinned {
            fingerprint: fp.to_string(),
            provider,
            name: SERVER_NAME,
        })),
        (None, None) => return Err(internal("no CA to trust")),
    };
    let mut c = builder.with_client_cert_resolver(Arc::new(Own(id.key.clone())));
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(c)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(address: &str, config: rustls::ClientConfig) -> Result<Tls, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(address))
        .await
        .map_err(|_| format!("no connection to {address} within 3 s"))?
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| format!("no TLS handshake with {address} within 5 s"))?
        .map_err(|e| format!("TLS with {address}: {e}"))
}

async fn handshake<T>(
    io: T,
) -> Result<(Send2, hyper::client::conn::http2::Connection<TokioIo<T>, Body, TokioExecutor>), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::marker::Send + 'static,
{
    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 with the peer: {e}"))
}

/// Serves the network listener until `stop`.
pub(crate) async fn serve(
    net: Network,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let config = match server_config(&net.inner.identity) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the network listener cannot start");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stopped = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    tokio::pin!(stopped);
    loop {
        let (tcp, from) = tokio::select! {
            _ = &mut stopped => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a network connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (net, acceptor) = (net.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(from = %from, error = %e, "a network TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let (_, conn) = tls.get_ref();
            let reverse = conn.alpn_protocol() == Some(ALPN_REVERSE);
            let certs: Option<Vec<CertificateDer<'static>>> = conn.peer_certificates().map(|c| c.to_vec());
            let peer = net.identify(certs.as_deref());
            match (reverse, peer) {
                (true, Some(peer)) => {
                    let (send, conn) = match handshake(tls).await {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::debug!(peer, error = %e, "a reverse network connection failed");
                            return;
                        }
                    };
                    let id = net.id();
                    let task = tokio::spawn(conn);
                    net.hold(&peer, id, task.abort_handle());
                    net.set_send(&peer, id, send);
                    let _ = task.await;
                    net.drop_send(&peer, id);
                }
                (true, None) => tracing::info!(from = %from, "a network connection from no peer refused"),
                (false, Some(p)) => {
                    let task = tokio::spawn(serve_conn(net.clone(), Some(p.clone()), certs, tls));
                    net.hold(&p, net.id(), task.abort_handle());
                    let _ = task.await;
                }
                // No peer yet: a join, which takes one request and little time; few at once.
                (false, None) => {
                    let Ok(_slot) = net.inner.strangers.clone().try_acquire_owned() else {
                        tracing::info!(from = %from, "too many network connections of no peer; refused");
                        return;
                    };
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), serve_conn(net.clone(), None, certs, tls)).await;
                }
            }
        });
    }
}

/// Serves HTTP/2 on a link connection: `peer`'s calls and route exchange, or a join.
async fn serve_conn<T>(net: Network, peer: Option<String>, certs: Option<Vec<CertificateDer<'static>>>, io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::marker::Send + 'static,
{
    let known = peer.is_some();
    let certs = Arc::new(certs);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (net, peer, certs) = (net.clone(), peer.clone(), certs.clone());
        async move { Ok::<_, Infallible>(handle(net, peer, &certs, req).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // A connection of no peer is a join: one request at a time.
        .max_concurrent_streams(if known { 1024 } else { 1 })
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

fn json_reply(status: http::StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(Body::new(Full::new(Bytes::from(value.to_string()))));
    *res.status_mut() = status;
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    res
}

fn refusal(grpc: bool, st: &Status) -> Response<Body> {
    let mut res = if grpc { micro::frame::error_response(st, "application/grpc") } else { micro::json_error(st) };
    res.headers_mut().insert(HDR_UNDELIVERED, http::HeaderValue::from_static("1"));
    res
}

async fn handle(
    net: Network,
    peer: Option<String>,
    certs: &Option<Vec<CertificateDer<'static>>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    match (req.uri().path(), peer) {
        ("/network/v1/join", _) => match join_answer(&net, certs.as_deref(), req).await {
            Ok(v) => json_reply(http::StatusCode::OK, &v),
            Err(e) => micro::json_error(&e),
        },
        ("/network/v1/events", Some(peer)) => {
            let Ok(_slot) = net.inner.event_slots.clone().try_acquire_owned() else {
                return micro::json_error(&Status::unavailable("network", "too many events at once; again soon"));
            };
            let body = match http_body_util::Limited::new(req.into_body(), 8 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return micro::json_error(&Status::bad_request("network", "an event is at most 8 MiB")),
            };
            match super::events::receive(&net, &peer, body).await {
                Ok(v) => json_reply(http::StatusCode::OK, &v),
                Err(e) => micro::json_error(&e),
            }
        }
        ("/network/v1/sync", Some(peer)) => {
            let (tx, rx) = mpsc::channel::<Bytes>(1024);
            tokio::spawn(run_link(net, peer, req.into_body(), tx));
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
            Response::new(Body::new(StreamBody::new(stream)))
        }
        (_, Some(peer)) => net.serve_call(peer, req, grpc).await,
        (_, None) => {
            refusal(grpc, &Status::new(micro_core::Code::PermissionDenied, "network", "not a peer of this cluster"))
        }
    }
}

/// The route exchange on a link, until it goes silent, closes, or is replaced.
async fn run_link(net: Network, peer: String, mut incoming: Incoming, out: mpsc::Sender<Bytes>) {
    let rtt = Arc::new(AtomicU64::new(0));
    let Some((id, stop)) = net.link_up(&peer, out.clone(), rtt) else { return };
    let pinger = {
        let (out, net, peer_name) = (out.clone(), net.clone(), peer.clone());
        tokio::spawn(async move {
            let mut n = 0;
            let mut tick = tokio::time::interval(PING_EVERY);
            loop {
                tick.tick().await;
                n += 1;
                let at = net.clock();
                net.pinged(&peer_name, at);
                if !send(&out, &Message::Ping { n, at }) && out.is_closed() {
                    return;
                }
            }
        })
    };
    let mut buf: Vec<u8> = Vec::new();
    let (mut window, mut taken) = (Instant::now(), 0u64);
    let why = loop {
        let frame = tokio::select! {
            _ = stop.notified() => break "replaced or removed".to_string(),
            f = tokio::time::timeout(DEAD_AFTER, incoming.frame()) => f,
        };
        let data = match frame {
            Err(_) => break format!("silent for {DEAD_AFTER:?}"),
            Ok(None) => break "closed".to_string(),
            Ok(Some(Err(e))) => break e.to_string(),
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        buf.extend_from_slice(&data);
        let mut failed = None;
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let msg: Message = match serde_json::from_slice(&line) {
                Ok(m) => m,
                Err(e) => {
                    failed = Some(format!("an unreadable message: {e}"));
                    break;
                }
            };
            if let Message::Add { routes } = &msg {
                taken += routes.len() as u64;
            }
            match net.receive(&peer, msg) {
                Ok(Some(reply)) => {
                    let _ = send(&out, &reply);
                }
                Ok(None) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break e;
        }
        if buf.len() > MAX_LINE {
            break "a message too long".to_string();
        }
        // A flood of routes is taken at a bounded pace.
        if window.elapsed() >= Duration::from_secs(1) {
            (window, taken) = (Instant::now(), 0);
        } else if taken > ROUTES_PER_SECOND {
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(window.elapsed())).await;
        }
    };
    pinger.abort();
    tracing::info!(peer, why = %why, "network link ended");
    net.link_down(&peer, id);
}

/// Keeps the links to an outbound peer, dialling again with backoff.
pub(super) fn dial(net: Network, peer: String) -> futures::future::BoxFuture<'static, ()> {
    // Boxed: its future holds a connection's, whose (through a join) spawns this one.
    Box::pin(dial_forever(net, peer))
}

async fn dial_forever(net: Network, peer: String) {
    // In a cluster of several nodes, one of them dials (the peer keeps one link per
    // cluster); another takes over when it dies.
    let election = format!("network-dial-{peer}");
    loop {
        let ns = micro_core::namespace::DEFAULT;
        let mut leadership = match micro_core::sync::elect(net.inner.sync.clone(), ns, &election, DIALLER_TTL).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(peer, error = %e, "campaigning to dial a network peer failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tokio::select! {
            _ = leadership.lost() => tracing::warn!(peer, "this node no longer dials the network peer"),
            _ = dial_while_elected(&net, &peer) => {}
        }
    }
}

/// How long the node that dials a peer may be gone before another dials it.
const DIALLER_TTL: Duration = Duration::from_secs(6);

async fn dial_while_elected(net: &Network, peer: &str) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let began = Instant::now();
        if let Err(e) = dial_once(net, peer).await {
            tracing::debug!(peer, error = %e, "dialling a network peer failed");
        }
        if began.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 50);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn dial_once(net: &Network, peer: &str) -> Result<(), String> {
    let (address, ca) = {
        let state = net.lock();
        let p = state.peers.get(peer).ok_or("not a peer any more")?;
        (p.record.address.clone().ok_or("not dialled by this cluster")?, p.record.ca.clone())
    };
    let id = &net.inner.identity;
    // The connection the peer's calls come on first, then the one this cluster's go on.
    let reverse =
        connect(&address, client_config(id, Some(&ca), None, ALPN_REVERSE).map_err(|e| e.to_string())?).await?;
    let rev = tokio::spawn(serve_conn(net.clone(), Some(peer.to_string()), None, reverse));
    let (rev_id, fwd_id) = (net.id(), net.id());
    net.hold(peer, rev_id, rev.abort_handle());
    let result = async {
        let calls =
            connect(&address, client_config(id, Some(&ca), None, ALPN_CALLS).map_err(|e| e.to_string())?).await?;
        let (mut send2, conn) = handshake(calls).await?;
        let fwd = tokio::spawn(conn);
        net.hold(peer, fwd_id, fwd.abort_handle());
        net.set_send(peer, fwd_id, send2.clone());
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let req = Request::post(format!("https://{SERVER_NAME}/network/v1/sync"))
            .body(Body::new(StreamBody::new(stream)))
            .map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(Duration::from_secs(5), async {
            send2.ready().await?;
            send2.send_request(req).await
        })
        .await
        .map_err(|_| "no answer to the route exchange within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("the peer refused the link: HTTP {}", res.status()));
        }
        run_link(net.clone(), peer.to_string(), res.into_body(), tx).await;
        fwd.abort();
        Ok(())
    }
    .await;
    net.drop_send(peer, fwd_id);
    rev.abort();
    result
}

/// What a joining cluster sends.
#[derive(Serialize, Deserialize)]
struct Hello {
    token: String,
    name: String,
    ca: String,
}

/// What it gets back.
#[derive(Serialize, Deserialize)]
struct Welcome {
    name: String,
    ca: String,
}

/// A join token's parts.
pub(super) struct Token {
    pub(super) id: String,
    fingerprint: String,
    secret: String,
}

impl Token {
    pub(super) fn parse(token: &str) -> Result<Token, Status> {
        let bad = || {
            Status::bad_request(
                "network",
                "not a network join token: it looks like micro-net1.<id>.<fingerprint>.<secret>",
            )
        };
        let mut parts = token.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(id), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(id, 16) || !hex(fp, 64) || secret.len() < 32 || secret.len() > 128 {
            return Err(bad());
        }
        Ok(Token { id: id.to_ascii_lowercase(), fingerprint: fp.to_ascii_lowercase(), secret: secret.to_string() })
    }

    pub(super) fn key(id: &str) -> String {
        format!("token/{id}")
    }
}

/// Makes a join token good for `ttl`: returns it, its id and its expiry.
pub(super) async fn make_token(net: &Network, ttl: Duration, by: &str) -> Result<(String, String, u64), Status> {
    let id = crate::hex(&uuid::Uuid::new_v4().as_bytes()[..8]);
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let expires = now() + ttl.as_secs();
    let value = serde_json::json!({"hash": crate::sha256_hex(secret.as_bytes()), "expires": expires, "by": by});
    net.inner.store.write(&table(), &Record::new(Token::key(&id), value.to_string()), Some(ttl)).await?;
    let token = format!("{TOKEN_PREFIX}.{id}.{}.{secret}", net.inner.identity.fingerprint);
    Ok((token, id, expires))
}

/// Revokes the join token `id`.
pub(super) async fn revoke_token(net: &Network, id: &str) -> Result<(), Status> {
    let ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(Status::bad_request("network", "a token id is 16 hex digits"));
    }
    match net.inner.store.delete(&table(), &Token::key(&id.to_ascii_lowercase())).await {
        Err(e) if e.code() == micro_core::Code::NotFound => {
            Err(Status::not_found("network", format!("no unused join token {id}")))
        }
        other => other,
    }
}

/// Answers a join: the token checked and spent, the joining cluster's CA kept as a peer's.
async fn join_answer(
    net: &Network,
    certs: Option<&[CertificateDer<'static>]>,
    req: Request<Incoming>,
) -> Result<serde_json::Value, Status> {
    let refused = || {
        Status::new(
            micro_core::Code::PermissionDenied,
            "network",
            "the join token is unknown, used, revoked or expired",
        )
    };
    let body = http_body_util::Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|_| Status::bad_request("network", "a join is a JSON object under 64 KiB"))?
        .to_bytes();
    let hello: Hello =
        serde_json::from_slice(&body).map_err(|e| Status::bad_request("network", format!("a join: {e}")))?;
    let token = Token::parse(&hello.token)?;
    if token.fingerprint != net.inner.identity.fingerprint {
        return Err(refused());
    }
    let records = match net.inner.store.read(&table(), &Token::key(&token.id), &Query::default()).await {
        Ok(r) => r,
        Err(e) if e.code() == micro_core::Code::NotFound => return Err(refused()),
        Err(e) => return Err(e),
    };
    let stored: serde_json::Value =
        records.first().and_then(|r| serde_json::from_slice(&r.value).ok()).ok_or_else(refused)?;
    let hash = crate::sha256_hex(token.secret.as_bytes());
    if stored.get("hash").and_then(|h| h.as_str()) != Some(hash.as_str()) {
        return Err(refused());
    }
    validate_name(&hello.name)
        .map_err(|e| Status::bad_request("network", format!("the joining cluster's name {e}")))?;
    if hello.name == net.inner.name {
        return Err(Status::new(
            micro_core::Code::AlreadyExists,
            "network",
            format!(
                "this cluster is named {} too: clusters in a network need different names (MICRO_NETWORK_NAME)",
                hello.name
            ),
        ));
    }
    let fingerprint = crate::cluster::fingerprint(&one_ca(&hello.ca)?);
    if fingerprint == net.inner.identity.fingerprint {
        return Err(Status::bad_request("network", "a cluster cannot join itself"));
    }
    // The joining side shows a certificate of the CA it offers (and holds its key).
    let leaf = certs.and_then(|c| c.first()).ok_or_else(|| {
        Status::new(micro_core::Code::Unauthenticated, "network", "a join shows the cluster's certificate")
    })?;
    peer_verifier(&hello.ca)?.verify_client_cert(leaf, &[], UnixTime::now()).map_err(|_| {
        Status::new(micro_core::Code::Unauthenticated, "network", "the certificate shown is not of the CA offered")
    })?;
    if net.has_peer(&hello.name, &fingerprint) {
        return Err(Status::new(
            micro_core::Code::AlreadyExists,
            "network",
            format!("a peer named {} (or with its CA) exists: remove it first (micro network remove)", hello.name),
        ));
    }
    // One join per token: the delete is the redemption.
    match net.inner.store.delete(&table(), &Token::key(&token.id)).await {
        Ok(()) => {}
        Err(e) if e.code() == micro_core::Code::NotFound => return Err(refused()),
        Err(e) => return Err(e),
    }
    net.add_peer(PeerRecord { name: hello.name.clone(), ca: hello.ca, fingerprint, address: None, added: now() })
        .await?;
    tracing::info!(peer = %hello.name, "a cluster joined the network with a token");
    serde_json::to_value(Welcome { name: net.inner.name.clone(), ca: net.inner.identity.ca_pem.clone() })
        .map_err(internal)
}

/// Joins the cluster at `address` with `token`; returns its name.
pub(super) async fn join(net: &Network, address: &str, token: &str) -> Result<String, Status> {
    let parsed = Token::parse(token)?;
    if parsed.fingerprint == net.inner.identity.fingerprint {
        return Err(Status::bad_request("network", "that is this cluster's own token"));
    }
    let failed = |detail: String| Status::unavailable("network", format!("joining {address}: {detail}"));
    let id = &net.inner.identity;
    let tls =
        connect(address, client_config(id, None, Some(&parsed.fingerprint), ALPN_CALLS)?).await.map_err(failed)?;
    let (mut send2, conn) = handshake(tls).await.map_err(failed)?;
    let driver = tokio::spawn(conn);
    let hello = Hello { token: token.trim().to_string(), name: net.inner.name.clone(), ca: id.ca_pem.clone() };
    let body = serde_json::to_vec(&hello).map_err(internal)?;
    let req = Request::post(format!("https://{SERVER_NAME}/network/v1/join"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::new(Full::new(Bytes::from(body))))
        .map_err(internal)?;
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        send2.ready().await.map_err(|e| e.to_string())?;
        let res = send2.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body =
            http_body_util::Limited::new(res.into_body(), 64 << 10).collect().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body.to_bytes()))
    })
    .await;
    driver.abort();
    let (status, body) = answer.map_err(|_| failed("no answer within 15 s".into()))?.map_err(failed)?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code = match status.as_u16() {
            403 => micro_core::Code::PermissionDenied,
            409 => micro_core::Code::AlreadyExists,
            400 => micro_core::Code::InvalidArgument,
            401 => micro_core::Code::Unauthenticated,
            _ => micro_core::Code::Unavailable,
        };
        return Err(Status::new(code, "network", format!("{address} refused the join: {detail}")));
    }
    let welcome: Welcome = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
    validate_name(&welcome.name).map_err(|e| failed(format!("its name {e}")))?;
    let fingerprint = crate::cluster::fingerprint(&one_ca(&welcome.ca)?);
    if fingerprint != parsed.fingerprint {
        return Err(failed("its CA is not the token's".into()));
    }
    if net.has_peer(&welcome.name, &fingerprint) {
        return Err(Status::new(
            micro_core::Code::AlreadyExists,
            "network",
            format!("a peer named {} (or with its CA) exists: remove it first", welcome.name),
        ));
    }
    let record = PeerRecord {
        name: welcome.name.clone(),
        ca: welcome.ca,
        fingerprint,
        address: Some(address.to_string()),
        added: now(),
    };
    net.add_peer(record).await?;
    tracing::info!(peer = %welcome.name, address, "joined a cluster of the network");
    Ok(welcome.name)
}

/// Who called, as a cluster asserts it to the next.
#[derive(Serialize, Deserialize)]
struct Asserted {
    /// The account's id at its own cluster (the first on the call's path).
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    typ: String,
    /// The account's namespace (which need not be the call's).
    ns: String,
}

/// The remaining time of a call from its `grpc-timeout` header.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

const STRIPPED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "cookie",
    micro::edge::EDGE_KEY,
    micro::server::CLIENT_ADDRESS,
];

fn stripped(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if STRIPPED.contains(&k.as_str()) || k.as_str().starts_with("micro-network-") {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

fn error_response(grpc: bool, st: &Status) -> Response<Body> {
    if grpc { micro::frame::error_response(st, "application/grpc") } else { micro::json_error(st) }
}

fn undelivered(mut res: Response<Body>) -> Response<Body> {
    res.extensions_mut().insert(Undelivered);
    res
}

impl Network {
    /// Sends a call this cluster cannot serve to the cluster with the best route to
    /// `service` in `ns` (none of `visited`), the next best when one could not deliver
    /// a unary call, within the call's deadline.
    pub(crate) async fn call(
        &self,
        req: Request<Body>,
        ns: &str,
        service: &str,
        caller: &micro::auth::Caller,
        visited: &[String],
        grpc: bool,
    ) -> Response<Body> {
        let endpoint = micro::split_grpc_path(req.uri().path()).map(|(_, ep)| ep);
        let candidates = self.candidates(ns, service, visited, endpoint.as_deref());
        if candidates.is_empty() {
            let st = Status::not_found(service, format!("service {service} not found here or in the network"));
            return undelivered(error_response(grpc, &st));
        }
        if visited.len() + 1 > MAX_HOPS {
            let st = Status::unavailable("network", format!("{service} is more than {MAX_HOPS} clusters away"));
            return undelivered(error_response(grpc, &st));
        }
        let budget = grpc_timeout(req.headers()).unwrap_or(Duration::from_secs(30)).min(Duration::from_secs(3600));
        let deadline = Instant::now() + budget;
        let (parts, body) = req.into_parts();
        let unary = candidates[0].unary;
        let mut headers = stripped(&parts.headers);
        let mut path: Vec<String> = visited.to_vec();
        path.push(self.inner.name.clone());
        let pairs = [(HDR_PATH, path.join(",")), (micro_core::metadata::NAMESPACE, ns.to_string())];
        for (k, v) in pairs {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                headers.insert(k, v);
            }
        }
        if let Some(a) = &caller.account {
            // A caller imported already keeps the id it has at its own cluster.
            let id = match visited.first() {
                Some(_) => a.id.strip_suffix(&format!("@{}", visited.join("/"))).unwrap_or(&a.id).to_string(),
                None => a.id.clone(),
            };
            let asserted =
                Asserted { id, name: a.name.clone(), typ: a.kind.as_str().to_string(), ns: a.namespace.clone() };
            if let Some(v) = serde_json::to_string(&asserted).ok().and_then(|s| http::HeaderValue::from_str(&s).ok()) {
                headers.insert(HDR_CALLER, v);
            }
        }
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let uri: http::Uri = match format!("https://{SERVER_NAME}{pq}").parse() {
            Ok(u) => u,
            Err(_) => return error_response(grpc, &Status::bad_request("network", "bad request path")),
        };
        // A unary request is kept, to go again on another route if this one cannot deliver it.
        let (mut body, kept) = if unary {
            match http_body_util::Limited::new(body, REPLAY_LIMIT).collect().await {
                Ok(b) => (None, Some(b.to_bytes())),
                Err(e) => return error_response(grpc, &Status::bad_request("network", format!("the request: {e}"))),
            }
        } else {
            (Some(body), None)
        };
        let mut last = None;
        for c in candidates.iter().take(3) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let b = match (&kept, body.take()) {
                (Some(k), _) => Body::new(Full::new(k.clone())),
                (None, Some(b)) => b,
                (None, None) => break,
            };
            let mut req = Request::new(Body::new(Counted {
                inner: b,
                count: c.stats.clone(),
                out: true,
                grpc: false,
                via: String::new(),
            }));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri.clone();
            *req.headers_mut() = headers.clone();
            if let Ok(v) = http::HeaderValue::from_str(&format!("{}m", left.as_millis().max(1))) {
                req.headers_mut().insert("grpc-timeout", v);
            }
            c.stats.calls.fetch_add(1, Ordering::Relaxed);
            let mut send2 = c.send.clone();
            let ready = tokio::time::timeout(left, send2.ready()).await;
            let res = match ready {
                Err(_) => break,
                Ok(Err(e)) => {
                    // Not sent: the link is gone; the next route may take it.
                    c.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let st = Status::unavailable("network", format!("the link to {} is down: {e}", c.via));
                    last = Some(undelivered(error_response(grpc, &st)));
                    continue;
                }
                Ok(Ok(())) => tokio::time::timeout(left, send2.send_request(req)).await,
            };
            match res {
                Err(_) => break,
                Ok(Err(e)) => {
                    c.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let st = Status::unavailable("network", format!("the call through {} failed: {e}", c.via));
                    return error_response(grpc, &st);
                }
                Ok(Ok(res)) => {
                    let not_there = res.headers().contains_key(HDR_UNDELIVERED);
                    let (mut parts, incoming) = res.into_parts();
                    parts.headers.remove(HDR_UNDELIVERED);
                    let counted =
                        Counted { inner: incoming, count: c.stats.clone(), out: false, grpc, via: c.via.clone() };
                    let mut res = Response::from_parts(parts, Body::new(counted));
                    if not_there {
                        res.extensions_mut().insert(Undelivered);
                        if kept.is_some() {
                            last = Some(res);
                            continue;
                        }
                    }
                    return res;
                }
            }
        }
        match last {
            Some(res) => res,
            None => error_response(
                grpc,
                &Status::deadline_exceeded(
                    service,
                    format!("the call to {service} through the network ran out of time"),
                ),
            ),
        }
    }

    /// Serves a call from `peer`: checked, then handed to this cluster's proxy as the
    /// caller the peer vouches for (as `<id>@<clusters on the way>`, without scopes).
    pub(super) async fn serve_call(&self, peer: String, req: Request<Incoming>, grpc: bool) -> Response<Body> {
        let refuse = |code: micro_core::Code, detail: String| refusal(grpc, &Status::new(code, "network", detail));
        let Some((transport, proxy_node)) = self.inner.proxy.get() else {
            return refuse(micro_core::Code::Unavailable, "this cluster is starting".into());
        };
        let visited: Vec<String> = req
            .headers()
            .get(HDR_PATH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let valid = visited.last() == Some(&peer)
            && visited.len() <= MAX_HOPS
            && visited.iter().all(|c| validate_name(c).is_ok())
            && !visited.contains(&self.inner.name);
        if !valid {
            return refuse(
                micro_core::Code::PermissionDenied,
                "a call's path must end with the peer, without loops".into(),
            );
        }
        let ns = req
            .headers()
            .get(micro_core::metadata::NAMESPACE)
            .and_then(|v| v.to_str().ok())
            .filter(|n| micro_core::namespace::validate(n).is_ok())
            .map(str::to_string);
        let Some(ns) = ns else {
            return refuse(micro_core::Code::InvalidArgument, "a call over a link names its namespace".into());
        };
        let path = req.uri().path();
        let service = match micro::split_grpc_path(path) {
            Some((s, _)) => s.to_string(),
            None => path.trim_start_matches('/').split('/').next().unwrap_or("").to_string(),
        };
        // Both ways of naming the service a path has (gRPC's and the first segment) must
        // be offered: the proxy routes by either.
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if !offerable(&service) || !offerable(first) {
            return refuse(micro_core::Code::PermissionDenied, format!("{service} is not offered to the network"));
        }
        let asserted: Option<Asserted> = req
            .headers()
            .get(HDR_CALLER)
            .filter(|v| v.len() <= 2048)
            .and_then(|v| serde_json::from_slice(v.as_bytes()).ok());
        // Named after the whole way it came (`alice@region-c/region-a`): the last is the
        // peer that vouches, so no peer can speak for another's own callers.
        let origin = visited.join("/");
        let valid =
            |a: &Asserted| !a.id.is_empty() && a.id.len() <= 256 && micro_core::namespace::validate(&a.ns).is_ok();
        let account = asserted.filter(valid).map(|a| micro_core::auth::Account {
            id: format!("{}@{origin}", a.id),
            name: a.name.chars().take(256).collect(),
            // An app user stays one (somebody to no rule but its namespace's app rules).
            kind: micro_core::auth::AccountType::from_name(&a.typ),
            // Its own namespace, when the operator says that name means the same tenant
            // in every peer (a member of the call's only when it is the same); else one
            // of nobody's (a namespace's name at a peer may be anyone's).
            namespace: if self.inner.trusted.contains(&a.ns) { a.ns } else { format!("{}@{origin}", a.ns) },
            ..Default::default()
        });
        let caller = micro::auth::Caller { account, namespace: ns.clone(), expires: Some(now() + 300) };
        let local = self.inner.exports.contains(&ns);
        let (parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let Ok(uri) = format!("http://{proxy_node}{pq}").parse::<http::Uri>() else {
            return refuse(micro_core::Code::InvalidArgument, "bad request path".into());
        };
        let stats = self.lock().peers.get(&peer).map(|p| p.stats.clone()).unwrap_or_default();
        let mut inner =
            Request::new(Body::new(Counted { inner: body, count: stats, out: false, grpc: false, via: String::new() }));
        *inner.method_mut() = parts.method;
        *inner.uri_mut() = uri;
        *inner.headers_mut() = stripped(&parts.headers);
        inner.extensions_mut().insert(FromNetwork { visited, caller, local });
        self.inner.inflight.fetch_add(1, Ordering::Relaxed);
        let res = transport.request(inner).await;
        self.inner.inflight.fetch_sub(1, Ordering::Relaxed);
        let mut res = match res {
            Ok(r) => r,
            Err(e) => undelivered(error_response(grpc, &e)),
        };
        // What the network says about an answer is said by the network alone, never by
        // the service's headers.
        let forged: Vec<http::HeaderName> =
            res.headers().keys().filter(|k| k.as_str().starts_with("micro-network-")).cloned().collect();
        for k in forged {
            res.headers_mut().remove(k);
        }
        if res.extensions().get::<Undelivered>().is_some() {
            res.headers_mut().insert(HDR_UNDELIVERED, http::HeaderValue::from_static("1"));
        }
        res
    }
}

/// A body over a link: its bytes counted; on a response, a lost link ends a gRPC call
/// with a clear status rather than a reset stream.
struct Counted<B> {
    inner: B,
    count: Arc<Stats>,
    out: bool,
    grpc: bool,
    via: String,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let c = if this.out { &this.count.bytes_out } else { &this.count.bytes_in };
                    c.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.count.errors.fetch_add(1, Ordering::Relaxed);
                let st = Status::unavailable("network", format!("the link to {} was lost: {e}", this.via));
                if this.grpc {
                    this.grpc = false;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from(micro_core::Code::Unavailable as i32));
                    if let Ok(v) = http::HeaderValue::from_str(&st.detail().replace(['\r', '\n'], " ")) {
                        trailers.insert("grpc-message", v);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                } else {
                    Poll::Ready(Some(Err(st)))
                }
            }
            other => other.map_err(|e| Status::unavailable("network", e.to_string())),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_strictly() {
        let (id, fp, s) = ("0123456789abcdef", "a".repeat(64), "s".repeat(64));
        assert_eq!(Token::parse(&format!("micro-net1.{id}.{fp}.{s}")).unwrap().id, id);
        for bad in [
            String::new(),
            format!("micro-net2.{id}.{fp}.{s}"),
            format!("micro-net1.{id}.{fp}.short"),
            format!("micro-net1.xyz.{fp}.{s}"),
            format!("micro-net1.{id}.{}.{s}", "z".repeat(64)),
            format!("micro-net1.{id}.{fp}.{s}.more"),
        ] {
            assert!(Token::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", http::HeaderValue::from_static("250m"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", http::HeaderValue::from_static("3S"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(3)));
        h.insert("grpc-timeout", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_timeout(&h), None);
    }

    #[test]
    fn credentials_never_cross() {
        let mut h = http::HeaderMap::new();
        for k in ["authorization", "cookie", "micro-network-caller", "micro-edge-key", "micro-client-address"] {
            h.insert(k, http::HeaderValue::from_static("x"));
        }
        h.insert("x-keep", http::HeaderValue::from_static("y"));
        let s = stripped(&h);
        assert_eq!(s.len(), 1);
        assert!(s.contains_key("x-keep"));
    }
}
