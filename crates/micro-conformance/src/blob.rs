//! Conformance of `blob` backends.
//!
//! The oversize check streams [`DEFAULT_MAX_SIZE`] + 1 bytes (lazily, without holding
//! them), so it expects the backend's limit to be at most the default.

use bytes::Bytes;
use futures::StreamExt;
use micro_core::blob::{Blob, BlobInfo, Chunks, DEFAULT_MAX_SIZE};
use micro_core::{Code, Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static RUN: AtomicU64 = AtomicU64::new(0);

/// A fresh namespace for one run of the suite.
fn namespace(what: &str) -> String {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("conformance-blob-{what}-{}-{n}", t % 1_000_000_000_000)
}

fn chunks(parts: Vec<Vec<u8>>) -> Chunks {
    futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p)))).boxed()
}

fn one(data: &[u8]) -> Chunks {
    chunks(vec![data.to_vec()])
}

/// `len` bytes of a pattern that differs per `seed`, so mixed-up chunks show.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 4099) as u8).wrapping_add(seed)).collect()
}

/// `total` bytes as 1 MiB chunks of one shared buffer.
fn lazy(total: u64) -> Chunks {
    const MIB: u64 = 1024 * 1024;
    let block = Bytes::from(vec![b'z'; MIB as usize]);
    let n = total.div_ceil(MIB);
    futures::stream::iter((0..n).map(move |i| Ok(block.slice(..(total - i * MIB).min(MIB) as usize)))).boxed()
}

async fn get(b: &dyn Blob, ns: &str, bucket: &str, key: &str) -> (BlobInfo, Vec<u8>) {
    let (info, stream) = b.get(ns, bucket, key).await.unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"));
    let mut data = Vec::new();
    let mut stream = stream;
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("reading {bucket}/{key}: {e:?}")));
    }
    (info, data)
}

async fn put(b: &dyn Blob, ns: &str, bucket: &str, key: &str, ct: &str, data: Chunks) -> BlobInfo {
    b.put(ns, bucket, key, ct, data).await.unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"))
}

fn expect_code<T>(r: Result<T, Status>, codes: &[Code], what: &str) {
    match r {
        Err(e) => assert!(codes.contains(&e.code()), "{what}: expected one of {codes:?}, got {e:?}"),
        Ok(_) => panic!("{what}: expected one of {codes:?}, got Ok"),
    }
}

fn keys(infos: &[BlobInfo]) -> Vec<&str> {
    infos.iter().map(|i| i.key.as_str()).collect()
}

