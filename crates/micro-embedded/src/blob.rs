//! The embedded blob store: metadata in SQLite (`blob.db`), contents in files under
//! `<data dir>/blobs/` (in memory for [`DataDir::memory`]).
//!
//! A put streams into `blobs/tmp/<id>.part`, syncs it, renames it to
//! `blobs/<id[..2]>/<id>` (`id` a random UUID, never derived from the key) and then
//! commits the metadata, so an object is replaced whole or not at all; the replaced
//! file is removed after the commit. Files left behind by a crash between those steps
//! are swept in the background when the store is opened.

use crate::DataDir;
use crate::db::{Db, internal};
use crate::files::sync_dir;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use micro_core::blob::{
    Blob, BlobInfo, Chunks, DEFAULT_MAX_SIZE, content_type_or_default, too_large, validate_bucket, validate_key,
};
use micro_core::store::now_ms;
use micro_core::{Code, Status};
use rusqlite::{OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    namespace TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    modified INTEGER NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (namespace, bucket, key)
) WITHOUT ROWID;
";

/// Bytes per chunk when reading an object.
const CHUNK: usize = 64 * 1024;
/// Files unreferenced (or temporary and untouched) for this long are swept at open.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// The embedded blob store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBlob {
    db: Db,
    files: Arc<Files>,
    max_size: u64,
}

/// Where contents live.
enum Files {
    /// `blobs/` in the data directory.
    Disk(PathBuf),
    /// In memory, by file id.
    Memory(Mutex<HashMap<String, Bytes>>),
}

impl EmbeddedBlob {
    /// Opens the blob store in `dir`, with the [`DEFAULT_MAX_SIZE`] object limit.
    pub fn open(dir: &DataDir) -> Result<EmbeddedBlob, Status> {
        let db = dir.open("blob", SCHEMA)?;
        let files = match &dir.path {
            Some(path) => {
                let root = path.join("blobs");
                std::fs::create_dir_all(root.join("tmp"))
                    .map_err(|e| Status::internal("blob", format!("creating {}: {e}", root.display())))?;
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(sweep(db.clone(), root.clone()));
                }
                Files::Disk(root)
            }
            None => Files::Memory(Mutex::new(HashMap::new())),
        };
        Ok(EmbeddedBlob { db, files: Arc::new(files), max_size: DEFAULT_MAX_SIZE })
    }

    /// Sets the size limit of one object, in bytes.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// The metadata and file id of an object.
    async fn lookup(&self, namespace: &str, bucket: &str, key: &str) -> Result<(BlobInfo, String), Status> {
        let (ns, b, k) = (namespace.to_string(), bucket.to_string(), key.to_string());
        let found = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT size, content_type, modified, file FROM objects
                     WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
                    params![ns, b, k],
                    |r| {
                        let info = BlobInfo {
                            bucket: b.clone(),
                            key: k.clone(),
                            size: r.get::<_, i64>(0)? as u64,
                            content_type: r.get(1)?,
                            modified: r.get::<_, i64>(2)? as u64,
                        };
                        Ok((info, r.get::<_, String>(3)?))
                    },
                )
                .optional()
                .map_err(internal)
            })
            .await?;
        found.ok_or_else(|| Status::not_found("blob", format!("no object {key:?} in bucket {bucket:?}")))
    }
}

