//! The `micro` CLI run as a user would, against one server, with a home of its own (where
//! `micro login` keeps its credentials): exit code, stdout and stderr of each command.
//!
//! ```no_run
//! # async fn f(proxy: &str) {
//! let cli = micro_test::cli::Cli::new("target/debug/micro", proxy);
//! cli.ok(&["login", "--password", "…"]).await;
//! let services = cli.json(&["services", "-o", "json"]).await;
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// What one command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (-1 when a signal ended it).
    pub code: i32,
    /// What it printed to stdout.
    pub stdout: String,
    /// What it printed to stderr.
    pub stderr: String,
}

/// The `micro` CLI pointed at one server (`--server`), with a temp `HOME` of its own.
pub struct Cli {
    micro: PathBuf,
    server: String,
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
    printed: Arc<Mutex<Vec<Output>>>,
}

impl Cli {
    /// The binary at `micro` (see [`crate::process::binary`]) against the server whose
    /// proxy is at `server`.
    pub fn new(micro: impl Into<PathBuf>, server: &str) -> Cli {
        Cli {
            micro: micro.into(),
            server: server.to_string(),
            home: tempfile::tempdir().expect("a home dir"),
            env: Vec::new(),
            printed: Arc::default(),
        }
    }

    /// Sets `key` to `value` in the environment of every command.
    pub fn env(mut self, key: &str, value: &str) -> Cli {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Its home (`~/.micro/config` holds its environments and credentials).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The server it talks to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Another CLI of the same binary and server, with a new home (logged in to nothing).
    pub fn fresh(&self) -> Cli {
        Cli { env: self.env.clone(), ..Cli::new(&self.micro, &self.server) }
    }

    /// The command `micro --server … args`, to spawn as the test needs (it is not
    /// recorded in [`Cli::printed`]).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.micro);
        c.arg("--server")
            .arg(&self.server)
            .args(args)
            .env("HOME", self.home.path())
            // Nothing of the test's environment leaks in: no other server, namespace,
            // password, or a local server's admin password file.
            .env_remove("MICRO_SERVER")
            .env_remove("MICRO_NAMESPACE")
            .env_remove("MICRO_PASSWORD")
            .env("MICRO_DATA_DIR", self.home.path().join("no-local-server"))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs `micro args` off the async runtime.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .expect("the command ran")
            .unwrap_or_else(|e| panic!("{} runs: {e}", self.micro.display()));
        let out = Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.printed.lock().expect("printed").push(out.clone());
        out
    }

    /// Runs `micro args`, asserting it succeeds; returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "micro {args:?}\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
        out.stdout
    }

    /// Runs `micro args`, asserting it succeeds; returns its stdout parsed as JSON.
    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("micro {args:?} printed no JSON ({e}): {out}"))
    }

    /// Runs `micro args`, asserting it fails with exit code 1; returns its stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(out.code, 1, "micro {args:?} should fail\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
        out.stderr
    }

    /// [`Cli::fails`] with one clear line: `error: …`.
    pub async fn error(&self, args: &[&str]) -> String {
        let err = self.fails(args).await;
        assert!(err.starts_with("error: ") && err.trim().lines().count() == 1, "one clear line: {err}");
        err
    }

    /// Everything the commands run by [`Cli::run`] (and so `ok`, `fails` …) printed.
    pub fn printed(&self) -> Vec<Output> {
        self.printed.lock().expect("printed").clone()
    }
}
