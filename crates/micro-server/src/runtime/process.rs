//! One instance of a service: its process, kept running with exponential backoff,
//! checked for readiness, held to its limits (in a cgroup of its own, or its memory
//! watched where there are none), and logged.

use super::build::Artifact;
use super::cgroup::{Cgroups, Limits};
use super::logs::LogSink;
use super::sandbox::{Jail, Sandbox};
use micro_core::registry::{Node, Registry, Service};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

/// How long an HTTP app's registration lives without a refresh.
const HTTP_TTL: Duration = Duration::from_secs(30);
/// The longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// How long a stopping instance gets before it is killed.
const GRACE: Duration = Duration::from_secs(10);
/// How long a stopping instance keeps serving once out of the registry.
const DRAIN: Duration = Duration::from_millis(300);

/// What every instance of one build shares.
pub(crate) struct Launch {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) root: PathBuf,
    pub(crate) artifact: Artifact,
    pub(crate) env: Vec<(String, String)>,
    /// What each instance may use.
    pub(crate) limits: Limits,
    /// How the limits are held.
    pub(crate) cgroups: Arc<Cgroups>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) log: LogSink,
    pub(crate) run_dir: PathBuf,
    /// The host HTTP apps listen on (`$HOST`) and are registered at.
    pub(crate) host: String,
    /// The ports of the host given to instances, by namespace.
    pub(crate) local_nodes: crate::targets::LocalNodes,
    /// Where instances run.
    pub(crate) sandbox: Arc<Sandbox>,
}

/// An instance and its supervisor.
pub(crate) struct Instance {
    pub(crate) id: String,
    pid: AtomicU32,
    restarts: AtomicU32,
    state: Mutex<(String, String)>,
    ready: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

enum Outcome {
    Stopped,
    Exited(String),
}

impl Instance {
    /// Starts an instance of `launch` under supervision.
    pub(crate) fn start(launch: Arc<Launch>) -> Arc<Instance> {
        let short = uuid::Uuid::new_v4().simple().to_string();
        let inst = Arc::new(Instance {
            id: format!("{}-{}", launch.name, &short[..8]),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            state: Mutex::new(("starting".into(), String::new())),
            ready: watch::channel(false).0,
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(supervise(launch, inst.clone()));
        *inst.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        inst
    }

    /// The status (`starting`, `running`, `error`, `stopped`) and the reason of an error.
    pub(crate) fn state(&self) -> (String, String) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, status: &str, reason: &str) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (status.to_string(), reason.to_string());
    }

    /// The process id (0 when none runs).
    pub(crate) fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Restarts after crashes.
    pub(crate) fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Waits until the instance is ready; `Err` with the reason when it fails first or
    /// `timeout` passes.
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let mut rx = self.ready.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if *rx.borrow_and_update() {
                return Ok(());
            }
            let (status, reason) = self.state();
            if status == "error" || status == "stopped" {
                return Err(reason);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("not ready after {}s", timeout.as_secs()));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }

