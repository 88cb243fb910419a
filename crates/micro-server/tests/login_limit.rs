//! The limit on failed logins as an attacker meets it (security issue, item 7): real
//! server, real clients from different loopback addresses (every `127.x.y.z` is this
//! host on Linux, so a client binds one to be a different client address).
//!
//! Failures count per (account, client address), with a higher ceiling per address: a
//! guesser locks out only itself, never the account's rightful user elsewhere, and a
//! remote caller cannot choose the address it is counted under.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro::proto::auth as apb;
use micro_test::TestServer;
use std::net::{IpAddr, SocketAddr};

/// A gRPC channel to `proxy` whose connections come from the local address `source`.
async fn channel_from(source: &str, proxy: SocketAddr) -> tonic::transport::Channel {
    let source: IpAddr = source.parse().unwrap();
    tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(proxy).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .unwrap()
}

/// Logs in to `micro` from `source` as `id` with `secret`, with `headers` added.
async fn login_from(
    s: &TestServer,
    source: &str,
    id: &str,
    secret: &str,
    headers: &[(&'static str, &str)],
) -> Result<apb::TokenResponse, tonic::Status> {
    let mut client = apb::auth_client::AuthClient::new(channel_from(source, s.server.proxy_address()).await);
    let mut req = tonic::Request::new(apb::TokenRequest { id: id.into(), secret: secret.into(), ..Default::default() });
    for (k, v) in headers {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    client.token(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_locks_out_only_itself() {
    let s = TestServer::start().await;
    s.create_account("micro", "alice", "alice-secret-1", "user", &[]).await;
    s.create_account("micro", "bob", "bob-secret-1", "user", &[]).await;
    let attacker = "127.0.0.2";
    for i in 0..10 {
        let e = login_from(&s, attacker, "alice", "wrong-guess", &[]).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "guess {i}: {e:?}");
    }
    // The guesser is refused now, even with the right secret, and told when to retry.
    let e = login_from(&s, attacker, "alice", "alice-secret-1", &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too many attempts, try again in "), "{}", e.message());
    let secs: u64 = e.message().rsplit("try again in ").next().unwrap().trim_end_matches(" s").parse().unwrap();
    assert!((1..=60).contains(&secs), "{}", e.message());
    // Alice, from her own address, signs in.
    login_from(&s, "127.0.0.3", "alice", "alice-secret-1", &[]).await.expect("the rightful user is not locked out");
    // Another account from the guesser's address is not locked either (the per-address
    // ceiling is higher).
    login_from(&s, attacker, "bob", "bob-secret-1", &[]).await.expect("another account from that address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_has_a_ceiling_across_accounts() {
    let s = TestServer::start().await;
    s.create_account("micro", "carol", "carol-secret-1", "user", &[]).await;
    let sprayer = "127.0.0.4";
    // One guess each at many accounts (unknown ones count like wrong secrets).
    for i in 0..50 {
        let e = login_from(&s, sprayer, &format!("user-{i}"), "wrong-guess", &[]).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "guess {i}: {e:?}");
    }
    let e = login_from(&s, sprayer, "carol", "carol-secret-1", &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too many attempts, try again in "), "{}", e.message());
    // Other addresses are not held back by the sprayer's.
    login_from(&s, "127.0.0.5", "carol", "carol-secret-1", &[]).await.expect("another address");
}

/// A caller naming another client address (or guessing the dashboard's key) is still
/// counted under its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_choose_its_client_address() {
    let s = TestServer::start().await;
    s.create_account("micro", "dave", "dave-secret-1", "user", &[]).await;
    let attacker = "127.0.0.6";
    for i in 0..10 {
        let forged = format!("10.0.0.{i}");
        let headers = [("micro-client-address", forged.as_str()), ("micro-edge-key", "guess")];
        let e = login_from(&s, attacker, "dave", "wrong-guess", &headers).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "guess {i}: {e:?}");
    }
    let headers = [("micro-client-address", "10.0.0.99")];
    let e = login_from(&s, attacker, "dave", "dave-secret-1", &headers).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
}

/// A raw HTTP/1.1 request to `addr` from the local address `source`; (status, head, body).
async fn http_from(source: &str, addr: SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Signs in to the dashboard from `source`; (status, head, body).
async fn dashboard_login(s: &TestServer, source: &str, id: &str, secret: &str) -> (u16, String, String) {
    let web = s.server.web_address().unwrap();
    let form = format!("_csrf=t0k3n&namespace=micro&id={id}&secret={secret}");
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\nCookie: micro_login=t0k3n\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    http_from(source, web, &request).await
}

/// The dashboard signs in for the browser's address, not its own, and says when a
/// browser is held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_each_browser_under_its_own_address() {
    let s = TestServer::start().await;
    s.create_account("micro", "erin", "erin-secret-1", "user", &[]).await;
    let attacker = "127.0.0.7";
    for i in 0..10 {
        let (status, _, body) = dashboard_login(&s, attacker, "erin", "wrong-guess").await;
        assert_eq!(status, 401, "guess {i}: {body}");
        assert!(body.contains("Wrong account or secret"), "guess {i}: {body}");
    }
    let (status, _, body) = dashboard_login(&s, attacker, "erin", "erin-secret-1").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("Too many attempts, try again in "), "{body}");
    assert!(!body.contains("Wrong account or secret"), "{body}");
    // Erin's browser, elsewhere, signs in: a session cookie and on to the pages.
    let (status, head, body) = dashboard_login(&s, "127.0.0.8", "erin", "erin-secret-1").await;
    assert_eq!(status, 303, "{head}\n{body}");
    assert!(head.contains("micro_session="), "{head}");
    // The dashboard's sign-ins are counted under the browsers' addresses, not one of its
    // own: the guesser's address is held back at the auth service too.
    let e = login_from(&s, attacker, "erin", "erin-secret-1", &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
}

/// Logs in through the gateway from `source`; the status.
async fn gateway_login(s: &TestServer, source: &str, id: &str, secret: &str) -> u16 {
    let api = s.server.api_address();
    let body = format!(r#"{{"id":"{id}","secret":"{secret}"}}"#);
    let request = format!(
        "POST /auth/auth/token HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_from(source, api, &request).await.0
}

/// Logins through the gateway count under the caller's address too, not the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_counts_each_caller_under_its_own_address() {
    let s = TestServer::start().await;
    s.create_account("micro", "erin", "erin-secret-1", "user", &[]).await;
    for _ in 0..10 {
        assert_eq!(gateway_login(&s, "127.0.0.6", "erin", "wrong-guess").await, 401);
    }
    assert_eq!(gateway_login(&s, "127.0.0.6", "erin", "erin-secret-1").await, 429, "the guesser is held back");
    assert_eq!(gateway_login(&s, "127.0.0.7", "erin", "erin-secret-1").await, 200, "erin elsewhere is not");
}

/// The established TCP connections of this process to `port` on this host.
fn connections_to(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st …: addresses as hex `ip:port`, state 01 = established.
            let remote = f.get(2).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if remote == Some(port) && f.get(3) == Some(&"01") {
                n += 1;
            }
        }
    }
    n
}

/// The gateway and the dashboard call the core in-process (one client stack, no
/// loopback hop to the proxy), with the same checks: they sign in, read and write,
/// and no connection to the proxy's port is ever opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_the_dashboard_reach_the_core_in_process() {
    let password = "in-process-admin-1";
    let s = TestServer::start_with(|c| {
        c.admin_password = Some(micro_server::Secret(password.into()));
        c.services = Vec::new();
    })
    .await;
    let proxy = s.server.proxy_address().port();
    let api = s.server.api_address();
    // Through the gateway: a login, a write and a read as the admin, a refused anonymous write.
    let body = format!(r#"{{"id":"admin","secret":"{password}"}}"#);
    let login = format!(
        "POST /auth/auth/token HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, reply) = http_from("127.0.0.1", api, &login).await;
    assert_eq!(status, 200, "{reply}");
    let token =
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()["access_token"].as_str().unwrap().to_string();
    let call = |path: &str, body: &str, auth: bool| {
        let auth = if auth { format!("Authorization: Bearer {token}\r\n") } else { String::new() };
        format!(
            "POST {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let write = r#"{"record":{"key":"k","value":"aGk="}}"#;
    let (status, _, reply) = http_from("127.0.0.1", api, &call("/store/store/write", write, true)).await;
    assert_eq!(status, 204, "{reply}");
    let (status, _, reply) = http_from("127.0.0.1", api, &call("/store/store/read", r#"{"key":"k"}"#, true)).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("aGk="), "{reply}");
    let (status, _, reply) = http_from("127.0.0.1", api, &call("/store/store/write", write, false)).await;
    assert_eq!(status, 401, "{reply}");
    // Through the dashboard: a sign-in and a page that lists the namespace's services.
    let (status, head, body) = dashboard_login(&s, "127.0.0.1", "admin", password).await;
    assert_eq!(status, 303, "{head}\n{body}");
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").filter(|c| c.starts_with("micro_session=")))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let web = s.server.web_address().unwrap();
    let page = format!("GET /services HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\nCookie: {session}\r\n\r\n");
    let (status, _, body) = http_from("127.0.0.1", web, &page).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("registry"), "the core services are listed: {body}");
    assert_eq!(connections_to(proxy), 0, "nothing in this process connected to the proxy at port {proxy}");
}
