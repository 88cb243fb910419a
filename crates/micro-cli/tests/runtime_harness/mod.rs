//! The harness of the runtime's tests (tests/runtime.rs, tests/attacks/runtime.rs): the
//! real `micro server` binary over a temp data dir, CLI sessions logged in to it, and
//! helpers to find and reap the processes the runtime started.

#![allow(dead_code)] // each test crate uses a part
#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_test::process::{Builder, ServerProcess, binary};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const ADMIN_PASSWORD: &str = "runtime-admin-password";

/// Whether the tools a test needs (`python3`, `git`) are installed; without them the
/// test skips with a notice, except in CI (`MICRO_TEST_REQUIRE_BACKENDS`), where it fails.
pub(crate) fn have(tools: &[&str]) -> bool {
    for tool in tools {
        let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !found.is_ok_and(|s| s.success()) {
            assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "{tool} is needed by this test");
            eprintln!("notice: skipping: {tool} is not installed");
            return false;
        }
    }
    true
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A CLI home logged in to a server as one account.
pub(crate) type Session = micro_test::cli::Cli;

/// What the runtime's tests ask a [`Session`].
pub(crate) trait RuntimeCli {
    /// `micro status <name> -o json`.
    async fn status(&self, name: &str) -> Value;
    /// Waits until `f` holds for the service's status; panics with the last one.
    async fn wait_status(&self, name: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value;
    /// Waits until the service's log holds `what`; returns the log.
    async fn wait_log(&self, args: &[&str], what: &str, timeout: Duration) -> String;
    /// Node ids of a service in the registry.
    async fn nodes(&self, name: &str) -> Vec<String>;
}

impl RuntimeCli for Session {
    async fn status(&self, name: &str) -> Value {
        self.json(&["status", name, "-o", "json"]).await[0].clone()
    }

    async fn wait_status(&self, name: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(name).await;
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{name} never got there: {s:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_log(&self, args: &[&str], what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.ok(args).await;
            if logs.contains(what) {
                return logs;
            }
            assert!(Instant::now() < deadline, "{what} never came in {args:?}: {logs}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn nodes(&self, name: &str) -> Vec<String> {
        let out = self.run(&["get", "service", name, "-o", "json"]).await;
        if out.code != 0 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let mut nodes: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["nodes"].as_array().cloned().unwrap_or_default())
            .map(|n| n["id"].as_str().unwrap_or_default().to_string())
            .collect();
        nodes.sort();
        nodes
    }
}

/// A `micro server` process with a CLI session logged in as its admin (the methods of
/// [`Session`] act as the admin).
pub(crate) struct Server {
    pub(crate) process: ServerProcess,
    pub(crate) api: String,
    pub(crate) admin: Session,
}

impl std::ops::Deref for Server {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.admin
    }
}

impl Server {
    /// Starts a server over `data` with these variables (`MICRO_ADMIN_PASSWORD` empty: the
    /// server makes one and writes it to the data dir, where the admin's login reads it).
    pub(crate) async fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        // Builds share one cargo target dir across test runs, in dev profile: the
        // framework's dependencies are built once, not per test.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runtime-target");
        let builder = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro")))
            .data_dir(data)
            .admin_password(ADMIN_PASSWORD)
            .env("MICRO_RUNTIME_PROFILE", "dev")
            .env("MICRO_RUNTIME_TARGET_DIR", target)
            .envs(env);
        Server::up(builder).await
    }

    async fn up(builder: Builder) -> Server {
        let process = builder.start();
        let admin = process.admin_cli().await;
        Server { api: process.api.clone(), process, admin }
    }

    /// The admin's password.
    pub(crate) fn admin_password(&self) -> String {
        self.process.admin_password.clone()
    }

    /// SIGKILLs the server and starts it again over the same data dir.
    pub(crate) async fn kill_and_restart(self) -> Server {
        self.kill().start().await
    }

    /// SIGKILLs the server (what it started is left as it is).
    pub(crate) fn kill(self) -> Killed {
        Killed(self.process.kill())
    }

    /// A session logged in as `id` of `namespace`.
    pub(crate) async fn login(&self, namespace: &str, id: &str, password: &str) -> Session {
        let session = self.admin.fresh();
        session.ok(&["--namespace", namespace, "login", "--id", id, "--password", password]).await;
        session
    }

    /// Creates namespace `ns` with an admin account; returns its session.
    pub(crate) async fn namespace_admin(&self, ns: &str, id: &str, password: &str) -> Session {
        self.ok(&["namespace", "create", ns]).await;
        self.ok(&["--namespace", ns, "auth", "create", "account", id, "--secret", password, "--scopes", "admin"]).await;
        self.login(ns, id, password).await
    }

    pub(crate) async fn get(&self, path: &str) -> micro_test::HttpResponse {
        micro_test::http(&self.api, "GET", path, &[], b"").await
    }
}

/// A server killed by SIGKILL, to start again over the same data dir.
pub(crate) struct Killed(Builder);

impl Killed {
    pub(crate) async fn start(self) -> Server {
        Server::up(self.0).await
    }
}

/// A command whose output is collected as it comes (like `micro logs -f`).
pub(crate) struct Follow {
    child: Child,
    text: Arc<std::sync::Mutex<String>>,
}

impl Follow {
    pub(crate) fn start(mut c: Command) -> Follow {
        let mut child = c.stdout(Stdio::piped()).spawn().unwrap();
        let text = Arc::new(std::sync::Mutex::new(String::new()));
        let (t, stdout) = (text.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                t.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        Follow { child, text }
    }

    pub(crate) fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    pub(crate) async fn saw(&self, what: &str, timeout: Duration) -> bool {
        micro_test::eventually(timeout, || async move { self.text().contains(what) }).await
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Live processes whose command line holds `marker`: (pid, name).
pub(crate) fn processes_with(marker: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(marker) && pid_alive(pid) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// Waits until `f` holds, polling every 50 ms; false after `timeout`.
pub(crate) async fn until(timeout: Duration, f: impl Fn() -> bool) -> bool {
    micro_test::eventually(timeout, || std::future::ready(f())).await
}

/// Runs `git args` in `dir` (as a committer of its own, on branch main); panics with
/// its stderr when it fails.
pub(crate) fn git(args: &[&str], dir: &Path) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A folder that is its own repository root, with these files.
pub(crate) fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

/// Whether bubblewrap can sandbox here (else the runtime runs code only for the admins
/// of namespace micro, and tests of tenants' services check that refusal instead).
pub(crate) fn sandbox_available() -> bool {
    let works = |user: &[&str]| {
        Command::new("bwrap")
            .args(user)
            .args(["--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "--dev", "/dev", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = works(&[]) || works(&["--unshare-user"]);
    if !ok {
        assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "bwrap is needed (scripts/sandbox-setup)");
        eprintln!("notice: bwrap does not work here (scripts/sandbox-setup): checking the refusals only");
    }
    ok
}
