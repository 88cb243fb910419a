//! The network of clusters, attacked by a hostile cluster: a rogue made here with a CA
//! of its own, speaking the link protocol over real TLS 1.3 and HTTP/2 to a victim's
//! network listener. Without an unspent token of the victim it does not join; without a
//! peer's certificate it is nobody; as an admitted peer it reaches no core or product
//! service, no namespace the victim does not export, nothing with a forged path, and
//! gets no powers from the caller it asserts; false route advertisements cost it the
//! link, excessive ones are capped; it learns no internal address; removed, it is cut.

use super::{core_codes, micro, register, source};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use micro_core::registry::Registry as _;
use micro_test::cli::Cli;
use micro_test::process::ServerProcess;
use micro_test::recorder::Recorder;
use micro_test::{eventually, http};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The name every network certificate is for.
const SERVER_NAME: &str = "network.micro-network.internal";
const REVERSE: &[u8] = b"micro-network-reverse/1";
const HELLO: &str = "/helloworld.Greeter/Hello";

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Send2 = hyper::client::conn::http2::SendRequest<Body>;
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A cluster's network identity as a rogue makes it: a CA, and a certificate from it for
/// the network name (server and client use), as `micro server` makes its own.
struct Identity {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    fn new() -> Identity {
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name.push(rcgen::DnType::CommonName, "Rogue network CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign, Ku::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).expect("a CA certificate");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).expect("leaf params");
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, SERVER_NAME);
        leaf.key_usages = vec![Ku::DigitalSignature, Ku::KeyEncipherment];
        leaf.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = leaf.signed_by(&key, &issuer).expect("a certificate");
        Identity {
            ca_pem: ca_cert.pem(),
            chain: vec![cert.der().clone(), ca_cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

/// Takes whatever certificate the victim shows (a rogue does not care who it attacks).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 connection to `addr` asking for `alpn`, showing `id`'s certificate (none
/// without).
async fn tls(addr: &str, id: Option<&Identity>, alpn: &[u8]) -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match id {
        Some(i) => builder
            .with_client_auth_cert(i.chain.clone(), PrivateKeyDer::Pkcs8(i.key.clone_key()))
            .expect("a client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connecting to the network listener");
    let name = ServerName::try_from(SERVER_NAME).expect("a server name");
    let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(5), connect).await.expect("a handshake within 5 s").expect("TLS 1.3")
}

/// An HTTP/2 connection (ALPN h2) to the network listener at `addr`, as `id`.
async fn h2(addr: &str, id: Option<&Identity>) -> Send2 {
    let io = tls(addr, id, b"h2").await;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.expect("HTTP/2");
    tokio::spawn(conn);
    send
}

/// Connects with the reverse ALPN (where a peer serves the victim's calls) as `id`: what
/// the victim sends first, and whether it closed the connection (within 3 s).
async fn reverse(addr: &str, id: Option<&Identity>) -> (Vec<u8>, bool) {
    let mut io = tls(addr, id, REVERSE).await;
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(Duration::from_secs(3), io.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => (Vec::new(), true),
        Ok(Ok(n)) => (buf[..n].to_vec(), false),
        Err(_) => (Vec::new(), false),
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn request(path: &str, headers: &[(&str, &str)], body: Body) -> http::Request<Body> {
    let mut b = http::Request::post(format!("https://{SERVER_NAME}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).expect("a request")
}

/// An answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl Answer {
    fn grpc_status(&self) -> Option<&str> {
        let t = self.trailers.as_ref().and_then(|t| t.get("grpc-status"));
        self.headers.get("grpc-status").or(t).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn undelivered(&self) -> bool {
        self.headers.get("micro-network-undelivered").is_some_and(|v| v == "1")
    }
}

/// Sends `req`; an error when the connection is gone.
async fn try_send(s: &mut Send2, req: http::Request<Body>) -> Result<Answer, String> {
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        s.ready().await?;
        s.send_request(req).await
    })
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map_err(|e| e.to_string())?;
    let (parts, body) = res.into_parts();
    let got = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .map_err(|_| "no whole answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let trailers = got.trailers().cloned();
    Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body: got.to_bytes(), trailers })
}

async fn send(s: &mut Send2, req: http::Request<Body>) -> Answer {
    try_send(s, req).await.expect("an answer")
}

/// Joins the victim at `addr` with `token` as `name` offering `ca`, showing `shown`'s
/// certificate.
async fn join(addr: &str, shown: Option<&Identity>, token: &str, name: &str, ca: &str) -> Answer {
    let mut s = h2(addr, shown).await;
    let hello = json!({"token": token, "name": name, "ca": ca}).to_string();
    send(&mut s, request("/network/v1/join", &[("content-type", "application/json")], full(hello))).await
}

/// A HelloRequest for `name`, framed for gRPC.
fn hello_msg(name: &str) -> Vec<u8> {
    let mut m = vec![0x0a, name.len() as u8];
    m.extend_from_slice(name.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(m.len() as u32).to_be_bytes());
    frame.extend_from_slice(&m);
    frame
}

/// A gRPC call of `path` in `ns` over a link: `route` as the path header, `caller` as
/// the asserted caller, when given.
async fn grpc(s: &mut Send2, path: &str, route: Option<&str>, ns: &str, caller: Option<&str>, msg: &[u8]) -> Answer {
    let mut h = vec![("content-type", "application/grpc"), ("te", "trailers"), ("micro-namespace", ns)];
    if let Some(r) = route {
        h.push(("micro-network-path", r));
    }
    if let Some(c) = caller {
        h.push(("micro-network-caller", c));
    }
    send(s, request(path, &h, full(msg.to_vec()))).await
}

/// The route exchange, as a peer holds it: lines out (and a ping every 300 ms, so the
/// victim never finds it silent), the victim's lines in.
struct Link {
    out: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    body: Incoming,
    pinger: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.pinger.abort();
    }
}

impl Link {
    async fn send(&self, v: &Value) {
        self.out.send(Ok(Frame::data(Bytes::from(format!("{v}\n"))))).await.expect("the link takes a line");
    }

    /// What the victim sends for `d`, or until it ends the stream; and whether it did.
    async fn read_for(&mut self, d: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + d;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.frame()).await {
                Err(_) => return (got, false),
                Ok(None) | Ok(Some(Err(_))) => return (got, true),
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        got.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

/// Opens `/network/v1/sync` on `s`: the link, or the refusal.
async fn sync(s: &mut Send2) -> Result<Link, Answer> {
    let (tx, rx) = mpsc::channel(64);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        s.ready().await?;
        s.send_request(request("/network/v1/sync", &[], body)).await
    })
    .await
    .expect("an answer within 10 s")
    .expect("an HTTP/2 answer");
    if !res.status().is_success() {
        let (parts, body) = res.into_parts();
        let got = body.collect().await.expect("the refusal");
        return Err(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: got.to_bytes(),
            trailers: None,
        });
    }
    let out = tx.clone();
    let pinger = tokio::spawn(async move {
        for n in 1u64.. {
            let line = format!("{}\n", json!({"t": "ping", "n": n, "at": 0}));
            if out.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    Ok(Link { out: tx, body: res.into_body(), pinger })
}

/// The JSON lines in `bytes`.
fn messages(bytes: &[u8]) -> Vec<Value> {
    bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_slice(l).ok()).collect()
}

fn route(ns: &str, svc: &str, path: &[&str]) -> Value {
    json!({"ns": ns, "svc": svc, "path": path, "metric": 1000, "versions": ["1"], "endpoints": []})
}

/// A victim named `name` exporting `exports`, taking links on a port of its own.
fn victim(name: &str, exports: &str) -> ServerProcess {
    ServerProcess::builder(micro())
        .env("MICRO_NETWORK_NAME", name)
        .env("MICRO_NETWORK_EXPORT", exports)
        .env("MICRO_NETWORK_ADDRESS", "127.0.0.1:0")
        .start()
}

/// A join token of the cluster `cli` administers, good for `ttl`: the token and its id.
async fn token(cli: &Cli, ttl: &str) -> (String, String) {
    let v = cli.json(&["network", "token", "--ttl", ttl, "-o", "json"]).await;
    (v["token"].as_str().expect("a token").to_string(), v["id"].as_str().expect("an id").to_string())
}

/// The names of the victim's peers.
async fn peers(cli: &Cli) -> Vec<String> {
    let v = cli.json(&["network", "nodes", "-o", "json"]).await;
    let nodes = v["nodes"].as_array().expect("nodes").iter();
    nodes.filter(|n| n["local"] != true).filter_map(|n| n["name"].as_str().map(str::to_string)).collect()
}

/// The routes the victim learnt through `peer`.
async fn routes_via(cli: &Cli, peer: &str, service: &str) -> Vec<Value> {
    let v = cli.json(&["network", "routes", "--service", service, "-o", "json"]).await;
    v["routes"].as_array().expect("routes").iter().filter(|r| r["via"] == peer).cloned().collect()
}

/// A rogue the victim admits with a token of its own: its identity.
async fn admitted(v: &ServerProcess, cli: &Cli, name: &str) -> Identity {
    let id = Identity::new();
    let (t, _) = token(cli, "10m").await;
    let a = join(&v.network, Some(&id), &t, name, &id.ca_pem).await;
    assert_eq!(a.status, 200, "{name} joins honestly: {a:?}");
    id
}

async fn join_as(addr: &str, id: &Identity, token: String, name: String) -> Answer {
    join(addr, Some(id), &token, &name, &id.ca_pem).await
}

fn refused(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    assert!(a.json()["detail"].is_string(), "{what}: a JSON error: {a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_takes_an_unspent_token_of_this_cluster_and_a_certificate_of_the_ca_offered() {
    let v = victim("hq", "");
    let other = victim("elsewhere", "");
    let cli = v.admin_cli().await;
    let (expired, _) = token(&cli, "1s").await;
    let made = Instant::now();
    let (good, _) = token(&cli, "10m").await;
    let (rogue, stranger) = (Identity::new(), Identity::new());
    let try_join = |t: String, name: String| join_as(&v.network, &rogue, t, name);

    // The right id with another secret; another cluster's token; junk.
    let (head, _) = good.rsplit_once('.').expect("a token");
    refused(&try_join(format!("{head}.{}", "f".repeat(64)), "mallory".into()).await, 403, "a forged secret");
    let (theirs, _) = token(&other.admin_cli().await, "10m").await;
    refused(&try_join(theirs, "mallory".into()).await, 403, "another cluster's token");
    for junk in ["not-a-token", "", "micro-net1.zz.zz.zz", &format!("{good}.more")] {
        refused(&try_join(junk.to_string(), "mallory".into()).await, 400, &format!("junk {junk:?}"));
    }
    // A revoked token.
    let (revoked, id) = token(&cli, "10m").await;
    cli.ok(&["network", "revoke-token", &id]).await;
    refused(&try_join(revoked, "mallory".into()).await, 403, "a revoked token");
    // An expired one.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(made.elapsed())).await;
    refused(&try_join(expired, "mallory".into()).await, 403, "an expired token");

    // The good token, with no certificate, or a certificate of another CA than the one
    // offered; or under the victim's own name.
    refused(&join(&v.network, None, &good, "mallory", &rogue.ca_pem).await, 401, "no certificate");
    let a = join(&v.network, Some(&stranger), &good, "mallory", &rogue.ca_pem).await;
    refused(&a, 401, "a certificate of another CA than the one offered");
    refused(&try_join(good.clone(), "hq".into()).await, 409, "the victim's own name");
    for bad in ["", "Mallory", "mal lory", "-m", "a,b", &"x".repeat(64)] {
        refused(&try_join(good.clone(), bad.to_string()).await, 400, &format!("the name {bad:?}"));
    }
    assert_eq!(peers(&cli).await, Vec::<String>::new(), "nobody joined");

    // The refusals spent nothing: the token lets the rogue in once, and gives away the
    // victim's name and CA alone.
    let a = try_join(good.clone(), "mallory".into()).await;
    assert_eq!(a.status, 200, "{a:?}");
    let welcome = a.json();
    let keys: Vec<&String> = welcome.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["ca", "name"], "{welcome}");
    assert_eq!(welcome["name"], "hq");
    let a = join(&v.network, Some(&stranger), &good, "mallory-2", &stranger.ca_pem).await;
    refused(&a, 403, "a used token");
    // Spent twice at once: one join wins.
    let (once, _) = token(&cli, "10m").await;
    let (x, y) = (Identity::new(), Identity::new());
    let (a, b) = tokio::join!(
        join(&v.network, Some(&x), &once, "twin-a", &x.ca_pem),
        join(&v.network, Some(&y), &once, "twin-b", &y.ca_pem)
    );
    assert_eq!([a.status, b.status].iter().filter(|s| **s == 200).count(), 1, "one token, one join: {a:?} {b:?}");
    let twin = if a.status == 200 { "twin-a" } else { "twin-b" };
    assert_eq!(peers(&cli).await, ["mallory", twin]);

    // Not a peer (no certificate, or one of a CA the victim does not know): calls and the
    // route exchange are refused, and the reverse connection is dropped unspoken to.
    for (who, id) in [("no certificate", None), ("an unknown CA", Some(&stranger))] {
        let mut s = h2(&v.network, id).await;
        let a = grpc(&mut s, HELLO, Some("stranger"), "micro", None, &hello_msg("x")).await;
        assert_eq!(a.grpc_status(), Some("7"), "{who}: {a:?}");
        assert!(a.undelivered(), "{who}: {a:?}");
        let a = send(&mut s, request("/store/Store/Read", &[("micro-network-path", "stranger")], full("{}"))).await;
        refused(&a, 403, who);
        refused(&sync(&mut s).await.err().expect("the route exchange refused"), 403, who);
        assert_eq!(reverse(&v.network, id).await, (Vec::new(), true), "{who}: the reverse connection");
    }
    // (The victim speaks HTTP/2 first on a peer's reverse connection.)
    let (said, _) = reverse(&v.network, Some(&rogue)).await;
    assert!(said.starts_with(b"PRI * HTTP/2.0"), "{said:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_peer_reaches_exported_services_alone_as_nobody_special_and_is_cut_when_removed() {
    let v = victim("hq", "micro");
    let cli = v.admin_cli().await;
    let _hw = v.helloworld().await;
    let admin = v.admin_token().await;
    // Two traps: a service of the exported namespace, and one of a namespace not exported.
    let (exported, private) = (Recorder::start(&[]).await, Recorder::start(&[]).await);
    register(&v.proxy, Some(&admin), "micro", "spy", "spy-1", &exported.address, "grpc").await.expect("registered");
    register(&v.proxy, Some(&admin), "shop", "spy", "spy-2", &private.address, "grpc").await.expect("registered");
    let rogue = admitted(&v, &cli, "rogue").await;
    let mut s = h2(&v.network, Some(&rogue)).await;

    // What a peer may do: call helloworld of the exported namespace (as whoever).
    let admin_caller = r#"{"id":"admin","name":"admin","typ":"user","ns":"micro"}"#;
    for caller in [None, Some(admin_caller)] {
        let a = grpc(&mut s, HELLO, Some("rogue"), "micro", caller, &hello_msg("rogue")).await;
        assert!(a.grpc_status() == Some("0") && a.text().contains("Hello rogue"), "{a:?}");
    }

    // (a) The core and the products, over gRPC and HTTP, whoever the caller says it is
    // (and paths the proxy would take for the core's by their first segment).
    let core = "/store.Store/Read /store.Blob/Get /auth.Auth/Token /auth.Auth/ListAccounts /runtime.Runtime/Read \
        /registry.Registry/ListServices /registry.Registry/Register /config.Config/Get /network.Network/Token \
        /license.License/Show /grpc.health.v1.Health/Check /grpc.reflection.v1.ServerReflection/ServerReflectionInfo \
        /db.Db/Query /users.Users/Login /grpc.x/Y /store";
    for path in core.split_whitespace() {
        for caller in [None, Some(admin_caller)] {
            let a = grpc(&mut s, path, Some("rogue"), "micro", caller, &[0, 0, 0, 0, 0]).await;
            assert_eq!(a.grpc_status(), Some("7"), "{path} as {caller:?}: {a:?}");
            assert!(a.undelivered(), "{path}: {a:?}");
        }
    }
    for path in ["/store/Store/Read", "/auth/Auth/Token", "/registry/Registry/ListServices", "/users/v1/login"] {
        let h = [("content-type", "application/json"), ("micro-network-path", "rogue"), ("micro-namespace", "micro")];
        let a = send(&mut s, request(path, &h, full(r#"{"id":"admin"}"#))).await;
        refused(&a, 403, path);
    }

    // (b) A namespace the victim does not export: never served there.
    let a = grpc(&mut s, "/spy.Spy/Get", Some("rogue"), "shop", None, &[0, 0, 0, 0, 0]).await;
    assert!(a.grpc_status().is_some_and(|c| c != "0") && a.undelivered(), "{a:?}");
    let a = grpc(&mut s, "/spy.Spy/Get", Some("rogue"), "shop", Some(admin_caller), &[0, 0, 0, 0, 0]).await;
    assert!(a.grpc_status().is_some_and(|c| c != "0"), "{a:?}");
    assert!(private.requests().is_empty(), "shop's service was reached: {:?}", private.requests());

    // A node that is gone: the refusal names no address of the victim's.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("its address");
    register(&v.proxy, Some(&admin), "micro", "ghost", "ghost-1", &gone.to_string(), "grpc").await.expect("registered");
    let a = grpc(&mut s, "/ghost.G/Get", Some("rogue"), "micro", None, &[0, 0, 0, 0, 0]).await;
    assert_eq!(a.grpc_status(), Some("14"), "{a:?}");
    let said = format!("{a:?}");
    assert!(!said.contains(&gone.port().to_string()), "the node's address leaked: {said}");

    // (c) Forged paths: not ending with the rogue, through the victim, too long, none.
    for route in [Some("elsewhere"), Some("hq,rogue"), Some("rogue,hq,rogue"), Some("a,b,c,d,rogue")]
        .into_iter()
        .chain([Some(""), Some("rogue,"), Some("Rogue"), None])
    {
        let a = grpc(&mut s, HELLO, route, "micro", None, &hello_msg("forged")).await;
        assert_eq!(a.grpc_status(), Some("7"), "path {route:?}: {a:?}");
        assert!(!a.text().contains("Hello"), "path {route:?}: {a:?}");
    }

    // (d) The asserted admin is `admin@rogue` without scopes: the service's node gets a
    // token for it alone, useless at the core, and no network header.
    let a = grpc(&mut s, "/spy.Spy/Get", Some("rogue"), "micro", Some(admin_caller), &[0, 0, 0, 0, 0]).await;
    assert!(a.grpc_status().is_some(), "{a:?}");
    let seen = exported.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen[0].headers.keys().any(|k| k.as_str().starts_with("micro-network-")), "{:?}", seen[0].headers);
    let auth = exported.header_values("authorization");
    let token = auth.first().and_then(|t| t.strip_prefix("Bearer ")).expect("a delegated token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("JSON claims");
    assert_eq!(claims["sub"], "admin@rogue", "{claims}");
    assert_eq!(claims["aud"], "micro/spy", "{claims}");
    assert!(claims["scopes"].as_array().is_none_or(|s| s.is_empty()), "{claims}");
    // The victim trusts no peer's namespace names (no MICRO_NETWORK_TRUST): the caller is
    // of `micro@rogue`, nobody's, so no member of micro (its private services, `*` rules).
    assert_eq!(claims["ns"], "micro@rogue", "{claims}");
    // An app user stays an app user (not a user, whom `+` and `*` rules admit).
    let app_caller = r#"{"id":"someone","typ":"app","ns":"micro"}"#;
    let a = grpc(&mut s, "/spy.Spy/Get", Some("rogue"), "micro", Some(app_caller), &[0, 0, 0, 0, 0]).await;
    assert!(a.grpc_status().is_some(), "{a:?}");
    let auth = exported.header_values("authorization");
    let token = auth.last().and_then(|t| t.strip_prefix("Bearer ")).expect("a delegated token");
    let payload = token.split('.').nth(1).expect("a JWT");
    let app: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("JSON claims");
    assert_eq!((&app["sub"], &app["typ"]), (&json!("someone@rogue"), &json!("app")), "{app}");
    let token = auth.first().and_then(|t| t.strip_prefix("Bearer ")).expect("a delegated token");
    for ns in ["micro", "shop"] {
        let (store, accounts) = core_codes(&v.proxy, ns, token).await;
        assert_eq!(store, Some(micro::Code::Unauthenticated), "the asserted admin's token read {ns}'s store");
        assert_eq!(accounts, Some(micro::Code::Unauthenticated), "it listed {ns}'s accounts");
    }

    // What a peer is told names clusters and services, never an address: not the
    // victim's listeners, not helloworld's node, not the traps'.
    let mut link = sync(&mut s).await.expect("the route exchange");
    let (mut got, ended) = link.read_for(Duration::from_secs(2)).await;
    assert!(!ended, "the link ended");
    let told = |got: &[u8]| {
        messages(got)
            .into_iter()
            .filter(|m| m["t"] == "add")
            .flat_map(|m| m["routes"].as_array().cloned().unwrap_or_default())
    };
    if !told(&got).any(|r| r["svc"] == "helloworld") {
        got.extend(link.read_for(Duration::from_secs(3)).await.0);
    }
    let hw: Vec<Value> = told(&got).filter(|r| r["svc"] == "helloworld").collect();
    assert!(hw.len() == 1 && hw[0]["ns"] == "micro" && hw[0]["path"] == json!(["hq"]), "{hw:?}");
    let registry = micro::registry::RemoteRegistry::with_token(&v.proxy, source(Some(&admin))).expect("a registry");
    let nodes = registry.get_service("micro", "helloworld").await.expect("helloworld");
    let mut addresses: Vec<String> = nodes.iter().flat_map(|s| s.nodes.iter().map(|n| n.address.clone())).collect();
    assert!(!addresses.is_empty());
    addresses.extend([&v.api, &v.proxy, &v.network, &v.web, &exported.address, &private.address].map(String::clone));
    let text = String::from_utf8_lossy(&got).into_owned();
    let routes: String =
        messages(&got).iter().filter(|m| m["t"] != "ping" && m["t"] != "pong").map(Value::to_string).collect();
    for addr in addresses.iter().filter(|a| !a.is_empty()) {
        let port = addr.rsplit(':').next().expect("a port");
        assert!(!text.contains(addr.as_str()), "{addr} leaked: {text}");
        assert!(!routes.contains(&format!(":{port}")) && !routes.contains(&format!("\"{port}\"")), "{addr}: {routes}");
    }

    // Removed: the open route exchange ends at once, its call connection with it, and
    // the rogue is nobody from then on.
    cli.ok(&["network", "remove", "rogue"]).await;
    let removed = Instant::now();
    let (_, ended) = link.read_for(Duration::from_secs(1)).await;
    assert!(ended && removed.elapsed() < Duration::from_millis(1100), "the link outlived the removal");
    let a = try_send(&mut s, request(HELLO, &[("content-type", "application/grpc")], full(hello_msg("x")))).await;
    assert!(a.is_err(), "the old connection still carries calls: {a:?}");
    let mut s = h2(&v.network, Some(&rogue)).await;
    let a = grpc(&mut s, HELLO, Some("rogue"), "micro", None, &hello_msg("again")).await;
    assert_eq!(a.grpc_status(), Some("7"), "{a:?}");
    refused(&sync(&mut s).await.err().expect("the route exchange refused"), 403, "a removed peer");
    assert_eq!(reverse(&v.network, Some(&rogue)).await, (Vec::new(), true), "the reverse connection");
    assert!(peers(&cli).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_or_excessive_route_advertisements_cost_the_rogue_its_link_and_nothing_more() {
    let v = victim("hq", "");
    let cli = v.admin_cli().await;
    let rogue = admitted(&v, &cli, "rogue").await;

    // A valid route is taken (so the refusals below are refusals)...
    let mut s = h2(&v.network, Some(&rogue)).await;
    let mut link = sync(&mut s).await.expect("the route exchange");
    link.send(&json!({"t": "add", "routes": [route("shop", "orders", &["rogue"])]})).await;
    let up =
        eventually(Duration::from_secs(5), || async { routes_via(&cli, "rogue", "orders").await.len() == 1 }).await;
    assert!(up, "the victim did not take a valid route");
    // ... and a false one beside it ends the link, the valid one withdrawn with it.
    let bad = [
        ("another cluster first", route("shop", "ledger", &["elsewhere"])),
        ("the rogue second", route("shop", "ledger", &["elsewhere", "rogue"])),
        ("too many hops", route("shop", "ledger", &["rogue", "a", "b", "c", "d"])),
        ("an invalid namespace", route("Shop/../micro", "ledger", &["rogue"])),
        ("an invalid service", route("shop", "led/ger", &["rogue"])),
        ("the store", route("micro", "store", &["rogue"])),
        ("the auth service", route("shop", "auth", &["rogue"])),
        ("a product", route("shop", "users", &["rogue"])),
        ("gRPC health", route("shop", "grpc.health.v1", &["rogue"])),
    ];
    for (i, (what, advert)) in bad.into_iter().enumerate() {
        if i > 0 {
            s = h2(&v.network, Some(&rogue)).await;
            link = sync(&mut s).await.expect("the route exchange");
        }
        let svc = advert["svc"].as_str().expect("a service").to_string();
        link.send(&json!({"t": "add", "routes": [route("shop", "orders", &["rogue"]), advert]})).await;
        let (_, ended) = link.read_for(Duration::from_secs(3)).await;
        assert!(ended, "{what}: the link stayed up");
        for svc in [svc.as_str(), "orders"] {
            let r = routes_via(&cli, "rogue", svc).await;
            assert!(r.is_empty(), "{what}: {r:?}");
        }
    }
    let graph = cli.json(&["network", "graph", "-o", "json"]).await;
    assert!(!graph.to_string().contains("elsewhere"), "{graph}");

    // A route too large to keep is not kept.
    let mut s = h2(&v.network, Some(&rogue)).await;
    let mut link = sync(&mut s).await.expect("the route exchange");
    let mut huge = route("shop", "huge", &["rogue"]);
    huge["versions"] = json!(["x".repeat(300 << 10)]);
    link.send(&json!({"t": "add", "routes": [huge]})).await;
    link.send(&json!({"t": "add", "routes": [route("shop", "marker", &["rogue"])]})).await;
    let taken = eventually(Duration::from_secs(5), || async { !routes_via(&cli, "rogue", "marker").await.is_empty() });
    let processed = taken.await || link.read_for(Duration::from_millis(100)).await.1;
    assert!(processed, "the victim neither took the route after the huge one nor ended the link");
    assert!(routes_via(&cli, "rogue", "huge").await.is_empty(), "a 300 KiB route was kept");
    drop(link);

    // A flood of 20 000 valid routes: at most 10 000 kept, and the victim keeps serving.
    let mut s = h2(&v.network, Some(&rogue)).await;
    let link = sync(&mut s).await.expect("the route exchange");
    let flood = tokio::spawn(async move {
        for batch in 0..20 {
            let routes: Vec<Value> =
                (0..1000).map(|i| route("flood", &format!("svc-{}", batch * 1000 + i), &["rogue"])).collect();
            link.send(&json!({"t": "add", "routes": routes})).await;
        }
        link
    });
    let counted = || async {
        let m = http(&v.api, "GET", "/metrics", &[], b"").await;
        assert_eq!(m.status, 200);
        let line = m.body.lines().find(|l| l.starts_with("micro_network_routes{peer=\"rogue\"}")).map(str::to_string);
        line.and_then(|l| l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok())).unwrap_or(0.0)
    };
    let began = Instant::now();
    let mut most = 0.0_f64;
    while began.elapsed() < Duration::from_secs(15) {
        let asked = Instant::now();
        let n = counted().await;
        assert!(asked.elapsed() < Duration::from_secs(2), "the gateway took {:?} during the flood", asked.elapsed());
        most = most.max(n);
        if n >= 10_000.0 && flood.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _link = flood.await.expect("the flood was sent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    most = most.max(counted().await);
    assert_eq!(most, 10_000.0, "routes kept from the flooding peer");
    assert_eq!(routes_via(&cli, "rogue", "svc-0").await.len(), 1);
    assert!(routes_via(&cli, "rogue", "svc-19999").await.is_empty());
}

/// A joining cluster offers exactly one certificate, a CA's, as its CA. (Once, a bundle
/// was taken: the victim kept the first's fingerprint but trusted them all for the new
/// peer, so a rogue offering its own CA followed by an honest peer's took that peer's
/// connections for its own, its calls refused and its route exchange attributed to the
/// rogue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_cluster_cannot_claim_another_peers_ca() {
    let v = victim("hq", "");
    let cli = v.admin_cli().await;
    let zeta = admitted(&v, &cli, "zeta").await;
    // zeta is zeta: its call passes the checks, and finds no service (hq exports none).
    let zeta_calls = || async {
        let mut s = h2(&v.network, Some(&zeta)).await;
        grpc(&mut s, HELLO, Some("zeta"), "micro", None, &hello_msg("zeta")).await
    };
    let a = zeta_calls().await;
    assert_eq!(a.grpc_status(), Some("5"), "{a:?}");

    let alpha = Identity::new();
    let (t, _) = token(&cli, "10m").await;
    let bundle = format!("{}{}", alpha.ca_pem, zeta.ca_pem);
    let joined = join(&v.network, Some(&alpha), &t, "alpha", &bundle).await;
    let a = zeta_calls().await;
    let (said, joined) = (a.headers.get("grpc-message"), joined.status);
    assert_eq!(a.grpc_status(), Some("5"), "zeta taken for alpha (who joined: HTTP {joined}): {said:?}");
    assert_eq!(joined, 400, "a bundle is no CA");
}