    /// Stops the instance: out of the registry first, then SIGTERM, then SIGKILL after
    /// the grace period. Returns when the process is gone.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

async fn supervise(launch: Arc<Launch>, inst: Arc<Instance>) {
    let mut stop = inst.stop.subscribe();
    let mut failures = 0u32;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        inst.set("starting", "");
        let started = Instant::now();
        let outcome = run_once(&launch, &inst, &mut stop).await;
        let _ = inst.ready.send(false);
        inst.pid.store(0, Ordering::Relaxed);
        deregister(&launch, &inst.id).await;
        let reason = match outcome {
            Outcome::Stopped => break,
            Outcome::Exited(reason) => reason,
        };
        failures = if started.elapsed() > STABLE { 1 } else { failures + 1 };
        let restarts = inst.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff =
            (Duration::from_millis(500) * 2u32.saturating_pow(failures.saturating_sub(1).min(10))).min(MAX_BACKOFF);
        launch.log.line(&inst.id, &format!("[runtime] {reason}; restart {restarts} in {:.1}s", backoff.as_secs_f64()));
        tracing::warn!(service = %launch.name, namespace = %launch.namespace, instance = %inst.id, %reason, restarts, "instance failed");
        inst.set("error", &format!("{reason} (restarts: {restarts})"));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    inst.set("stopped", "");
}

/// Runs the process once, until it exits or the instance is stopped.
async fn run_once(launch: &Launch, inst: &Instance, stop: &mut watch::Receiver<bool>) -> Outcome {
    let art = &launch.artifact;
    let program = resolve(&launch.root, &art.command[0]);
    // Nothing of the server's environment: what the service is given, and the basics.
    let mut env = launch.env.clone();
    env.push(("MICRO_INSTANCE".into(), inst.id.clone()));
    let port = if art.http.is_some() {
        match free_port().await {
            Ok(p) => {
                env.extend([("PORT".into(), p.to_string()), ("HOST".into(), launch.host.clone())]);
                Some(p)
            }
            Err(e) => return Outcome::Exited(format!("no free port: {e}")),
        }
    } else {
        None
    };
    // The port it is reached at is its namespace's while it runs (with
    // MICRO_NODE_LOCAL=runtime, the only port of the host its nodes may name); a
    // framework service is told to listen there too.
    let given = match port {
        Some(p) => Some(p),
        None if launch.local_nodes.is_on() => match free_port().await {
            Ok(p) => {
                env.retain(|(k, _)| k != "MICRO_SERVICE_ADDRESS");
                env.push(("MICRO_SERVICE_ADDRESS".into(), format!("{}:{p}", launch.host)));
                Some(p)
            }
            Err(e) => return Outcome::Exited(format!("no free port: {e}")),
        },
        None => None,
    };
    let _given = given.map(|p| GivenPort::new(&launch.local_nodes, p, &launch.namespace));
    // Its own build is all it may change (its description excepted).
    let jail = Jail {
        namespace: launch.namespace.clone(),
        writable: vec![launch.root.clone()],
        read_only: vec![launch.root.join("artifact.json")],
        cwd: launch.root.join(&art.cwd),
        home: None,
        env,
        gated: true,
    };
    let mut cmd = match launch.sandbox.command(&jail, &program.to_string_lossy(), &art.command[1..]) {
        Ok(c) => c,
        Err(e) => return Outcome::Exited(format!("cannot start it: {e}")),
    };
    cmd.command_mut().stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    // A group of its own for each run (the last one's may still be emptying).
    let name = format!("{}.{}.{}", launch.namespace, inst.id, inst.restarts());
    let group = match launch.cgroups.group(&name, &launch.limits) {
        Ok(g) => g,
        Err(e) => return Outcome::Exited(format!("cannot limit its resources: {e}")),
    };
    // Into its group before it starts (it waits for the word): whatever it starts goes
    // with it.
    let mut child = match cmd.start(|pid| group.add(pid)).await {
        Ok(c) => c,
        Err(e) => {
            tokio::spawn(group.remove());
            return Outcome::Exited(format!("cannot start {} in its cgroups: {e}", program.display()));
        }
    };
    let pid = child.id().unwrap_or(0);
    inst.pid.store(pid, Ordering::Relaxed);
    let pidfile = PidFile::write(
        &launch.run_dir.join(format!("{}.pid", inst.id)),
        pid,
        Some(&format!("MICRO_INSTANCE={}", inst.id)),
    );
    for out in [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child.stderr.take().map(|o| Box::new(o) as _),
    ]
    .into_iter()
    .flatten()
    {
        let log = launch.log.clone();
        let id = inst.id.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                log.line(&id, &l);
            }
        });
    }
    let started = Instant::now();
    let mut ready = false;
    let mut refreshed = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let watch_memory = launch.limits.memory > 0 && !launch.cgroups.holds_memory();
    let outcome = loop {
        tokio::select! {
            status = child.wait() => {
                let reason = match status {
                    Ok(s) => match (s.code(), signal_of(&s)) {
                        // (A sandbox's code killed inside: bwrap exits with 128 + 9.)
                        (Some(137), _) | (_, Some(9)) if group.killed_for_memory() => format!(
                            "killed: memory over its limit of {} MiB (held by its cgroup)",
                            (launch.limits.memory >> 20).max(1)
                        ),
                        (Some(c), _) => format!("exited with code {c}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "exited".to_string(),
                    },
                    Err(e) => format!("lost: {e}"),
                };
                break Outcome::Exited(reason);
            }
            _ = stopped(stop) => {
                deregister(launch, &inst.id).await;
                // Callers that picked this node just before it left the registry reach it
                // still; it is signalled once they had the time to.
                tokio::time::sleep(DRAIN).await;
                terminate(pid, &mut child).await;
                break Outcome::Stopped;
            }
            _ = tick.tick() => {
                if watch_memory {
                    let rss = family_rss(pid);
                    if rss > launch.limits.memory {
                        kill_group(pid, true);
                        let _ = child.wait().await;
                        break Outcome::Exited(format!(
                            "killed: memory {} MiB over its limit of {} MiB",
                            rss >> 20,
                            (launch.limits.memory >> 20).max(1)
                        ));
                    }
                }
                if !ready {
                    ready = match (&art.http, port) {
                        (Some(http), Some(port)) => {
                            let ok = health(&launch.host, port, &http.health).await;
                            if ok {
                                register_http(launch, &inst.id, port).await;
                            }
                            ok
                        }
                        _ if art.registers => registered(launch, &inst.id).await,
                        _ => started.elapsed() > Duration::from_secs(1),
                    };
                    if ready {
                        inst.set("running", "");
                        let _ = inst.ready.send(true);
                        refreshed = Instant::now();
                    }
                } else if let Some(port) = port.filter(|_| refreshed.elapsed() > HTTP_TTL / 3) {
                    register_http(launch, &inst.id, port).await;
                    refreshed = Instant::now();
                }
            }
        }
    };
    // Whatever it started goes with it (a killed shell leaves its children behind), so
    // a restart never runs beside an orphan of the last run. (The leader is reaped: its
    // group, which keeps its id while it has members, not its pid.)
    signal(pid, true, true);
    drop(pidfile);
    tokio::spawn(group.remove());
    outcome
}

