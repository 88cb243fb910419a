//! Turning a source tree into something to run: a cargo build (a target dir and a
//! cargo home per namespace, so rebuilds are incremental and one tenant's build cannot
//! poison another's), the build command of a `micro.toml` manifest, or a prebuilt
//! executable. Builds run the tenant's code (build scripts, the manifest's command), so
//! they run in the sandbox, changing only the service's work dir and the namespace's
//! cargo dirs. The result is kept on disk so restarts never rebuild.

use super::logs::LogSink;
use super::sandbox::{Jail, Sandbox, Sandboxed};
use micro_core::Status;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};

const ID: &str = "runtime";

/// The manifest file of a service that is not a cargo package.
pub(crate) const MANIFEST: &str = "micro.toml";

/// A service folder's `micro.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    /// The service's name (default: the folder's).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// A shell command run once per build, in the service's folder.
    #[serde(default)]
    pub(crate) build: Option<String>,
    /// The shell command that runs an instance, in the service's folder.
    pub(crate) run: String,
    /// An HTTP app listening on `$PORT`: the runtime registers it for the gateway.
    #[serde(default)]
    pub(crate) http: Option<Http>,
}

/// The HTTP part of a manifest.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Http {
    /// A path answering 2xx when the app is ready (default `/`).
    #[serde(default = "root")]
    pub(crate) health: String,
}

fn root() -> String {
    "/".into()
}

/// How an instance is started, and how the runtime knows it is ready.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub(crate) struct Artifact {
    /// `cargo`, `manifest` or `binary`.
    pub(crate) kind: String,
    /// The program and its arguments.
    pub(crate) command: Vec<String>,
    /// The working directory.
    pub(crate) cwd: PathBuf,
    /// Ready when its health path answers (an HTTP app), else when it registers (a
    /// Micro service) or, for a manifest without HTTP, when it stays up.
    pub(crate) http: Option<Http>,
    /// Whether it registers itself with the registry.
    pub(crate) registers: bool,
    /// How long the build took, in milliseconds.
    pub(crate) build_ms: u64,
}

/// Where builds go and what they share.
pub(crate) struct Builder {
    /// The dir of the namespaces' cargo target dirs (`<target_dir>/<namespace>`).
    pub(crate) target_dir: PathBuf,
    /// The dir of the namespaces' cargo homes (`<cargo_home>/<namespace>`).
    pub(crate) cargo_home: PathBuf,
    /// `release` or `dev`.
    pub(crate) profile: String,
    /// The rust toolchain's sysroot (its `bin/cargo` builds), when there is one.
    pub(crate) toolchain: Option<PathBuf>,
    /// Where build commands run.
    pub(crate) sandbox: Arc<Sandbox>,
}

/// One build.
pub(crate) struct Job<'a> {
    /// The service's namespace (whose cargo dirs the build uses).
    pub(crate) namespace: &'a str,
    /// The service's folder, inside `work`.
    pub(crate) dir: &'a Path,
    /// The service's work dir: what the build may change, with the namespace's cargo dirs.
    pub(crate) work: &'a Path,
    /// Where the build's output goes.
    pub(crate) out: &'a Path,
    /// The build log.
    pub(crate) log: &'a LogSink,
    /// Where the running build's pid is kept (for a restarted server to stop it).
    pub(crate) pidfile: PathBuf,
}

