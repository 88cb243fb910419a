//! `micro server` as a separate process (the real binary, its own data dir, every port
//! free), for tests that must not share a process with the server: the attack suite,
//! the runtime's tests, durability and log tests, the browser test. It is ready when it
//! prints its ready line (`micro server ready {"api":…,"web":…,"proxy":…}`); its whole
//! process group is stopped and reaped on drop.
//!
//! ```no_run
//! # async fn f() {
//! use micro_test::process::{ServerProcess, binary};
//! let s = ServerProcess::builder(binary("target/debug/micro")).env("MICRO_LOG", "info").start();
//! let token = s.admin_token().await;
//! # }
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `micro server` prints before the JSON of its addresses once every listener is up.
pub const READY_PREFIX: &str = "micro server ready ";

/// The `micro` binary to test: `built` (a test passes `env!("CARGO_BIN_EXE_micro")`), or
/// `MICRO_TEST_BINARY` when set (to run a suite against another build, e.g. one from
/// before a fix).
pub fn binary(built: impl Into<PathBuf>) -> PathBuf {
    std::env::var_os("MICRO_TEST_BINARY").map(PathBuf::from).unwrap_or_else(|| built.into())
}

/// The data directory of a server: its own (removed on drop) or one the test keeps.
enum DataDir {
    Owned(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(d) => d.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// How to start a [`ServerProcess`]; made by [`ServerProcess::builder`], and by
/// [`ServerProcess::kill`] to start the same server again.
pub struct Builder {
    micro: PathBuf,
    data: Option<DataDir>,
    env: Vec<(OsString, Option<OsString>)>,
    admin_password: Option<String>,
    capture_stderr: bool,
    /// A licence file's text, written to the data dir before the server starts.
    licence: Option<String>,
}

/// A licence for `features`, good for a year, signed by a new issuer key: (the public key
/// for `MICRO_LICENSE_KEYS`, the licence file's text).
pub fn test_licence(features: &[&str]) -> (String, String) {
    use micro_core::licence;
    let (private, public) = licence::generate_key().expect("an issuer key");
    let now = licence::now();
    let l = licence::Licence::new("Tests", "tests@example.com", features, now, now + 365 * 86_400);
    (public, licence::issue(&private, &l).expect("a licence"))
}

impl Builder {
    /// Starts licensed for `features` (`team`, `billing`, …): a licence from a new issuer
    /// key in the data dir (`license`), the key in `MICRO_LICENSE_KEYS`. Without it the
    /// server is unlicensed and refuses the platform's paid features.
    pub fn licensed(mut self, features: &[&str]) -> Builder {
        let (public, text) = test_licence(features);
        self.licence = Some(text);
        self.env(micro_core::licence::KEYS_ENV, public)
    }

    /// Sets `key` to `value` in the server's environment (after the defaults, so it may
    /// override them, like `MICRO_LOG`). `MICRO_ADMIN_PASSWORD` is
    /// [`Builder::admin_password`], or [`Builder::generated_admin_password`] when empty.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Builder {
        let (key, value) = (key.into(), value.into());
        if key == "MICRO_ADMIN_PASSWORD" {
            self.admin_password = Some(value.to_string_lossy().into_owned()).filter(|p| !p.is_empty());
            return self;
        }
        self.env.push((key, Some(value)));
        self
    }

    /// Sets every pair of `env` (see [`Builder::env`]).
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(mut self, env: &[(K, V)]) -> Builder {
        for (k, v) in env {
            self = self.env(k.as_ref(), v.as_ref());
        }
        self
    }

    /// Removes `key` from the server's environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Builder {
        self.env.push((key.into(), None));
        self
    }

