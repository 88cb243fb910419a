//! A SQLite database in WAL mode: one writer connection and a few readers, used from
//! async code through the blocking thread pool.

use micro_core::Status;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How hard writes are made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Survives a crash of the process (SIGKILL); the last writes may be lost on power
    /// loss (`synchronous=NORMAL`). The default.
    #[default]
    Process,
    /// Survives power loss too (`synchronous=FULL`): every commit waits for the disk.
    Power,
}

/// An open database. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

/// A SQLite error as an internal status.
pub(crate) fn internal(e: rusqlite::Error) -> Status {
    Status::internal("micro", format!("database: {e}")).with_source(e)
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    /// Opens (creating) the database at `path` and applies `schema` (idempotent SQL);
    /// `None` opens a private in-memory database.
    pub(crate) fn open(path: Option<&Path>, schema: &str, durability: Durability) -> Result<Db, Status> {
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        let setup = |c: &Connection| -> rusqlite::Result<()> {
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            c.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"))?;
            Ok(())
        };
        let (writer, readers) = match path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Status::internal("micro", format!("creating {}: {e}", dir.display())))?;
                }
                let w = Connection::open(p).map_err(internal)?;
                w.pragma_update(None, "journal_mode", "WAL").map_err(internal)?;
                setup(&w).map_err(internal)?;
                w.execute_batch(schema).map_err(internal)?;
                let mut readers = Vec::new();
                for _ in 0..4 {
                    let r = Connection::open_with_flags(
                        p,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                    )
                    .map_err(internal)?;
                    setup(&r).map_err(internal)?;
                    readers.push(Mutex::new(r));
                }
                (w, readers)
            }
            None => {
                let w = Connection::open_in_memory().map_err(internal)?;
                setup(&w).map_err(internal)?;
                w.execute_batch(schema).map_err(internal)?;
                (w, Vec::new())
            }
        };
        Ok(Db { inner: Arc::new(Inner { writer: Mutex::new(writer), readers, next: AtomicUsize::new(0) }) })
    }

    /// A handle that does not keep the database open (for background tasks).
    pub(crate) fn downgrade(&self) -> WeakDb {
        WeakDb(Arc::downgrade(&self.inner))
    }

    /// Runs `f` on the writer connection (inside it, use a transaction for several
    /// statements).
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Status> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(|e| Status::internal("micro", format!("database task: {e}")))?
    }

    /// Runs `f` on a reader connection (the writer for in-memory databases).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Status> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            if inner.readers.is_empty() {
                return f(&lock(&inner.writer));
            }
            let i = inner.next.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            f(&lock(&inner.readers[i]))
        })
        .await
        .map_err(|e| Status::internal("micro", format!("database task: {e}")))?
    }
}

/// A [`Db`] that does not keep it open.
pub(crate) struct WeakDb(std::sync::Weak<Inner>);

impl WeakDb {
    /// The database, while some [`Db`] still holds it.
    pub(crate) fn upgrade(&self) -> Option<Db> {
        self.0.upgrade().map(|inner| Db { inner })
    }
}

/// Where the embedded backends keep their files.
#[derive(Clone, Debug)]
pub struct DataDir {
    /// The directory (`None`: everything in memory, for tests).
    pub path: Option<PathBuf>,
    /// How hard writes are made durable.
    pub durability: Durability,
}

impl DataDir {
    /// Files under `path`.
    pub fn new(path: impl Into<PathBuf>) -> DataDir {
        DataDir { path: Some(path.into()), durability: Durability::default() }
    }

    /// Everything in memory (nothing survives the process).
    pub fn memory() -> DataDir {
        DataDir { path: None, durability: Durability::default() }
    }

    /// Opens the database `name` (`store` → `<dir>/store.db`).
    pub(crate) fn open(&self, name: &str, schema: &str) -> Result<Db, Status> {
        let path = self.path.as_ref().map(|p| p.join(format!("{name}.db")));
        Db::open(path.as_deref(), schema, self.durability)
    }
}