impl Builder {
    /// Builds the service of `job`. A failed build's error holds the compiler's message.
    pub(crate) async fn build(&self, job: &Job<'_>) -> Result<Artifact, Status> {
        let (dir, log) = (job.dir, job.log);
        let start = std::time::Instant::now();
        if !dir.is_dir() {
            return Err(Status::bad_request(ID, format!("the source has no folder {}", dir.display())));
        }
        // The source is the tenant's: its folders may be symlinks to anywhere. The server
        // reads nothing through them.
        let inside = dir.canonicalize().ok().zip(job.work.canonicalize().ok()).is_some_and(|(d, w)| d.starts_with(w));
        if !inside {
            return Err(Status::bad_request(ID, "the service's folder is a link out of its source"));
        }
        let manifest = dir.join(MANIFEST);
        let mut artifact = if let Ok(meta) = std::fs::symlink_metadata(&manifest) {
            if !meta.is_file() {
                return Err(Status::bad_request(ID, format!("{MANIFEST} is not a file")));
            }
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| Status::bad_request(ID, format!("reading {MANIFEST}: {e}")))?;
            let m: Manifest = toml::from_str(&text).map_err(|e| {
                Status::bad_request(ID, format!("{MANIFEST}: {}", e.to_string().lines().next().unwrap_or("")))
            })?;
            if m.run.trim().is_empty() {
                return Err(Status::bad_request(ID, format!("{MANIFEST}: `run` is empty")));
            }
            if let Some(b) = &m.build {
                log.line("build", &format!("$ {b}"));
                let jail = self.jail(job, Vec::new(), Vec::new())?;
                let c = self.command(&jail, "sh", &["-c".into(), b.clone()])?;
                run_logged(c, false, log, "build", &job.pidfile).await?;
            }
            Artifact {
                kind: "manifest".into(),
                // The whole process group is signalled, so a shell in between is fine.
                command: vec!["sh".into(), "-c".into(), m.run.clone()],
                cwd: dir.to_path_buf(),
                registers: false,
                http: m.http,
                build_ms: 0,
            }
        } else if dir.join("Cargo.toml").exists() {
            self.cargo(job).await?
        } else {
            // A prebuilt executable: the only file of the folder.
            let files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Status::internal(ID, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            match files.as_slice() {
                [one] if is_executable(one) => Artifact {
                    kind: "binary".into(),
                    command: vec![one.to_string_lossy().to_string()],
                    cwd: dir.to_path_buf(),
                    registers: true,
                    http: None,
                    build_ms: 0,
                },
                _ => {
                    return Err(Status::bad_request(
                        ID,
                        format!(
                            "nothing to build in {}: no {MANIFEST}, no Cargo.toml and not a single executable",
                            dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
                        ),
                    ));
                }
            }
        };
        artifact.build_ms = start.elapsed().as_millis() as u64;
        Ok(artifact)
    }

    /// The sandbox of a build: the work dir writable (and `extra`), `HOME` and `TMPDIR`
    /// in it, with `env`.
    fn jail(&self, job: &Job<'_>, extra: Vec<PathBuf>, env: Vec<(String, String)>) -> Result<Jail, Status> {
        let (home, tmp) = (job.work.join("home"), job.work.join("tmp"));
        for d in [&home, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| Status::internal(ID, format!("{}: {e}", d.display())))?;
        }
        self.sandbox
            .hand_over(&home, job.namespace)
            .and_then(|()| self.sandbox.hand_over(&tmp, job.namespace))
            .map_err(|e| Status::internal(ID, format!("handing {} to the sandbox: {e}", job.work.display())))?;
        let mut env = env;
        env.push(("TMPDIR".into(), tmp.to_string_lossy().to_string()));
        let mut writable = vec![job.work.to_path_buf()];
        writable.extend(extra);
        Ok(Jail {
            namespace: job.namespace.to_string(),
            writable,
            read_only: Vec::new(),
            cwd: job.dir.to_path_buf(),
            home: Some(home),
            env,
            gated: false,
        })
    }

    /// The sandboxed command of a build step.
    fn command(&self, jail: &Jail, program: &str, args: &[String]) -> Result<Sandboxed, Status> {
        self.sandbox
            .command(jail, program, args)
            .map_err(|e| Status::internal(ID, format!("no user for namespace {}'s build: {e}", jail.namespace)))
    }

    async fn cargo(&self, job: &Job<'_>) -> Result<Artifact, Status> {
        let (dir, out, log) = (job.dir, job.out, job.log);
        // The namespace's own cargo dirs: its registry cache and its build outputs.
        let target = self.target_dir.join(job.namespace);
        let home = self.cargo_home.join(job.namespace);
        for d in [&target, &home] {
            std::fs::create_dir_all(d).map_err(|e| Status::internal(ID, format!("{}: {e}", d.display())))?;
            self.sandbox
                .hand_over(d, job.namespace)
                .map_err(|e| Status::internal(ID, format!("handing {} to the sandbox: {e}", d.display())))?;
        }
        let mut env = vec![
            ("CARGO_TARGET_DIR".to_string(), target.to_string_lossy().to_string()),
            ("CARGO_HOME".to_string(), home.to_string_lossy().to_string()),
        ];
        let cargo = match &self.toolchain {
            Some(root) => {
                env.push(("RUSTC".into(), root.join("bin/rustc").to_string_lossy().to_string()));
                root.join("bin/cargo").to_string_lossy().to_string()
            }
            None => std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        };
        let mut args: Vec<String> = ["build", "--message-format=json-render-diagnostics", "--color=never"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        if self.profile != "dev" {
            args.extend(["--profile".into(), self.profile.clone()]);
        }
        let jail = self.jail(job, vec![target.clone(), home], env)?;
        let c = self.command(&jail, &cargo, &args)?;
        log.line("build", &format!("$ cargo build ({} profile)", self.profile));
        let stdout = run_logged(c, true, log, "build", &job.pidfile).await?;
        // The executable of the package in `dir`.
        let manifest = dir.join("Cargo.toml").canonicalize().unwrap_or_else(|_| dir.join("Cargo.toml"));
        let mut exe = None;
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["reason"] != "compiler-artifact" || v["manifest_path"].as_str() != Some(&*manifest.to_string_lossy()) {
                continue;
            }
            if let Some(e) = v["executable"].as_str() {
                exe = Some(PathBuf::from(e));
            }
        }
        let exe = exe.ok_or_else(|| Status::bad_request(ID, "the cargo package has no binary to run"))?;
        // The build's output is the tenant's to write: the server copies a file of the
        // namespace's target dir and nothing else (not a link to the server's files).
        let exe = exe
            .canonicalize()
            .ok()
            .filter(|e| target.canonicalize().is_ok_and(|t| e.starts_with(t)) && e.is_file())
            .ok_or_else(|| Status::bad_request(ID, "cargo named an executable outside its target dir"))?;
        // Keep the binary with the build, so restarts and replicas run it as built.
        let bin = out.join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| Status::internal(ID, e.to_string()))?;
        let kept = bin.join(exe.file_name().unwrap_or_default());
        std::fs::copy(&exe, &kept).map_err(|e| Status::internal(ID, format!("keeping the binary: {e}")))?;
        Ok(Artifact {
            kind: "cargo".into(),
            command: vec![kept.to_string_lossy().to_string()],
            cwd: dir.to_path_buf(),
            registers: true,
            http: None,
            build_ms: 0,
        })
    }
}

