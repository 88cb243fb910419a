//! The resources one instance may use: memory, CPU and processes, held by the kernel
//! through cgroups — v2 where the server may delegate its controllers, else the v1
//! hierarchies of the three controllers where it may write them. Where it may not
//! (a server that is not root, a container without cgroups), the runtime watches an
//! instance's memory itself (killing it over its limit) and CPU and processes are not
//! limited; `micro status` says which holds.
//!
//! Each run of an instance gets a group `micro-runtime/<server>.<namespace>.<instance>.<run>`
//! in every hierarchy (`<server>` names the server's data dir), made before it starts
//! and removed once its processes are gone; a server starting again removes what its
//! last run left.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The folder the runtime's groups are made in, in each hierarchy.
const PARENT: &str = "micro-runtime";
/// How long another server's group may be empty before a starting server removes it.
const STALE: Duration = Duration::from_secs(60);
/// The CPU period the CPU limit is a share of, in microseconds.
const PERIOD_US: u64 = 100_000;

/// What one instance may use (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Memory, in bytes.
    pub(crate) memory: u64,
    /// CPU, in thousandths of a core.
    pub(crate) cpu_millis: u64,
    /// Processes and threads.
    pub(crate) pids: u64,
}

impl Limits {
    /// The limits as `micro status` shows them, with how they are held.
    pub(crate) fn describe(&self, cgroups: &Cgroups) -> String {
        let mut parts = Vec::new();
        if self.memory > 0 {
            parts.push(format!("memory {} MiB", (self.memory >> 20).max(1)));
        }
        if self.cpu_millis > 0 {
            parts.push(format!("cpu {}", self.cpu_millis as f64 / 1000.0));
        }
        if self.pids > 0 {
            parts.push(format!("pids {}", self.pids));
        }
        if parts.is_empty() {
            return String::new();
        }
        let how = match cgroups.kind {
            Kind::V2 { .. } => "cgroups v2".to_string(),
            Kind::V1 { .. } => "cgroups v1".to_string(),
            Kind::None(_) if self.memory > 0 => "no cgroups: memory by the runtime's watch, the rest unheld".into(),
            Kind::None(_) => "no cgroups: unheld".into(),
        };
        format!("{} ({how})", parts.join(", "))
    }
}

/// How instances' resources are held here, and the server's mark on its groups.
#[derive(Debug)]
pub(crate) struct Cgroups {
    kind: Kind,
    tag: String,
}

#[derive(Debug)]
enum Kind {
    /// Under this folder of the v2 hierarchy, its children given the controllers.
    V2 {
        /// `<mount>/micro-runtime`.
        parent: PathBuf,
        /// Whether the cpu controller is there (memory and pids always are).
        cpu: bool,
    },
    /// Under `micro-runtime` of each v1 controller's hierarchy that may be written.
    V1 {
        /// The memory controller's folder.
        memory: Option<PathBuf>,
        /// The pids controller's folder.
        pids: Option<PathBuf>,
        /// The cpu controller's folder.
        cpu: Option<PathBuf>,
    },
    /// None: why.
    None(String),
}

impl Cgroups {
    /// Finds out which cgroups this server may use, making its folders; the server's
    /// groups are marked `tag` (and the empty ones an earlier run left are removed).
    pub(crate) fn probe(tag: &str) -> Cgroups {
        let c = Cgroups { kind: Self::kind(), tag: tag.to_string() };
        c.sweep();
        c
    }