#[async_trait::async_trait]
impl Blob for EmbeddedBlob {
    async fn put(
        &self,
        namespace: &str,
        bucket: &str,
        key: &str,
        content_type: &str,
        data: Chunks,
    ) -> Result<BlobInfo, Status> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        let content_type = content_type_or_default(content_type)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let size = self.files.write(&id, data, self.max_size).await?;
        let info =
            BlobInfo { bucket: bucket.to_string(), key: key.to_string(), size, content_type, modified: now_ms() };
        let (ns, row, file) = (namespace.to_string(), info.clone(), id.clone());
        let committed = self
            .db
            .write(move |c| {
                let tx = c.transaction().map_err(internal)?;
                let old: Option<String> = tx
                    .query_row(
                        "SELECT file FROM objects WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
                        params![ns, row.bucket, row.key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                tx.execute(
                    "INSERT INTO objects (namespace, bucket, key, size, content_type, modified, file)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (namespace, bucket, key) DO UPDATE SET
                        size = excluded.size, content_type = excluded.content_type,
                        modified = excluded.modified, file = excluded.file",
                    params![ns, row.bucket, row.key, row.size as i64, row.content_type, row.modified as i64, file],
                )
                .map_err(internal)?;
                tx.commit().map_err(internal)?;
                Ok(old)
            })
            .await;
        match committed {
            Ok(old) => {
                if let Some(old) = old {
                    self.files.remove(&old).await;
                }
                Ok(info)
            }
            Err(e) => {
                self.files.remove(&id).await;
                Err(e)
            }
        }
    }

    async fn get(&self, namespace: &str, bucket: &str, key: &str) -> Result<(BlobInfo, Chunks), Status> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        let mut last_missing = None;
        loop {
            let (info, file) = self.lookup(namespace, bucket, key).await?;
            match self.files.read(&file, info.size).await? {
                Some(chunks) => return Ok((info, chunks)),
                // The object was replaced or deleted between the lookup and the open:
                // look again. The same file missing twice means it is lost.
                None if last_missing.as_ref() != Some(&file) => last_missing = Some(file),
                None => {
                    return Err(Status::new(
                        Code::DataLoss,
                        "blob",
                        format!("the contents of {key:?} in bucket {bucket:?} are missing"),
                    ));
                }
            }
        }
    }

    async fn list(&self, namespace: &str, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, Status> {
        validate_bucket(bucket)?;
        let (ns, b, p) = (namespace.to_string(), bucket.to_string(), prefix.to_string());
        let (infos, bucket_exists) = self
            .db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT key, size, content_type, modified FROM objects
                         WHERE namespace = ?1 AND bucket = ?2 AND key >= ?3 AND substr(key, 1, length(?3)) = ?3
                         ORDER BY key",
                    )
                    .map_err(internal)?;
                let rows = stmt
                    .query_map(params![ns, b, p], |r| {
                        Ok(BlobInfo {
                            bucket: b.clone(),
                            key: r.get(0)?,
                            size: r.get::<_, i64>(1)? as u64,
                            content_type: r.get(2)?,
                            modified: r.get::<_, i64>(3)? as u64,
                        })
                    })
                    .map_err(internal)?;
                let infos = rows.collect::<Result<Vec<_>, _>>().map_err(internal)?;
                let exists = !infos.is_empty()
                    || c.query_row(
                        "SELECT 1 FROM objects WHERE namespace = ?1 AND bucket = ?2 LIMIT 1",
                        params![ns, b],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(internal)?
                    .is_some();
                Ok((infos, exists))
            })
            .await?;
        if !bucket_exists {
            return Err(Status::not_found("blob", format!("no objects in bucket {bucket:?}")));
        }
        Ok(infos)
    }

    async fn delete(&self, namespace: &str, bucket: &str, key: &str) -> Result<(), Status> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        let (ns, b, k) = (namespace.to_string(), bucket.to_string(), key.to_string());
        let file = self
            .db
            .write(move |c| {
                c.query_row(
                    "DELETE FROM objects WHERE namespace = ?1 AND bucket = ?2 AND key = ?3 RETURNING file",
                    params![ns, b, k],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map_err(internal)
            })
            .await?;
        let file = file.ok_or_else(|| Status::not_found("blob", format!("no object {key:?} in bucket {bucket:?}")))?;
        self.files.remove(&file).await;
        Ok(())
    }

    async fn size(&self, namespace: &str) -> Result<u64, Status> {
        let ns = namespace.to_string();
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT COALESCE(SUM(size + length(CAST(key AS BLOB)) + length(CAST(content_type AS BLOB))), 0) \
                         FROM objects WHERE namespace = ?1",
                    )
                    .map_err(internal)?;
                let n: i64 = stmt.query_row(params![ns], |r| r.get(0)).map_err(internal)?;
                Ok(n.max(0) as u64)
            })
            .await
    }

    async fn buckets(&self, namespace: &str) -> Result<Vec<String>, Status> {
        let ns = namespace.to_string();
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT DISTINCT bucket FROM objects WHERE namespace = ?1 ORDER BY bucket")
                    .map_err(internal)?;
                let rows = stmt.query_map(params![ns], |r| r.get::<_, String>(0)).map_err(internal)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(internal)
            })
            .await
    }
}

