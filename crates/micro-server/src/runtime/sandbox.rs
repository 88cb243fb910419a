//! Where the code the runtime runs is kept: tenants' builds, git fetches and instances
//! run in bubblewrap (`bwrap`) as an unprivileged user, in mount, pid, ipc and uts
//! namespaces of their own, seeing the host read-only with the server's data dir,
//! homes and temporary dirs hidden, and only their own dirs writable. The network is
//! shared: instances reach the proxy on loopback and listen for the gateway.
//!
//! When the server runs as root, `bwrap` runs as root to make the namespaces and
//! mounts (it can then show toolchains kept under `/root`), and `setpriv` drops to the
//! namespace's own user with no capabilities and `no_new_privs` before the service's
//! code starts: each namespace gets a uid of its own, from the server's block on (see
//! [`first_uid`]), kept in the runtime's `uids.json` (or, when `MICRO_RUNTIME_UID` names one, every namespace
//! runs as that user). A server that is not root runs `bwrap` as itself, in a user
//! namespace.
//!
//! Without a working `bwrap` there is no sandbox: the runtime then runs code only for
//! the admins of the default namespace (see `Runtime::admit`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::Command;

/// How the operator wants the runtime's code isolated (`MICRO_RUNTIME_SANDBOX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// `bwrap` when it works here, else no sandbox (and the runtime only for the admins
    /// of the default namespace).
    #[default]
    Auto,
    /// `bwrap` or the server does not start.
    Bwrap,
    /// No sandbox: the runtime only for the admins of the default namespace.
    Off,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(SandboxMode::Auto),
            "bwrap" => Ok(SandboxMode::Bwrap),
            "none" | "off" => Ok(SandboxMode::Off),
            _ => Err(format!("{s:?}: use auto, bwrap or none")),
        }
    }
}

/// Variables of the server's environment that code run without a sandbox keeps (the
/// operator's own code: its toolchains may need them). Nothing else is inherited.
const KEPT_WITHOUT_SANDBOX: [&str; 10] =
    ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "SSL_CERT_FILE"];

/// The lowest uid (and gid) of namespaces' code when each gets its own: far above the
/// system's and people's users and the usual subordinate id ranges.
pub(crate) const FIRST_UID: u32 = 1_000_000_000;

/// Uids per server: each server (data dir) takes its namespaces' users from a block of
/// its own, so servers sharing a host do not share users (nor packet filter rules).
const UID_BLOCK: u32 = 10_000;

/// The first uid of the tenants of the server whose runtime dir is `dir`: one of 299 999
/// blocks above [`FIRST_UID`]'s own (namespace micro's), chosen by the dir.
pub(crate) fn first_uid(dir: &Path) -> u32 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 299_999;
    FIRST_UID + (n + 1) * UID_BLOCK
}

/// PATH inside the sandbox (the toolchain's bin dir goes first).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The isolation in force, shared by builds, fetches and instances.
#[derive(Debug)]
pub(crate) struct Sandbox {
    kind: Kind,
    /// Trees hidden behind an empty tmpfs.
    hidden: Vec<PathBuf>,
    /// Trees shown again, read-only, inside hidden ones (the rust toolchain, the micro
    /// binary).
    shown: Vec<PathBuf>,
    /// PATH inside.
    path: String,
    /// `env`, which starts the command inside with its environment.
    env: PathBuf,
}

#[derive(Debug)]
enum Kind {
    Bwrap {
        bwrap: PathBuf,
        /// Set when the server is root: how to become the sandbox user.
        drop: Option<Demote>,
    },
    /// Why there is none.
    Off(String),
}

#[derive(Debug)]
struct Demote {
    setpriv: PathBuf,
    users: Users,
}

/// Whom sandboxed code runs as under a root server.
#[derive(Debug)]
enum Users {
    /// Everyone as this user and group (`MICRO_RUNTIME_UID`).
    One(u32, u32),
    /// Each namespace as its own, uid = gid, allocated in order from `first` and kept
    /// in `file`.
    PerNamespace { file: PathBuf, first: u32, map: Mutex<BTreeMap<String, u32>> },
}

