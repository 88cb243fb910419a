//! A real SMTP server for tests: Python's `aiosmtpd` (installed by `scripts/test` into
//! the virtualenv of `MICRO_TEST_PYTHON`) running `smtp_sink.py`, which writes each
//! message it accepts as JSON to a directory the test reads.

use crate::process::Reaped;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How the sink behaves.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Require STARTTLS with a certificate for 127.0.0.1 from a test CA.
    pub tls: bool,
    /// Require AUTH with this user and password.
    pub login: Option<(String, String)>,
    /// Answer 550 to recipients containing this.
    pub reject: Option<String>,
    /// Answer 451 to the first this many messages.
    pub tempfail: u32,
}

/// A message the sink accepted.
#[derive(Clone, Debug)]
pub struct Received {
    /// The envelope's recipients.
    pub rcpt_tos: Vec<String>,
    /// The envelope's sender.
    pub mail_from: String,
    /// Header values by lowercase name.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The plain-text body.
    pub text: Option<String>,
    /// The HTML body.
    pub html: Option<String>,
    /// Whether the session used TLS.
    pub tls: bool,
    /// The user the session logged in as.
    pub login: Option<String>,
}

impl Received {
    /// A header's value (`""` when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str).unwrap_or("")
    }

    /// The 6-digit code of a mail that says "… is 123456" (the users product's codes).
    pub fn code(&self) -> String {
        let text = self.text.clone().unwrap_or_default();
        let at = text.find(" is ").expect("a code in the mail") + 4;
        let code: String = text[at..].chars().take(6).collect();
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{text}");
        code
    }
}

/// A running SMTP sink, stopped on drop.
pub struct SmtpSink {
    dir: tempfile::TempDir,
    port: u16,
    options: Options,
    ca: Option<String>,
    _process: Reaped,
}

/// The Python with `modules`, or `None` (a notice naming `what` skips; a panic under
/// `MICRO_TEST_REQUIRE_BACKENDS`).
pub fn python(modules: &[&str], what: &str) -> Option<String> {
    let import = format!("import {}", modules.join(", "));
    let found = std::env::var("MICRO_TEST_PYTHON")
        .ok()
        .filter(|p| std::process::Command::new(p).args(["-c", &import]).output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        assert!(
            std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(),
            "Python with {} (MICRO_TEST_PYTHON) is needed by this test: run scripts/test",
            modules.join(", ")
        );
        eprintln!(
            "notice: skipping {what} (no MICRO_TEST_PYTHON with {}; scripts/test sets it up)",
            modules.join(", ")
        );
    }
    found
}

impl SmtpSink {
    /// Starts a sink; `None` (with a notice) where Python with aiosmtpd is missing.
    pub fn start(options: Options) -> Option<SmtpSink> {
        let python = python(&["aiosmtpd"], "an SMTP test")?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).expect("a mail dir");
        let script = dir.path().join("smtp_sink.py");
        std::fs::write(&script, include_str!("smtp_sink.py")).expect("the sink's script");
        let port = crate::free_port();
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&script).arg(&mail).arg(port.to_string());
        let mut ca = None;
        if options.tls {
            let (c, cert, key) = crate::certificates(dir.path());
            cmd.args(["--tls", &cert, &key]);
            ca = Some(c);
        }
        if let Some((u, p)) = &options.login {
            cmd.args(["--login", &format!("{u}:{p}")]);
        }
        if let Some(r) = &options.reject {
            cmd.args(["--reject", r]);
        }
        if options.tempfail > 0 {
            cmd.args(["--tempfail", &options.tempfail.to_string()]);
        }
        let process = Reaped::spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mail.join("ready").exists() {
            assert!(Instant::now() < deadline, "the SMTP sink did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(SmtpSink { dir, port, options, ca, _process: process })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `MICRO_SMTP` URL that reaches it (with its login, STARTTLS when it requires it).
    pub fn url(&self) -> String {
        let login = self.options.login.as_ref().map(|(u, p)| format!("{u}:{p}@")).unwrap_or_default();
        let tls = if self.options.tls { "" } else { "?tls=none" };
        format!("smtp://{login}127.0.0.1:{}{tls}", self.port)
    }

    /// The test CA's certificate (for `MICRO_SMTP_CA`) when it requires TLS.
    pub fn ca(&self) -> Option<&str> {
        self.ca.as_deref()
    }

    /// Where each accepted message is written, as `<time>-<n>.json`.
    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.mail_dir())
            .expect("the mail dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).expect("a message")).expect("the sink's JSON");
                let s = |k: &str| v[k].as_str().map(str::to_string);
                Received {
                    rcpt_tos: v["rcpt_tos"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                    mail_from: s("mail_from").unwrap_or_default(),
                    headers: v["headers"]
                        .as_object()
                        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                        .unwrap_or_default(),
                    text: s("text"),
                    html: s("html"),
                    tls: v["tls"].as_bool().unwrap_or(false),
                    login: s("login"),
                }
            })
            .collect()
    }

    /// The `count`th mail (from 1) to `to` whose subject contains `subject`, waiting
    /// up to 30 s for it.
    pub async fn mail_to(&self, to: &str, subject: &str, count: usize) -> Received {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all: Vec<_> = self
                .messages()
                .into_iter()
                .filter(|m| m.rcpt_tos.iter().any(|r| r == to) && m.header("subject").contains(subject))
                .collect();
            if all.len() >= count {
                return all.swap_remove(count - 1);
            }
            assert!(
                Instant::now() < deadline,
                "no mail #{count} to {to} about {subject:?}: {:?}",
                self.messages().iter().map(|m| m.header("subject").to_string()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `timeout` for at least `n` messages, and returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(Instant::now() < deadline, "{} of {n} messages arrived in {timeout:?}: {m:#?}", m.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
