//! The harness of the runtime's tests (tests/runtime.rs, tests/attacks/runtime.rs): the
//! real `micro server` binary over a temp data dir, CLI sessions logged in to it, and
//! helpers to find and reap the processes the runtime started.

#![allow(dead_code)] // each test crate uses a part
#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

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
pub(crate) struct Session {
    pub(crate) proxy: String,
    pub(crate) home: tempfile::TempDir,
}

impl Session {
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_micro"));
        c.arg("--server").arg(&self.proxy).args(args).env("HOME", self.home.path()).env_remove("MICRO_SERVER");
        c
    }

    /// Runs `micro`; returns (exit code, stdout, stderr).
    pub(crate) async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || {
            let out = c.output().expect("micro runs");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }

    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args).await;
        assert_eq!(code, 0, "micro {args:?}\nstdout: {out}\nstderr: {err}");
        out
    }

    pub(crate) async fn fails(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args).await;
        assert_eq!(code, 1, "micro {args:?} should fail\nstdout: {out}\nstderr: {err}");
        err
    }

    /// `micro status <name> -o json`.
    pub(crate) async fn status(&self, name: &str) -> Value {
        let out = self.ok(&["status", name, "-o", "json"]).await;
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    }

    /// Waits until `f` holds for the service's status; panics with the last one.
    pub(crate) async fn wait_status(&self, name: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
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

    /// Waits until the service's log holds `what`; returns the log.
    pub(crate) async fn wait_log(&self, args: &[&str], what: &str, timeout: Duration) -> String {
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

    /// Node ids of a service in the registry.
    pub(crate) async fn nodes(&self, name: &str) -> Vec<String> {
        let (code, out, _) = self.cli(&["get", "service", name, "-o", "json"]).await;
        if code != 0 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&out).unwrap();
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
    pub(crate) child: Child,
    pub(crate) api: String,
    pub(crate) data: PathBuf,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) admin: Session,
}

impl std::ops::Deref for Server {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.admin
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so its services stop with it.
        let _ = Command::new("kill").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts a server over `data` with these variables (`MICRO_ADMIN_PASSWORD` empty: the
    /// server makes one and writes it to the data dir, where the admin's login reads it).
    pub(crate) async fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let s = Server::spawn(data, env, tempfile::tempdir().unwrap());
        s.login_admin().await;
        s
    }

    /// The admin's password.
    pub(crate) fn admin_password(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.password"))
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|_| ADMIN_PASSWORD.to_string())
    }

    async fn login_admin(&self) {
        let password = self.admin_password();
        let out = self.cli(&["login", "--id", "admin", "--password", &password]).await;
        assert_eq!(out.0, 0, "login: {out:?}");
    }

    fn spawn(data: &Path, env: Vec<(String, String)>, home: tempfile::TempDir) -> Server {
        // Builds share one cargo target dir across test runs, in dev profile: the
        // framework's dependencies are built once, not per test.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runtime-target");
        let mut child = Command::new(env!("CARGO_BIN_EXE_micro"))
            .arg("server")
            .env("MICRO_DATA_DIR", data)
            .env("MICRO_API_ADDRESS", "127.0.0.1:0")
            .env("MICRO_PROXY_ADDRESS", "127.0.0.1:0")
            .env("MICRO_WEB_ADDRESS", "127.0.0.1:0")
            .env("MICRO_LOG", "warn")
            .env("MICRO_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("MICRO_RUNTIME_PROFILE", "dev")
            .env("MICRO_RUNTIME_TARGET_DIR", target)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .expect("micro server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("banner");
        // "micro server: api http://127.0.0.1:X proxy 127.0.0.1:Y"
        let words: Vec<&str> = line.split_whitespace().collect();
        let proxy = words.last().expect("proxy").to_string();
        let api = words[3].trim_start_matches("http://").to_string();
        Server { child, api, data: data.to_path_buf(), env, admin: Session { proxy, home } }
    }

    /// SIGKILLs the server and starts it again over the same data dir.
    pub(crate) async fn kill_and_restart(self) -> Server {
        self.kill().start().await
    }

    /// SIGKILLs the server (what it started is left as it is).
    pub(crate) fn kill(mut self) -> Killed {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let data = self.data.clone();
        let env = std::mem::take(&mut self.env);
        let home = std::mem::replace(&mut self.admin.home, tempfile::tempdir().unwrap());
        std::mem::forget(self); // already dead
        Killed { data, env, home }
    }

    /// A session logged in as `id` of `namespace`.
    pub(crate) async fn login(&self, namespace: &str, id: &str, password: &str) -> Session {
        let session = Session { proxy: self.admin.proxy.clone(), home: tempfile::tempdir().unwrap() };
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
pub(crate) struct Killed {
    data: PathBuf,
    env: Vec<(String, String)>,
    home: tempfile::TempDir,
}

impl Killed {
    pub(crate) async fn start(self) -> Server {
        let s = Server::spawn(&self.data, self.env, self.home);
        s.login_admin().await;
        s
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
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
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