impl Users {
    /// The namespace's user and group, allocated on first use.
    fn of(&self, ns: &str) -> std::io::Result<(u32, u32)> {
        match self {
            Users::One(uid, gid) => Ok((*uid, *gid)),
            Users::PerNamespace { file, first, map } => {
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(uid) = map.get(ns) {
                    return Ok((*uid, *uid));
                }
                // The operators' namespace has the same user on every server of a host
                // (its code is trusted as the server is, and may share build dirs);
                // tenants' come from the server's block.
                let next = if ns == micro_core::namespace::DEFAULT {
                    FIRST_UID
                } else {
                    map.values().filter(|u| **u >= *first).max().map_or(*first, |m| m + 1)
                };
                if next >= first.saturating_add(UID_BLOCK) && next != FIRST_UID {
                    return Err(std::io::Error::other(format!(
                        "no uid left for another namespace (this server's {UID_BLOCK} are given)"
                    )));
                }
                map.insert(ns.to_string(), next);
                let json = serde_json::to_vec_pretty(&*map).map_err(std::io::Error::other)?;
                let tmp = file.with_extension("tmp");
                std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, file)).inspect_err(|_| {
                    map.remove(ns);
                })?;
                Ok((next, next))
            }
        }
    }

    /// Loads the namespaces' users kept in `file` (none when there is no file yet); new
    /// ones from `first` on.
    fn per_namespace(file: PathBuf, first: u32) -> Result<Users, String> {
        let map = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(Users::PerNamespace { file, first, map: Mutex::new(map) })
    }
}

/// What one sandboxed command may see and change.
#[derive(Debug, Default)]
pub(crate) struct Jail {
    /// The namespace whose code it is (whose user it runs as).
    pub(crate) namespace: String,
    /// Dirs bound writable (they must exist).
    pub(crate) writable: Vec<PathBuf>,
    /// Files or dirs inside writable ones kept read-only.
    pub(crate) read_only: Vec<PathBuf>,
    /// Where the command starts.
    pub(crate) cwd: PathBuf,
    /// `HOME` inside (default `/tmp`, private to the sandbox).
    pub(crate) home: Option<PathBuf>,
    /// The command's environment (nothing of the server's is inherited).
    pub(crate) env: Vec<(String, String)>,
    /// Whether the command waits for a line on its stdin before it starts (so the server
    /// can put it in its cgroups first: whatever it starts then goes with it). Without
    /// the line (stdin closed) it never starts.
    pub(crate) gated: bool,
}

/// Where things are, for [`Sandbox::probe`].
pub(crate) struct Layout {
    /// The server's data dir.
    pub(crate) data_dir: PathBuf,
    /// The dir the per-namespace cargo target dirs are in.
    pub(crate) target_dir: PathBuf,
    /// The rust toolchain's sysroot, when there is one.
    pub(crate) toolchain: Option<PathBuf>,
    /// Where the namespaces' users are kept (when each gets its own).
    pub(crate) uids: PathBuf,
}