    /// Removes this server's empty groups (what a killed server left), and any other
    /// server's empty for a minute (what a server killed for good left; a live server's
    /// group is empty only for moments).
    pub(crate) fn sweep(&self) {
        let parents: Vec<&PathBuf> = match &self.kind {
            Kind::V2 { parent, .. } => vec![parent],
            Kind::V1 { memory, pids, cpu } => [memory, pids, cpu].into_iter().flatten().collect(),
            Kind::None(_) => Vec::new(),
        };
        let mine = format!("{}.", self.tag);
        let old = |e: &std::fs::DirEntry| {
            e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE))
        };
        for p in parents {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if e.path().is_dir() && name.contains('.') && (name.starts_with(&mine) || old(&e)) {
                    // Fails while it has processes.
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }

    fn kind() -> Kind {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = parse_mounts(&mounts);
        let mut why = Vec::new();
        match mounts.iter().find(|m| m.v2) {
            Some(m) => match v2(&m.point) {
                Ok(k) => return k,
                Err(e) => why.push(format!("v2: {e}")),
            },
            None => why.push("v2: not mounted".into()),
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let m = mounts.iter().find(|m| !m.v2 && m.options.iter().any(|o| o == controller))?;
            let dir = m.point.join(PARENT);
            std::fs::create_dir_all(&dir).ok()?;
            Some(dir)
        };
        let (memory, pids, cpu) = (v1("memory"), v1("pids"), v1("cpu"));
        if memory.is_some() || pids.is_some() || cpu.is_some() {
            return Kind::V1 { memory, pids, cpu };
        }
        why.push("v1: no controller this server may write".into());
        Kind::None(why.join("; "))
    }

    /// How instances are held, as `micro status` shows it.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::V2 { cpu, .. } => format!("cgroups v2 (memory, pids{})", if *cpu { ", cpu" } else { "" }),
            Kind::V1 { memory, pids, cpu } => {
                let on: Vec<&str> = [("memory", memory), ("pids", pids), ("cpu", cpu)]
                    .iter()
                    .filter(|(_, d)| d.is_some())
                    .map(|(n, _)| *n)
                    .collect();
                format!("cgroups v1 ({})", on.join(", "))
            }
            Kind::None(why) => format!("no cgroups ({why})"),
        }
    }

    /// Whether the kernel holds instances' memory (else the runtime watches it).
    pub(crate) fn holds_memory(&self) -> bool {
        matches!(self.kind, Kind::V2 { .. } | Kind::V1 { memory: Some(_), .. })
    }

    /// A group named `name` with `limits`, for one instance's processes.
    pub(crate) fn group(&self, name: &str, limits: &Limits) -> std::io::Result<Group> {
        let name = &format!("{}.{name}", self.tag);
        let mut g = Group { dirs: Vec::new(), v2: matches!(self.kind, Kind::V2 { .. }) };
        match &self.kind {
            Kind::None(_) => {}
            Kind::V2 { parent, cpu } => {
                let dir = g.make(parent, name)?;
                if limits.memory > 0 {
                    write(&dir, "memory.max", limits.memory)?;
                    // Swapped out is memory too (no swap controller: nothing to do).
                    let _ = write(&dir, "memory.swap.max", 0);
                }
                if limits.pids > 0 {
                    write(&dir, "pids.max", limits.pids)?;
                }
                if limits.cpu_millis > 0 && *cpu {
                    std::fs::write(dir.join("cpu.max"), format!("{} {PERIOD_US}", quota_us(limits.cpu_millis)))?;
                }
            }
            Kind::V1 { memory, pids, cpu } => {
                if let Some(parent) = memory.as_ref().filter(|_| limits.memory > 0) {
                    let dir = g.make(parent, name)?;
                    write(&dir, "memory.limit_in_bytes", limits.memory)?;
                    let _ = write(&dir, "memory.memsw.limit_in_bytes", limits.memory);
                }
                if let Some(parent) = pids.as_ref().filter(|_| limits.pids > 0) {
                    let dir = g.make(parent, name)?;
                    write(&dir, "pids.max", limits.pids)?;
                }
                if let Some(parent) = cpu.as_ref().filter(|_| limits.cpu_millis > 0) {
                    let dir = g.make(parent, name)?;
                    write(&dir, "cpu.cfs_period_us", PERIOD_US)?;
                    write(&dir, "cpu.cfs_quota_us", quota_us(limits.cpu_millis))?;
                }
            }
        }
        Ok(g)
    }
}

/// The CPU time per period of `millis` thousandths of a core (at least 1 ms).
fn quota_us(millis: u64) -> u64 {
    (millis.saturating_mul(PERIOD_US) / 1000).max(1000)
}

