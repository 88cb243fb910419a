//! The runtime service over gRPC: uploads and downloads, bad requests, and who may
//! use it — the namespace's admins only, never across namespaces.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use futures::StreamExt;
use micro::proto::runtime as pb;
use micro_core::Code;
use micro_test::TestServer;

type Client = pb::runtime_client::RuntimeClient<micro::data::Ch>;

fn request<T>(msg: T, ns: &str, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("micro-namespace", ns.parse().unwrap());
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn code<T>(r: Result<T, tonic::Status>) -> Option<Code> {
    r.err().map(|e| micro::status::from_tonic(&e).code())
}

/// A tar.gz of one executable shell script.
fn archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let script = b"#!/bin/sh\nsleep 60\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "worker.sh", &script[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

async fn upload(client: &mut Client, ns: &str, token: Option<&str>, bytes: Vec<u8>) -> Result<String, tonic::Status> {
    let chunks: Vec<pb::UploadRequest> = bytes.chunks(100).map(|c| pb::UploadRequest { chunk: c.to_vec() }).collect();
    client.upload(request(futures::stream::iter(chunks), ns, token)).await.map(|r| r.into_inner().id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_round_trip_and_only_the_namespaces_admins_use_the_runtime() {
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    for ns in ["alpha", "beta"] {
        s.create_account(ns, "boss", "boss-secret-1", "user", &["admin"]).await;
    }
    s.create_account("alpha", "pat", "pat-secret-1", "user", &[]).await;
    s.create_account("alpha", "svc", "svc-secret-1", "service", &["data"]).await;
    let alpha_admin = micro_test::login(&s.proxy(), "alpha", "boss", "boss-secret-1").await;
    let beta_admin = micro_test::login(&s.proxy(), "beta", "boss", "boss-secret-1").await;
    let pat = micro_test::login(&s.proxy(), "alpha", "pat", "pat-secret-1").await;
    let svc = micro_test::login(&s.proxy(), "alpha", "svc", "svc-secret-1").await;
    let mut client = Client::new(micro::data::channel(&s.proxy()).unwrap());

    // Upload, run, download: the same bytes come back.
    let bytes = archive();
    let id = upload(&mut client, "alpha", Some(&alpha_admin), bytes.clone()).await.unwrap();
    assert_eq!(id.len(), 64);
    let spec =
        pb::Service { name: "worker".into(), source: "./worker".into(), upload: id.clone(), ..Default::default() };
    let created = client
        .create(request(pb::CreateRequest { service: Some(spec.clone()) }, "alpha", Some(&alpha_admin)))
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(created.name, "worker");
    let mut down = client
        .download(request(pb::DownloadRequest { id: id.clone() }, "alpha", Some(&alpha_admin)))
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(c) = down.next().await {
        back.extend(c.unwrap().chunk);
    }
    assert_eq!(back, bytes);
    // A prebuilt executable that does not register is still starting: it runs.
    let ok = micro_test::eventually(std::time::Duration::from_secs(10), || {
        let mut client = client.clone();
        let token = alpha_admin.clone();
        async move {
            let r = client.read(request(pb::ReadRequest { name: "worker".into() }, "alpha", Some(&token))).await;
            r.is_ok_and(|r| r.into_inner().services[0].nodes.first().is_some_and(|n| n.pid > 0))
        }
    })
    .await;
    assert!(ok, "the worker runs");

    // Who may: the namespace's admin and the micro admin; not its users or services,
    // not another namespace's admin, not anonymous callers.
    let reader = client.clone();
    let read = |ns: &'static str, token: Option<String>| {
        let mut client = reader.clone();
        async move { client.read(request(pb::ReadRequest::default(), ns, token.as_deref())).await }
    };
    let seen = read("alpha", Some(admin.clone())).await.unwrap().into_inner().services;
    assert_eq!(seen.len(), 1, "the micro admin sees alpha's services");
    assert_eq!(code(read("alpha", None).await), Some(Code::Unauthenticated));
    assert_eq!(code(read("alpha", Some(pat.clone())).await), Some(Code::PermissionDenied));
    assert_eq!(code(read("alpha", Some(svc.clone())).await), Some(Code::PermissionDenied), "data scope is not admin");
    assert_eq!(code(read("alpha", Some(beta_admin.clone())).await), Some(Code::PermissionDenied));
    // beta's admin sees an empty beta, and cannot reach alpha's service or upload by id.
    assert!(read("beta", Some(beta_admin.clone())).await.unwrap().into_inner().services.is_empty());
    let r = client.delete(request(pb::DeleteRequest { name: "worker".into() }, "beta", Some(&beta_admin))).await;
    assert_eq!(code(r), Some(Code::NotFound));
    let r = client.download(request(pb::DownloadRequest { id: id.clone() }, "beta", Some(&beta_admin))).await;
    assert_eq!(code(r), Some(Code::NotFound), "another namespace's upload");
    assert_eq!(code(upload(&mut client, "alpha", Some(&pat), archive()).await), Some(Code::PermissionDenied));
    let r = client
        .logs(request(pb::LogsRequest { name: "worker".into(), ..Default::default() }, "beta", Some(&beta_admin)))
        .await;
    assert_eq!(code(r), Some(Code::NotFound));

    // Bad requests: a clear 4xx, nothing created.
    let creator = client.clone();
    let bad = |spec: pb::Service| {
        let mut client = creator.clone();
        let token = alpha_admin.clone();
        async move { client.create(request(pb::CreateRequest { service: Some(spec) }, "alpha", Some(&token))).await }
    };
    let cases = [
        pb::Service { name: "a".into(), upload: "nope".into(), ..Default::default() },
        pb::Service { name: "a".into(), upload: "0".repeat(64), ..Default::default() },
        pb::Service { name: "a".into(), upload: id.clone(), entrypoint: "../etc".into(), ..Default::default() },
        pb::Service { name: "Not Valid".into(), upload: id.clone(), ..Default::default() },
        pb::Service { name: "a".into(), ..Default::default() },
        pb::Service { name: "a".into(), upload: id.clone(), instances: 1000, ..Default::default() },
    ];
    for spec in cases {
        let r = bad(spec.clone()).await;
        assert_eq!(code(r), Some(Code::InvalidArgument), "{spec:?}");
    }
    assert_eq!(code(bad(spec).await), Some(Code::AlreadyExists));
    assert_eq!(code(upload(&mut client, "alpha", Some(&alpha_admin), Vec::new()).await), Some(Code::InvalidArgument));
    let services = read("alpha", Some(alpha_admin.clone())).await.unwrap().into_inner().services;
    assert_eq!(services.len(), 1, "{services:?}");

    client.delete(request(pb::DeleteRequest { name: "worker".into() }, "alpha", Some(&alpha_admin))).await.unwrap();
    assert!(read("alpha", Some(alpha_admin)).await.unwrap().into_inner().services.is_empty());
}