impl Sandbox {
    /// Finds out which isolation works here. `Err` (the server does not start) only
    /// when `mode` is [`SandboxMode::Bwrap`] and it does not work.
    pub(crate) async fn probe(mode: SandboxMode, user: Option<(u32, u32)>, layout: &Layout) -> Result<Sandbox, String> {
        let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let (data_dir, target_dir) = (canonical(&layout.data_dir), canonical(&layout.target_dir));
        let mut hidden: Vec<PathBuf> = ["/root", "/home", "/tmp", "/var/tmp"].iter().map(PathBuf::from).collect();
        hidden.extend([data_dir.clone(), target_dir.clone()]);
        hidden.sort();
        hidden.dedup();
        let mut outer: Vec<PathBuf> = Vec::new();
        for h in hidden {
            if !outer.iter().any(|o| h.starts_with(o)) {
                outer.push(h);
            }
        }
        let mut shown = Vec::new();
        let mut path = SYSTEM_PATH.to_string();
        if let Some(sysroot) = &layout.toolchain {
            shown.push(sysroot.clone());
            path = format!("{}:{path}", sysroot.join("bin").display());
        }
        // The micro binary itself, so services can use the CLI.
        if let Ok(exe) = std::env::current_exe().and_then(|e| e.canonicalize()) {
            shown.push(exe);
        }
        // Only what a hidden tree would otherwise hide, and never the data dir's insides.
        shown.retain(|s| {
            outer.iter().any(|h| s.starts_with(h) && s != h) && !s.starts_with(&data_dir) && !s.starts_with(&target_dir)
        });
        let env = find("env").unwrap_or_else(|| PathBuf::from("/usr/bin/env"));
        let mut sandbox = Sandbox { kind: Kind::Off(String::new()), hidden: outer, shown, path, env };
        if mode == SandboxMode::Off {
            sandbox.kind = Kind::Off("the operator turned it off: MICRO_RUNTIME_SANDBOX=none".into());
            return Ok(sandbox);
        }
        let fail = |why: String| if mode == SandboxMode::Bwrap { Err(why) } else { Ok(Kind::Off(why)) };
        sandbox.kind = match find("bwrap") {
            None => fail("bubblewrap (bwrap) is not installed: scripts/sandbox-setup installs it".into())?,
            Some(bwrap) if rustix::process::geteuid().is_root() => match find("setpriv") {
                None => fail("setpriv (util-linux) is not installed: scripts/sandbox-setup installs it".into())?,
                Some(setpriv) => {
                    let users = match user {
                        Some((uid, gid)) => Users::One(uid, gid),
                        None => {
                            let dir = layout.uids.parent().unwrap_or(Path::new("/"));
                            Users::per_namespace(layout.uids.clone(), first_uid(dir))?
                        }
                    };
                    Kind::Bwrap { bwrap, drop: Some(Demote { setpriv, users }) }
                }
            },
            Some(bwrap) => Kind::Bwrap { bwrap, drop: None },
        };
        if sandbox.available()
            && let Err(why) = sandbox.check().await
        {
            sandbox.kind = fail(format!("bwrap does not work here: {why}"))?;
        }
        Ok(sandbox)
    }

    /// Runs `true` in a sandbox: the namespaces and mounts work here.
    async fn check(&self) -> Result<(), String> {
        let jail =
            Jail { namespace: micro_core::namespace::DEFAULT.into(), cwd: PathBuf::from("/"), ..Jail::default() };
        let mut c = self.command(&jail, "true", &[]).map_err(|e| e.to_string())?;
        c.command_mut().kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(20), c.output()).await {
            Err(_) => Err("it did not finish in 20s".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => Err(String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("it failed").to_string()),
        }
    }

    /// Whether code runs sandboxed.
    pub(crate) fn available(&self) -> bool {
        matches!(self.kind, Kind::Bwrap { .. })
    }

    /// The user and group namespace `ns`'s sandboxed code runs as, when the server must
    /// hand it its writable dirs (the server is root); `None` when it runs as the
    /// server's user.
    pub(crate) fn owner(&self, ns: &str) -> std::io::Result<Option<(u32, u32)>> {
        match &self.kind {
            Kind::Bwrap { drop: Some(d), .. } => d.users.of(ns).map(Some),
            _ => Ok(None),
        }
    }

    /// The isolation in force for namespace `ns`'s code, as `micro status` shows it.
    pub(crate) fn describe(&self, ns: &str) -> String {
        match &self.kind {
            Kind::Bwrap { drop: Some(d), .. } => {
                let who = match &d.users {
                    Users::One(uid, _) => format!("uid {uid} (MICRO_RUNTIME_UID)"),
                    Users::PerNamespace { map, .. } => match map.lock().unwrap_or_else(|e| e.into_inner()).get(ns) {
                        Some(uid) => format!("uid {uid} (namespace {ns}'s own)"),
                        None => format!("a uid of namespace {ns}'s own (given at its first run)"),
                    },
                };
                format!("sandbox: bwrap {who} (mount, pid, ipc, uts namespaces; no capabilities)")
            }
            Kind::Bwrap { drop: None, .. } => format!(
                "sandbox: bwrap uid {} (user, mount, pid, ipc, uts namespaces)",
                rustix::process::geteuid().as_raw()
            ),
            Kind::Off(why) => format!("none ({why}): only admins of namespace micro may run services"),
        }
    }