fn write(dir: &Path, file: &str, value: u64) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value.to_string())
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// Makes `parent/micro-runtime` a v2 folder whose children get the controllers.
fn v2(mount: &Path) -> Result<Kind, String> {
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).map_err(|e| e.to_string())?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !has("memory") || !has("pids") {
        return Err(format!("controllers {:?} lack memory or pids", controllers.trim()));
    }
    let cpu = has("cpu");
    let wanted: Vec<&str> = ["memory", "pids", "cpu"].into_iter().filter(|c| has(c)).collect();
    let enable = |dir: &Path| -> Result<(), String> {
        let on = std::fs::read_to_string(dir.join("cgroup.subtree_control")).map_err(|e| e.to_string())?;
        let missing: Vec<String> =
            wanted.iter().filter(|c| !on.split_whitespace().any(|x| x == **c)).map(|c| format!("+{c}")).collect();
        if missing.is_empty() {
            return Ok(());
        }
        std::fs::write(dir.join("cgroup.subtree_control"), missing.join(" "))
            .map_err(|e| format!("enabling {} in {}: {e}", missing.join(" "), dir.display()))
    };
    enable(mount)?;
    let parent = mount.join(PARENT);
    std::fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    enable(&parent)?;
    Ok(Kind::V2 { parent, cpu })
}

/// A cgroup mount: where, whether v2, and its options (v1's controllers).
struct Mount {
    point: PathBuf,
    v2: bool,
    options: Vec<String>,
}

/// The cgroup mounts of `/proc/self/mountinfo`.
fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let options = r.nth(1).unwrap_or_default().split(',').map(str::to_string).collect();
            // Spaces in mount points are escaped as \040; a cgroup mount has none.
            (matches!(fstype, "cgroup" | "cgroup2") && !point.contains('\\')).then(|| Mount {
                point: PathBuf::from(point),
                v2: fstype == "cgroup2",
                options,
            })
        })
        .collect()
}

/// One instance's groups (one per hierarchy used; none without cgroups).
#[derive(Debug)]
pub(crate) struct Group {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Group {
    fn make(&mut self, parent: &Path, name: &str) -> std::io::Result<PathBuf> {
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// Moves process `pid` into the group (its children to come go with it).
    pub(crate) fn add(&self, pid: u32) -> std::io::Result<()> {
        for d in &self.dirs {
            match std::fs::write(d.join("cgroup.procs"), pid.to_string()) {
                // Gone already: nothing of it to hold.
                Err(e) if e.raw_os_error() == Some(3) => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// Whether the kernel killed a process of the group for memory.
    pub(crate) fn killed_for_memory(&self) -> bool {
        self.dirs.iter().any(|d| {
            let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
            let events = std::fs::read_to_string(d.join(file)).unwrap_or_default();
            let oom = events.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0"));
            // v1 kernels without the count: the limit was hit.
            let failed = !self.v2
                && !events.contains("oom_kill ")
                && std::fs::read_to_string(d.join("memory.failcnt")).is_ok_and(|n| n.trim() != "0");
            oom || failed
        })
    }

    /// Removes the groups once their processes are gone (waiting a little for the last
    /// to exit).
    pub(crate) async fn remove(self) {
        for d in &self.dirs {
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_and_limits() {
        let text = "25 20 0:22 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    26 20 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    27 20 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n\
                    28 20 0:25 / /proc rw - proc proc rw\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 3);
        assert!(m[0].options.contains(&"memory".to_string()) && !m[0].v2);
        assert!(m[1].options.contains(&"cpu".to_string()));
        assert!(m[2].v2 && m[2].point == Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(quota_us(500), 50_000);
        assert_eq!(quota_us(0), 1000, "never a zero quota");
        let l = Limits { memory: 256 << 20, cpu_millis: 500, pids: 128 };
        let of = |kind| Cgroups { kind, tag: "t".into() };
        assert_eq!(
            l.describe(&of(Kind::V2 { parent: "/x".into(), cpu: true })),
            "memory 256 MiB, cpu 0.5, pids 128 (cgroups v2)"
        );
        assert!(l.describe(&of(Kind::None("no".into()))).contains("memory by the runtime's watch"));
        assert_eq!(Limits::default().describe(&of(Kind::None("no".into()))), "");
    }
}
