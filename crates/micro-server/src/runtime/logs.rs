//! A service's log: lines appended to a file that rotates at a size cap (one older
//! file is kept), and broadcast to whoever follows it.

use micro::proto::runtime as pb;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// A log file with live followers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LogSink {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    max: u64,
    file: Mutex<Option<(std::fs::File, u64)>>,
    tx: broadcast::Sender<pb::LogRecord>,
}

impl LogSink {
    /// The log at `path`, rotated past `max` bytes.
    pub(crate) fn new(path: PathBuf, max: u64) -> LogSink {
        let (tx, _) = broadcast::channel(1024);
        LogSink { inner: Arc::new(Inner { path, max: max.max(1024), file: Mutex::new(None), tx }) }
    }

    /// Appends a line written by `instance`.
    pub(crate) fn line(&self, instance: &str, line: &str) {
        let mut guard = self.inner.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(dir) = self.inner.path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let opened = std::fs::OpenOptions::new().create(true).append(true).open(&self.inner.path);
            match opened {
                Ok(f) => {
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    *guard = Some((f, size));
                }
                Err(e) => tracing::warn!(path = %self.inner.path.display(), error = %e, "cannot open a log file"),
            }
        }
        if let Some((f, size)) = guard.as_mut() {
            let _ = writeln!(f, "{line}");
            *size += line.len() as u64 + 1;
            if *size > self.inner.max {
                // Rotate: the current file becomes .1, replacing the older one.
                let _ = std::fs::rename(&self.inner.path, rotated(&self.inner.path));
                *guard = None;
            }
        }
        drop(guard);
        let _ = self.inner.tx.send(pb::LogRecord {
            line: line.to_string(),
            timestamp: micro_core::store::now_ms() as i64,
            instance: instance.to_string(),
        });
    }

    /// Empties the log (a new build starts).
    pub(crate) fn clear(&self) {
        let mut guard = self.inner.file.lock().unwrap_or_else(|e| e.into_inner());
        *guard = None;
        let _ = std::fs::remove_file(&self.inner.path);
        let _ = std::fs::remove_file(rotated(&self.inner.path));
    }

    /// The last `n` lines kept on disk.
    pub(crate) fn tail(&self, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for p in [rotated(&self.inner.path), self.inner.path.clone()] {
            if let Ok(text) = std::fs::read_to_string(&p) {
                lines.extend(text.lines().map(str::to_string));
            }
        }
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }

    /// New lines as they are written.
    pub(crate) fn follow(&self) -> broadcast::Receiver<pb::LogRecord> {
        self.inner.tx.subscribe()
    }
}

fn rotated(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_tails() {
        let dir = std::env::temp_dir().join(format!("micro-logs-{}", uuid::Uuid::new_v4()));
        let log = LogSink::new(dir.join("service.log"), 1024);
        let mut rx = log.follow();
        for i in 0..300 {
            log.line("a", &format!("line {i:04}"));
        }
        assert_eq!(rx.try_recv().unwrap().line, "line 0000");
        let tail = log.tail(5);
        assert_eq!(tail.last().map(String::as_str), Some("line 0299"));
        assert_eq!(tail.len(), 5);
        // Size-capped: at most the current file and one rotated one.
        let total: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 2 * 1024 + 20, "{total}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        log.clear();
        assert!(log.tail(5).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