    /// The user namespace `ns`'s code runs as, when it has one already (none is made).
    pub(crate) fn known_uid(&self, ns: &str) -> Option<u32> {
        match &self.kind {
            Kind::Bwrap { drop: Some(Demote { users: Users::One(uid, _), .. }), .. } => Some(*uid),
            Kind::Bwrap { drop: Some(Demote { users: Users::PerNamespace { map, .. }, .. }), .. } => {
                map.lock().unwrap_or_else(|e| e.into_inner()).get(ns).copied()
            }
            _ => None,
        }
    }

    /// Whether each namespace's code runs as a user of its own (a root server without
    /// `MICRO_RUNTIME_UID`).
    pub(crate) fn per_namespace_users(&self) -> bool {
        matches!(&self.kind, Kind::Bwrap { drop: Some(Demote { users: Users::PerNamespace { .. }, .. }), .. })
    }

    /// Why there is no sandbox (`None` when there is one).
    pub(crate) fn missing(&self) -> Option<&str> {
        match &self.kind {
            Kind::Off(why) => Some(why),
            Kind::Bwrap { .. } => None,
        }
    }

    /// A command running `program` with `args` in `jail`, in a process group of its
    /// own (killing the group kills the sandbox: its processes die with `bwrap`). `Err`
    /// when the namespace can get no user of its own.
    ///
    /// Nothing of the tenant's reaches what runs as root: `bwrap` (and `setpriv`) get a
    /// fixed environment and the mounts on their command line; the command itself, with
    /// its environment, is a script `bwrap` writes into the sandbox from its stdin
    /// (`--ro-bind-data 0`) and that starts it once `setpriv` has dropped to the
    /// namespace's user, with `/dev/null` for stdin. So no variable a tenant sets
    /// (`LD_PRELOAD`, a shell function) is seen by a privileged process, and no value is
    /// on a command line.
    pub(crate) fn command(&self, jail: &Jail, program: &str, args: &[String]) -> std::io::Result<Sandboxed> {
        // NUL ends a C string: what holds one would be cut short, so it is refused.
        let nul = |s: &str| s.contains('\0');
        if nul(program) || args.iter().any(|a| nul(a)) || jail.env.iter().any(|(k, v)| nul(k) || nul(v)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a NUL byte in the command, its arguments or its environment",
            ));
        }
        // Gated: a shell that waits for a line on stdin before it becomes the command.
        let start = |program: &OsStr| {
            if jail.gated {
                let mut c = Command::new("/bin/sh");
                c.args(["-c", "read -r go && exec \"$@\"", "micro-gate"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        let mut input = if jail.gated { b"go\n".to_vec() } else { Vec::new() };
        let mut c;
        match &self.kind {
            Kind::Off(_) => {
                c = start(OsStr::new(program));
                c.args(args).current_dir(&jail.cwd).env_clear();
                for k in KEPT_WITHOUT_SANDBOX {
                    if let Some(v) = std::env::var_os(k) {
                        c.env(k, v);
                    }
                }
                c.envs(jail.env.iter().map(|(k, v)| (k, v)));
            }
            Kind::Bwrap { bwrap, drop } => {
                c = start(bwrap.as_os_str());
                c.args(self.bwrap_args(jail, drop.is_none())).arg("--");
                if let Some(d) = drop {
                    let (uid, gid) = d.users.of(&jail.namespace)?;
                    c.arg(&d.setpriv).args([
                        format!("--reuid={uid}"),
                        format!("--regid={gid}"),
                        "--clear-groups".into(),
                        "--inh-caps=-all".into(),
                        "--bounding-set=-all".into(),
                        "--no-new-privs".into(),
                        "--".into(),
                    ]);
                }
                c.args(["/bin/sh", START]).env_clear().env("PATH", SYSTEM_PATH);
                // The instance's tag (the server's, set last), by which a restarted server
                // finds what a killed one left.
                if let Some((_, tag)) = jail.env.iter().rev().find(|(k, _)| k == "MICRO_INSTANCE") {
                    c.env("MICRO_INSTANCE", tag);
                }
                // bwrap's own cwd: somewhere that exists for it.
                c.current_dir("/");
                let home = jail.home.as_deref().unwrap_or(Path::new("/tmp")).to_string_lossy().to_string();
                let mut env = vec![("PATH".to_string(), self.path.clone()), ("HOME".to_string(), home)];
                env.extend(jail.env.iter().cloned());
                input.extend(start_script(&self.env, &env, program, args));
            }
        }
        #[cfg(unix)]
        c.process_group(0);
        Ok(Sandboxed { command: c, input })
    }

    fn bwrap_args(&self, jail: &Jail, user_namespace: bool) -> Vec<String> {
        let mut a: Vec<String> = [
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--perms",
            "1777",
            "--tmpfs",
            "/dev/shm",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if user_namespace {
            a.insert(0, "--unshare-user".into());
        }
        let s = |p: &Path| p.to_string_lossy().to_string();
        // What does not exist has nothing to hide (and bwrap could not mount on it).
        let hidden: Vec<&PathBuf> = self.hidden.iter().filter(|h| h.is_dir()).collect();
        for h in &hidden {
            let perms = if h.as_path() == Path::new("/tmp") { "1777" } else { "0755" };
            a.extend(["--perms".into(), perms.into(), "--tmpfs".into(), s(h)]);
        }
        // Bwrap makes the mount points inside a tmpfs readable by root alone: the dirs
        // on the way are made first, readable by all.
        let binds: Vec<&PathBuf> = self.shown.iter().chain(&jail.writable).chain(&jail.read_only).collect();
        let mut dirs = BTreeSet::new();
        for b in &binds {
            for h in hidden.iter().filter(|h| b.starts_with(h)) {
                let mut p = b.parent();
                while let Some(d) = p.filter(|d| d.starts_with(h) && *d != h.as_path()) {
                    dirs.insert(d.to_path_buf());
                    p = d.parent();
                }
            }
        }
        for d in dirs {
            a.extend(["--perms".into(), "0755".into(), "--dir".into(), s(&d)]);
        }
        for p in self.shown.iter().filter(|p| p.exists()) {
            a.extend(["--ro-bind".into(), s(p), s(p)]);
        }
        for p in &jail.writable {
            a.extend(["--bind".into(), s(p), s(p)]);
        }
        for p in jail.read_only.iter().filter(|p| p.exists()) {
            a.extend(["--ro-bind".into(), s(p), s(p)]);
        }
        for h in hidden.iter().filter(|h| h.as_path() != Path::new("/tmp")) {
            a.extend(["--remount-ro".into(), s(h)]);
        }
        // The command's start script, from bwrap's stdin, readable by the sandbox user.
        if !hidden.iter().any(|h| h.as_path() == Path::new("/tmp")) {
            a.extend(["--perms".into(), "1777".into(), "--tmpfs".into(), "/tmp".into()]);
        }
        a.extend(["--perms".into(), "0444".into(), "--ro-bind-data".into(), "0".into(), START.into()]);
        a.extend(["--chdir".into(), s(&jail.cwd)]);
        a
    }

    /// Hands `dir` (and everything in it) to namespace `ns`'s user, when the server is
    /// root; symlinks are never followed.
    pub(crate) fn hand_over(&self, dir: &Path, ns: &str) -> std::io::Result<()> {
        match self.owner(ns)? {
            Some((uid, gid)) => chown_tree(dir, uid, gid),
            None => Ok(()),
        }
    }
}

/// Where the start script of a sandboxed command is, inside the sandbox.
const START: &str = "/tmp/.micro-start";

/// The script that starts `program` with `args` and exactly `env` (shell-quoted: any
/// bytes but NUL, which [`Sandbox::command`] refuses), stdin `/dev/null`.
fn start_script(env_bin: &Path, env: &[(String, String)], program: &str, args: &[String]) -> Vec<u8> {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = format!("exec </dev/null\nexec {} -i --", q(&env_bin.to_string_lossy()));
    for (k, v) in env {
        line.push(' ');
        line.push_str(&q(&format!("{k}={v}")));
    }
    // `env` takes any argument with `=` for a variable: the program goes through `sh`.
    line.push_str(" /bin/sh -c 'exec \"$0\" \"$@\"' ");
    line.push_str(&q(program));
    for a in args {
        line.push(' ');
        line.push_str(&q(a));
    }
    line.push('\n');
    line.into_bytes()
}

/// A sandboxed command, ready to start: its stdin carries what the sandbox needs (the
/// gate's word, the start script), then is closed.
pub(crate) struct Sandboxed {
    command: Command,
    input: Vec<u8>,
}

impl Sandboxed {
    /// A command run as it is (the server's own, outside any sandbox), stdin closed.
    pub(crate) fn plain(command: Command) -> Sandboxed {
        Sandboxed { command, input: Vec::new() }
    }

    /// The command, to set its stdout and stderr (its stdin is the sandbox's).
    pub(crate) fn command_mut(&mut self) -> &mut Command {
        &mut self.command
    }

    /// What it runs first (for messages).
    pub(crate) fn program(&self) -> String {
        self.command.as_std().get_program().to_string_lossy().to_string()
    }

    /// Starts it: `hold(pid)` runs before a gated command may go on (to put it in its
    /// cgroups), then its stdin gets its input and is closed.
    pub(crate) async fn start(
        mut self,
        hold: impl FnOnce(u32) -> std::io::Result<()>,
    ) -> std::io::Result<tokio::process::Child> {
        use tokio::io::AsyncWriteExt;
        self.command.stdin(std::process::Stdio::piped());
        let mut child = self.command.spawn()?;
        let held = hold(child.id().unwrap_or(0));
        let fed = match (held, child.stdin.take()) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(mut stdin)) => {
                match tokio::time::timeout(Duration::from_secs(30), stdin.write_all(&self.input)).await {
                    Ok(r) => r,
                    Err(_) => {
                        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the sandbox took no input in 30s"))
                    }
                }
            }
            (Ok(()), None) => Err(std::io::Error::other("no stdin")),
        };
        if let Err(e) = fed {
            // Its process group (whatever it started), then itself.
            if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
        Ok(child)
    }

    /// Starts it and waits for its output.
    pub(crate) async fn output(mut self) -> std::io::Result<std::process::Output> {
        self.command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        self.start(|_| Ok(())).await?.wait_with_output().await
    }
}

/// `lchown`s a tree, never following a symlink: each folder is opened from its parent's
/// descriptor without following links (`O_NOFOLLOW`), so a folder the tenant swaps for a
/// link while the walk runs (its code may hold a descriptor of it) leads nowhere else;
/// the top is chowned last, so a walk that fails midway is made again next time.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Mode};
    let owner = (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)));
    match rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty()) {
        Ok(top) => {
            chown_dir(&top, uid, gid, 0)?;
            rustix::fs::fchown(&top, owner.0, owner.1)?;
        }
        // A file, or a link: itself.
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            rustix::fs::chownat(CWD, path, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    Ok(())
}

/// How `chown_tree` opens folders: never through a link.
const DIR_FLAGS: rustix::fs::OFlags = rustix::fs::OFlags::RDONLY
    .union(rustix::fs::OFlags::DIRECTORY)
    .union(rustix::fs::OFlags::NOFOLLOW)
    .union(rustix::fs::OFlags::CLOEXEC);

fn chown_dir(dir: &rustix::fd::OwnedFd, uid: u32, gid: u32, depth: u32) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode};
    if depth > 512 {
        return Err(std::io::Error::other("a tree more than 512 folders deep"));
    }
    let owner = (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)));
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let maybe_dir = matches!(entry.file_type(), rustix::fs::FileType::Directory | rustix::fs::FileType::Unknown);
        if maybe_dir {
            match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
                Ok(sub) => {
                    chown_dir(&sub, uid, gid, depth + 1)?;
                    let st = rustix::fs::fstat(&sub)?;
                    if st.st_uid != uid || st.st_gid != gid {
                        rustix::fs::fchown(&sub, owner.0, owner.1)?;
                    }
                    continue;
                }
                // Not a folder (any more): the entry itself, below.
                Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {}
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if st.st_uid != uid || st.st_gid != gid {
            match rustix::fs::chownat(dir, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Hands a dir to namespace `ns`'s user unless it is the user's already (a kept build
/// made by an earlier version of the server, before the sandbox or with another user,
/// is not).
pub(crate) fn hand_over_once(sandbox: &Sandbox, dir: &Path, ns: &str) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = sandbox.owner(ns)? else { return Ok(()) };
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.uid() == uid && meta.gid() == gid { Ok(()) } else { chown_tree(dir, uid, gid) }
}

/// `name` in the server's PATH.
fn find(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The rust toolchain's sysroot (where `bin/cargo` and `bin/rustc` are): from `CARGO`
/// when it names a toolchain's cargo, else `rustc --print sysroot`.
pub(crate) async fn toolchain() -> Option<PathBuf> {
    if let Some(cargo) = std::env::var_os("CARGO").map(PathBuf::from)
        && let Some(root) = cargo.canonicalize().ok()?.parent().and_then(Path::parent)
        && root.join("bin/rustc").is_file()
    {
        return Some(root.to_path_buf());
    }
    let mut c = Command::new("rustc");
    c.args(["--print", "sysroot"]).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), c.output()).await.ok()?.ok()?;
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && root.join("bin/cargo").is_file()).then_some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(drop: bool) -> Sandbox {
        Sandbox {
            kind: Kind::Bwrap {
                bwrap: "/usr/bin/bwrap".into(),
                drop: drop.then(|| Demote { setpriv: "/usr/bin/setpriv".into(), users: Users::One(65534, 65534) }),
            },
            hidden: vec!["/root".into(), "/tmp".into()],
            shown: vec!["/root/.rustup/toolchains/stable".into()],
            path: SYSTEM_PATH.into(),
            env: "/usr/bin/env".into(),
        }
    }

    #[test]
    fn the_start_script_quotes_everything_and_keeps_it_off_command_lines() {
        // Run by a shell, the script starts the program with exactly its environment,
        // whatever the values hold.
        let nasty = "it's $HOME `x` \"y\"\nnext";
        let env = vec![("K".to_string(), nasty.to_string()), ("PATH".to_string(), SYSTEM_PATH.to_string())];
        let args = ["-c".to_string(), "printf '%s|%s|' \"$K\" \"$0\"; env | sort | tr '\\n' ,".into(), "a=b".into()];
        let script = start_script(Path::new("/usr/bin/env"), &env, "/bin/sh", &args);
        let out = std::process::Command::new("sh").arg("-c").arg(String::from_utf8(script).unwrap()).output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.starts_with(&format!("{nasty}|a=b|")), "{out}");
        assert!(
            out.contains("K=it's") && out.contains(&format!("PATH={SYSTEM_PATH}")) && !out.contains("HOME="),
            "{out}"
        );
        // bwrap gets the mounts and a fixed environment; the values go on its stdin.
        let jail = Jail { namespace: "ns".into(), env, cwd: "/".into(), ..Jail::default() };
        let c = sandbox(true).command(&jail, "/bin/true", &[]).unwrap();
        let line: Vec<String> = c.command.as_std().get_args().map(|a| a.to_string_lossy().to_string()).collect();
        assert!(!line.join(" ").contains("it's") && line.ends_with(&["/bin/sh".into(), START.into()]), "{line:?}");
        let envs: Vec<_> = c.command.as_std().get_envs().map(|(k, _)| k.to_string_lossy().to_string()).collect();
        assert_eq!(envs, ["PATH"], "bwrap gets a fixed environment");
        assert!(String::from_utf8_lossy(&c.input).contains("it'\\''s"));
    }

    #[test]
    fn bwrap_arguments() {
        let jail = Jail {
            writable: vec!["/tmp/data/runtime/builds/ns/svc/v1".into()],
            read_only: vec!["/tmp/data/runtime/builds/ns/svc/v1/artifact.json".into()],
            cwd: "/tmp/data/runtime/builds/ns/svc/v1/src".into(),
            ..Jail::default()
        };
        let a = sandbox(true).bwrap_args(&jail, false).join(" ");
        assert!(!a.contains("--unshare-user"), "{a}");
        assert!(a.contains("--perms 0755 --tmpfs /root") && a.contains("--perms 1777 --tmpfs /tmp"), "{a}");
        for d in ["/root/.rustup", "/root/.rustup/toolchains", "/tmp/data", "/tmp/data/runtime/builds/ns/svc"] {
            assert!(a.contains(&format!("--dir {d} ")), "{d}: {a}");
        }
        let bind = a.find("--bind /tmp/data/runtime/builds/ns/svc/v1 ").unwrap();
        let ro = a.find("--ro-bind /tmp/data/runtime/builds/ns/svc/v1/artifact.json").unwrap_or(usize::MAX);
        let tmpfs = a.find("--tmpfs /tmp ").unwrap();
        assert!(tmpfs < bind, "hidden first, then shown again: {a}");
        // The artifact does not exist here, so it is left out; the order holds when it does.
        assert!(ro == usize::MAX || bind < ro, "{a}");
        assert!(a.contains("--remount-ro /root") && !a.contains("--remount-ro /tmp"), "{a}");
        assert!(sandbox(false).bwrap_args(&jail, true).join(" ").starts_with("--unshare-user"));
    }

    #[test]
    fn each_namespace_gets_a_user_of_its_own_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uids.json");
        let first = first_uid(dir.path());
        assert!(first > FIRST_UID && first.is_multiple_of(UID_BLOCK) && first < u32::MAX - UID_BLOCK, "{first}");
        assert_ne!(first, first_uid(&dir.path().join("other")), "another server, another block");
        let users = Users::per_namespace(file.clone(), first).unwrap();
        assert_eq!(users.of("micro").unwrap(), (FIRST_UID, FIRST_UID), "the operators' user is every server's");
        let (a, b) = (users.of("alpha").unwrap(), users.of("beta").unwrap());
        assert_eq!(a, (first, first));
        assert_eq!(b, (first + 1, first + 1));
        assert_eq!(users.of("alpha").unwrap(), a, "the same user again");
        let again = Users::per_namespace(file.clone(), first).unwrap();
        assert_eq!((again.of("beta").unwrap(), again.of("gamma").unwrap().0), (b, first + 2));
        std::fs::write(&file, "not json").unwrap();
        assert!(Users::per_namespace(file, first).is_err(), "an unreadable file is an error, not a reuse of uids");
        assert_eq!(Users::One(7, 8).of("any").unwrap(), (7, 8));
    }

    #[test]
    fn handing_over_follows_no_link() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (tree, outside) = (dir.path().join("tree"), dir.path().join("outside"));
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(tree.join("a/b/file"), "x").unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/to-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), tree.join("to-file")).unwrap();
        chown_tree(&tree, 4_000_123, 4_000_123).unwrap();
        for p in [tree.join("a/b/file"), tree.join("a/b"), tree.join("a/to-dir"), tree.join("to-file"), tree.clone()] {
            assert_eq!(std::fs::symlink_metadata(&p).unwrap().uid(), 4_000_123, "{}", p.display());
        }
        for p in [outside.join("secret"), outside.clone()] {
            assert_eq!(std::fs::symlink_metadata(&p).unwrap().uid(), 0, "{} was not handed over", p.display());
        }
        // A link given as the top is handed over itself, not what it names.
        chown_tree(&tree.join("to-file"), 4_000_124, 4_000_124).unwrap();
        assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().uid(), 0);
    }

    #[test]
    fn modes() {
        assert_eq!("none".parse::<SandboxMode>(), Ok(SandboxMode::Off));
        assert_eq!("bwrap".parse::<SandboxMode>(), Ok(SandboxMode::Bwrap));
        assert!("maybe".parse::<SandboxMode>().is_err());
    }
}