/// Runs a build command, sending stderr (and stdout unless it is cargo's JSON) to the
/// build log; returns stdout. A failure's error carries the output's first error lines.
/// Runs a build step, logging its output (its stdout is cargo's JSON when `json`).
async fn run_logged(
    mut c: Sandboxed,
    json: bool,
    log: &LogSink,
    instance: &str,
    pidfile: &Path,
) -> Result<String, Status> {
    c.command_mut().stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let program = c.program();
    let mut child =
        c.start(|_| Ok(())).await.map_err(|e| Status::unavailable(ID, format!("cannot run {program}: {e}")))?;
    let pid = child.id().unwrap_or(0);
    let _group = super::process::GroupGuard::new(pid);
    let _pidfile = super::process::PidFile::write(pidfile, pid, None);
    let stderr = child.stderr.take().map(|s| BufReader::new(s).lines());
    let stdout = child.stdout.take().map(|s| BufReader::new(s).lines());
    let errors = {
        let log = log.clone();
        let instance = instance.to_string();
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut all = Vec::new();
            if let Some(mut lines) = stderr {
                while let Ok(Some(l)) = lines.next_line().await {
                    log.line(&instance, &l);
                    if kept.len() < 40 && (l.starts_with("error") || !kept.is_empty()) {
                        kept.push(l.clone());
                    }
                    all.push(l);
                    if all.len() > 20 {
                        all.remove(0);
                    }
                }
            }
            if kept.is_empty() { all } else { kept }
        })
    };
    let mut out = String::new();
    if let Some(mut lines) = stdout {
        while let Ok(Some(l)) = lines.next_line().await {
            if !json {
                log.line(instance, &l);
            }
            out.push_str(&l);
            out.push('\n');
        }
    }
    let status = child.wait().await.map_err(|e| Status::internal(ID, e.to_string()))?;
    let errors = errors.await.unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    let mut msg = errors.join("\n");
    if msg.is_empty() && !json {
        msg = out.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    }
    if msg.len() > 4000 {
        let mut cut = 4000;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    let code = status.code().map(|c| format!("exit code {c}")).unwrap_or_else(|| "killed".into());
    Err(Status::bad_request(ID, format!("build failed ({code}):\n{msg}")))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "exe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests() {
        let m: Manifest = toml::from_str("run = \"python3 app.py\"\n[http]\nhealth = \"/health\"\n").unwrap();
        assert_eq!(m.http.unwrap().health, "/health");
        let m: Manifest = toml::from_str("run = \"./worker\"\n[http]\n").unwrap();
        assert_eq!(m.http.unwrap().health, "/");
        assert!(toml::from_str::<Manifest>("runn = \"x\"").is_err());
        assert!(toml::from_str::<Manifest>("build = \"make\"").is_err(), "run is required");
    }
}
