//! The attack suite: what a dishonest caller tries, against the real `micro` binary in a
//! process of its own, over real sockets. Each test is written as the attacker would act
//! (an anonymous internet caller, a tenant of another namespace, a member of the
//! namespace, a tenant's code) and asserts that the attack fails and that the
//! attacker's listener captured nothing it could use. The isolation matrix shows what
//! honest callers may do; this shows what dishonest ones cannot.

mod app_users;
mod apps;
mod billing;
mod cluster;
mod db;
mod files;
mod gateway;
mod hosting;
mod licence;
mod listeners;
mod namespaces;
mod namespaces_delete;
mod network;
mod products;
mod push;
mod registry;
mod revocation;
mod runtime;
#[path = "../runtime_harness/mod.rs"]
mod runtime_harness;
mod settings;
mod subscribe;

use micro::data::{Data, StaticToken, TokenSource};
use micro_core::registry::{Node, Registry as _, Service};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The `micro` binary under test: this build's, or `MICRO_TEST_BINARY` (to run the
/// suite against another build, e.g. one from before a fix).
fn micro() -> PathBuf {
    micro_test::process::binary(env!("CARGO_BIN_EXE_micro"))
}

fn source(token: Option<&str>) -> Option<Arc<dyn TokenSource>> {
    token.map(|t| Arc::new(StaticToken(t.to_string())) as Arc<dyn TokenSource>)
}

/// Registers a node of `service` in `ns` at `address` (`protocol` grpc or http), as the
/// holder of `token` (anonymous without one).
async fn register(
    proxy: &str,
    token: Option<&str>,
    ns: &str,
    service: &str,
    node: &str,
    address: &str,
    protocol: &str,
) -> Result<(), micro::Status> {
    let registry = micro::registry::RemoteRegistry::with_token(proxy, source(token))?;
    let svc = Service {
        name: service.into(),
        version: "1".into(),
        nodes: vec![Node {
            id: node.into(),
            address: address.into(),
            metadata: [("protocol".to_string(), protocol.to_string())].into(),
        }],
        ..Default::default()
    };
    registry.register(ns, &svc, Duration::from_secs(60)).await
}

/// A client that calls through the proxy as the holder of `token`.
fn client(proxy: &str, ns: &str, token: Option<&str>) -> micro::Client {
    let c = micro::Client::via_proxy(proxy).namespace(ns).timeout(Duration::from_secs(3)).retries(0);
    match source(token) {
        Some(s) => c.auth(Arc::new(micro::auth::Bearer(s))),
        None => c,
    }
}

/// The data services of `ns` as the holder of `token`.
fn data(proxy: &str, ns: &str, token: Option<&str>) -> Data {
    Data::remote_with(proxy, ns, source(token))
}

/// Whether `token` opens anything at the core: reading a namespace's store or its
/// accounts. Returns the codes of the refusals (both must be refusals for a token a
/// node captured).
async fn core_codes(proxy: &str, ns: &str, token: &str) -> (Option<micro::Code>, Option<micro::Code>) {
    use micro_core::store::{Query, Table};
    let store = data(proxy, ns, Some(token)).store.list(&Table::new(ns, "secrets"), "", &Query::default()).await;
    let mut auth = micro::proto::auth::auth_client::AuthClient::new(micro::data::channel(proxy).expect("channel"));
    let mut req = tonic::Request::new(micro::proto::auth::ListAccountsRequest {});
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
    let accounts = auth.list_accounts(req).await;
    (store.err().map(|e| e.code()), accounts.err().map(|e| micro::status::from_tonic(&e).code()))
}
