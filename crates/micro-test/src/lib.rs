//! Test helpers: a `micro server` on `127.0.0.1:0` in-process ([`TestServer`]) or as
//! a process of its own ([`process::ServerProcess`]), the `micro` CLI run against it
//! ([`cli::Cli`]), a raw HTTP/1.1 client, and `eventually` for conditions that become true
//! asynchronously. The conformance suites of the backends are in `micro-conformance`.

pub mod cli;
pub mod dns;
pub mod js;
pub mod process;
pub mod push;
pub mod recorder;
pub mod relay;
pub mod smtp;
pub mod sse;
pub mod stripe;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server started for a test, with its data directory.
pub struct TestServer {
    /// The running server.
    pub server: micro_server::Running,
    /// Its data directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The admin's password when it was configured (else it is in the data dir).
    pub admin_password: Option<String>,
}

impl TestServer {
    /// Starts a server with every port 0.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = micro_server::start(micro_server::Config::ephemeral(dir.path())).await.expect("server starts");
        TestServer { server, dir, admin_password: None }
    }

    /// Starts a server with every port 0 and the configuration changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut micro_server::Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = micro_server::Config::ephemeral(dir.path());
        f(&mut config);
        let admin_password = config.admin_password.clone().map(|s| s.0);
        let server = micro_server::start(config).await.expect("server starts");
        TestServer { server, dir, admin_password }
    }

    /// `host:port` of the proxy (what `MICRO_SERVER` points at).
    pub fn proxy(&self) -> String {
        self.server.proxy_address().to_string()
    }

    /// An access token of the bootstrapped admin (`admin` in `micro`).
    pub async fn admin_token(&self) -> String {
        let password = match &self.admin_password {
            Some(p) => p.clone(),
            None => std::fs::read_to_string(self.dir.path().join(micro_server::ADMIN_PASSWORD_FILE))
                .expect("the admin password file"),
        };
        login(&self.proxy(), "micro", "admin", password.trim()).await
    }

    /// The data services of this server as the admin (who may act in every namespace).
    pub async fn admin_data(&self, namespace: &str) -> micro::data::Data {
        let token = self.admin_token().await;
        micro::data::Data::remote_with(
            &self.proxy(),
            namespace,
            Some(std::sync::Arc::new(micro::data::StaticToken(token))),
        )
    }

    /// Creates account `id` with `secret` in `namespace` (as the admin).
    pub async fn create_account(&self, namespace: &str, id: &str, secret: &str, kind: &str, scopes: &[&str]) {
        create_account(&self.proxy(), &self.admin_token().await, namespace, (id, secret), kind, scopes).await;
    }

    /// A service named `name` in `namespace`, pointed at this server, with a service
    /// account of its own made now (registering needs an account of the namespace).
    pub async fn service(&self, namespace: &str, name: &str) -> micro::Service {
        let (id, secret) = service_account(&self.proxy(), &self.admin_token().await, namespace, name).await;
        micro::Service::new(name).server(self.proxy()).namespace(namespace).credentials(&id, &secret)
    }

    /// The environment of a service process named `name` in `namespace` with a service
    /// account of its own made now (`MICRO_SERVER`, `MICRO_NAMESPACE`, `MICRO_AUTH_ID`,
    /// `MICRO_AUTH_SECRET`).
    pub async fn service_env(&self, namespace: &str, name: &str) -> Vec<(String, String)> {
        service_env(&self.proxy(), &self.admin_token().await, namespace, name).await
    }

    /// `host:port` of the API gateway.
    pub fn api(&self) -> String {
        self.server.api_address().to_string()
    }
}

/// Logs in to the server at `proxy` and returns the access token.
pub async fn login(proxy: &str, namespace: &str, id: &str, secret: &str) -> String {
    use micro::proto::auth as pb;
    let mut client = pb::auth_client::AuthClient::new(micro::data::channel(proxy).expect("channel"));
    let mut req = tonic::Request::new(pb::TokenRequest { id: id.into(), secret: secret.into(), ..Default::default() });
    req.metadata_mut().insert("micro-namespace", namespace.parse().expect("namespace"));
    client.token(req).await.expect("login").into_inner().access_token
}

/// A response read by [`http`](fn@http).
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Raw head (status line and headers).
    pub head: String,
    /// Body (de-chunked), as text (invalid UTF-8 replaced).
    pub body: String,
    /// Body (de-chunked), as sent.
    pub bytes: Vec<u8>,
}

impl HttpResponse {
    /// A header's value (the first, case-insensitive name), if the response has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`; `Host` is `addr` unless `headers` name
/// one) and reads the whole response.
pub async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A `host` among `headers` replaces the address.
    let host = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("host")).map_or(addr, |(_, v)| *v);
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    // A server may answer (413, say) and close before the whole body is sent: the write
    // then fails, and the answer is still there to read.
    let sent = s.write_all(body).await;
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf).await;
    if buf.is_empty() {
        sent.expect("write body");
        read.expect("read");
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, rest) = match end {
        Some(i) => (String::from_utf8_lossy(&buf[..i]).to_string(), &buf[i + 4..]),
        None => (String::from_utf8_lossy(&buf).to_string(), &[][..]),
    };
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let bytes =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_vec() };
    HttpResponse { status, head, body: String::from_utf8_lossy(&bytes).to_string(), bytes }
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..i]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let rest = &s[i + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = &rest[n..];
        if s.starts_with(b"\r\n") {
            s = &s[2..];
        }
    }
    out
}

