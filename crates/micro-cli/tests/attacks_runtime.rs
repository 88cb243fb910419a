//! Attacks on the runtime, as a tenant would make them: an admin of namespace `shop`
//! runs code on the server (`micro run` of a manifest service) that tries to read the
//! server's data dir, keys and environment, other services' files and processes, and to
//! write outside its own dir. The real `micro` binaries, real sockets.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod runtime_harness;

use runtime_harness::*;
use std::path::Path;
use std::time::Duration;

const CANARY_ENV: &str = "canary-env-value-7f3a";
const CONFIG_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const NEIGHBOUR_SECRET: &str = "neighbour-secret-file-91c2";
const NEIGHBOUR_ENV: &str = "neighbour-secret-env-44d1";

/// What the server is started with: a generated admin password (in the data dir), a
/// config key, and a secret of the host's environment.
fn server_env() -> Vec<(&'static str, &'static str)> {
    vec![("MICRO_ADMIN_PASSWORD", ""), ("MICRO_CONFIG_KEY", CONFIG_KEY), ("AWS_SECRET_ACCESS_KEY", CANARY_ENV)]
}

/// The service of micro's admin: an HTTP app with a secret file and a secret variable.
fn neighbour() -> tempfile::TempDir {
    let app = "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
               class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        b = ('uid=%d' % os.getuid()).encode()\n        \
               self.send_response(200)\n        self.send_header('content-length', str(len(b)))\n        self.end_headers()\n        \
               self.wfile.write(b)\n\
               HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()\n";
    project(&[("micro.toml", "run = \"python3 app.py\"\n[http]\n"), ("app.py", app), ("secret.txt", NEIGHBOUR_SECRET)])
}