/// Runs every blob check against `blob`.
pub async fn blob(blob: Arc<dyn Blob>) {
    let b = &*blob;
    let ns = namespace("a");
    let other = namespace("b");
    let bucket = "media";

    // A multi-chunk object round-trips.
    let parts: Vec<Vec<u8>> = (0..5u8).map(|i| pattern(300_000 + usize::from(i) * 1000, i)).collect();
    let content: Vec<u8> = parts.concat();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let info = put(b, &ns, bucket, "videos/a.bin", "video/mp4", chunks(parts)).await;
    assert_eq!(info.size, content.len() as u64, "put reports the size");
    assert_eq!((info.bucket.as_str(), info.key.as_str()), (bucket, "videos/a.bin"), "put reports bucket and key");
    assert_eq!(info.content_type, "video/mp4", "put reports the content type");
    assert!(u128::from(info.modified) + 1000 >= before, "modified is Unix milliseconds: {}", info.modified);
    let (got, data) = get(b, &ns, bucket, "videos/a.bin").await;
    assert_eq!(got, info, "get returns what put reported");
    assert_eq!(data.len(), content.len(), "a multi-chunk object round-trips whole");
    assert!(data == content, "a multi-chunk object round-trips byte for byte");

    // Empty content types default; empty objects are fine.
    let info = put(b, &ns, bucket, "empty", "", one(b"")).await;
    assert_eq!(info.content_type, "application/octet-stream", "the default content type");
    assert_eq!(info.size, 0, "an empty object");
    let (got, data) = get(b, &ns, bucket, "empty").await;
    assert_eq!((got.content_type.as_str(), data.len()), ("application/octet-stream", 0), "an empty object reads back");

    // List: by prefix, ordered by key.
    for key in ["docs/b.txt", "docs/a.txt", "docs/sub/c.txt", "docsx", "img/x.png"] {
        put(b, &ns, bucket, key, "text/plain", one(key.as_bytes())).await;
    }
    let docs = b.list(&ns, bucket, "docs/").await.expect("list a prefix");
    assert_eq!(keys(&docs), ["docs/a.txt", "docs/b.txt", "docs/sub/c.txt"], "list by prefix, ordered by key");
    assert_eq!(docs[0].size, 10, "list reports sizes");
    assert_eq!(docs[0].content_type, "text/plain", "list reports content types");
    assert_eq!(docs[0].bucket, bucket, "list reports the bucket");
    let all = b.list(&ns, bucket, "").await.expect("list all");
    assert_eq!(
        keys(&all),
        ["docs/a.txt", "docs/b.txt", "docs/sub/c.txt", "docsx", "empty", "img/x.png", "videos/a.bin"],
        "list everything, ordered by key"
    );
    assert_eq!(b.list(&ns, bucket, "zzz").await.expect("list an unmatched prefix"), vec![], "no match is empty");
    expect_code(b.list(&ns, "no-such-bucket", "").await, &[Code::NotFound], "list of a bucket without objects");

    // Overwrite.
    let info = put(b, &ns, bucket, "docs/a.txt", "application/json", one(b"{\"v\":2}")).await;
    assert_eq!(info.size, 7, "an overwrite reports the new size");
    let (got, data) = get(b, &ns, bucket, "docs/a.txt").await;
    assert_eq!((got.content_type.as_str(), data.as_slice()), ("application/json", &b"{\"v\":2}"[..]), "put replaces");
    let docs = b.list(&ns, bucket, "docs/a").await.expect("list");
    assert_eq!(docs.len(), 1, "an overwrite leaves one object");
    assert_eq!(docs[0].size, 7, "list sees the new version");

    // Delete.
    b.delete(&ns, bucket, "docs/b.txt").await.expect("delete");
    expect_code(b.get(&ns, bucket, "docs/b.txt").await, &[Code::NotFound], "get of a deleted object");
    expect_code(b.delete(&ns, bucket, "docs/b.txt").await, &[Code::NotFound], "delete of a deleted object");
    expect_code(b.get(&ns, bucket, "never").await, &[Code::NotFound], "get of a missing object");
    expect_code(b.get(&ns, "no-such-bucket", "k").await, &[Code::NotFound], "get in a missing bucket");
    assert_eq!(
        keys(&b.list(&ns, bucket, "docs/").await.expect("list")),
        ["docs/a.txt", "docs/sub/c.txt"],
        "a deleted object is not listed"
    );

    // Invalid buckets and keys.
    for bad in ["", "Media", "-media", "me dia", "me/dia", &"b".repeat(65)] {
        let what = format!("bucket {bad:?}");
        expect_code(b.put(&ns, bad, "k", "", one(b"x")).await, &[Code::InvalidArgument], &format!("put, {what}"));
        expect_code(b.get(&ns, bad, "k").await, &[Code::InvalidArgument], &format!("get, {what}"));
        expect_code(b.list(&ns, bad, "").await, &[Code::InvalidArgument], &format!("list, {what}"));
        expect_code(b.delete(&ns, bad, "k").await, &[Code::InvalidArgument], &format!("delete, {what}"));
    }
    for bad in ["", "/abs", "a/../b", "..", "a/./b", "nul\0byte", &"k".repeat(1025)] {
        let what = format!("key {bad:?}");
        expect_code(b.put(&ns, bucket, bad, "", one(b"x")).await, &[Code::InvalidArgument], &format!("put, {what}"));
        expect_code(b.get(&ns, bucket, bad).await, &[Code::InvalidArgument], &format!("get, {what}"));
        expect_code(b.delete(&ns, bucket, bad).await, &[Code::InvalidArgument], &format!("delete, {what}"));
    }

    // Failed puts store nothing and keep the old object.
    let codes = [Code::ResourceExhausted, Code::InvalidArgument];
    expect_code(
        b.put(&ns, bucket, "docs/a.txt", "", lazy(DEFAULT_MAX_SIZE + 1)).await,
        &codes,
        "a put over the size limit",
    );
    let failing =
        futures::stream::iter([Ok(Bytes::from_static(b"partial")), Err(Status::internal("client", "broken"))]);
    let r = b.put(&ns, bucket, "docs/a.txt", "", failing.boxed()).await;
    assert!(r.is_err(), "a put whose stream fails fails: {r:?}");
    let (got, data) = get(b, &ns, bucket, "docs/a.txt").await;
    assert_eq!(data, b"{\"v\":2}", "a failed put leaves the old object intact");
    assert_eq!(got.content_type, "application/json", "a failed put leaves the old metadata intact");
    let failing = futures::stream::iter([Err(Status::internal("client", "broken"))]);
    assert!(b.put(&ns, bucket, "new-key", "", failing.boxed()).await.is_err(), "a failing stream fails");
    expect_code(b.get(&ns, bucket, "new-key").await, &[Code::NotFound], "a failed put of a new key stores nothing");

    // Namespaces are isolated.
    expect_code(b.get(&other, bucket, "docs/a.txt").await, &[Code::NotFound], "get in another namespace");
    expect_code(b.list(&other, bucket, "").await, &[Code::NotFound], "list in another namespace");
    expect_code(b.delete(&other, bucket, "docs/a.txt").await, &[Code::NotFound], "delete in another namespace");
    put(b, &other, bucket, "docs/a.txt", "", one(b"other")).await;
    assert_eq!(get(b, &other, bucket, "docs/a.txt").await.1, b"other", "the other namespace has its own object");
    assert_eq!(get(b, &ns, bucket, "docs/a.txt").await.1, b"{\"v\":2}", "namespaces do not overwrite each other");
    assert_eq!(keys(&b.list(&other, bucket, "").await.expect("list")), ["docs/a.txt"], "namespaces list apart");

    // Clean up, so repeated runs leave little behind.
    for info in b.list(&ns, bucket, "").await.expect("list") {
        b.delete(&ns, bucket, &info.key).await.expect("delete");
    }
    expect_code(b.list(&ns, bucket, "").await, &[Code::NotFound], "a bucket whose objects are all deleted");
    b.delete(&other, bucket, "docs/a.txt").await.expect("delete");
}

