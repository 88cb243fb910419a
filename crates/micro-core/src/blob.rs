//! Blobs: streamed objects by bucket and key, namespaced, with a content type.

use crate::{BoxStream, Status};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The default size limit of one object.
pub const DEFAULT_MAX_SIZE: u64 = 64 * 1024 * 1024;

/// What is known about a stored object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Content type (default `application/octet-stream`).
    pub content_type: String,
    /// When it was written, Unix milliseconds.
    pub modified: u64,
}

/// The content type of an object stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// A stream of chunks.
pub type Chunks = BoxStream<Result<Bytes, Status>>;

/// Object storage.
#[async_trait::async_trait]
pub trait Blob: Send + Sync + 'static {
    /// Stores an object from a stream of chunks, replacing any with the same key. Fails
    /// (storing nothing) when the stream fails or exceeds the size limit.
    async fn put(
        &self,
        namespace: &str,
        bucket: &str,
        key: &str,
        content_type: &str,
        data: Chunks,
    ) -> Result<BlobInfo, Status>;
    /// An object's info and its content as a stream; `NotFound` when absent.
    async fn get(&self, namespace: &str, bucket: &str, key: &str) -> Result<(BlobInfo, Chunks), Status>;
    /// Objects of a bucket whose keys start with `prefix`, by key; `NotFound` for a
    /// bucket without objects.
    async fn list(&self, namespace: &str, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, Status>;
    /// Deletes an object; `NotFound` when absent.
    async fn delete(&self, namespace: &str, bucket: &str, key: &str) -> Result<(), Status>;
    /// The buckets of a namespace holding objects, by name (what deleting a namespace
    /// empties).
    async fn buckets(&self, namespace: &str) -> Result<Vec<String>, Status>;
    /// The bytes a namespace's objects hold ([`object_size`] each): what a plan's storage
    /// quota counts. This default sums the objects' info (their content unread); a
    /// backend that can sum where the data is does.
    async fn size(&self, namespace: &str) -> Result<u64, Status> {
        let mut total = 0u64;
        for bucket in self.buckets(namespace).await? {
            match self.list(namespace, &bucket, "").await {
                Ok(objects) => total = objects.iter().fold(total, |t, o| t.saturating_add(object_size(o))),
                Err(e) if e.code() == crate::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

/// The bytes an object takes in a storage quota: its content, its key and its content
/// type (so empty objects are not free).
pub fn object_size(info: &BlobInfo) -> u64 {
    info.size.saturating_add((info.key.len() + info.content_type.len()) as u64)
}

/// Checks a content type (printable ASCII, at most 255 bytes); empty means
/// [`DEFAULT_CONTENT_TYPE`].
pub fn content_type_or_default(ct: &str) -> Result<String, Status> {
    if ct.is_empty() {
        return Ok(DEFAULT_CONTENT_TYPE.to_string());
    }
    if ct.len() > 255 || !ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(Status::bad_request("blob", format!("invalid content type {ct:?}")));
    }
    Ok(ct.to_string())
}

/// The error of a put over the size limit (413 at the gateway).
pub fn too_large(max: u64) -> Status {
    Status::new(crate::Code::ResourceExhausted, "blob", format!("the object exceeds the limit of {max} bytes"))
        .with_http_status(413)
}

/// Checks a bucket name: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_bucket(bucket: &str) -> Result<(), Status> {
    let ok = !bucket.is_empty()
        && bucket.len() <= 64
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(Status::bad_request("blob", format!("invalid bucket {bucket:?}: use a-z 0-9 . _ -"))) }
}

/// Checks an object key: 1–1024 bytes, no NUL, no `..` segment, not starting with `/`.
pub fn validate_key(key: &str) -> Result<(), Status> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && !key.contains('\0')
        && !key.starts_with('/')
        && key.split('/').all(|s| s != ".." && s != ".");
    if ok { Ok(()) } else { Err(Status::bad_request("blob", format!("invalid key {key:?}"))) }
}