impl Files {
    /// Stores `data` as file `id`; returns its size. Nothing is left behind on failure.
    async fn write(&self, id: &str, mut data: Chunks, max: u64) -> Result<u64, Status> {
        let root = match self {
            Files::Disk(root) => root,
            Files::Memory(files) => {
                let mut buf = BytesMut::new();
                while let Some(chunk) = data.next().await {
                    let chunk = chunk?;
                    if buf.len() as u64 + chunk.len() as u64 > max {
                        return Err(too_large(max));
                    }
                    buf.extend_from_slice(&chunk);
                }
                let size = buf.len() as u64;
                lock(files).insert(id.to_string(), buf.freeze());
                return Ok(size);
            }
        };
        let tmp = root.join("tmp").join(format!("{id}.part"));
        let io = |what: &str, e: std::io::Error| Status::internal("blob", format!("{what}: {e}"));
        let guard = RemoveOnDrop(Some(tmp.clone()));
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| io("creating a temporary file", e))?;
        let mut size = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large(max));
            }
            f.write_all(&chunk).await.map_err(|e| io("writing", e))?;
        }
        f.flush().await.map_err(|e| io("writing", e))?;
        f.sync_all().await.map_err(|e| io("syncing", e))?;
        drop(f);
        let dest = file_path(root, id);
        let dir = dest.parent().unwrap_or(root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| io("creating a directory", e))?;
        tokio::fs::rename(&tmp, &dest).await.map_err(|e| io("moving the object into place", e))?;
        guard.disarm();
        // Make the rename durable before the metadata that points at it.
        let _ = tokio::task::spawn_blocking(move || sync_dir(&dir)).await;
        Ok(size)
    }

    /// The contents of file `id` (`size` bytes) as chunks; `None` if it is gone.
    async fn read(&self, id: &str, size: u64) -> Result<Option<Chunks>, Status> {
        let root = match self {
            Files::Disk(root) => root,
            Files::Memory(files) => {
                let Some(bytes) = lock(files).get(id).cloned() else { return Ok(None) };
                let chunks: Vec<Result<Bytes, Status>> =
                    (0..bytes.len()).step_by(CHUNK).map(|i| Ok(bytes.slice(i..(i + CHUNK).min(bytes.len())))).collect();
                return Ok(Some(futures::stream::iter(chunks).boxed()));
            }
        };
        let file = match tokio::fs::File::open(file_path(root, id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Status::internal("blob", format!("opening an object: {e}"))),
        };
        // An open file stays readable even if the object is replaced meanwhile.
        let stream = futures::stream::try_unfold((file, size), |(mut file, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let want = left.min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match file.read(&mut buf[got..]).await {
                    Ok(0) => {
                        return Err(Status::new(Code::DataLoss, "blob", "the object's file is shorter than recorded"));
                    }
                    Ok(n) => got += n,
                    Err(e) => return Err(Status::internal("blob", format!("reading an object: {e}"))),
                }
            }
            Ok(Some((Bytes::from(buf), (file, left - want as u64))))
        });
        Ok(Some(stream.boxed()))
    }

    /// Removes file `id`, if present (a failure only leaves an orphan to sweep).
    async fn remove(&self, id: &str) {
        match self {
            Files::Disk(root) => {
                let path = file_path(root, id);
                if let Err(e) = tokio::fs::remove_file(&path).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "removing a blob file failed");
                }
            }
            Files::Memory(files) => {
                lock(files).remove(id);
            }
        }
    }
}

