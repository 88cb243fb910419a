//! A cluster with TLS on, as an operator grows it and as an outsider probes it: a new
//! machine joins with nothing but a node's address and a one-time token, the nodes
//! forward runtime calls to each other over mutual TLS, and a caller without a node's
//! certificate (or with one from another CA), a used or forged token, an anonymous token
//! request and a node of another cluster posing as this one all get nowhere.

use super::micro;
use micro_test::cli::Cli;
use micro_test::process::ServerProcess;
use std::process::Command;
use std::time::{Duration, Instant};

/// `curl args`: (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Runs `micro server` in `data` with `env` and expects it to refuse to start; returns
/// what it printed.
async fn refused_start(data: &std::path::Path, env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new(micro());
    cmd.arg("server")
        .env("MICRO_DATA_DIR", data)
        .env("MICRO_API_ADDRESS", "127.0.0.1:0")
        .env("MICRO_PROXY_ADDRESS", "127.0.0.1:0")
        .env("MICRO_WEB_ADDRESS", "off")
        .env("MICRO_LOG", "warn")
        .env_remove("MICRO_BACKEND")
        .env_remove("MICRO_CONFIG_KEY")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the server gives up within a minute")
        .expect("micro runs");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "refused: {printed}");
    printed
}

/// The names of the entries under `dir`, at any depth.
fn names_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.path().is_dir() {
                out.extend(names_under(&e.path()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_a_token_and_outsiders_cannot_act_as_nodes() {
    let (Some(pg), Some(nats)) =
        (micro_test::backend_url("MICRO_TEST_POSTGRES"), micro_test::backend_url("MICRO_TEST_NATS"))
    else {
        return;
    };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_mtls_{}", std::process::id())).await;
    let backend = format!("{},{nats}", schema.url);
    let key = "bXRscy10ZXN0LWNsdXN0ZXIta2V5LTMyLWJ5dGVzISE="; // 32 bytes
    let password = "mtls-admin-password-1";

    // A: the cluster's first node, with its secrets in its environment.
    let a = ServerProcess::builder(micro())
        .env("MICRO_BACKEND", &backend)
        .env("MICRO_CONFIG_KEY", key)
        .env("MICRO_TLS", "auto")
        .admin_password(password)
        .start();
    let ca = a.data_dir().join("tls").join("ca.pem");
    let ca = ca.to_str().expect("a UTF-8 path").to_string();
    let cli_a = Cli::new(micro(), &format!("https://{}", a.proxy)).env("MICRO_CA", &ca);

    // Nobody but the operators makes join tokens.
    let err = cli_a.error(&["cluster", "token"]).await;
    assert!(err.contains("401") || err.to_lowercase().contains("unauthenticated"), "anonymous: {err}");
    cli_a.ok(&["login", "--id", "admin", "--password", password]).await;
    let err = cli_a.error(&["cluster", "token", "--ttl", "9w"]).await;
    assert!(err.contains("--ttl"), "{err}");
    let out = cli_a.ok(&["cluster", "token", "--ttl", "10m"]).await;
    let token = out.lines().next().expect("the token").trim().to_string();
    assert!(token.starts_with("micro-join1.") && out.contains("MICRO_JOIN_TOKEN=micro-join1."), "{out}");
    let spare = cli_a.json(&["cluster", "token", "-o", "json"]).await["token"].as_str().expect("a token").to_string();

    // B: another machine (127.0.0.2) with nothing but A's address and the token.
    let b = ServerProcess::builder(micro())
        .env("MICRO_TLS", "auto")
        .env("MICRO_JOIN", &a.proxy)
        .env("MICRO_JOIN_TOKEN", &token)
        .env("MICRO_ADVERTISE_HOST", "127.0.0.2")
        .env("MICRO_PROXY_ADDRESS", "127.0.0.2:0")
        .env_remove("MICRO_BACKEND")
        .env_remove("MICRO_CONFIG_KEY")
        .admin_password(password)
        .start();
    // It keeps the cluster's environment to itself, and serves with the cluster's CA.
    let joined = b.data_dir().join("cluster.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&joined).expect("cluster.json").permissions());
    assert_eq!(mode & 0o077, 0, "owner-only: {mode:o}");
    assert!(std::fs::read_to_string(&joined).expect("readable").contains("MICRO_CONFIG_KEY"));
    let b_ca = std::fs::read_to_string(b.data_dir().join("tls").join("ca.pem")).expect("B's CA");
    assert_eq!(b_ca, std::fs::read_to_string(&ca).expect("A's CA"), "one CA for the cluster");
    let cli_b = Cli::new(micro(), &format!("https://{}", b.proxy)).env("MICRO_CA", &ca);
    cli_b.ok(&["login", "--id", "admin", "--password", password]).await;

    // A leads the runtime (it started first): `micro run` through B is forwarded to A over
    // mutual TLS, and the service runs on A alone.
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-py");
    let started = Instant::now();
    let out = loop {
        let out = cli_b.run(&["run", folder.to_str().expect("UTF-8")]).await;
        if out.code == 0 || started.elapsed() > Duration::from_secs(30) || !out.stderr.contains("leader") {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let status = cli_b.json(&["status", "hello-py", "-o", "json"]).await;
    assert_eq!(status[0]["status"], "running", "{status}");
    assert!(names_under(&a.data_dir().join("runtime")).iter().any(|n| n.contains("hello-py")), "runs on A");
    assert!(!names_under(&b.data_dir().join("runtime")).iter().any(|n| n.contains("hello-py")), "not on B");

    // An outsider forging the forwarded mark without a node's certificate: refused before
    // anything else. With B's node certificate the mark passes (and the call still needs
    // its own credentials: 401 without a token).
    let forwarded = |extra: &[&str]| {
        let url = format!("https://{}/runtime/Runtime/Status", a.proxy);
        // HTTP/1.1: this curl takes the RST_STREAM(NO_ERROR) that HTTP/2 sends after an
        // answer given before the request body was read for a failure.
        let mut args = vec![
            "--http1.1",
            "--cacert",
            ca.as_str(),
            "-H",
            "micro-runtime-forwarded: 1",
            "-H",
            "content-type: application/json",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-d", "{}", "-w", "\n%{http_code}"]);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).chain([url]).collect();
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, body, err) = forwarded(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(body.ends_with("403") && body.contains("needs a cluster node's certificate"), "{body}");
    let node_cert = b.data_dir().join("tls").join("node.pem");
    let node_key = b.data_dir().join("tls").join("node.key");
    let (code, body, err) =
        forwarded(&["--cert", node_cert.to_str().expect("UTF-8"), "--key", node_key.to_str().expect("UTF-8")]);
    assert_eq!(code, 0, "{err}");
    assert!(body.ends_with("401"), "a node's certificate passes the mark, not the auth: {body}");
    // Only the proxy shows the node certificate (to whoever asks for the node name); the
    // public gateway answers that name with its own, which does not carry it.
    let by_node_name = |addr: &str| {
        let port = addr.rsplit(':').next().expect("a port").to_string();
        let name = micro_server_node_name();
        curl(&[
            "--cacert",
            ca.as_str(),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            "-o",
            "/dev/null",
            &format!("https://{name}:{port}/"),
        ])
        .0
    };
    assert_eq!(by_node_name(&a.proxy), 0, "the proxy shows the node certificate");
    assert_eq!(by_node_name(&a.api), 60, "the gateway does not");
    // A certificate of another CA fails the handshake.
    let other = tempfile::tempdir().expect("a dir");
    let foreign = rcgen::generate_simple_self_signed(vec![micro_server_node_name()]).expect("a certificate");
    let (fc, fk) = (other.path().join("c.pem"), other.path().join("k.pem"));
    std::fs::write(&fc, foreign.cert.pem()).expect("written");
    std::fs::write(&fk, foreign.signing_key.serialize_pem()).expect("written");
    let (code, body, _) = forwarded(&["--cert", fc.to_str().expect("UTF-8"), "--key", fk.to_str().expect("UTF-8")]);
    assert_ne!(code, 0, "a foreign certificate is refused: {body}");

    // The token was for one join: a third machine with it is refused, in one clear line.
    let c_dir = tempfile::tempdir().expect("a data dir");
    let join_env = |t: &str| {
        vec![("MICRO_TLS", "auto".to_string()), ("MICRO_JOIN", a.proxy.clone()), ("MICRO_JOIN_TOKEN", t.to_string())]
    };
    let env: Vec<(&str, String)> = join_env(&token);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let printed = refused_start(c_dir.path(), &env).await;
    assert!(printed.contains("the join token is unknown, used or expired"), "{printed}");
    assert!(!c_dir.path().join("cluster.json").exists(), "nothing kept");
    // A forged secret with the right fingerprint, and junk: refused too.
    let fingerprint = token.split('.').nth(1).expect("a fingerprint");
    let forged = format!("micro-join1.{fingerprint}.{}", "f".repeat(64));
    let env: Vec<(&str, String)> = join_env(&forged);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(refused_start(c_dir.path(), &env).await.contains("unknown, used or expired"));
    let env: Vec<(&str, String)> = join_env("not-a-token");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(refused_start(c_dir.path(), &env).await.contains("not a join token"));
    // Joining without TLS, or with half the settings: refused before anything.
    let env = [("MICRO_JOIN", a.proxy.as_str()), ("MICRO_JOIN_TOKEN", spare.as_str())];
    assert!(refused_start(c_dir.path(), &env).await.contains("joining a cluster needs TLS"));
    let env = [("MICRO_TLS", "auto"), ("MICRO_JOIN", a.proxy.as_str())];
    assert!(refused_start(c_dir.path(), &env).await.contains("go together"));

    // A server of another cluster posing as a node of this one: the joining machine
    // checks it against the token's CA and gives it nothing (the spare token is unspent).
    let impostor = ServerProcess::builder(micro()).env("MICRO_TLS", "auto").start();
    let env = [("MICRO_TLS", "auto"), ("MICRO_JOIN", impostor.proxy.as_str()), ("MICRO_JOIN_TOKEN", spare.as_str())];
    let printed = refused_start(c_dir.path(), &env).await;
    assert!(printed.contains("not a node of the token's cluster"), "{printed}");
    impostor.stop();

    cli_b.ok(&["kill", "hello-py"]).await;
    b.stop();
    a.stop();
    schema.drop().await;
}

fn micro_server_node_name() -> String {
    "node.micro-cluster.internal".to_string()
}
