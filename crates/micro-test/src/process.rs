//! `micro server` as a separate process (the real binary, its own data dir, every port
//! free), for tests that must not share a process with the server: the attack suite,
//! durability tests. Its whole process group is stopped and reaped on drop.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `micro server` process.
pub struct ServerProcess {
    child: Child,
    /// `host:port` of the API gateway.
    pub api: String,
    /// `host:port` of the gRPC proxy.
    pub proxy: String,
    /// `host:port` of the dashboard.
    pub web: String,
    /// The admin's password (`MICRO_ADMIN_PASSWORD`).
    pub admin_password: String,
    data: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `micro server` (the binary at `micro`) on free ports with a new data dir,
    /// plus `env`; returns once it listens.
    pub fn start(micro: &Path, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_in(micro, tempfile::tempdir().expect("a data dir"), env)
    }

    /// [`ServerProcess::start`] with the data dir `data` (made beforehand, as a test needs it).
    pub fn start_in(micro: &Path, data: tempfile::TempDir, env: &[(&str, &str)]) -> ServerProcess {
        let admin_password = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let mut cmd = Command::new(micro);
        cmd.arg("server")
            .env("MICRO_DATA_DIR", data.path())
            .env("MICRO_API_ADDRESS", "127.0.0.1:0")
            .env("MICRO_PROXY_ADDRESS", "127.0.0.1:0")
            .env("MICRO_WEB_ADDRESS", "127.0.0.1:0")
            .env("MICRO_ADMIN_PASSWORD", &admin_password)
            .env("MICRO_LOG", "warn")
            .env_remove("MICRO_SERVER")
            .stdout(Stdio::piped())
            // Its own process group, so everything it starts is stopped with it.
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("micro server starts");
        let mut banner = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut banner).expect("the banner");
        // "micro server: api http://A web http://W proxy P"
        let words: Vec<&str> = banner.split_whitespace().collect();
        let after = |key: &str| {
            let i = words.iter().position(|w| *w == key).unwrap_or_else(|| panic!("no {key} in the banner: {banner}"));
            words[i + 1].trim_start_matches("http://").to_string()
        };
        let (api, web, proxy) = (after("api"), after("web"), after("proxy"));
        ServerProcess { child, api, proxy, web, admin_password, data }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    /// An access token of the admin of `micro`.
    pub async fn admin_token(&self) -> String {
        crate::login(&self.proxy, "micro", "admin", &self.admin_password).await
    }

    /// Creates account `id` in `namespace` (as the admin) and returns its access token.
    pub async fn account(&self, namespace: &str, id: &str, kind: &str, scopes: &[&str]) -> String {
        let secret = format!("{id}-secret-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        crate::create_account(&self.proxy, &self.admin_token().await, namespace, (id, &secret), kind, scopes).await;
        crate::login(&self.proxy, namespace, id, &secret).await
    }

    /// A service named `name` in `namespace`, pointed at this server, with a service
    /// account of its own made now.
    pub async fn service(&self, namespace: &str, name: &str) -> micro::Service {
        let (id, secret) = crate::service_account(&self.proxy, &self.admin_token().await, namespace, name).await;
        micro::Service::new(name).server(&self.proxy).namespace(namespace).credentials(&id, &secret)
    }

    /// The process id (of the server, the leader of its process group).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGTERM to the group first, so the server drains and stops what it runs.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}