/// Waits until the instance is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn resolve(root: &Path, program: &str) -> PathBuf {
    let p = Path::new(program);
    if p.is_relative() && program.contains('/') { root.join(p) } else { p.to_path_buf() }
}

#[cfg(unix)]
fn signal_of(s: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    s.signal()
}

#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// A port given to a namespace's instance, taken back when the run ends.
struct GivenPort {
    nodes: crate::targets::LocalNodes,
    port: u16,
    namespace: String,
}

impl GivenPort {
    fn new(nodes: &crate::targets::LocalNodes, port: u16, namespace: &str) -> GivenPort {
        nodes.give(port, namespace);
        GivenPort { nodes: nodes.clone(), port, namespace: namespace.to_string() }
    }
}

impl Drop for GivenPort {
    fn drop(&mut self) {
        self.nodes.take_back(self.port, &self.namespace);
    }
}

async fn free_port() -> std::io::Result<u16> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}

/// Whether `GET path` on the port answers 2xx.
async fn health(host: &str, port: u16, path: &str) -> bool {
    let check = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        // The whole reply (the app closes it), so the app sees a clean exchange.
        let mut buf = Vec::new();
        let _ = (&mut s).take(64 << 10).read_to_end(&mut buf).await;
        let n = buf.len().min(16);
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        Some(head.starts_with("HTTP/1.") && head.get(9..10) == Some("2"))
    };
    tokio::time::timeout(Duration::from_secs(2), check).await.ok().flatten().unwrap_or(false)
}

async fn register_http(launch: &Launch, id: &str, port: u16) {
    let svc = Service {
        name: launch.name.clone(),
        version: launch.version.clone(),
        metadata: launch.metadata.clone(),
        endpoints: Vec::new(),
        nodes: vec![Node {
            id: id.to_string(),
            address: format!("{}:{port}", launch.host),
            // Registered by the runtime: nobody but an admin may replace or remove it.
            metadata: [
                ("protocol".to_string(), "http".to_string()),
                ("instance".to_string(), id.to_string()),
                ("registered-by".to_string(), "runtime".to_string()),
            ]
            .into(),
        }],
    };
    if let Err(e) = launch.registry.register(&launch.namespace, &svc, HTTP_TTL).await {
        tracing::warn!(service = %launch.name, error = %e, "registering an HTTP instance failed");
    }
}

/// Whether the instance has registered itself (its node carries its instance id).
async fn registered(launch: &Launch, id: &str) -> bool {
    let services = launch.registry.list_services(&launch.namespace).await.unwrap_or_default();
    services.iter().any(|s| s.nodes.iter().any(|n| n.metadata.get("instance").is_some_and(|i| i == id)))
}

/// Takes the instance's nodes out of the registry.
async fn deregister(launch: &Launch, id: &str) {
    let services = launch.registry.list_services(&launch.namespace).await.unwrap_or_default();
    for mut s in services {
        s.nodes.retain(|n| n.metadata.get("instance").is_some_and(|i| i == id));
        if !s.nodes.is_empty() {
            let _ = launch.registry.deregister(&launch.namespace, &s).await;
        }
    }
}

/// SIGTERM to the instance's processes, SIGKILL to all of them after the grace period.
async fn terminate(pid: u32, child: &mut tokio::process::Child) {
    // Not to bwrap: it would die at once and take the service with it, ungracefully.
    for p in family(pid) {
        if comm(p).as_deref() != Some("bwrap") {
            signal(p, false, false);
        }
    }
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        kill_group(pid, true);
        let _ = child.wait().await;
    }
    // Whatever it left in its group goes too (the leader is reaped: the group only).
    signal(pid, true, true);
}

/// A pid file (`pid start-time [tag]`) for a restarted server to find what this one
/// left running ([`reap`]); removed when dropped.
pub(crate) struct PidFile(PathBuf);