/// The attacker's service: it reports what it could read and write (files named with
/// `nonce`, so what an earlier run left cannot pass for this one's).
fn attacker(data: &Path, nonce: &str) -> tempfile::TempDir {
    let data = data.display();
    let script = format!(
        r#"echo "UID=$(id -u)"
for f in {data}/admin.password {data}/keys/* {data}/*.db {data}/runtime/builds/micro/*/*/src/secret.txt /root/.bash_history /etc/shadow; do
  if [ -r "$f" ]; then echo "READ $f: $(head -c 300 "$f" | tr -cd '[:print:]')"; fi
done
ls -la {data} {data}/runtime 2>/dev/null | sed 's/^/LS /'
for e in /proc/[0-9]*/environ; do
  tr '\0' '\n' < "$e" 2>/dev/null | sed "s|^|ENV $e |"
done
env | sed 's/^/OWNENV /'
ps -eo pid,user,args 2>/dev/null | sed 's/^/PS /'
for f in {data}/pwned-{nonce} /etc/pwned-{nonce} /usr/local/bin/pwned-{nonce} /root/pwned-{nonce} /var/tmp/pwned-{nonce}; do
  if echo pwned > "$f" 2>/dev/null; then echo "WROTE $f"; fi
done
echo ATTACK-DONE
exec sleep 600
"#
    );
    project(&[("micro.toml", "run = \"sh attack.sh\"\n"), ("attack.sh", &script)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_admins_service_gets_nothing_of_the_server_and_runs_unprivileged() {
    if !have(&["python3"]) {
        return;
    }
    let sandboxed = sandbox_available();
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &server_env()).await;
    let password = s.admin_password();
    assert_ne!(password, ADMIN_PASSWORD, "a generated password, kept in the data dir");

    // micro's admin runs a service: it runs as before (sandboxed too, unprivileged).
    let mine = neighbour();
    let out = s
        .ok(&["run", mine.path().to_str().unwrap(), "--name", "neighbour", "--env", &format!("N={NEIGHBOUR_ENV}")])
        .await;
    assert!(out.contains("neighbour running"), "{out}");
    let reply = s.get("/neighbour/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let status = s.status("neighbour").await;
    let table = s.ok(&["status"]).await;

    let shop = s.namespace_admin("shop", "keeper", "keeper-secret-1").await;
    let nonce = data.path().file_name().unwrap().to_string_lossy().trim_start_matches('.').to_string();
    let evil = attacker(data.path(), &nonce);
    let run = ["run", evil.path().to_str().unwrap(), "--name", "evil"];
    if !sandboxed {
        let err = shop.fails(&run).await;
        assert!(err.contains("no sandbox") && err.contains("namespace micro"), "{err}");
        assert!(status["isolation"].as_str().unwrap().starts_with("none"), "{status}");
        return;
    }
    let out = shop.ok(&run).await;
    assert!(out.contains("evil running"), "{out}");
    let logs = shop.wait_log(&["logs", "evil", "-n", "10000"], "ATTACK-DONE", Duration::from_secs(30)).await;
    // Not root, nothing read, nothing written.
    let uid = logs.lines().find_map(|l| l.split("UID=").nth(1)).unwrap_or_default().trim().to_string();
    assert!(!uid.is_empty() && uid != "0", "runs as {uid:?}: {logs}");
    assert!(!logs.contains("READ "), "{logs}");
    assert!(!logs.contains("WROTE "), "{logs}");
    let keys: Vec<String> = std::fs::read_dir(data.path().join("keys"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(!keys.is_empty(), "the server has keys to steal");
    let mut secrets =
        vec![password.clone(), CONFIG_KEY.into(), CANARY_ENV.into(), NEIGHBOUR_SECRET.into(), NEIGHBOUR_ENV.into()];
    for k in &keys {
        secrets.extend(k.lines().filter(|l| l.len() > 20 && !l.starts_with("-----")).map(str::to_string));
    }
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "the attacker got {secret:?}: {logs}");
    }
    assert!(!logs.contains("MICRO_ADMIN_PASSWORD") && !logs.contains("MICRO_CONFIG_KEY"), "{logs}");
    // Of the data dir it sees the way to its own build, nothing else.
    for l in logs.lines().filter_map(|l| l.strip_prefix("LS ")) {
        let last = l.split_whitespace().last().unwrap_or_default();
        let seen = l.is_empty()
            || l.ends_with(':')
            || l.starts_with("total")
            || [".", "..", "runtime", "builds"].contains(&last);
        assert!(seen, "the attacker sees {l:?} in the data dir: {logs}");
    }
    // It sees its own processes only.
    assert!(
        !logs.lines().any(|l| l.starts_with("PS ") && (l.contains("micro server") || l.contains("app.py"))),
        "{logs}"
    );
    for dir in [data.path(), Path::new("/etc"), Path::new("/usr/local/bin"), Path::new("/root"), Path::new("/var/tmp")]
    {
        let f = dir.join(format!("pwned-{nonce}"));
        assert!(!f.exists(), "{} was written", f.display());
    }
    // micro's own services run unprivileged too, and as before; the status says how.
    assert_ne!(reply.body, "uid=0", "{}", reply.body);
    assert!(reply.body.starts_with("uid="), "{}", reply.body);
    assert!(status["isolation"].as_str().unwrap().contains("bwrap"), "{status}");
    assert!(table.contains("isolation: sandbox: bwrap"), "{table}");
    let evil_status = shop.status("evil").await;
    assert!(evil_status["isolation"].as_str().unwrap().contains("bwrap"), "{evil_status}");
    assert_eq!(s.get("/neighbour/").await.status, 200);
    shop.ok(&["kill", "evil"]).await;
    s.ok(&["kill", "neighbour"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sandbox_only_micros_admins_run_code() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[("MICRO_RUNTIME_SANDBOX", "none")]).await;
    let shop = s.namespace_admin("shop", "keeper", "keeper-secret-1").await;
    let svc = project(&[("micro.toml", "run = \"sleep 600\"\n")]);
    let path = svc.path().to_str().unwrap();
    let err = shop.fails(&["run", path, "--name", "refused"]).await;
    assert!(
        err.contains("no sandbox")
            && err.contains("admins of namespace micro")
            && err.contains("MICRO_RUNTIME_SANDBOX=none"),
        "{err}"
    );
    // micro's admin may, in shop too; shop's admin may not update it.
    let out = s.ok(&["--namespace", "shop", "run", path, "--name", "ops"]).await;
    assert!(out.contains("ops running"), "{out}");
    let err = shop.fails(&["update", path, "--name", "ops"]).await;
    assert!(err.contains("no sandbox"), "{err}");
    let status = s.ok(&["--namespace", "shop", "status"]).await;
    assert!(status.contains("isolation: none (the operator turned it off"), "{status}");
    s.ok(&["--namespace", "shop", "kill", "ops"]).await;
}