    /// The data dir `dir`, which the test keeps (to look into, or to start another server
    /// over); by default the server has a temp dir of its own.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.data = Some(DataDir::Kept(dir.into()));
        self
    }

    /// The data dir `dir`, owned by the server from now on (removed on drop).
    pub fn data_temp_dir(mut self, dir: tempfile::TempDir) -> Builder {
        self.data = Some(DataDir::Owned(dir));
        self
    }

    /// The admin's password (`MICRO_ADMIN_PASSWORD`); by default a random one.
    pub fn admin_password(mut self, password: &str) -> Builder {
        self.admin_password = Some(password.to_string());
        self
    }

    /// No `MICRO_ADMIN_PASSWORD`: the server generates the admin's password and writes it
    /// to its data dir, where [`ServerProcess::admin_password`] is read from.
    pub fn generated_admin_password(mut self) -> Builder {
        self.admin_password = None;
        self
    }

    /// Keeps what the server writes to stderr (its logs) for [`ServerProcess::output`],
    /// instead of passing it to the test's stderr.
    pub fn capture_stderr(mut self) -> Builder {
        self.capture_stderr = true;
        self
    }

    /// Starts the server; returns once it printed its ready line.
    pub fn start(self) -> ServerProcess {
        let data = match self.data {
            Some(d) => d,
            None => DataDir::Owned(tempfile::tempdir().expect("a data dir")),
        };
        if let Some(text) = &self.licence {
            std::fs::write(data.path().join(micro_server::LICENSE_FILE), text).expect("writing the licence");
        }
        let mut cmd = Command::new(&self.micro);
        cmd.arg("server")
            .env("MICRO_DATA_DIR", data.path())
            .env("MICRO_API_ADDRESS", "127.0.0.1:0")
            .env("MICRO_PROXY_ADDRESS", "127.0.0.1:0")
            .env("MICRO_WEB_ADDRESS", "127.0.0.1:0")
            .env("MICRO_LOG", "warn")
            .env_remove("MICRO_SERVER")
            // Empty: the server generates one (and its environment still holds the
            // variable, which what it runs must not see).
            .env("MICRO_ADMIN_PASSWORD", self.admin_password.as_deref().unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if self.capture_stderr { Stdio::piped() } else { Stdio::inherit() })
            // Its own process group, so everything it starts is stopped with it.
            .process_group(0);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{} server starts: {e}", self.micro.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().map(|mut err| {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().expect("output").push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
        let ready = loop {
            let mut line = String::new();
            let n = lines.read_line(&mut line).expect("reading the server's stdout");
            output.lock().expect("output").push_str(&line);
            assert!(n > 0, "{} exited before its ready line: {}", self.micro.display(), output.lock().expect("output"));
            if let Some(ready) = ready_line(&line) {
                break ready;
            }
        };
        // The rest of stdout is kept too, and never blocks the server on a full pipe.
        let stdout = {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in lines.lines().map_while(Result::ok) {
                    output.lock().expect("output").push_str(&(line + "\n"));
                }
            })
        };
        let admin_password = self.admin_password.clone().unwrap_or_else(|| {
            let file = data.path().join(micro_server::ADMIN_PASSWORD_FILE);
            std::fs::read_to_string(&file).map(|p| p.trim().to_string()).unwrap_or_default()
        });
        ServerProcess {
            child,
            api: ready.api,
            proxy: ready.proxy,
            web: ready.web,
            network: ready.network,
            admin_password,
            data: Some(data),
            micro: self.micro,
            env: self.env,
            given_password: self.admin_password,
            capture_stderr: self.capture_stderr,
            output,
            readers: vec![Some(stdout), stderr].into_iter().flatten().collect(),
            stopped: false,
        }
    }
}

/// The addresses in a ready line (`host:port` each, `web` empty when it is off).
struct Ready {
    api: String,
    proxy: String,
    web: String,
    network: String,
}

fn ready_line(line: &str) -> Option<Ready> {
    let address = |v: &serde_json::Value, key: &str| {
        let v = v[key].as_str().unwrap_or_default();
        v.trim_start_matches("http://").trim_start_matches("https://").to_string()
    };
    if let Some(json) = line.strip_prefix(READY_PREFIX) {
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("the ready line is not JSON ({e}): {line}"));
        return Some(Ready {
            api: address(&v, "api"),
            proxy: address(&v, "proxy"),
            web: address(&v, "web"),
            network: address(&v, "network"),
        });
    }
    // A build from before the ready line (`MICRO_TEST_BINARY`) has only its banner:
    // "micro server: api http://A web http://W proxy P".
    let words: Vec<&str> = line.strip_prefix("micro server: ")?.split_whitespace().collect();
    let after = |key: &str| {
        let i = words.iter().position(|w| *w == key)?;
        Some(words.get(i + 1)?.trim_start_matches("http://").to_string())
    };
    Some(Ready {
        api: after("api")?,
        proxy: after("proxy")?,
        web: after("web").unwrap_or_default(),
        network: String::new(),
    })
    .filter(|_| std::env::var_os("MICRO_TEST_BINARY").is_some())
}

/// A `micro server` process.
pub struct ServerProcess {
    child: Child,
    /// `host:port` of the API gateway.
    pub api: String,
    /// `host:port` of the gRPC proxy.
    pub proxy: String,
    /// `host:port` of the dashboard (empty when it is off).
    pub web: String,
    /// `host:port` of the network listener (empty when it is off).
    pub network: String,
    /// The admin's password (given, or read from the data dir when generated).
    pub admin_password: String,
    data: Option<DataDir>,
    micro: PathBuf,
    env: Vec<(OsString, Option<OsString>)>,
    given_password: Option<String>,
    capture_stderr: bool,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Killed or stopped already (its pid may be another process's by now).
    stopped: bool,
}

impl ServerProcess {
    /// How to start `micro server` from the binary at `micro` (see [`binary`]).
    pub fn builder(micro: impl Into<PathBuf>) -> Builder {
        let admin_password = format!("admin-{}", uuid::Uuid::new_v4().simple());
        Builder {
            micro: micro.into(),
            data: None,
            env: Vec::new(),
            admin_password: Some(admin_password),
            capture_stderr: false,
            licence: None,
        }
    }

