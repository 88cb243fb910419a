//! `MICRO_TLS=auto` as users meet it: the real binary serves every port over TLS with a
//! certificate from its local CA; curl, the CLI (by `MICRO_CA`, and by the `local`
//! environment the server points at itself), a stock Python gRPC client and the
//! dashboard work against it, and untrusting or plain-HTTP clients get clear refusals.

use micro_test::cli::Cli;
use micro_test::process::{ServerProcess, binary};
use micro_test::{certificates as test_certificates, free_port};
use std::process::Command;

fn micro() -> std::path::PathBuf {
    binary(env!("CARGO_BIN_EXE_micro"))
}

/// `curl args`: (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tls_on_every_port_for_curl_the_cli_python_and_the_dashboard() {
    let home = tempfile::tempdir().expect("a home");
    let home_dir = home.path().to_str().expect("a UTF-8 path").to_string();
    // The user's `local` environment names the port the proxy will listen on.
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port();
    std::fs::create_dir_all(home.path().join(".micro")).expect("a config dir");
    let config =
        format!(r#"{{"current":"local","envs":{{"local":{{"address":"127.0.0.1:{port}","namespace":"micro"}}}}}}"#);
    std::fs::write(home.path().join(".micro").join("config"), config).expect("the CLI's config");
    let redirect = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address");
    let s = ServerProcess::builder(micro())
        .env("MICRO_TLS", "auto")
        .env("MICRO_HTTP_REDIRECT_ADDRESS", redirect.to_string())
        .env("MICRO_PROXY_ADDRESS", format!("127.0.0.1:{port}"))
        .env("HOME", &home_dir)
        .admin_password("tls-admin-password-1")
        .start();
    // A client that starts a handshake and never finishes it is dropped (within the 10 s
    // header timeout), checked alongside the rest.
    let stalled = {
        let api = s.api.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(&api).expect("connects");
            c.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("a timeout");
            c.write_all(&[0x16, 0x03, 0x01]).expect("a partial record");
            let started = std::time::Instant::now();
            let mut buf = [0u8; 64];
            let read = c.read(&mut buf);
            (started.elapsed(), read.map_err(|e| e.kind()))
        })
    };
    let ca = s.data_dir().join("tls").join("ca.pem");
    let ca = ca.to_str().expect("a UTF-8 path").to_string();
    assert!(s.output().contains(&format!("TLS by the local CA {ca}")), "{}", s.output());
    assert!(s.output().contains("the CLI's local environment trusts it"), "{}", s.output());

    // curl: with the CA, by IP and by name; without it, refused as untrusted.
    let api = format!("https://{}/", s.api);
    let (code, body, err) = curl(&["--cacert", &ca, &api]);
    assert_eq!(code, 0, "{err}");
    assert!(body.contains(r#""api":"ok""#), "{body}");
    let port = s.api.rsplit_once(':').expect("host:port").1;
    let (code, _, err) = curl(&["--cacert", &ca, &format!("https://localhost:{port}/")]);
    assert_eq!(code, 0, "by name: {err}");
    let (code, _, err) = curl(&[&api]);
    assert_eq!(code, 60, "an unknown CA is refused: {err}");
    // HTTP/2 by ALPN.
    let (code, version, err) = curl(&["--cacert", &ca, "-o", "/dev/null", "-w", "%{http_version}", &api]);
    assert_eq!((code, version.as_str()), (0, "2"), "{err}");
    // Plain HTTP to a TLS port: a clear 400, not a hang.
    let plain = micro_test::http(&s.api, "GET", "/", &[], b"").await;
    assert_eq!(plain.status, 400, "{}", plain.body);
    assert!(plain.body.contains("this port speaks TLS: use https://"), "{}", plain.body);

    // The plain port asked for redirects to the gateway over HTTPS, keeping path and query.
    let (code, head, err) = curl(&["-D", "-", "-o", "/dev/null", &format!("http://{redirect}/helloworld/call?name=x")]);
    assert_eq!(code, 0, "{err}");
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    let location = format!(
        "location: https://127.0.0.1:{port}/helloworld/call?name=x",
        port = s.api.rsplit_once(':').expect("host:port").1
    );
    assert!(head.to_lowercase().contains(&location), "{head}");

    // The CLI, trusting the CA by MICRO_CA.
    let proxy = format!("https://{}", s.proxy);
    let cli = Cli::new(micro(), &proxy).env("MICRO_CA", &ca);
    cli.ok(&["login", "--id", "admin", "--password", &s.admin_password]).await;
    let listed = cli.ok(&["services"]).await;
    assert!(listed.contains("registry"), "{listed}");
    assert!(listed.contains("distributed"), "the products reach the proxy in-process: {listed}");
    cli.ok(&["store", "write", "greeting", "hello"]).await;
    assert!(cli.ok(&["store", "read", "greeting"]).await.contains("hello"));
    // Without the CA: one clear line naming the certificate problem.
    let err = Cli::new(micro(), &proxy).error(&["services"]).await;
    assert!(err.contains("invalid peer certificate") && err.contains("MICRO_CA="), "{err}");
    // The server pointed its user's `local` environment at itself, trusting its CA.
    let out = Command::new(micro())
        .args(["services"])
        .env("HOME", &home_dir)
        .env_remove("MICRO_SERVER")
        .env_remove("MICRO_CA")
        .output()
        .expect("micro runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("registry"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));

    // The dashboard: TLS, and its cookies are Secure.
    let web = format!("https://{}/login", s.web);
    let (code, head, err) = curl(&["--cacert", &ca, "-D", "-", "-o", "/dev/null", &web]);
    assert_eq!(code, 0, "{err}");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.to_lowercase().lines().any(|l| l.starts_with("set-cookie:") && l.contains("secure")), "{head}");

    // A stock Python gRPC client with the CA.
    match std::env::var("MICRO_TEST_PYTHON") {
        Ok(python) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/tls_client.py");
            let out = Command::new(python).args([script, s.proxy.as_str(), ca.as_str()]).output().expect("python runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            assert!(stdout.contains("python TLS client: ok"), "{stdout}");
        }
        Err(_) => {
            assert!(
                std::env::var("MICRO_TEST_REQUIRE_BACKENDS").is_err(),
                "MICRO_TEST_PYTHON is not set but MICRO_TEST_REQUIRE_BACKENDS is: run scripts/test"
            );
            eprintln!("notice: skipping the Python TLS client (MICRO_TEST_PYTHON unset; scripts/test sets it)");
        }
    }
    let (waited, read) = stalled.join().expect("the stalled client");
    assert!(matches!(read, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)), "closed: {read:?}");
    assert!(waited < std::time::Duration::from_secs(15), "dropped after {waited:?}");
    s.stop();
}

