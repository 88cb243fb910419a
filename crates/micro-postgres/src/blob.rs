//! Blobs in PostgreSQL: an object row per key pointing at a version of chunk rows. A put
//! writes its chunks under a new version first and switches the object to it in one
//! transaction, so readers see the old object or the new one, never a mix, and a failed
//! put leaves nothing behind.

use crate::{Database, db_error, like_escape};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use micro_core::Status;
use micro_core::blob::{
    Blob, BlobInfo, Chunks, DEFAULT_MAX_SIZE, content_type_or_default, too_large, validate_bucket, validate_key,
};
use micro_core::store::now_ms;

const ID: &str = "blob";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS micro_blobs (
    ns TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    version UUID NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    modified BIGINT NOT NULL,
    PRIMARY KEY (ns, bucket, key)
);
CREATE TABLE IF NOT EXISTS micro_blob_chunks (
    version UUID NOT NULL,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (version, seq)
);
"#;

/// The size of a stored chunk.
const CHUNK: usize = 1 << 20;

/// Blobs in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PostgresBlob {
    db: Database,
    max_size: u64,
}

impl PostgresBlob {
    /// Connects to the database at `url` and creates the tables when missing.
    pub async fn connect(url: &str) -> Result<PostgresBlob, Status> {
        PostgresBlob::open(&Database::connect(url)?).await
    }

    /// Blobs in `db`, creating the tables when missing.
    pub async fn open(db: &Database) -> Result<PostgresBlob, Status> {
        db.migrate(ID, SCHEMA).await?;
        Ok(PostgresBlob { db: db.clone(), max_size: DEFAULT_MAX_SIZE })
    }

    /// The largest object (default [`DEFAULT_MAX_SIZE`]).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Status> {
        self.db.client(ID).await
    }

    /// Writes the stream as chunks of `version`; its size.
    async fn write_chunks(&self, version: uuid::Uuid, mut data: Chunks) -> Result<u64, Status> {
        let c = self.client().await?;
        let insert = c
            .prepare_cached("INSERT INTO micro_blob_chunks (version, seq, data) VALUES ($1, $2, $3)")
            .await
            .map_err(|e| db_error(ID, e))?;
        let (mut size, mut seq, mut buf) = (0u64, 0i32, BytesMut::new());
        loop {
            let next = data.next().await;
            if let Some(chunk) = &next {
                let chunk = chunk.as_ref().map_err(Clone::clone)?;
                size += chunk.len() as u64;
                if size > self.max_size {
                    return Err(too_large(self.max_size));
                }
                buf.extend_from_slice(chunk);
            }
            while buf.len() >= CHUNK || (next.is_none() && !buf.is_empty()) {
                let part = buf.split_to(buf.len().min(CHUNK));
                c.execute(&insert, &[&version, &seq, &&part[..]]).await.map_err(|e| db_error(ID, e))?;
                seq += 1;
            }
            if next.is_none() {
                return Ok(size);
            }
        }
    }

    async fn drop_version(&self, version: uuid::Uuid) {
        if let Ok(c) = self.client().await {
            let _ = c.execute("DELETE FROM micro_blob_chunks WHERE version = $1", &[&version]).await;
        }
    }
}

fn not_found(bucket: &str, key: &str) -> Status {
    Status::not_found(ID, format!("no object {bucket}/{key}"))
}

fn like_prefix(s: &str) -> String {
    format!("{}%", like_escape(s))
}

