//! Defects 2 (critical), 10 and 13: attacks on the runtime, as a tenant would make them: an admin of namespace `shop`
//! runs code on the server (`micro run` of a manifest service) that tries to read the
//! server's data dir, keys and environment, other services' files and processes, and to
//! write outside its own dir; and asks the server to fetch sources from its own disk
//! and network. The real `micro` binaries, real sockets; listeners assert they captured
//! nothing.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use crate::runtime_harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// A listener that records every connection it gets.
struct Trap {
    port: u16,
    hits: Arc<Mutex<Vec<String>>>,
}

impl Trap {
    fn start(ip: &str) -> Trap {
        Trap::answering(ip, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into())
    }

    /// One that sends every caller elsewhere.
    fn redirecting(ip: &str, to: &str) -> Trap {
        Trap::answering(ip, format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n"))
    }

    fn answering(ip: &str, reply: String) -> Trap {
        let l = TcpListener::bind((ip, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap_or(0);
                h.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).to_string());
                let _ = s.write_all(reply.as_bytes());
            }
        });
        Trap { port, hits }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

/// A bare git repository served over dumb HTTP on `ip`, with a Python app in `svc/`.
struct GitServer {
    _dir: tempfile::TempDir,
    bare: std::path::PathBuf,
    child: std::process::Child,
    port: u16,
}

