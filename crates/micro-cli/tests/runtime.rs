//! The runtime as a user drives it: the real `micro server` binary over a temp data
//! dir, and the `micro` CLI running services from a local folder, a git repository at a
//! ref, and a manifest in another language (Python); statuses, logs, crashes, memory
//! limits, replicas, rolling updates under load, restarts after SIGKILL, and a
//! service's own credentials.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

mod runtime_harness;

use runtime_harness::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_service_from_a_local_folder_runs_survives_sigkill_and_is_killed() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[]).await;
    let folder = repo_root().join("examples/helloworld");
    let folder = folder.to_str().unwrap();

    // It goes through the statuses to running (a cold build takes minutes).
    let mut run = s.command(&["run", folder, "--timeout", "20m"]);
    let out = tokio::task::spawn_blocking(move || run.output().unwrap()).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "micro run\nstdout: {stdout}\nstderr: {stderr}");
    // The statuses the CLI saw come in lifecycle order (a short one may pass between polls).
    let order = ["pending", "building", "starting"];
    let seen: Vec<usize> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("helloworld: "))
        .map(|st| order.iter().position(|o| *o == st).unwrap_or_else(|| panic!("unexpected status {st}: {stderr}")))
        .collect();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {stderr}");
    assert!(stderr.contains("helloworld: building"), "{stderr}");
    assert!(stdout.contains("helloworld running"), "{stdout}");
    let status = s.status("helloworld").await;
    assert_eq!(status["status"], "running");
    assert!(status["build"].as_str().unwrap().starts_with("cargo "), "{status}");
    let table = s.ok(&["status"]).await;
    for column in ["NAME", "VERSION", "SOURCE", "STATUS", "BUILD", "UPDATED", "METADATA"] {
        assert!(table.contains(column), "{table}");
    }

    // Callable through the CLI and the gateway.
    let reply = s.ok(&["call", "helloworld", "Greeter.Hello", r#"{"name":"Ada"}"#]).await;
    assert!(reply.contains("Hello Ada"), "{reply}");
    let r = micro_test::http(&s.api, "POST", "/helloworld/greeter/hello", &[], br#"{"name":"Bo"}"#).await;
    assert_eq!(r.json()["message"], "Hello Bo", "{}", r.body);
    // Its log holds its own lines (and no colour codes); the build's holds cargo's.
    let logs = s.ok(&["logs", "helloworld"]).await;
    assert!(logs.contains("registered") && !logs.contains('\x1b'), "{logs}");
    let build = s.ok(&["logs", "--build", "helloworld"]).await;
    assert!(build.contains("Compiling helloworld") || build.contains("Finished"), "{build}");

    // `micro logs -f` shows its lines live: an update rolls the instance (with the
    // build kept when the folder is unchanged), and the new one's start appears as it
    // happens.
    let before = s.nodes("helloworld").await;
    let follow = Follow::start(s.command(&["logs", "-f", "-n", "1", "helloworld"]));
    let out = s.ok(&["update", folder]).await;
    assert!(out.contains("helloworld running"), "{out}");
    let after = s.nodes("helloworld").await;
    assert_eq!(after.len(), 1);
    assert_ne!(before, after, "a new instance");
    assert!(follow.saw(&format!("node={}", after[0]), Duration::from_secs(10)).await, "live: {}", follow.text());
    drop(follow);
    let status = s.status("helloworld").await;

    // SIGKILL the server: the service comes back without a build, the old process gone.
    let old_pid = status["nodes"][0]["pid"].as_u64().unwrap();
    let s = s.kill_and_restart().await;
    let back = s.wait_status("helloworld", Duration::from_secs(60), |v| v["status"] == "running").await;
    assert_eq!(back["build"], "cached", "{back}");
    assert_eq!(back["version"], status["version"]);
    assert!(!pid_alive(old_pid), "the instance of the killed server was stopped");
    let reply = s.ok(&["call", "helloworld", "Greeter.Hello", r#"{"name":"Cy"}"#]).await;
    assert!(reply.contains("Hello Cy"), "{reply}");

    // Kill: it stops and leaves the registry.
    let pid = back["nodes"][0]["pid"].as_u64().unwrap();
    s.ok(&["kill", "helloworld"]).await;
    assert!(s.nodes("helloworld").await.is_empty(), "still registered");
    assert!(!pid_alive(pid), "still running");
    let err = s.fails(&["status", "helloworld"]).await;
    assert!(err.contains("no service helloworld"), "{err}");
    let err = s.fails(&["kill", "helloworld"]).await;
    assert!(err.contains("no service helloworld"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_service_runs_with_replicas_live_logs_and_a_rolling_update_under_load() {
    if !have(&["python3"]) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[]).await;
    let folder = repo_root().join("examples/hello-py");
    let folder = folder.to_str().unwrap();
    let out = s.ok(&["run", folder, "--instances", "3"]).await;
    assert!(out.contains("hello-py running"), "{out}");

    // Three registered nodes share the calls.
    let nodes = s.nodes("hello-py").await;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        let r = s.get("/hello-py/hi").await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.json()["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 3, "calls reach every instance: {seen:?}");
    let r = micro_test::http(&s.api, "POST", "/hello-py", &[], br#"{"name":"Ada"}"#).await;
    assert_eq!(r.json()["message"], "hello Ada", "{}", r.body);

    // `micro logs -f` shows lines as they are written.
    let follow = Follow::start(s.command(&["logs", "-f", "-n", "1", "hello-py"]));
    // Following once the last line is shown.
    assert!(until(Duration::from_secs(10), || !follow.text().is_empty()).await, "micro logs -f shows nothing");
    let _ = s.get("/hello-py/live-marker").await;
    assert!(follow.saw("GET /live-marker", Duration::from_secs(5)).await, "live: {}", follow.text());
    drop(follow);

    // A rolling update under a continuous load: no call fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (okays, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let load = {
        let (stop, okays, failures, api) = (stop.clone(), okays.clone(), failures.clone(), s.api.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = micro_test::http(&api, "GET", "/hello-py/load", &[], b"").await;
                if r.status == 200 {
                    okays.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().unwrap().push(format!("{} {}", r.status, r.body));
                }
            }
        })
    };
    // The load runs before, during and after the update.
    let calls = |n: u64| {
        let okays = okays.clone();
        until(Duration::from_secs(10), move || okays.load(Ordering::Relaxed) >= n)
    };
    assert!(calls(20).await, "the load runs");
    let out = s.ok(&["update", folder, "--env", "GREETING_VERSION=2"]).await;
    assert!(out.contains("hello-py running"), "{out}");
    let after = okays.load(Ordering::Relaxed) + 20;
    assert!(calls(after).await, "the load runs after the update");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed calls of {}: {:?}",
        failures.len(),
        okays.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(okays.load(Ordering::Relaxed) > 20, "the load ran");
    let after = s.nodes("hello-py").await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|n| !nodes.contains(n)), "every instance was replaced: {nodes:?} → {after:?}");
    assert_eq!(s.get("/hello-py/v").await.json()["version"], "2");

    // Bad input: one clear line, nothing changes.
    let err = s.fails(&["run", folder]).await;
    assert!(err.contains("already runs"), "{err}");
    let err = s.fails(&["run", "./no/such/folder"]).await;
    assert!(err.contains("no such file or folder"), "{err}");
    let err = s.fails(&["run", folder, "--name", "Bad Name"]).await;
    assert!(err.contains("invalid service name"), "{err}");
    let err = s.fails(&["run", folder, "--name", "x", "--memory", "lots"]).await;
    assert!(err.contains("--memory"), "{err}");
    let err = s.fails(&["run", folder, "--name", "y", "--env", "NOEQUALS"]).await;
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = s.fails(&["logs", "nope"]).await;
    assert!(err.contains("no service nope"), "{err}");
    assert_eq!(s.status("hello-py").await["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_sources_build_errors_crashes_and_memory_limits() {
    if !have(&["python3", "git"]) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[("MICRO_RUNTIME_MAX_SERVICES", "5")]).await;

    // A git repository (bare, local) with two tagged versions of a Python app.
    let git_dir = tempfile::tempdir().unwrap();
    let work = git_dir.path().join("work");
    let bare = git_dir.path().join("app.git");
    std::fs::create_dir_all(work.join("svc")).unwrap();
    git(&["init", "-q"], &work);
    let app = |v: &str| {
        format!(
            "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
             class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        b = b'{v}'\n        self.send_response(200)\n        \
             self.send_header('content-length', str(len(b)))\n        self.end_headers()\n        self.wfile.write(b)\n\
             HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
        )
    };
    std::fs::write(work.join("svc/micro.toml"), "run = \"python3 app.py\"\n[http]\n").unwrap();
    for v in ["v1", "v2", "v3"] {
        std::fs::write(work.join("svc/app.py"), app(v)).unwrap();
        git(&["add", "."], &work);
        git(&["commit", "-q", "-m", v], &work);
        git(&["tag", v], &work);
    }
    git(&["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()], git_dir.path());
    let url = format!("file://{}//svc@v1", bare.display());
    let out = s.ok(&["run", &url, "--name", "gitsvc"]).await;
    assert!(out.contains("gitsvc running"), "{out}");
    assert_eq!(s.get("/gitsvc/").await.body, "v1", "the tagged ref runs");
    let out = s.ok(&["update", &format!("file://{}//svc@v2", bare.display()), "--name", "gitsvc"]).await;
    assert!(out.contains("gitsvc running"), "{out}");
    assert_eq!(s.get("/gitsvc/").await.body, "v2");
    // A third version: the running build and the one before are kept, older ones go.
    let out = s.ok(&["update", &format!("file://{}//svc@v3", bare.display()), "--name", "gitsvc"]).await;
    assert!(out.contains("gitsvc running"), "{out}");
    assert_eq!(s.get("/gitsvc/").await.body, "v3");
    // Pruned once the old instances have stopped, which may be just after the CLI returns.
    let builds_dir = data.path().join("runtime/builds/micro/gitsvc");
    let builds = || std::fs::read_dir(&builds_dir).map(|d| d.count()).unwrap_or(0);
    assert!(until(Duration::from_secs(10), || builds() == 2).await, "builds kept: {}", builds());
    let err = s.fails(&["run", &format!("file://{}@nope", bare.display()), "--name", "badref"]).await;
    assert!(err.contains("nope"), "{err}");
    s.ok(&["kill", "badref"]).await;

    // A private repository over HTTP: refused without credentials, cloned with the
    // token the user stored (`micro user config set git.credentials.HOST`).
    git(&["update-server-info"], &bare);
    const TOKEN: &str = "s3cret-git-token-123";
    let auth_server = r#"
import base64, http.server, sys
root, token = sys.argv[1], sys.argv[2]
want = "Basic " + base64.b64encode(("x-access-token:" + token).encode()).decode()
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def do_GET(self):
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("content-length", "0")
            self.end_headers()
            return
        super().do_GET()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut http_git = Command::new("python3")
        .args(["-c", auth_server, git_dir.path().to_str().unwrap(), TOKEN])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut port = String::new();
    BufReader::new(http_git.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let private = format!("http://127.0.0.1:{}/app.git//svc@v1", port.trim());
    let err = s.fails(&["run", &private, "--name", "private"]).await;
    assert!(err.contains("private failed") && err.contains("cloning"), "{err}");
    s.ok(&["kill", "private"]).await;
    s.ok(&["user", "config", "set", "git.credentials.127.0.0.1", TOKEN]).await;
    assert!(s.ok(&["user", "config", "get", "git.credentials.127.0.0.1"]).await.contains("is set"));
    let err = s.fails(&["user", "config", "set", "git.password", "x"]).await;
    assert!(err.contains("git.credentials.HOST"), "{err}");
    let out = s.ok(&["run", &private, "--name", "private"]).await;
    assert!(out.contains("private running"), "{out}");
    assert_eq!(s.get("/private/").await.body, "v1");
    let shown = s.ok(&["status", "-o", "json"]).await + &s.ok(&["logs", "--build", "private"]).await;
    assert!(!shown.contains(TOKEN), "the token is never shown");
    let _ = http_git.kill();
    let _ = http_git.wait();

    // A compile error: status error with the compiler's message, also in the build log.
    let broken = project(&[
        ("Cargo.toml", "[package]\nname = \"broken\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n"),
        ("src/main.rs", "fn main() {\n    let x: u32 = \"not a number\";\n}\n"),
    ]);
    let err = s.fails(&["run", broken.path().to_str().unwrap()]).await;
    assert!(err.contains("broken failed") && err.contains("mismatched types"), "{err}");
    let status = s.ok(&["status", "broken"]).await;
    assert!(status.contains("error") && status.contains("mismatched types"), "{status}");
    let build = s.ok(&["logs", "--build", "broken"]).await;
    assert!(build.contains("error[E0308]: mismatched types"), "{build}");
    s.ok(&["kill", "broken"]).await;

    // A kill in the middle of a build cancels it, its processes too.
    // (A length no other test's process has: pgrep sees every test's processes.)
    let slow = project(&[("micro.toml", "build = \"sleep 313\"\nrun = \"true\"\n")]);
    s.ok(&["run", slow.path().to_str().unwrap(), "--name", "slow", "--detach"]).await;
    s.wait_status("slow", Duration::from_secs(10), |v| v["status"] == "building").await;
    let started = Instant::now();
    s.ok(&["kill", "slow"]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "kill waited for the build");
    // Its process is killed with it (and may take a moment to be gone: seconds on a
    // loaded 2-core machine, where 5 s was once not enough).
    let building = || Command::new("pgrep").args(["-f", "sleep 313"]).output().unwrap().stdout;
    assert!(
        until(Duration::from_secs(20), || building().is_empty()).await,
        "the build's process is gone: {}",
        String::from_utf8_lossy(&building())
    );

    // A crashing service is restarted with backoff, its restarts counted.
    let crash = project(&[("micro.toml", "run = \"echo starting; exit 3\"\n")]);
    let _ = s.run(&["run", crash.path().to_str().unwrap(), "--name", "crasher", "--detach"]).await;
    let v = s.wait_status("crasher", Duration::from_secs(30), |v| v["restarts"].as_u64().unwrap_or(0) >= 3).await;
    assert!(v["error"].as_str().unwrap().contains("exited with code 3"), "{v}");
    let logs = s.ok(&["logs", "crasher"]).await;
    assert!(logs.contains("starting") && logs.contains("restart 2 in 1.0s"), "backoff grows: {logs}");
    s.ok(&["kill", "crasher"]).await;

    // One that allocates past its memory limit is stopped, and the reason shown.
    let hog = project(&[(
        "micro.toml",
        "run = \"python3 -c 'import time; x = bytearray(200 << 20); x[::4096] = b\\\"x\\\" * len(x[::4096]); time.sleep(60)'\"\n",
    )]);
    s.ok(&["run", hog.path().to_str().unwrap(), "--name", "hog", "--memory", "64M", "--detach"]).await;
    let v =
        s.wait_status("hog", Duration::from_secs(30), |v| v["error"].as_str().unwrap_or("").contains("memory")).await;
    assert!(v["error"].as_str().unwrap().contains("over its limit of 64 MiB"), "{v}");
    assert!(v["limits"].as_str().unwrap().contains("memory"), "{v}");

    // The namespace's quota on services (5 here: gitsvc, private, hog, and two more).
    for n in ["q1", "q2"] {
        s.ok(&["run", crash.path().to_str().unwrap(), "--name", n, "--detach"]).await;
    }
    let err = s.fails(&["run", crash.path().to_str().unwrap(), "--name", "q3", "--detach"]).await;
    assert!(err.contains("runs 5 services, this server's most (MICRO_RUNTIME_MAX_SERVICES)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_uses_its_own_namespace_with_its_own_account_and_is_refused_in_another() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[]).await;
    s.ok(&["namespace", "create", "alpha"]).await;
    s.ok(&["namespace", "create", "beta"]).await;
    // The service logs in with the credentials the runtime gave it, then tries the
    // store, config and events of its namespace and of another, and reports.
    let micro = env!("CARGO_BIN_EXE_micro");
    let script = format!(
        "set -u\n\
         export HOME=$(mktemp -d)\n\
         M='{micro} --server '$MICRO_SERVER\n\
         $M login --namespace $MICRO_NAMESPACE --id $MICRO_AUTH_ID --password $MICRO_AUTH_SECRET >/dev/null 2>&1 || echo LOGIN-FAILED\n\
         try() {{ if \"$@\" >/dev/null 2>&1; then echo \"OK $*\"; else echo \"REFUSED $*\"; fi; }}\n\
         [ \"$DB_PASSWORD\" = \"hunter2-secret\" ] && echo SECRET-OK\n\
         try $M store write probe 1\n\
         try $M config set probe.value 1\n\
         try $M publish probe '{{\"a\":1}}'\n\
         try $M --namespace beta store write probe 1\n\
         try $M --namespace beta config set probe.value 1\n\
         try $M --namespace beta publish probe '{{\"a\":1}}'\n\
         echo DONE\n\
         sleep 60\n"
    );
    let svc = project(&[("micro.toml", "run = \"sh probe.sh\"\n"), ("probe.sh", &script)]);
    s.ok(&["--namespace", "alpha", "config", "set", "db.password", "\"hunter2-secret\"", "--secret"]).await;
    let err = s
        .fails(&[
            "--namespace",
            "alpha",
            "run",
            svc.path().to_str().unwrap(),
            "--name",
            "p",
            "--secret",
            "X=not a path",
        ])
        .await;
    assert!(err.contains("malformed path"), "{err}");
    let out = s
        .ok(&[
            "--namespace",
            "alpha",
            "run",
            svc.path().to_str().unwrap(),
            "--name",
            "prober",
            "--secret",
            "DB_PASSWORD=db.password",
        ])
        .await;
    assert!(out.contains("prober running"), "{out}");
    let logs = s.wait_log(&["--namespace", "alpha", "logs", "prober"], "DONE", Duration::from_secs(30)).await;
    let logs = logs.replace(micro, "micro");
    assert!(!logs.contains("LOGIN-FAILED"), "{logs}");
    assert!(logs.contains("SECRET-OK"), "the secret from config is in its environment: {logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
    for what in ["store write", "config set", "publish"] {
        assert!(
            logs.lines().any(|l| l.starts_with("OK ") && l.contains(what) && !l.contains("beta")),
            "{what}: {logs}"
        );
        assert!(
            logs.lines().any(|l| l.starts_with("REFUSED ") && l.contains(what) && l.contains("--namespace beta")),
            "{what} in beta: {logs}"
        );
    }
    // The write landed in alpha only.
    let out = s.ok(&["--namespace", "alpha", "store", "read", "probe", "--table", "default"]).await;
    assert!(out.contains('1'), "{out}");
    let out = s.run(&["--namespace", "beta", "store", "read", "probe"]).await;
    assert!(out.code != 0 || !out.stdout.contains('1'), "nothing in beta: {out:?}");
    // The runtime is for admins: the service's own account cannot run services.
    let err = s.fails(&["--namespace", "beta", "status", "prober"]).await;
    assert!(err.contains("no service prober"), "{err}");
}

/// The pids of the instances a server's runtime started (from its pid files).
fn instance_pids(data: &Path) -> Vec<u32> {
    fn walk(dir: &Path, out: &mut Vec<u32>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pid")
                && let Some(pid) =
                    std::fs::read_to_string(&p).ok().and_then(|t| t.split_whitespace().next()?.parse().ok())
            {
                out.push(pid);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("runtime").join("run"), &mut out);
    out
}

/// Two servers sharing PostgreSQL and NATS act as one runtime: `micro run` through A runs
/// the service once (on the elected leader, A), B's CLI and gateway reach it, and when A
/// dies (SIGKILL, its instances with it, as when its machine goes) B takes over and runs
/// the service again from the shared upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_run_a_service_once_and_survive_the_leaders_death() {
    if !have(&["python3"]) {
        return;
    }
    let (Some(pg), Some(nats)) =
        (micro_test::backend_url("MICRO_TEST_POSTGRES"), micro_test::backend_url("MICRO_TEST_NATS"))
    else {
        return;
    };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_cluster_{}", std::process::id())).await;
    let backend = format!("{},{nats}", schema.url);
    let env = [("MICRO_BACKEND", backend.as_str())];
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A starts alone, so it is elected; B joins. B is reached at another loopback
    // address, as a node on another machine would be at its own.
    let a = Server::start(data_a.path(), &env).await;
    let b_env = [env[0], ("MICRO_ADVERTISE_HOST", "127.0.0.2"), ("MICRO_PROXY_ADDRESS", "127.0.0.2:0")];
    let b = Server::start(data_b.path(), &b_env).await;

    let folder = repo_root().join("examples/hello-py");
    let out = a.ok(&["run", folder.to_str().unwrap()]).await;
    assert!(out.contains("hello-py running"), "{out}");
    // Through B: the same status, the service routed, its logs.
    assert_eq!(b.status("hello-py").await["status"], "running");
    let r = b.get("/hello-py/through-b").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let logs = b.ok(&["logs", "hello-py"]).await;
    assert!(logs.contains("GET /through-b"), "B shows the leader's logs: {logs}");
    // Once: one instance, on A; B runs none of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.nodes("hello-py").await.len(), 1);
    let on_a = instance_pids(data_a.path());
    assert_eq!(on_a.len(), 1, "A runs one instance: {on_a:?}");
    assert!(instance_pids(data_b.path()).is_empty(), "B runs nothing while A leads");
    let err = b.fails(&["run", folder.to_str().unwrap()]).await;
    assert!(err.contains("already runs"), "the records are shared: {err}");

    // A's machine goes: the server and its instances die at once.
    let _a = a.kill();
    for pid in &on_a {
        // Each instance leads its own process group (its shell and the app under it).
        let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
    }
    let started = Instant::now();
    let mut back = false;
    while started.elapsed() < Duration::from_secs(90) {
        let r = b.get("/hello-py/after").await;
        if r.status == 200 && !instance_pids(data_b.path()).is_empty() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(back, "B runs the service after A died");
    assert_eq!(b.status("hello-py").await["status"], "running");
    assert_eq!(instance_pids(data_b.path()).len(), 1, "once, on B");
    let nodes = b.ok(&["get", "service", "hello-py", "-o", "json"]).await;
    assert!(nodes.contains("127.0.0.2:"), "B's instance is registered at B's host: {nodes}");
    eprintln!("failover took {:?}", started.elapsed());
    b.ok(&["kill", "hello-py"]).await;
    drop(b);
    schema.drop().await;
}

/// A Python HTTP app (answering `up` on `$PORT`) started by `sh -c` with `marker` on its
/// command line, so its processes can be found.
fn wrapped_app(marker: &str) -> tempfile::TempDir {
    let app = "import os, sys\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
               class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200)\n        \
               self.send_header('content-length', '2')\n        self.end_headers()\n        self.wfile.write(b'up')\n\
               HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()\n";
    // Two commands: the shell stays, as a wrapper, with the app its child.
    let manifest = format!("run = \"python3 app.py {marker}; echo wrapper-done\"\n[http]\n");
    project(&[("micro.toml", &manifest), ("app.py", app)])
}

/// The app's processes: (its wrapper shells, its pythons).
fn app_processes(marker: &str) -> (Vec<u64>, Vec<u64>) {
    let all = processes_with(marker);
    let of = |name: &str| all.iter().filter(|p| p.1.starts_with(name)).map(|p| p.0).collect::<Vec<_>>();
    (of("sh"), of("python"))
}

/// Killing an instance's wrapper takes the app under it too (no orphan listening beside
/// the restarted instance), and what a SIGKILLed server left running is stopped when it
/// starts again.
async fn a_killed_wrapper_and_a_killed_server_leave_no_process_behind(env: &[(&str, &str)]) {
    if !have(&["python3"]) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), env).await;
    let marker = format!("leak-probe-{}", uuid_like());
    let app = wrapped_app(&marker);
    let out = s.ok(&["run", app.path().to_str().unwrap(), "--name", "leaky"]).await;
    assert!(out.contains("leaky running"), "{out}");
    let (shells, pythons) = app_processes(&marker);
    assert_eq!((shells.len(), pythons.len()), (1, 1), "{:?}", processes_with(&marker));
    let (shell, python) = (shells[0], pythons[0]);

    // The wrapper dies: its app goes with it, and the instance comes back, once.
    let _ = Command::new("kill").args(["-9", &shell.to_string()]).status();
    assert!(
        until(Duration::from_secs(10), || !pid_alive(python)).await,
        "the app of the killed wrapper is left running: {:?}",
        processes_with(&marker)
    );
    s.wait_status("leaky", Duration::from_secs(30), |v| v["status"] == "running" && v["restarts"] == 1).await;
    let alone = || {
        let (sh, py) = app_processes(&marker);
        sh.len() == 1 && py.len() == 1 && !py.contains(&python)
    };
    assert!(until(Duration::from_secs(10), alone).await, "one instance: {:?}", processes_with(&marker));
    let (_, pythons) = app_processes(&marker);
    let second = pythons[0];
    assert_eq!(s.get("/leaky/").await.body, "up");

    // The server dies by SIGKILL: started again, it stops what the dead one left.
    let s = s.kill_and_restart().await;
    s.wait_status("leaky", Duration::from_secs(60), |v| v["status"] == "running").await;
    assert!(
        until(Duration::from_secs(10), || !pid_alive(second)).await,
        "the killed server's instance is left running: {:?}",
        processes_with(&marker)
    );
    let alone = || {
        let (sh, py) = app_processes(&marker);
        sh.len() == 1 && py.len() == 1 && !py.contains(&second)
    };
    assert!(until(Duration::from_secs(10), alone).await, "one instance: {:?}", processes_with(&marker));
    s.ok(&["kill", "leaky"]).await;
    assert!(
        until(Duration::from_secs(10), || processes_with(&marker).is_empty()).await,
        "{:?}",
        processes_with(&marker)
    );
}

/// Without a sandbox an instance is its process group: when its first process died while
/// no server ran, the group's other processes are found by their `MICRO_INSTANCE` and
/// stopped when the server starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sandbox_what_an_instance_left_while_no_server_ran_is_stopped() {
    if !have(&["python3"]) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[("MICRO_RUNTIME_SANDBOX", "none")]).await;
    let marker = format!("orphan-probe-{}", uuid_like());
    let app = wrapped_app(&marker);
    let out = s.ok(&["run", app.path().to_str().unwrap(), "--name", "orphaned"]).await;
    assert!(out.contains("orphaned running"), "{out}");
    let (shells, pythons) = app_processes(&marker);
    assert_eq!((shells.len(), pythons.len()), (1, 1), "{:?}", processes_with(&marker));
    // The server dies, then the instance's wrapper: its app is an orphan of no server.
    let killed = s.kill();
    let _ = Command::new("kill").args(["-9", &shells[0].to_string()]).status();
    // Gone, not a zombie its new parent has yet to reap (whose start time still matches).
    let wrapper = format!("/proc/{}", shells[0]);
    assert!(until(Duration::from_secs(30), || !Path::new(&wrapper).exists()).await, "{wrapper} stays");
    assert!(pid_alive(pythons[0]), "the app outlives its wrapper");
    let s = killed.start().await;
    assert!(
        until(Duration::from_secs(10), || !pid_alive(pythons[0])).await,
        "the orphan is left running: {:?}",
        processes_with(&marker)
    );
    s.wait_status("orphaned", Duration::from_secs(30), |v| v["status"] == "running").await;
    let (_, pythons_now) = app_processes(&marker);
    assert_eq!(pythons_now.len(), 1, "{:?}", processes_with(&marker));
    s.ok(&["kill", "orphaned"]).await;
    assert!(until(Duration::from_secs(10), || processes_with(&marker).is_empty()).await);
}

/// A marker unique to this run.
fn uuid_like() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{t}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sandbox_a_killed_wrapper_and_a_killed_server_leave_no_process_behind() {
    a_killed_wrapper_and_a_killed_server_leave_no_process_behind(&[("MICRO_RUNTIME_SANDBOX", "none")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_sandbox_a_killed_wrapper_and_a_killed_server_leave_no_process_behind() {
    if !sandbox_available() {
        return;
    }
    a_killed_wrapper_and_a_killed_server_leave_no_process_behind(&[("MICRO_RUNTIME_SANDBOX", "bwrap")]).await;
}