/// Where file `id` lives: fanned out by its first two characters.
fn file_path(root: &Path, id: &str) -> PathBuf {
    root.join(id.get(..2).unwrap_or("00")).join(id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a temporary file unless disarmed (also when a put is cancelled).
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes temporary files and object files no metadata points at, once they are old
/// enough not to belong to a put in progress.
async fn sweep(db: Db, root: PathBuf) {
    let referenced = db
        .read(|c| {
            let mut stmt = c.prepare("SELECT file FROM objects").map_err(internal)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(internal)?;
            rows.collect::<Result<HashSet<String>, _>>().map_err(internal)
        })
        .await;
    let referenced = match referenced {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "sweeping blob files: reading metadata failed");
            return;
        }
    };
    let swept = tokio::task::spawn_blocking(move || sweep_files(&root, &referenced)).await.unwrap_or(0);
    if swept > 0 {
        tracing::info!(files = swept, "removed orphaned blob files");
    }
}

fn sweep_files(root: &Path, referenced: &HashSet<String>) -> usize {
    let old = |p: &Path| {
        std::fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ORPHAN_AGE))
    };
    let Ok(dirs) = std::fs::read_dir(root) else { return 0 };
    let mut swept = 0;
    for dir in dirs.flatten() {
        let is_tmp = dir.file_name() == "tmp";
        let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let orphan = is_tmp || !referenced.contains(&name);
            if orphan && old(&file.path()) && std::fs::remove_file(file.path()).is_ok() {
                swept += 1;
            }
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    /// A stream of `chunks` followed by an error.
    fn failing(chunks: Vec<&'static [u8]>) -> Chunks {
        let items = chunks.into_iter().map(|c| Ok(Bytes::from_static(c)));
        futures::stream::iter(items.chain([Err(Status::new(Code::Cancelled, "client", "upload aborted"))])).boxed()
    }

    fn once(data: &'static [u8]) -> Chunks {
        futures::stream::iter([Ok(Bytes::from_static(data))]).boxed()
    }

    async fn read_all(chunks: Chunks) -> Vec<u8> {
        let parts: Vec<Bytes> = chunks.map(|c| c.unwrap()).collect().await;
        parts.concat()
    }

    /// Every regular file under `dir`.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(files(&p)) } else { out.push(p) }
        }
        out
    }

    #[tokio::test]
    async fn conformance_in_memory() {
        let blob = EmbeddedBlob::open(&DataDir::memory()).unwrap().max_size(4 * 1024 * 1024);
        micro_conformance::blob::blob(Arc::new(blob)).await;
    }

    #[tokio::test]
    async fn buckets_in_memory() {
        micro_conformance::blob::buckets(Arc::new(EmbeddedBlob::open(&DataDir::memory()).unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let blob = Arc::new(EmbeddedBlob::open(&DataDir::new(dir.path())).unwrap().max_size(4 * 1024 * 1024));
        micro_conformance::blob::blob(blob.clone()).await;
        micro_conformance::blob::blob(blob).await;
        let leftovers: Vec<PathBuf> = files(&dir.path().join("blobs/tmp"));
        assert!(leftovers.is_empty(), "temporary files are cleaned up: {leftovers:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_with_the_default_limit() {
        let dir = tempfile::tempdir().unwrap();
        micro_conformance::blob::blob(Arc::new(EmbeddedBlob::open(&DataDir::new(dir.path())).unwrap())).await;
    }

    #[tokio::test]
    async fn files_are_named_by_id_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let blob = EmbeddedBlob::open(&data).unwrap();
        blob.put("ns", "b", "dir/sub/a key..with spaces.txt", "text/plain", once(b"hello")).await.unwrap();
        let names: Vec<PathBuf> = files(&dir.path().join("blobs"));
        assert_eq!(names.len(), 1, "{names:?}");
        let name = names[0].file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name.len(), 32, "a uuid, not the key: {name}");
        assert!(names[0].starts_with(dir.path().join("blobs")));
        drop(blob);

        let blob = EmbeddedBlob::open(&data).unwrap();
        let (info, chunks) = blob.get("ns", "b", "dir/sub/a key..with spaces.txt").await.unwrap();
        assert_eq!((info.size, info.content_type.as_str()), (5, "text/plain"));
        assert_eq!(read_all(chunks).await, b"hello");
    }

    #[tokio::test]
    async fn failures_store_nothing_and_leave_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let blob = EmbeddedBlob::open(&DataDir::new(dir.path())).unwrap().max_size(8);
        blob.put("ns", "b", "k", "", once(b"old")).await.unwrap();
        let err = blob.put("ns", "b", "k", "", failing(vec![b"new"])).await.unwrap_err();
        assert_eq!(err.code(), Code::Cancelled, "the stream's error is reported");
        let err = blob.put("ns", "b", "k", "", once(b"123456789")).await.unwrap_err();
        assert_eq!((err.code(), err.http_status()), (Code::ResourceExhausted, 413));
        assert!(err.detail().contains("limit of 8 bytes"), "{}", err.detail());
        let (_, chunks) = blob.get("ns", "b", "k").await.unwrap();
        assert_eq!(read_all(chunks).await, b"old");
        assert_eq!(files(&dir.path().join("blobs")).len(), 1, "only the old object's file");
        blob.delete("ns", "b", "k").await.unwrap();
        assert!(files(&dir.path().join("blobs")).is_empty(), "delete removes the file");
        let err = blob.put("ns", "b", "k", "bad\ntype", once(b"x")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_cancelled_put_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let blob = EmbeddedBlob::open(&DataDir::new(dir.path())).unwrap();
        let endless =
            futures::stream::once(async { Ok(Bytes::from_static(b"start")) }).chain(futures::stream::pending()).boxed();
        let put = blob.put("ns", "b", "k", "", endless);
        assert!(tokio::time::timeout(Duration::from_millis(200), put).await.is_err());
        assert!(files(&dir.path().join("blobs")).is_empty());
        assert_eq!(blob.get("ns", "b", "k").await.err().map(|e| e.code()), Some(Code::NotFound));
    }

    #[tokio::test]
    async fn a_reader_keeps_its_version_while_the_object_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let blob = EmbeddedBlob::open(&DataDir::new(dir.path())).unwrap();
        let old = vec![1u8; 3 * CHUNK];
        blob.put("ns", "b", "k", "", futures::stream::iter([Ok(Bytes::from(old.clone()))]).boxed()).await.unwrap();
        let (_, chunks) = blob.get("ns", "b", "k").await.unwrap();
        blob.put("ns", "b", "k", "", once(b"new")).await.unwrap();
        assert_eq!(read_all(chunks).await, old);
        let (_, chunks) = blob.get("ns", "b", "k").await.unwrap();
        assert_eq!(read_all(chunks).await, b"new");
    }

    #[test]
    fn sweep_removes_only_old_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::create_dir_all(root.join("ab")).unwrap();
        let old = SystemTime::now() - 2 * ORPHAN_AGE;
        let mk = |p: &str, age: Option<SystemTime>| {
            let f = std::fs::File::create(root.join(p)).unwrap();
            if let Some(t) = age {
                f.set_modified(t).unwrap();
            }
        };
        mk("tmp/x.part", Some(old));
        mk("tmp/y.part", None);
        mk("ab/abkept", Some(old));
        mk("ab/aborphan", Some(old));
        mk("ab/abfresh", None);
        let referenced = HashSet::from(["abkept".to_string()]);
        assert_eq!(sweep_files(root, &referenced), 2);
        let mut left: Vec<String> =
            files(root).iter().map(|p| p.strip_prefix(root).unwrap().display().to_string()).collect();
        left.sort();
        assert_eq!(left, ["ab/abfresh", "ab/abkept", "tmp/y.part"]);
    }
}