/// Checks [`Blob::buckets`] (what the server uses to delete a namespace's blobs; the
/// remote handle does not offer it, so this is separate from [`blob`]).
pub async fn buckets(blob: Arc<dyn Blob>) {
    let b = &*blob;
    let ns = namespace("buckets");
    let other = namespace("buckets-other");
    assert!(b.buckets(&ns).await.expect("buckets").is_empty(), "a namespace without objects has no buckets");
    put(b, &ns, "photos", "a.jpg", "", one(b"a")).await;
    put(b, &ns, "photos", "b.jpg", "", one(b"b")).await;
    put(b, &ns, "docs", "x/y.txt", "", one(b"y")).await;
    put(b, &other, "secrets", "k", "", one(b"k")).await;
    assert_eq!(b.buckets(&ns).await.expect("buckets"), ["docs", "photos"], "buckets are listed once each, by name");
    assert_eq!(b.buckets(&other).await.expect("buckets"), ["secrets"], "another namespace's buckets are its own");
    let mut expected = 0;
    for bucket in ["docs", "photos"] {
        let objects = b.list(&ns, bucket, "").await.expect("list");
        expected += objects.iter().map(micro_core::blob::object_size).sum::<u64>();
    }
    assert_eq!(expected, 3 + ("a.jpg".len() + "b.jpg".len() + "x/y.txt".len()) as u64 + 3 * 24, "{expected}");
    assert_eq!(b.size(&ns).await.expect("size"), expected, "a namespace's size: its objects, keys and types");
    let theirs = b.size(&other).await.expect("size");
    assert_eq!(theirs, 1 + 1 + micro_core::blob::DEFAULT_CONTENT_TYPE.len() as u64, "another namespace's are its own");
    // Emptying every bucket (as deleting a namespace does) leaves none.
    for bucket in b.buckets(&ns).await.expect("buckets") {
        for info in b.list(&ns, &bucket, "").await.expect("list") {
            b.delete(&ns, &bucket, &info.key).await.expect("delete");
        }
    }
    assert!(b.buckets(&ns).await.expect("buckets").is_empty(), "emptied buckets are not listed");
    assert_eq!(b.size(&ns).await.expect("size"), 0, "an emptied namespace holds nothing");
    assert_eq!(b.buckets(&other).await.expect("buckets"), ["secrets"], "emptying one namespace leaves the others");
    b.delete(&other, "secrets", "k").await.expect("delete");
}