    /// Starts `micro server` (the binary at `micro`) on free ports with a new data dir,
    /// plus `env`; returns once it listens.
    pub fn start(micro: &Path, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::builder(micro).envs(env).start()
    }

    /// [`ServerProcess::start`] with the data dir `data` (made beforehand, as a test needs it).
    pub fn start_in(micro: &Path, data: tempfile::TempDir, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::builder(micro).data_temp_dir(data).envs(env).start()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default()
    }

    /// An access token of the admin of `micro`.
    pub async fn admin_token(&self) -> String {
        crate::login(&self.proxy, "micro", "admin", &self.admin_password).await
    }

    /// Signs app user `email` of `namespace` up (password `<email>'s long password`) and
    /// in: their token and id. (The namespace's settings let them in unconfirmed.)
    pub async fn app_user(&self, namespace: &str, email: &str) -> (String, String) {
        let password = format!("{email}'s long password");
        let creds = serde_json::json!({"email": email, "password": password});
        let (st, v) =
            crate::call_json(&self.api, "POST", "/users/v1/signup", None, namespace, Some(creds.clone())).await;
        assert_eq!(st, 200, "signup of {email}: {v}");
        let (st, v) = crate::call_json(&self.api, "POST", "/users/v1/login", None, namespace, Some(creds)).await;
        assert_eq!(st, 200, "login of {email}: {v}");
        let token = v["token"].as_str().expect("a token").to_string();
        (token, v["user"]["id"].as_str().expect("an id").to_string())
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

    /// The environment of a service process named `name` in `namespace` with a service
    /// account of its own made now (see [`crate::service_env`]).
    pub async fn service_env(&self, namespace: &str, name: &str) -> Vec<(String, String)> {
        crate::service_env(&self.proxy, &self.admin_token().await, namespace, name).await
    }

    /// The helloworld example (built beside the test: [`crate::sibling_binary`]) registered
    /// in `micro` with a service account of its own; returns once the gateway reaches it.
    pub async fn helloworld(&self) -> Reaped {
        let helloworld = Reaped::spawn(
            Command::new(crate::sibling_binary("helloworld"))
                .envs(self.service_env("micro", "helloworld").await)
                .env("MICRO_LOG", "warn")
                .stdout(Stdio::null()),
        );
        let up = crate::eventually(Duration::from_secs(20), || async {
            crate::http(&self.api, "POST", "/helloworld/greeter/hello", &[], br#"{"name":"up"}"#).await.status == 200
        })
        .await;
        assert!(up, "helloworld did not come up behind the gateway");
        helloworld
    }

    /// A [`crate::cli::Cli`] of `micro` (the binary this server runs) pointed at this
    /// server, with a home of its own, logged in to nothing.
    pub fn cli(&self) -> crate::cli::Cli {
        crate::cli::Cli::new(&self.micro, &self.proxy)
    }

    /// A [`ServerProcess::cli`] logged in as the admin of `micro`.
    pub async fn admin_cli(&self) -> crate::cli::Cli {
        let cli = self.cli();
        cli.ok(&["login", "--id", "admin", "--password", &self.admin_password]).await;
        cli
    }

    /// The process id (of the server, the leader of its process group).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it printed so far: stdout (its banner and ready line included), and
    /// stderr when [`Builder::capture_stderr`] kept it.
    pub fn output(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    /// SIGKILLs the server alone, as a crash would (what it started is left as it is);
    /// returns how to start it again over the same data dir, environment and password.
    pub fn kill(mut self) -> Builder {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped = true;
        Builder {
            micro: self.micro.clone(),
            data: self.data.take(),
            env: std::mem::take(&mut self.env),
            admin_password: Some(self.admin_password.clone()).filter(|_| self.given_password.is_some()),
            capture_stderr: self.capture_stderr,
            // Its licence is in its data dir already.
            licence: None,
        }
    }

    /// Stops the server with SIGTERM (as an operator would; its process group is killed
    /// after 15 s) and returns everything it printed (see [`ServerProcess::output`]).
    pub fn stop(mut self) -> String {
        self.terminate();
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        self.output()
    }

    fn terminate(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // SIGTERM to the server, so it drains and stops what it runs; then whatever is
        // left of its process group goes.
        let pid = self.child.id();
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A child process (a service, a follower of logs) killed and reaped on drop.
pub struct Reaped(pub Child);

impl Reaped {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Reaped {
        Reaped(cmd.spawn().unwrap_or_else(|e| panic!("{:?} starts: {e}", cmd.get_program())))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
