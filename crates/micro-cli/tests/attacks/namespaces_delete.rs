//! Item 5: deleting a namespace left its data, and re-creating the name handed the old
//! records, config secrets, events and blobs to the new owner. Now deleting deletes what
//! can be deleted (store, config, blobs, services, registrations), and the name is not
//! given out again (neither as a namespace nor as an account in it) while anything of
//! the old namespace remains (its events, until the events retention drops them).

use super::*;
use futures::StreamExt;
use micro::Code;
use micro::proto::auth as pb;
use micro_core::store::{Query, Record, Table};
use micro_test::process::ServerProcess;
use serde_json::json;

/// `msg` with `token` and `ns` as metadata.
fn request<T>(msg: T, token: &str, ns: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
    req
}

fn auth(proxy: &str) -> pb::auth_client::AuthClient<micro::data::Ch> {
    pb::auth_client::AuthClient::new(micro::data::channel(proxy).expect("channel"))
}

async fn create_namespace(proxy: &str, root: &str, name: &str) -> Result<(), micro::Status> {
    let msg = pb::CreateNamespaceRequest { name: name.into() };
    auth(proxy)
        .create_namespace(request(msg, root, "micro"))
        .await
        .map(|_| ())
        .map_err(|e| micro::status::from_tonic(&e))
}

/// The owner of `ns` leaves a record, a config secret, a blob and (with `event`) an event.
async fn leave_data(proxy: &str, ns: &str, owner: &str, event: bool) {
    let d = data(proxy, ns, Some(owner));
    d.store.write(&Table::new(ns, "orders"), &Record::new("o-1", b"card 4111".to_vec()), None).await.expect("write");
    d.config.set(ns, "payments.key", &json!("sk_live_old_owner"), true).await.expect("config secret");
    let bytes = futures::stream::iter([Ok(bytes::Bytes::from_static(b"invoice of the old owner"))]).boxed();
    d.blob.put(ns, "invoices", "a.pdf", "application/pdf", bytes).await.expect("blob");
    if event {
        let m = micro_core::events::Message { payload: b"{\"card\":\"4111\"}".to_vec(), ..Default::default() };
        d.events.publish(ns, "payments", &m).await.expect("event");
    }
}

/// What of `ns`'s store, config and blobs anyone (here the admin of micro, who may read
/// every namespace) still finds.
async fn leftovers(proxy: &str, ns: &str, root: &str) -> Vec<String> {
    let d = data(proxy, ns, Some(root));
    let mut found = Vec::new();
    let records = d.store.read(&Table::new(ns, "orders"), "o-1", &Query::default()).await;
    if records.is_ok() {
        found.push(format!("record {records:?}"));
    }
    let tables = d.store.tables(ns).await.unwrap_or_default();
    if !tables.is_empty() {
        found.push(format!("tables {tables:?}"));
    }
    let config = d.config.get(ns, "payments", true).await.expect("config get");
    if let Some(c) = config {
        found.push(format!("config {c}"));
    }
    match d.blob.get(ns, "invoices", "a.pdf").await {
        Err(e) if e.code() == Code::NotFound => {}
        other => found.push(format!("blob {:?}", other.map(|(info, _)| info))),
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespaces_data_goes_with_it_and_nobody_new_inherits_it() {
    let s = ServerProcess::start(&micro(), &[]);
    let root = s.admin_token().await;

    // Without events: deleting takes everything, and the name comes back empty.
    create_namespace(&s.proxy, &root, "cafe").await.expect("cafe created");
    let owner = s.account("cafe", "owner", "user", &["admin"]).await;
    leave_data(&s.proxy, "cafe", &owner, false).await;
    assert_eq!(leftovers(&s.proxy, "cafe", &root).await.len(), 4, "the data is there before");
    auth(&s.proxy)
        .delete_namespace(request(pb::DeleteNamespaceRequest { name: "cafe".into() }, &root, "micro"))
        .await
        .expect("cafe deleted");
    assert_eq!(leftovers(&s.proxy, "cafe", &root).await, Vec::<String>::new(), "nothing of the deleted cafe remains");
    create_namespace(&s.proxy, &root, "cafe").await.expect("an emptied name can be created again");
    assert_eq!(leftovers(&s.proxy, "cafe", &root).await, Vec::<String>::new(), "the new cafe starts empty");

    // With events (which stay until the retention drops them): the name is refused.
    create_namespace(&s.proxy, &root, "shop").await.expect("shop created");
    let owner = s.account("shop", "owner", "user", &["admin"]).await;
    leave_data(&s.proxy, "shop", &owner, true).await;
    auth(&s.proxy)
        .delete_namespace(request(pb::DeleteNamespaceRequest { name: "shop".into() }, &root, "micro"))
        .await
        .expect("shop deleted");
    assert_eq!(leftovers(&s.proxy, "shop", &root).await, Vec::<String>::new(), "shop's records, config, blobs gone");
    let refused = create_namespace(&s.proxy, &root, "shop").await.expect_err("re-creating shop is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(refused.detail().contains("event topics payments"), "the refusal says what remains: {refused}");
    // Nor can a new owner be made in the old name, which would read the old events.
    let msg = pb::GenerateRequest {
        id: "new-owner".into(),
        r#type: "user".into(),
        secret: "a-long-enough-secret".into(),
        scopes: vec!["admin".into()],
        ..Default::default()
    };
    let made = auth(&s.proxy).generate(request(msg, &root, "shop")).await;
    let code = made.err().map(|e| micro::status::from_tonic(&e).code());
    assert_eq!(code, Some(Code::FailedPrecondition), "an account in the deleted shop is refused");
}