impl PidFile {
    /// Records `pid`, tagged with an entry of its environment (`K=V`) that marks its
    /// processes.
    pub(crate) fn write(path: &Path, pid: u32, tag: Option<&str>) -> PidFile {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let line = format!("{pid} {} {}", start_time(pid).unwrap_or(0), tag.unwrap_or_default());
        let _ = std::fs::write(path, line.trim_end());
        PidFile(path.to_path_buf())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills a process group when dropped: a cancelled build takes its compilers with it.
pub(crate) struct GroupGuard {
    pid: u32,
    started: Option<u64>,
}

impl GroupGuard {
    /// Guards the group led by `pid` (0: nothing).
    pub(crate) fn new(pid: u32) -> GroupGuard {
        GroupGuard { pid, started: start_time(pid) }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.pid == 0 {
            return;
        }
        if self.started.is_some() && start_time(self.pid) == self.started {
            kill_group(self.pid, true);
        } else {
            // Reaped: its pid may be another process's now; its group is still its own.
            signal(self.pid, true, true);
        }
    }
}

/// Signals a process group and every descendant of its leader (SIGKILL with `hard`,
/// else SIGTERM): what left the group (`setsid`) but not the tree goes as well. Only
/// for a leader not reaped yet (its pid is still its own).
pub(crate) fn kill_group(pid: u32, hard: bool) {
    let members = family(pid);
    signal(pid, hard, true);
    for p in members {
        signal(p, hard, false);
    }
}

fn signal(pid: u32, hard: bool, group: bool) {
    #[cfg(unix)]
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let sig = if hard { rustix::process::Signal::KILL } else { rustix::process::Signal::TERM };
        let _ = if group { rustix::process::kill_process_group(p, sig) } else { rustix::process::kill_process(p, sig) };
    }
}

/// The fields of `/proc/<pid>/stat` after the process's name (state first), on Linux.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    Some(after.split(' ').map(str::to_string).collect())
}

/// A process's name.
fn comm(pid: u32) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end().to_string())
}

/// A process's start time (clock ticks since boot), to recognise it after a restart.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Every process: (pid, parent, group, resident pages).
fn processes() -> Vec<(u32, u32, u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let f = stat_fields(pid)?;
            // state(0) ppid(1) pgrp(2) … rss(21) in pages.
            Some((pid, f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?, f.get(21)?.parse().ok()?))
        })
        .collect()
}

/// `pid`, its descendants and the members of its process group.
fn family_of(all: &[(u32, u32, u32, u64)], pid: u32) -> Vec<u32> {
    let mut out: Vec<u32> = all.iter().filter(|p| p.0 == pid || p.2 == pid).map(|p| p.0).collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        let children: Vec<u32> = all.iter().filter(|p| p.1 == parent && !out.contains(&p.0)).map(|p| p.0).collect();
        out.extend(children);
        i += 1;
    }
    out
}

/// `pid`, its descendants and the members of its process group.
pub(crate) fn family(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    family_of(&processes(), pid)
}

/// The resident memory of an instance (its group and its descendants: a sandbox's
/// processes are in a session of their own), in bytes (Linux; 0 elsewhere).
fn family_rss(pid: u32) -> u64 {
    let all = processes();
    let members = family_of(&all, pid);
    all.iter().filter(|p| members.contains(&p.0)).map(|p| p.3 * 4096).sum()
}

/// Whether a process's environment holds `entry` (`K=V`).
fn has_env(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// Kills what a previous server left running (after a crash or SIGKILL): for every pid
/// file of `run_dir`, the process group it names while its leader is the same process,
/// and, when the leader is gone, the members of the group carrying the file's tag in
/// their environment (an instance's `MICRO_INSTANCE`), so a reused pid is left alone.
pub(crate) fn reap(run_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(run_dir) else { return };
    for e in dir.flatten() {
        let path = e.path();
        if path.is_dir() {
            reap(&path);
            continue;
        }
        if path.extension().is_some_and(|x| x == "pid")
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            let mut parts = text.split_whitespace();
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
            let started = parts.next().and_then(|p| p.parse::<u64>().ok());
            let tag = parts.next();
            if pid > 0 && started.is_some() && start_time(pid) == started {
                tracing::info!(pid, file = %path.display(), "stopping an instance left by a previous server");
                kill_group(pid, true);
            } else if let Some(tag) = tag.filter(|_| pid > 0) {
                for (p, ..) in processes().into_iter().filter(|p| p.2 == pid) {
                    if has_env(p, tag) {
                        tracing::info!(pid = p, file = %path.display(), "stopping a process left by a previous server");
                        signal(p, true, false);
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_facts() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(resolve(Path::new("/b"), "bin/x"), PathBuf::from("/b/bin/x"));
        assert_eq!(resolve(Path::new("/b"), "sh"), PathBuf::from("sh"));
    }
}