pub use micro_conformance::{backend_url, eventually};

/// `POST path` with a JSON `body` at `addr` (a gateway, or a proxy's HTTP JSON), as the
/// holder of `token` and in namespace `ns` when given: the status and the JSON reply
/// (`null` when it is not JSON).
pub async fn post_json(
    addr: &str,
    token: Option<&str>,
    ns: Option<&str>,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    if let Some(ns) = ns {
        headers.push(("micro-namespace", ns));
    }
    let r = http(addr, "POST", path, &headers, body.to_string().as_bytes()).await;
    (r.status, serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null))
}

/// `method path` with an optional JSON `body` at `addr`, as the holder of `token` in
/// namespace `ns`: the status and the JSON reply (`null` when it is not JSON).
pub async fn call_json(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    ns: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json"), ("micro-namespace", ns)];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = http(addr, method, path, &headers, body.as_bytes()).await;
    (r.status, serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null))
}

/// Percent-encodes a query value.
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The path of a binary built in the same target directory as the running test.
pub fn sibling_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built; run `cargo build --workspace` first", p.display());
    p
}

/// A PostgreSQL schema of a test's own, so runs and tests never see each other's tables.
pub struct PgSchema {
    base: String,
    name: String,
    /// The URL whose connections use the schema.
    pub url: String,
}

impl PgSchema {
    /// Creates schema `name` (dropping an old one) in the database at `base`.
    pub async fn create(base: &str, name: &str) -> PgSchema {
        Self::exec(base, &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")).await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        PgSchema { base: base.to_string(), name: name.to_string(), url }
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) {
        Self::exec(&self.base, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)).await;
    }

    async fn exec(url: &str, sql: &str) {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL answers");
        tokio::spawn(conn);
        client.batch_execute(sql).await.expect("the schema statement runs");
    }
}

/// Creates account `id` with `secret` (`account`) of `kind` (`user` or `service`) with
/// `scopes` in `namespace` of the server at `proxy`, as the admin whose token is
/// `admin_token`.
pub async fn create_account(
    proxy: &str,
    admin_token: &str,
    namespace: &str,
    account: (&str, &str),
    kind: &str,
    scopes: &[&str],
) {
    use micro::proto::auth as pb;
    let mut client = pb::auth_client::AuthClient::new(as_holder(proxy, admin_token));
    let mut req = tonic::Request::new(pb::GenerateRequest {
        id: account.0.into(),
        r#type: kind.into(),
        secret: account.1.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    req.metadata_mut().insert("micro-namespace", namespace.parse().expect("namespace"));
    client.generate(req).await.expect("account created");
}

/// A channel to the server at `proxy` whose calls carry `token`.
pub fn as_holder(proxy: &str, token: &str) -> micro::Channel {
    let source = std::sync::Arc::new(micro::data::StaticToken(token.to_string()));
    micro::data::channel_with(proxy, Some(source)).expect("channel")
}

/// Creates `rule` in `namespace` of the server at `proxy` as the holder of `token`.
pub async fn create_rule(proxy: &str, token: &str, namespace: &str, rule: micro::proto::auth::Rule) {
    use micro::proto::auth as pb;
    let mut auth = pb::auth_client::AuthClient::new(as_holder(proxy, token));
    let mut req = tonic::Request::new(pb::CreateRuleRequest { rule: Some(rule) });
    req.metadata_mut().insert("micro-namespace", namespace.parse().expect("namespace"));
    auth.create_rule(req).await.expect("rule created");
}

/// A service account named after `name` (`name-<random>`) made now in `namespace` of the
/// server at `proxy` by the admin whose token is `admin_token`: `(id, secret)`.
/// Registering needs an account of the namespace.
pub async fn service_account(proxy: &str, admin_token: &str, namespace: &str, name: &str) -> (String, String) {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (id, secret) = (format!("{name}-{suffix}"), format!("{name}-secret-{suffix}"));
    create_account(proxy, admin_token, namespace, (&id, &secret), "service", &[]).await;
    (id, secret)
}

/// The environment of a service process named `name` in `namespace` of the server at
/// `proxy`, with a [`service_account`] of its own (`MICRO_SERVER`, `MICRO_NAMESPACE`,
/// `MICRO_AUTH_ID`, `MICRO_AUTH_SECRET`).
pub async fn service_env(proxy: &str, admin_token: &str, namespace: &str, name: &str) -> Vec<(String, String)> {
    let (id, secret) = service_account(proxy, admin_token, namespace, name).await;
    [
        ("MICRO_SERVER", proxy.to_string()),
        ("MICRO_NAMESPACE", namespace.to_string()),
        ("MICRO_AUTH_ID", id),
        ("MICRO_AUTH_SECRET", secret),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port()
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it, in `dir`: (CA path,
/// certificate path, key path).
pub fn certificates(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "micro test CA");
    let ca_cert = ca.clone().self_signed(&ca_key).expect("a CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("names");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("a certificate");
    let path = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("written");
        p.to_str().expect("a UTF-8 path").to_string()
    };
    (path("ca.pem", ca_cert.pem()), path("cert.pem", cert.pem()), path("key.pem", key.serialize_pem()))
}