impl GitServer {
    fn start(ip: &str) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let bare = dir.path().join("app.git");
        std::fs::create_dir_all(work.join("svc")).unwrap();
        git(&["init", "-q"], &work);
        let app = "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
                   class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200)\n        \
                   self.send_header('content-length', '6')\n        self.end_headers()\n        self.wfile.write(b'cloned')\n\
                   HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()\n";
        std::fs::write(work.join("svc/app.py"), app).unwrap();
        std::fs::write(work.join("svc/micro.toml"), "run = \"python3 app.py\"\n[http]\n").unwrap();
        git(&["add", "."], &work);
        git(&["commit", "-q", "-m", "v1"], &work);
        git(&["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()], dir.path());
        git(&["update-server-info"], &bare);
        let serve = "import http.server, sys\n\
                     class H(http.server.SimpleHTTPRequestHandler):\n    def log_message(self, *a):\n        pass\n\
                     s = http.server.ThreadingHTTPServer((sys.argv[1], 0), lambda *a, **k: H(*a, directory=sys.argv[2], **k))\n\
                     print(s.server_address[1], flush=True)\ns.serve_forever()\n";
        let mut child = Command::new("python3")
            .args(["-c", serve, ip, dir.path().to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut port).unwrap();
        GitServer { _dir: dir, bare, child, port: port.trim().parse().unwrap() }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_admin_cannot_make_the_server_fetch_from_its_own_disk_or_network() {
    if !have(&["python3", "git"]) {
        return;
    }
    if !sandbox_available() {
        return; // without a sandbox tenants run nothing at all (the test above)
    }
    // The operator allows one internal host (127.0.0.2), where a git server is.
    let allowed = GitServer::start("127.0.0.2");
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[("MICRO_RUNTIME_ALLOW_HOSTS", "127.0.0.2")]).await;
    let shop = s.namespace_admin("shop", "keeper", "keeper-secret-1").await;
    let trap = Trap::start("127.0.0.1");
    let bare = allowed.bare.display().to_string();

    for (source, why) in [
        (format!("file://{bare}//svc"), "only for admins of namespace micro"),
        // (A path the CLI does not find here is the server's.)
        ("/srv/repositories/app.git".to_string(), "only for admins of namespace micro"),
        (format!("http://127.0.0.1:{}/app.git//svc", trap.port), "loopback"),
        (format!("http://localhost:{}/app.git//svc", trap.port), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{}/app.git", trap.port), "loopback"),
        ("http://169.254.169.254/latest/meta-data.git".to_string(), "link-local"),
        ("http://10.1.2.3/app.git".to_string(), "private"),
        ("http://0.0.0.0:1/app.git".to_string(), "unspecified"),
        (format!("ssh://git@127.0.0.1:{}/app.git", trap.port), "https:// or http://"),
        (format!("git://127.0.0.1:{}/app.git", trap.port), "https:// or http://"),
    ] {
        let err = shop.fails(&["run", &source, "--name", "fetched"]).await;
        assert!(err.contains(why) && !err.contains("fetched failed"), "{source}: {err}");
        assert!(shop.fails(&["status", "fetched"]).await.contains("no service"), "{source} left a service");
    }
    assert!(trap.hits().is_empty(), "the server connected to the internal host: {:?}", trap.hits());

    // An allowed host that redirects to a refused one: git does not follow.
    let redirector = Trap::redirecting("127.0.0.2", &format!("http://127.0.0.1:{}/app.git", trap.port));
    let err = shop.fails(&["run", &format!("http://127.0.0.2:{}/app.git", redirector.port), "--name", "moved"]).await;
    assert!(err.contains("moved failed") && err.contains("cloning"), "{err}");
    assert!(!redirector.hits().is_empty(), "git asked the allowed host");
    shop.ok(&["kill", "moved"]).await;

    // An allowed host: cloned in the sandbox, and run.
    let source = format!("http://127.0.0.2:{}/app.git//svc", allowed.port);
    let out = shop.ok(&["run", &source, "--name", "fetched"]).await;
    assert!(out.contains("fetched running"), "{out}");
    let r = micro_test::http(&s.api, "GET", "/fetched/", &[("micro-namespace", "shop")], b"").await;
    assert_eq!(r.body, "cloned");
    // An update of it from the server's disk is refused as well.
    let err = shop.fails(&["update", &format!("file://{bare}//svc"), "--name", "fetched"]).await;
    assert!(err.contains("only for admins of namespace micro"), "{err}");
    // micro's admin may fetch from the server's disk (its own).
    let out = s.ok(&["--namespace", "shop", "run", &format!("file://{bare}//svc"), "--name", "local"]).await;
    assert!(out.contains("local running"), "{out}");
    assert!(trap.hits().is_empty(), "{:?}", trap.hits());
    shop.ok(&["kill", "fetched"]).await;
    shop.ok(&["kill", "local"]).await;
}

/// A tenant's service that reports its user, tries another tenant's build and the
/// processes of others, forks past its plan's processes and then eats memory.
fn greedy(data: &Path, other: &str) -> tempfile::TempDir {
    let script = format!(
        r#"import glob, os, time
data = {data:?}
print("UID=%d" % os.getuid(), flush=True)
for f in glob.glob(data + "/runtime/builds/{other}/*/*/src/secret.txt") + [data + "/runtime/uids.json"]:
    try:
        print("READ", f, open(f).read()[:100], flush=True)
    except OSError:
        pass
try:
    print("LS", " ".join(os.listdir(data + "/runtime/builds")), flush=True)
except OSError:
    pass
for e in glob.glob("/proc/[0-9]*/environ"):
    try:
        if b"NEIGHBOUR" in open(e, "rb").read():
            print("ENV", e, flush=True)
    except OSError:
        pass
kids = []
for i in range(40):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
print("FORKED=%d" % len(kids), flush=True)
for k in kids:
    os.kill(k, 9)
    os.waitpid(k, 0)
print("EATING", flush=True)
x = bytearray(300 << 20)
print("ATE", len(x), flush=True)
time.sleep(600)
"#,
        data = data.display().to_string()
    );
    project(&[("micro.toml", "run = \"python3 greedy.py\"\n"), ("greedy.py", &script)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_runs_as_its_own_user_held_to_its_plans_memory_cpu_and_processes() {
    if !have(&["python3"]) || !sandbox_available() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[("MICRO_ADMIN_PASSWORD", "")]).await;
    // Tenant "other" runs a service with a secret in its build and its environment.
    let other = s.namespace_admin("other", "keeper", "keeper-secret-2").await;
    let mine = neighbour();
    let mark = format!("mark-{}", std::process::id());
    let env = format!("N=NEIGHBOUR-{mark}");
    let preload = format!("LD_PRELOAD=/nonexistent/{mark}.so");
    let out =
        other.ok(&["run", mine.path().to_str().unwrap(), "--name", "quiet", "--env", &env, "--env", &preload]).await;
    assert!(out.contains("quiet running"), "{out}");
    // What a tenant sets reaches its own code only: no process running as root (the
    // gate, bwrap, setpriv) has it in its environment, and no command line shows it.
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = proc_dir.path();
        let environ = std::fs::read(path.join("environ")).unwrap_or_default();
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        let has = |b: &[u8]| b.windows(mark.len()).any(|w| w == mark.as_bytes());
        assert!(!has(&cmdline), "{} shows the value on its command line", path.display());
        if has(&environ) {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata(&path).map(|m| m.uid()).unwrap_or(0);
            assert_ne!(uid, 0, "{} runs as root with the tenant's environment", path.display());
        }
    }
    // Tenant "shop" is on a plan: 64 MiB, a fifth of a core and 12 processes an instance.
    let quota = r#"{"plan": "community", "memory_mb": 64, "cpu_millis": 200, "pids": 12}"#;
    s.ok(&["--namespace", "micro", "config", "set", "quota.shop", quota]).await;
    let shop = s.namespace_admin("shop", "keeper", "keeper-secret-1").await;
    // A NUL in a value would be cut short on its way to the code: refused up front.
    let token = micro_test::login(&s.process.proxy, "shop", "keeper", "keeper-secret-1").await;
    let body = serde_json::json!({"service": {"name": "nul", "source": "https://example.com/app.git", "env": {"X": "a\u{0}b"}}});
    let (status, reply) =
        micro_test::post_json(&s.api, Some(&token), Some("shop"), "/runtime/runtime/create", &body).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["detail"].as_str().unwrap_or_default().contains("the value of X holds a NUL byte"), "{reply}");
    let greedy = greedy(data.path(), "other");
    // (It may be killed before it counts as started: `micro run` then says why.)
    let out = shop.run(&["run", greedy.path().to_str().unwrap(), "--name", "greedy"]).await;
    assert!(out.code == 0 || out.stderr.contains("over its limit of 64 MiB"), "{out:?}");
    let logs = shop.wait_log(&["logs", "greedy", "-n", "10000"], "EATING", Duration::from_secs(60)).await;

    // Users of their own: not root, not each other's.
    let uid = |logs: &str| logs.lines().find_map(|l| l.split("UID=").nth(1)).unwrap_or_default().trim().to_string();
    let status = shop.status("greedy").await;
    let theirs = other.status("quiet").await;
    let isolation = status["isolation"].as_str().unwrap().to_string();
    let shop_uid = uid(&logs);
    assert!(!shop_uid.is_empty() && shop_uid != "0", "{logs}");
    assert!(isolation.contains(&format!("uid {shop_uid} (namespace shop's own)")), "{isolation}");
    let other_isolation = theirs["isolation"].as_str().unwrap();
    assert!(other_isolation.contains("(namespace other's own)"), "{other_isolation}");
    assert!(!other_isolation.contains(&format!("uid {shop_uid} ")), "{other_isolation} vs {isolation}");
    // Nothing of the other tenant: its build, its environment, the runtime's files.
    assert!(!logs.contains("READ "), "{logs}");
    assert!(!logs.contains("ENV /proc"), "{logs}");
    assert!(!logs.lines().any(|l| l.starts_with("LS ") && l.contains("other")), "{logs}");

    // Limits held by the kernel where the server may write cgroups (root here, as in
    // CI); elsewhere the status says they are not.
    let limits = status["limits"].as_str().unwrap().to_string();
    assert!(limits.starts_with("memory 64 MiB, cpu 0.2, pids 12 ("), "{limits}");
    if isolation.contains("no cgroups") {
        assert!(limits.contains("no cgroups: memory by the runtime's watch"), "{limits}");
    } else {
        assert!(limits.contains("(cgroups v"), "{limits}");
        let forked: u32 =
            logs.lines().find_map(|l| l.strip_prefix("FORKED=")).and_then(|n| n.trim().parse().ok()).unwrap();
        assert!(forked < 12, "it started {forked} processes past its 12: {logs}");
    }
    // Past its memory it is killed, and told why.
    let s2 = shop
        .wait_status("greedy", Duration::from_secs(60), |v| v["error"].as_str().unwrap_or_default().contains("memory"))
        .await;
    let error = s2["error"].as_str().unwrap();
    assert!(error.contains("64 MiB"), "{error}");
    let logs = shop.ok(&["logs", "greedy", "-n", "10000"]).await;
    assert!(!logs.contains("ATE "), "it got its 300 MiB: {logs}");
    shop.ok(&["kill", "greedy"]).await;
    other.ok(&["kill", "quiet"]).await;
    // Its groups go with it.
    for hierarchy in ["memory", "pids", "cpu"] {
        let dir = Path::new("/sys/fs/cgroup").join(hierarchy).join("micro-runtime");
        let left: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(".shop.greedy-"))
            .collect();
        assert!(
            until(Duration::from_secs(10), || { left.iter().all(|n| !dir.join(n).exists()) }).await,
            "{left:?} left in {}",
            dir.display()
        );
    }
}

/// A tenant's service that tries to connect to each of `TARGETS` (`host:port`, comma
/// separated) and says which it reached.
fn prober() -> tempfile::TempDir {
    let script = r#"import os, socket, time
print("UID=%d" % os.getuid(), flush=True)
for t in os.environ["TARGETS"].split(","):
    host, port = t.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
        print("OPEN", t, flush=True)
    except OSError as e:
        print("SHUT", t, e, flush=True)
print("PROBED", flush=True)
time.sleep(600)
"#;
    project(&[("micro.toml", "run = \"python3 probe.py\"\n"), ("probe.py", script)])
}

/// The address this host reaches the internet from (none without a route).
fn host_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.123:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
}

/// Counts the connections a listener took.
struct Counted {
    address: String,
    hits: Arc<Mutex<u32>>,
}

impl Counted {
    fn start(bind: &str, probe_ip: &str) -> Counted {
        let l = TcpListener::bind(bind).unwrap();
        let address = format!("{probe_ip}:{}", l.local_addr().unwrap().port());
        let hits = Arc::new(Mutex::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                *h.lock().unwrap() += 1;
                drop(s);
            }
        });
        Counted { address, hits }
    }

    fn hits(&self) -> u32 {
        *self.hits.lock().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_code_reaches_no_other_tenant_nor_the_hosts_network_only_what_its_plan_allows() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !have(&["python3"]) || !sandbox_available() || !root {
        return; // per-namespace users (and so the packet filter) need a root server
    }
    let data = tempfile::tempdir().unwrap();
    // The operator allows one internal address (127.0.0.2), and holds tenants' nodes on
    // this host to their instances.
    let env =
        [("MICRO_RUNTIME_ALLOW_HOSTS", "127.0.0.2"), ("MICRO_RUNTIME_EGRESS", "on"), ("MICRO_NODE_LOCAL", "runtime")];
    let s = Server::start(data.path(), &env).await;
    // Another tenant's HTTP app, and what listens on the host: a database on loopback,
    // one on every address (reached by the host's own), and the operator's allowed one.
    let other = s.namespace_admin("other", "keeper", "keeper-secret-2").await;
    let mine = neighbour();
    assert!(other.ok(&["run", mine.path().to_str().unwrap(), "--name", "quiet"]).await.contains("quiet running"));
    let got = other.json(&["get", "service", "quiet", "-o", "json"]).await;
    let instance = got[0]["nodes"][0]["address"].as_str().unwrap().trim_start_matches("http://").to_string();
    let database = Counted::start("127.0.0.1:0", "127.0.0.1");
    let allowed = Counted::start("127.0.0.2:0", "127.0.0.2");
    let everywhere = host_address().map(|ip| Counted::start("0.0.0.0:0", &ip.to_string()));
    let proxy = s.process.proxy.clone();
    let gateway = s.api.clone();
    let mut targets = vec![instance.clone(), database.address.clone(), allowed.address.clone(), proxy, gateway];
    targets.extend(everywhere.iter().map(|e| e.address.clone()));
    let env = format!("TARGETS={}", targets.join(","));

    let shop = s.namespace_admin("shop", "keeper", "keeper-secret-1").await;
    let probe = prober();
    let run = |name: &'static str| {
        let (shop, env, path) = (&shop, env.clone(), probe.path().to_str().unwrap().to_string());
        async move {
            shop.ok(&["run", &path, "--name", name, "--env", &env]).await;
            shop.wait_log(&["logs", name, "-n", "1000"], "PROBED", Duration::from_secs(60)).await
        }
    };
    let reached = |logs: &str, t: &str| logs.lines().any(|l| l == format!("OPEN {t}"));
    let refused = |logs: &str, t: &str| logs.lines().any(|l| l.starts_with(&format!("SHUT {t} ")));

    // Egress `internet` (every plan's by default): the platform and what the operator
    // allows; not the other tenant's instance, nor anything else of the host's.
    let logs = run("probe").await;
    for t in [&instance, &database.address] {
        assert!(refused(&logs, t), "{t} reached: {logs}");
    }
    if let Some(e) = &everywhere {
        assert!(refused(&logs, &e.address), "the host's own address reached: {logs}");
    }
    assert!(reached(&logs, &allowed.address), "the operator's allowed address: {logs}");
    for t in [&s.process.proxy, &s.api] {
        assert!(reached(&logs, t), "the server's {t}: {logs}");
    }
    let isolation = shop.status("probe").await["isolation"].as_str().unwrap().to_string();
    assert!(isolation.contains("egress: internet"), "{isolation}");

    // A plan with egress `none`: the platform only, from the next start.
    s.ok(&["--namespace", "micro", "config", "set", "quota.shop", r#"{"plan": "community", "egress": "none"}"#]).await;
    shop.ok(&["kill", "probe"]).await;
    let logs = run("probe2").await;
    assert!(refused(&logs, &allowed.address), "egress none reached {}: {logs}", allowed.address);
    assert!(refused(&logs, &instance) && refused(&logs, &database.address), "{logs}");
    assert!(reached(&logs, &s.process.proxy), "{logs}");
    let isolation = shop.status("probe2").await["isolation"].as_str().unwrap().to_string();
    assert!(isolation.contains("egress: none"), "{isolation}");

    // Nothing got through to the host's listeners (the allowed one took the first run's).
    assert_eq!(database.hits(), 0);
    assert!(everywhere.iter().all(|e| e.hits() == 0));
    assert_eq!(allowed.hits(), 1);
    // The other tenant's app still answers through the gateway.
    let r = micro_test::http(&s.api, "GET", "/quiet/", &[("micro-namespace", "other")], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Nor can a tenant point a service of its own at the other's instance, or at what
    // listens on the host, to have the gateway or the proxy connect there for it.
    let token = micro_test::login(&s.process.proxy, "shop", "keeper", "keeper-secret-1").await;
    for (address, protocol) in [
        (format!("http://{instance}"), "http"),
        (format!("http://{}", database.address), "http"),
        (database.address.clone(), "grpc"),
        ("http://localhost:1".to_string(), "http"),
    ] {
        let err = crate::register(&s.process.proxy, Some(&token), "shop", "spy", "spy-1", &address, protocol).await;
        assert_eq!(err.map_err(|e| e.code()), Err(micro::Code::PermissionDenied), "{address}");
    }
    let r = micro_test::http(&s.api, "GET", "/spy/", &[("micro-namespace", "shop")], b"").await;
    assert_ne!(r.status, 200, "{}", r.body);
    assert_eq!(database.hits(), 0);
    // A framework service the runtime runs for the tenant (the helloworld example's
    // binary, run by a manifest) listens where it is told, registers, and answers through
    // the gateway.
    let hello = project(&[("micro.toml", "name = \"helloworld\"\nrun = \"./helloworld\"\n")]);
    std::fs::copy(micro_test::sibling_binary("helloworld"), hello.path().join("helloworld")).unwrap();
    let out = shop.ok(&["run", hello.path().to_str().unwrap(), "--name", "helloworld"]).await;
    assert!(out.contains("helloworld running"), "{out}");
    let up = micro_test::eventually(Duration::from_secs(20), || async {
        let headers = [("micro-namespace", "shop"), ("content-type", "application/json")];
        micro_test::http(&s.api, "POST", "/helloworld/greeter/hello", &headers, br#"{"name":"shop"}"#).await.status
            == 200
    })
    .await;
    assert!(up, "{}", shop.ok(&["logs", "helloworld", "-n", "50"]).await);
    shop.ok(&["kill", "helloworld"]).await;
    shop.ok(&["kill", "probe2"]).await;
    other.ok(&["kill", "quiet"]).await;
}