/// ACME against Debian's `pebble` (installed by scripts/edge-setup; without it the test
/// skips with a notice, except under MICRO_TEST_REQUIRE_BACKENDS): a verified custom
/// domain gets a certificate by HTTP-01 (pebble finds the domain on the test's name
/// server and fetches the challenge from the server's plain HTTP listener), the gateway
/// serves it by SNI (curl trusts pebble's root and nothing else), and `micro domain renew`
/// gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_a_custom_domains_certificate_and_the_gateway_serves_and_renews_it() {
    acme_with_pebble(false).await;
}

/// The same by TLS-ALPN-01: pebble validates on the gateway's TLS port, asking for
/// `acme-tls/1` (no plain HTTP listener at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_validates_by_tls_alpn_on_the_gateways_tls_port() {
    acme_with_pebble(true).await;
}

async fn acme_with_pebble(alpn: bool) {
    const PEBBLE: &str = "/usr/bin/pebble";
    if !std::path::Path::new(PEBBLE).exists() {
        assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "{PEBBLE} is missing (scripts/edge-setup)");
        eprintln!("notice: skipping the ACME test: {PEBBLE} is missing (run scripts/edge-setup)");
        return;
    }
    let dir = tempfile::tempdir().expect("a dir");
    let (test_ca, cert, key) = test_certificates(dir.path());
    let dns = micro_test::dns::TxtServer::start().await;
    let (acme_port, management_port, http_port, api_port) = (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{management_port}"),
        "certificate": cert, "privateKey": key,
        "httpPort": http_port, "tlsPort": api_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": false,
    }});
    let config_path = dir.path().join("pebble.json");
    std::fs::write(&config_path, config.to_string()).expect("pebble's config");
    let _pebble = micro_test::process::Reaped::spawn(
        Command::new(PEBBLE)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns.addr])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let directory = format!("https://127.0.0.1:{acme_port}/dir");
    let up = micro_test::eventually(std::time::Duration::from_secs(20), || async {
        curl(&["--cacert", &test_ca, &directory]).0 == 0
    })
    .await;
    assert!(up, "pebble serves its directory: {:?}", curl(&["--cacert", &test_ca, &directory]));

    let builder = ServerProcess::builder(micro()).env("MICRO_TLS", "auto");
    let builder = if alpn {
        builder.env("MICRO_API_ADDRESS", format!("127.0.0.1:{api_port}")).env("MICRO_ACME_CHALLENGE", "tls-alpn-01")
    } else {
        builder.env("MICRO_HTTP_REDIRECT_ADDRESS", format!("127.0.0.1:{http_port}"))
    };
    let s = builder
        .env("MICRO_ACME_DIRECTORY", &directory)
        .env("MICRO_ACME_CA", &test_ca)
        .env("MICRO_ACME_EMAIL", "ops@acme.test")
        .env("MICRO_DNS", &dns.addr)
        .admin_password("acme-admin-password-1")
        .start();
    let ca = s.data_dir().join("tls").join("ca.pem");
    let cli = Cli::new(micro(), &format!("https://{}", s.proxy)).env("MICRO_CA", ca.to_str().expect("a UTF-8 path"));
    cli.ok(&["login", "--id", "admin", "--password", "acme-admin-password-1"]).await;
    let domain = "shop.acme.test";
    let claim = cli.json(&["domain", "add", domain, "-o", "json"]).await;
    dns.set(claim["txt"]["name"].as_str().expect("a name"), claim["txt"]["value"].as_str().expect("a value"));
    dns.set_a(domain, std::net::Ipv4Addr::LOCALHOST);
    cli.ok(&["domain", "verify", domain]).await;

    // Issued within a few checks; curl trusting pebble's root (and only it) reaches the
    // gateway by the domain's name.
    let expires = || async {
        let listed = cli.json(&["domain", "list", "-o", "json"]).await;
        listed.as_array().and_then(|a| a.first()).and_then(|d| d["certificate_expires"].as_i64()).unwrap_or(0)
    };
    let issued = micro_test::eventually(std::time::Duration::from_secs(60), || async { expires().await > 0 }).await;
    assert!(issued, "a certificate is issued: {}", s.output());
    let first = expires().await;
    let (code, root, err) = curl(&["--cacert", &test_ca, &format!("https://127.0.0.1:{management_port}/roots/0")]);
    assert_eq!(code, 0, "pebble's root: {err}");
    let root_path = dir.path().join("pebble-root.pem");
    std::fs::write(&root_path, root).expect("written");
    let root_path = root_path.to_str().expect("a UTF-8 path").to_string();
    let api_port = s.api.rsplit(':').next().expect("a port").to_string();
    if alpn {
        // Nothing answered on pebble's HTTP-01 port: the certificate came by TLS-ALPN-01.
        assert!(std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err(), "no plain listener");
    }
    let resolve = format!("{domain}:{api_port}:127.0.0.1");
    let url = format!("https://{domain}:{api_port}/");
    let served = micro_test::eventually(std::time::Duration::from_secs(10), || async {
        curl(&["--cacert", &root_path, "--resolve", &resolve, "-o", "/dev/null", &url]).0 == 0
    })
    .await;
    assert!(
        served,
        "the gateway serves the domain's certificate: {:?}",
        curl(&["--cacert", &root_path, "--resolve", &resolve, &url])
    );
    // Other names still get the server's own certificate, which pebble's root does not vouch for.
    let (code, _, _) = curl(&["--cacert", &root_path, &format!("https://127.0.0.1:{api_port}/")]);
    assert_ne!(code, 0, "the server's own certificate is not pebble's");

    // Renewed on request: a new certificate, served as well.
    let asked = cli.json(&["domain", "renew", domain, "-o", "json"]).await;
    assert_eq!(
        (asked["domain"].as_str(), asked["certificate_expires"].as_i64()),
        (Some(domain), Some(first)),
        "{asked}"
    );
    let renewed =
        micro_test::eventually(std::time::Duration::from_secs(60), || async { expires().await > first }).await;
    assert!(renewed, "a new certificate is issued: {}", s.output());
    let served = micro_test::eventually(std::time::Duration::from_secs(10), || async {
        curl(&["--cacert", &root_path, "--resolve", &resolve, "-o", "/dev/null", &url]).0 == 0
    })
    .await;
    assert!(served, "the renewed certificate is served");
    // Bad input: renewing what is not one's own, or without a domain's claim.
    assert!(cli.error(&["domain", "renew", "other.acme.test"]).await.contains("no domain"));
}