#[async_trait::async_trait]
impl Blob for PostgresBlob {
    async fn put(
        &self,
        namespace: &str,
        bucket: &str,
        key: &str,
        content_type: &str,
        data: Chunks,
    ) -> Result<BlobInfo, Status> {
        micro_core::namespace::validate(namespace)?;
        validate_bucket(bucket)?;
        validate_key(key)?;
        let content_type = content_type_or_default(content_type)?;
        let version = uuid::Uuid::new_v4();
        let size = match self.write_chunks(version, data).await {
            Ok(s) => s,
            Err(e) => {
                self.drop_version(version).await;
                return Err(e);
            }
        };
        let modified = now_ms();
        let switched = async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(|e| db_error(ID, e))?;
            let old = tx
                .query_opt(
                    "SELECT version FROM micro_blobs WHERE ns = $1 AND bucket = $2 AND key = $3 FOR UPDATE",
                    &[&namespace, &bucket, &key],
                )
                .await
                .map_err(|e| db_error(ID, e))?
                .map(|r| r.get::<_, uuid::Uuid>(0));
            tx.execute(
                "INSERT INTO micro_blobs (ns, bucket, key, version, size, content_type, modified) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (ns, bucket, key) DO UPDATE SET \
                 version = excluded.version, size = excluded.size, content_type = excluded.content_type, \
                 modified = excluded.modified",
                &[&namespace, &bucket, &key, &version, &(size as i64), &content_type, &(modified as i64)],
            )
            .await
            .map_err(|e| db_error(ID, e))?;
            if let Some(old) = old {
                tx.execute("DELETE FROM micro_blob_chunks WHERE version = $1", &[&old])
                    .await
                    .map_err(|e| db_error(ID, e))?;
            }
            tx.commit().await.map_err(|e| db_error(ID, e))
        }
        .await;
        if let Err(e) = switched {
            self.drop_version(version).await;
            return Err(e);
        }
        Ok(BlobInfo { bucket: bucket.into(), key: key.into(), size, content_type, modified })
    }

    async fn get(&self, namespace: &str, bucket: &str, key: &str) -> Result<(BlobInfo, Chunks), Status> {
        micro_core::namespace::validate(namespace)?;
        validate_bucket(bucket)?;
        validate_key(key)?;
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT version, size, content_type, modified FROM micro_blobs WHERE ns = $1 AND bucket = $2 AND key = $3",
                &[&namespace, &bucket, &key],
            )
            .await
            .map_err(|e| db_error(ID, e))?
            .ok_or_else(|| not_found(bucket, key))?;
        let version: uuid::Uuid = row.get(0);
        let info = BlobInfo {
            bucket: bucket.into(),
            key: key.into(),
            size: row.get::<_, i64>(1) as u64,
            content_type: row.get(2),
            modified: row.get::<_, i64>(3) as u64,
        };
        drop(c);
        // One chunk per query, so a big object is never held whole.
        let this = self.clone();
        let stream = async_stream::stream! {
            let mut seq = 0i32;
            loop {
                let c = match this.client().await {
                    Ok(c) => c,
                    Err(e) => { yield Err(e); return; }
                };
                let row = c
                    .query_opt("SELECT data FROM micro_blob_chunks WHERE version = $1 AND seq = $2", &[&version, &seq])
                    .await;
                match row {
                    Ok(Some(r)) => yield Ok(Bytes::from(r.get::<_, Vec<u8>>(0))),
                    Ok(None) => return,
                    Err(e) => { yield Err(db_error(ID, e)); return; }
                }
                seq += 1;
            }
        };
        Ok((info, Box::pin(stream)))
    }

    async fn list(&self, namespace: &str, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, Status> {
        micro_core::namespace::validate(namespace)?;
        validate_bucket(bucket)?;
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT key, size, content_type, modified FROM micro_blobs \
                 WHERE ns = $1 AND bucket = $2 AND key LIKE $3 ORDER BY key",
                &[&namespace, &bucket, &like_prefix(prefix)],
            )
            .await
            .map_err(|e| db_error(ID, e))?;
        let infos: Vec<BlobInfo> = rows
            .iter()
            .map(|r| BlobInfo {
                bucket: bucket.into(),
                key: r.get(0),
                size: r.get::<_, i64>(1) as u64,
                content_type: r.get(2),
                modified: r.get::<_, i64>(3) as u64,
            })
            .collect();
        if infos.is_empty() {
            let any = c
                .query_opt("SELECT 1 FROM micro_blobs WHERE ns = $1 AND bucket = $2 LIMIT 1", &[&namespace, &bucket])
                .await
                .map_err(|e| db_error(ID, e))?;
            if any.is_none() {
                return Err(Status::not_found(ID, format!("no bucket {bucket}")));
            }
        }
        Ok(infos)
    }

    async fn delete(&self, namespace: &str, bucket: &str, key: &str) -> Result<(), Status> {
        micro_core::namespace::validate(namespace)?;
        validate_bucket(bucket)?;
        validate_key(key)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| db_error(ID, e))?;
        let gone = tx
            .query_opt(
                "DELETE FROM micro_blobs WHERE ns = $1 AND bucket = $2 AND key = $3 RETURNING version",
                &[&namespace, &bucket, &key],
            )
            .await
            .map_err(|e| db_error(ID, e))?
            .ok_or_else(|| not_found(bucket, key))?;
        let version: uuid::Uuid = gone.get(0);
        tx.execute("DELETE FROM micro_blob_chunks WHERE version = $1", &[&version])
            .await
            .map_err(|e| db_error(ID, e))?;
        tx.commit().await.map_err(|e| db_error(ID, e))
    }

    async fn size(&self, namespace: &str) -> Result<u64, Status> {
        let c = self.client().await?;
        let sql = "SELECT COALESCE(SUM(size + octet_length(key) + octet_length(content_type)), 0)::BIGINT \
                   FROM micro_blobs WHERE ns = $1";
        let row = c.query_one(sql, &[&namespace]).await.map_err(|e| db_error(ID, e))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn buckets(&self, namespace: &str) -> Result<Vec<String>, Status> {
        micro_core::namespace::validate(namespace)?;
        let c = self.client().await?;
        let rows = c
            .query("SELECT DISTINCT bucket FROM micro_blobs WHERE ns = $1 ORDER BY bucket", &[&namespace])
            .await
            .map_err(|e| db_error(ID, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let blob = PostgresBlob::connect(&url).await.expect("connects");
        let blob = Arc::new(blob);
        micro_conformance::blob::blob(blob.clone()).await;
        micro_conformance::blob::buckets(blob).await;
    }
}
