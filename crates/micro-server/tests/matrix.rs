//! The rest of the isolation matrix (issue 4), beyond `isolation.rs`: two namespaces, each
//! with an admin, a plain user and a service, plus anonymous callers, against every other
//! core endpoint — store, blob, events, config, sync, broker, registry and auth management —
//! in both namespaces, over gRPC and through the HTTP gateway. Own namespace per the policy,
//! foreign → 403, anonymous where credentials are needed → 401; and afterwards nothing of
//! one namespace (records, objects, events, config, locks, registrations, accounts, rules,
//! broker messages, registry events) is seen in or changed from the other.
//!
//! Every mismatch is collected, so a failure lists the whole matrix's, not just the first.

use futures::StreamExt;
use micro::data::{Ch, Data, StaticToken, TokenSource};
use micro::proto::{auth as apb, store as spb};
use micro_core::events::{ConsumeOptions, Offset, ReadOptions};
use micro_core::registry::{Node, Registry, Service};
use micro_core::store::{Query, Record, Table};
use micro_core::{BoxStream, Code, Status};
use micro_test::TestServer;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const NAMESPACES: [&str; 2] = ["alpha", "beta"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    Anonymous,
    Admin(&'static str),
    User(&'static str),
    Service(&'static str),
}

impl Who {
    fn namespace(self) -> Option<&'static str> {
        match self {
            Who::Anonymous => None,
            Who::Admin(ns) | Who::User(ns) | Who::Service(ns) => Some(ns),
        }
    }

    /// A name for what this identity creates: `anonymous`, `admin-alpha`, …
    fn tag(self) -> String {
        match self {
            Who::Anonymous => "anonymous".into(),
            Who::Admin(ns) => format!("admin-{ns}"),
            Who::User(ns) => format!("user-{ns}"),
            Who::Service(ns) => format!("service-{ns}"),
        }
    }

    /// The account id (the same ids in both namespaces, as in `isolation.rs`).
    fn id(self) -> &'static str {
        match self {
            Who::Anonymous => "",
            Who::Admin(_) => "boss",
            Who::User(_) => "pat",
            Who::Service(_) => "worker",
        }
    }

    fn secret(self) -> String {
        format!("{}-secret-1", self.id())
    }
}

/// Every identity; admins last, so the one call that may change shared state comes after
/// everyone else's attempt.
fn everyone() -> Vec<Who> {
    let mut all = vec![Who::Anonymous];
    for ns in NAMESPACES {
        all.extend([Who::User(ns), Who::Service(ns)]);
    }
    all.extend(NAMESPACES.map(Who::Admin));
    all
}

fn other(ns: &str) -> &'static str {
    if ns == "alpha" { "beta" } else { "alpha" }
}

/// How an endpoint is protected.
#[derive(Clone, Copy, Debug)]
enum Needs {
    /// The namespace's admin scope: store, blob, events, config, managing accounts and rules.
    Admin,
    /// The namespace's rules (public by default): registry lookups, logins. They still
    /// refuse an account of another namespace.
    Rules,
    /// Any account of the namespace, never the public by default: sync, broker,
    /// registering.
    Members,
    /// An admin or a service account of the namespace (auth `ListRules`).
    AdminOrOwnService,
    /// An admin, or the account's old secret (auth `ChangeSecret`, called with a wrong one).
    AdminOrOldSecret,
    /// The admin scope of `micro` (creating, listing and deleting namespaces).
    MicroAdmin,
    /// Nodes registered by another account (here the admin): only an admin removes them.
    RegisteredByOther,
}

/// What a call by `who` into `ns` must give.
fn expected(who: Who, ns: &str, needs: Needs) -> Option<Code> {
    let foreign = who.namespace().is_some_and(|own| own != ns);
    match (who, needs) {
        _ if foreign => Some(Code::PermissionDenied),
        (Who::Anonymous, Needs::MicroAdmin) => Some(Code::Unauthenticated),
        (_, Needs::MicroAdmin) => Some(Code::PermissionDenied),
        (Who::Anonymous, Needs::Members) => Some(Code::Unauthenticated),
        (Who::Admin(_), _) | (_, Needs::Rules | Needs::Members) | (Who::Service(_), Needs::AdminOrOwnService) => None,
        (Who::Anonymous, Needs::RegisteredByOther) => Some(Code::Unauthenticated),
        (_, Needs::RegisteredByOther) => Some(Code::PermissionDenied),
        (Who::Anonymous, Needs::Admin | Needs::AdminOrOwnService) => Some(Code::Unauthenticated),
        _ => Some(Code::PermissionDenied),
    }
}

fn code<T>(r: &Result<T, Status>) -> Option<Code> {
    r.as_ref().err().map(Status::code)
}

fn tcode<T>(r: &Result<T, tonic::Status>) -> Option<Code> {
    r.as_ref().err().map(|e| micro::status::from_tonic(e).code())
}

/// The first item of a stream: the error may come with the call or as the first item.
/// `(None, None)` when a stream opened and nothing came within `wait`.
async fn first<T>(opened: Result<BoxStream<Result<T, Status>>, Status>, wait: Duration) -> (Option<Code>, Option<T>) {
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => return (Some(e.code()), None),
    };
    match tokio::time::timeout(wait, stream.next()).await {
        Ok(Some(Ok(item))) => (None, Some(item)),
        Ok(Some(Err(e))) => (Some(e.code()), None),
        Ok(None) | Err(_) => (None, None),
    }
}

/// What a stream yields: its first item within `first` (more stay buffered), then anything
/// else within `linger`; an error ends it.
async fn drain<T>(
    stream: &mut BoxStream<Result<T, Status>>,
    first: Duration,
    linger: Duration,
) -> Vec<Result<T, Code>> {
    let mut out = Vec::new();
    let mut deadline = tokio::time::Instant::now() + first;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let end = item.is_err();
        out.push(item.map_err(|e| e.code()));
        if end {
            break;
        }
        if out.len() == 1 {
            deadline = tokio::time::Instant::now() + linger;
        }
    }
    out
}

/// The matrix's results: every mismatch, reported together at the end.
#[derive(Default)]
struct Matrix {
    checked: usize,
    failures: Vec<String>,
}

impl Matrix {
    /// Records `got` against `want`; whether the call succeeded (to look at what it gave).
    fn check(&mut self, who: Who, ns: &str, what: &str, got: Option<Code>, want: Option<Code>) -> bool {
        self.checked += 1;
        if got != want {
            self.failures.push(format!("{who:?} {what} in {ns}: got {got:?}, want {want:?}"));
        }
        got.is_none()
    }

    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    fn assert_clean(&self) {
        let failures = self.failures.join("\n");
        assert!(self.failures.is_empty(), "{} of {} checks failed:\n{failures}", self.failures.len(), self.checked);
    }
}

/// A server with the accounts of `who`, logged in.
struct World {
    s: TestServer,
    tokens: HashMap<Who, String>,
    /// The bootstrapped admin of `micro`.
    root: String,
}

impl World {
    async fn start(identities: &[Who]) -> World {
        let s = TestServer::start().await;
        let root = s.admin_token().await;
        let accounts: Vec<Who> = identities.iter().copied().filter(|w| *w != Who::Anonymous).collect();
        let proxy = s.proxy();
        let created = accounts.iter().map(|&who| {
            let (proxy, root) = (proxy.clone(), root.clone());
            async move {
                let ns = who.namespace().unwrap_or_default();
                let scopes = if matches!(who, Who::Admin(_)) { vec!["admin".to_string()] } else { vec![] };
                let kind = if matches!(who, Who::Service(_)) { "service" } else { "user" };
                let msg = apb::GenerateRequest {
                    id: who.id().into(),
                    r#type: kind.into(),
                    secret: who.secret(),
                    scopes,
                    ..Default::default()
                };
                auth_client(&proxy).generate(request(Some(&root), ns, msg)).await.expect("account created");
            }
        });
        futures::future::join_all(created).await;
        let logins = accounts.iter().map(|&who| {
            let proxy = proxy.clone();
            async move {
                let ns = who.namespace().unwrap_or_default();
                (who, micro_test::login(&proxy, ns, who.id(), &who.secret()).await)
            }
        });
        let tokens = futures::future::join_all(logins).await.into_iter().collect();
        World { s, tokens, root }
    }

    fn token(&self, who: Who) -> Option<&str> {
        self.tokens.get(&who).map(String::as_str)
    }

    fn source(&self, who: Who) -> Option<Arc<dyn TokenSource>> {
        self.token(who).map(|t| Arc::new(StaticToken(t.to_string())) as Arc<dyn TokenSource>)
    }

    /// The data services as `who`, acting in `ns`.
    fn data(&self, who: Who, ns: &str) -> Data {
        Data::remote_with(&self.s.proxy(), ns, self.source(who))
    }

    fn registry(&self, who: Who) -> micro::registry::RemoteRegistry {
        micro::registry::RemoteRegistry::with_token(&self.s.proxy(), self.source(who)).expect("registry client")
    }

    /// A raw request as `who` in `ns`.
    fn req<T>(&self, who: Who, ns: &str, msg: T) -> tonic::Request<T> {
        request(self.token(who), ns, msg)
    }

    fn auth(&self) -> apb::auth_client::AuthClient<Ch> {
        auth_client(&self.s.proxy())
    }
}

fn auth_client(proxy: &str) -> apb::auth_client::AuthClient<Ch> {
    apb::auth_client::AuthClient::new(micro::data::channel(proxy).expect("channel"))
}

fn request<T>(token: Option<&str>, ns: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("token"));
    }
    // Generous: a slow machine hashes secrets (argon2, unoptimised in tests) one after another.
    req.set_timeout(Duration::from_secs(60));
    req
}

fn service(name: &str, ns: &str) -> Service {
    Service {
        name: name.into(),
        nodes: vec![Node { id: format!("{name}-{ns}"), address: "127.0.0.1:9".into(), ..Default::default() }],
        ..Default::default()
    }
}

fn rule(id: &str) -> apb::Rule {
    apb::Rule {
        id: id.into(),
        scope: String::new(),
        resource: format!("service:{id}:*"),
        access: "granted".into(),
        priority: 0,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Locks the admins hold, by namespace and by the identity that will try to release them.
type Locks = HashMap<&'static str, HashMap<Who, micro_core::sync::Lock>>;

/// What each namespace's admin holds before the matrix runs: a seed in every service, and
/// a victim per identity for the calls that delete or release something.
async fn seed(w: &World) -> Locks {
    let mut locks = HashMap::new();
    for ns in NAMESPACES {
        let admin = Who::Admin(ns);
        let d = w.data(admin, ns);
        let table = Table::new(ns, "matrix");
        d.store
            .write(&table, &Record::new("seed", format!("store of {ns}").into_bytes()), None)
            .await
            .expect("seeding");
        let body = |s: String| futures::stream::iter([Ok::<_, Status>(bytes::Bytes::from(s))]).boxed();
        d.blob.put(ns, "matrix", "seed", "text/plain", body(format!("blob of {ns}"))).await.expect("seeding");
        let m = micro_core::events::Message { payload: format!("event of {ns}").into_bytes(), ..Default::default() };
        d.events.publish(ns, "matrix", &m).await.expect("seeding");
        let victims: serde_json::Map<String, Value> = everyone().iter().map(|w| (w.tag(), json!(true))).collect();
        d.config.set(ns, "matrix", &json!({ "owner": ns, "victims": victims }), false).await.expect("seeding");
        let registry = w.registry(admin);
        registry.register(ns, &service("seed", ns), Duration::from_secs(120)).await.expect("seeding");
        let mut held = HashMap::new();
        for who in everyone() {
            let tag = who.tag();
            d.store.write(&table, &Record::new(format!("victim/{tag}"), b"v".to_vec()), None).await.expect("seeding");
            d.blob.put(ns, "matrix", &format!("victim-{tag}"), "text/plain", body("v".into())).await.expect("seeding");
            registry
                .register(ns, &service(&format!("victim-{tag}"), ns), Duration::from_secs(120))
                .await
                .expect("seeding");
            let lock = d
                .sync
                .lock(ns, &format!("held-{tag}"), Duration::from_secs(120), Duration::ZERO)
                .await
                .expect("seeding");
            held.insert(who, lock);
            let req = w.req(admin, ns, apb::CreateRuleRequest { rule: Some(rule(&format!("doomed-{tag}"))) });
            w.auth().create_rule(req).await.expect("seeding");
        }
        locks.insert(ns, held);
        // One account to change the secret of and delete.
        let msg = apb::GenerateRequest { id: "victim".into(), secret: "victim-secret-1".into(), ..Default::default() };
        w.auth().generate(w.req(admin, ns, msg)).await.expect("seeding");
    }
    locks
}

/// Store: read, delete, databases, tables; and the other namespace's database.
async fn store(w: &World, m: &mut Matrix, who: Who, ns: &'static str) {
    let d = w.data(who, ns);
    let tag = who.tag();
    let table = Table::new(ns, "matrix");
    let want = expected(who, ns, Needs::Admin);
    let read = d.store.read(&table, "seed", &Query::default()).await;
    if m.check(who, ns, "store read", code(&read), want) {
        let value = read.as_ref().ok().and_then(|r| r.first()).map(|r| r.value.clone());
        m.expect(value == Some(format!("store of {ns}").into_bytes()), || format!("store read in {ns}: {read:?}"));
    }
    let delete = d.store.delete(&table, &format!("victim/{tag}")).await;
    m.check(who, ns, "store delete", code(&delete), want);
    let databases = d.store.databases().await;
    if m.check(who, ns, "store databases", code(&databases), want) {
        m.expect(databases.as_deref().ok() == Some(&[ns.to_string()][..]), || format!("{ns}: {databases:?}"));
    }
    let tables = d.store.tables(ns).await;
    if m.check(who, ns, "store tables", code(&tables), want) {
        m.expect(tables.as_deref().ok() == Some(&["matrix".to_string()][..]), || format!("{ns}: {tables:?}"));
    }
    // Acting in `ns` on the other namespace's database is refused, even for the admin.
    let mut store = spb::store_client::StoreClient::new(micro::data::channel(&w.s.proxy()).expect("channel"));
    let options = spb::Options { database: other(ns).into(), table: "matrix".into(), ..Default::default() };
    let msg = spb::ReadRequest { key: "seed".into(), options: Some(options) };
    let cross = store.read(w.req(who, ns, msg)).await;
    let denied = Some(want.unwrap_or(Code::PermissionDenied));
    m.check(who, ns, &format!("store read of database {}", other(ns)), tcode(&cross), denied);
    let cross = store.tables(w.req(who, ns, spb::TablesRequest { database: other(ns).into() })).await;
    m.check(who, ns, &format!("store tables of database {}", other(ns)), tcode(&cross), denied);
}

/// Blob: get, list, delete.
async fn blob(w: &World, m: &mut Matrix, who: Who, ns: &'static str) {
    let d = w.data(who, ns);
    let tag = who.tag();
    let want = expected(who, ns, Needs::Admin);
    let got = d.blob.get(ns, "matrix", "seed").await;
    let got_code = code(&got);
    if let Ok((_, chunks)) = got {
        let content: Vec<u8> = chunks.map(|c| c.map(|b| b.to_vec()).unwrap_or_default()).concat().await;
        m.expect(content == format!("blob of {ns}").into_bytes(), || format!("blob get in {ns}: {content:?}"));
    }
    m.check(who, ns, "blob get", got_code, want);
    let list = d.blob.list(ns, "matrix", "").await;
    if m.check(who, ns, "blob list", code(&list), want) {
        let keys: Vec<String> = list.iter().flatten().map(|o| o.key.clone()).collect();
        m.expect(keys.contains(&"seed".to_string()), || format!("blob list in {ns}: {keys:?}"));
    }
    let delete = d.blob.delete(ns, "matrix", &format!("victim-{tag}")).await;
    m.check(who, ns, "blob delete", code(&delete), want);
}

/// Events: read, topics, a consume stream (with an ack) and the topic's groups.
async fn events(w: &World, m: &mut Matrix, who: Who, ns: &'static str) {
    let d = w.data(who, ns);
    let tag = who.tag();
    let want = expected(who, ns, Needs::Admin);
    let read = d.events.read(ns, "matrix", &ReadOptions::default()).await;
    if m.check(who, ns, "events read", code(&read), want) {
        let payloads: Vec<Vec<u8>> = read.iter().flatten().map(|e| e.payload.clone()).collect();
        m.expect(payloads == [format!("event of {ns}").into_bytes()], || format!("events in {ns}: {read:?}"));
    }
    let topics = d.events.topics(ns).await;
    if m.check(who, ns, "events topics", code(&topics), want) {
        m.expect(topics.as_deref().ok() == Some(&["matrix".to_string()][..]), || format!("{ns}: {topics:?}"));
    }
    let options = ConsumeOptions { group: format!("matrix-{tag}"), offset: Offset::First, ..Default::default() };
    // The stream stays open while the delivery is acked: a member that has left cannot ack.
    let (got, delivery, _member) = match d.events.consume(ns, "matrix", &options).await {
        Err(e) => (Some(e.code()), None, None),
        Ok(mut s) => match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
            Ok(Some(Ok(d))) => (None, Some(d), Some(s)),
            Ok(Some(Err(e))) => (Some(e.code()), None, Some(s)),
            Ok(None) | Err(_) => (None, None, Some(s)),
        },
    };
    if m.check(who, ns, "events consume", got, want) {
        match delivery {
            Some(delivery) => {
                let payload = delivery.event.payload.clone();
                m.expect(payload == format!("event of {ns}").into_bytes(), || format!("consumed {payload:?}"));
                m.expect(delivery.ack().await.is_ok(), || format!("{who:?} ack in {ns}"));
            }
            None => m.expect(false, || format!("{who:?} consume in {ns}: no delivery")),
        }
    }
    let groups = d.events.groups(ns, "matrix").await;
    if m.check(who, ns, "events groups", code(&groups), want) {
        let names: Vec<&str> = groups.iter().flatten().map(|g| g.name.as_str()).collect();
        m.expect(names.contains(&options.group.as_str()), || format!("groups in {ns}: {names:?}"));
    }
}

/// Config: delete, and a watch stream (its first item is the current value).
async fn config(w: &World, m: &mut Matrix, who: Who, ns: &'static str) {
    let d = w.data(who, ns);
    let tag = who.tag();
    let want = expected(who, ns, Needs::Admin);
    let delete = d.config.delete(ns, &format!("matrix.victims.{tag}")).await;
    m.check(who, ns, "config delete", code(&delete), want);
    let watched = first(d.config.watch(ns, "matrix").await, Duration::from_secs(5)).await;
    if m.check(who, ns, "config watch", watched.0, want) {
        let owner = watched.1.as_ref().map(|c| c.value["owner"].clone());
        m.expect(owner == Some(json!(ns)), || format!("config watch in {ns}: {:?}", watched.1));
    }
}

/// Sync: refresh and release a lock (its token known), and leader election.
async fn sync(w: &World, m: &mut Matrix, who: Who, ns: &'static str, locks: &Locks) {
    let d = w.data(who, ns);
    let tag = who.tag();
    let want = expected(who, ns, Needs::Members);
    let lock = &locks[ns][&who];
    m.check(who, ns, "sync refresh", code(&d.sync.refresh(ns, lock).await), want);
    m.check(who, ns, "sync unlock", code(&d.sync.unlock(ns, lock).await), want);
    let elected = micro_core::sync::elect(d.sync.clone(), ns, &format!("matrix-{tag}"), Duration::from_secs(5)).await;
    let elected_code = code(&elected);
    if let Ok(leadership) = elected {
        leadership.resign().await;
    }
    m.check(who, ns, "sync elect", elected_code, want);
}

/// Registry: register and deregister follow the rules; lookups are public (but an
/// account of another namespace is still refused).
async fn registry(w: &World, m: &mut Matrix, who: Who, ns: &'static str) {
    let tag = who.tag();
    let want = expected(who, ns, Needs::Rules);
    let client = w.registry(who);
    let r = client.register(ns, &service(&format!("matrix-{tag}"), ns), Duration::from_secs(120)).await;
    m.check(who, ns, "registry register", code(&r), expected(who, ns, Needs::Members));
    let r = client.deregister(ns, &Service { name: format!("victim-{tag}"), ..Default::default() }).await;
    m.check(who, ns, "registry deregister", code(&r), expected(who, ns, Needs::RegisteredByOther));
    let found = client.get_service(ns, "seed").await;
    if m.check(who, ns, "registry get service", code(&found), want) {
        let nodes: Vec<String> = found.iter().flatten().flat_map(|s| s.nodes.iter().map(|n| n.id.clone())).collect();
        m.expect(nodes == [format!("seed-{ns}")], || format!("seed in {ns}: {nodes:?}"));
    }
    let listed = client.list_services(ns).await;
    m.check(who, ns, "registry list services", code(&listed), want);
}

/// Auth: accounts and rules need the namespace's admin (its services may read the
/// rules); namespaces need the admin of `micro`.
async fn auth(w: &World, m: &mut Matrix, who: Who, ns: &'static str) {
    let tag = who.tag();
    let mut client = w.auth();
    let want = expected(who, ns, Needs::Admin);
    let msg = apb::GenerateRequest { id: format!("new-{tag}"), secret: "new-secret-1".into(), ..Default::default() };
    m.check(who, ns, "auth create account", tcode(&client.generate(w.req(who, ns, msg)).await), want);
    let listed = client.list_accounts(w.req(who, ns, apb::ListAccountsRequest {})).await;
    if m.check(who, ns, "auth list accounts", tcode(&listed), want) {
        let accounts = listed.map(|r| r.into_inner().accounts).unwrap_or_default();
        m.expect(accounts.iter().all(|a| a.namespace == ns), || format!("accounts of {ns}: {accounts:?}"));
    }
    let msg = apb::CreateRuleRequest { rule: Some(rule(&format!("rule-{tag}"))) };
    m.check(who, ns, "auth create rule", tcode(&client.create_rule(w.req(who, ns, msg)).await), want);
    let msg = apb::DeleteRuleRequest { id: format!("doomed-{tag}") };
    m.check(who, ns, "auth delete rule", tcode(&client.delete_rule(w.req(who, ns, msg)).await), want);
    let listed = client.list_rules(w.req(who, ns, apb::ListRulesRequest {})).await;
    m.check(who, ns, "auth list rules", tcode(&listed), expected(who, ns, Needs::AdminOrOwnService));
    let want = expected(who, ns, Needs::MicroAdmin);
    let msg = apb::CreateNamespaceRequest { name: "gamma".into() };
    m.check(who, ns, "auth create namespace", tcode(&client.create_namespace(w.req(who, ns, msg)).await), want);
    let listed = client.list_namespaces(w.req(who, ns, apb::ListNamespacesRequest {})).await;
    m.check(who, ns, "auth list namespaces", tcode(&listed), want);
    let msg = apb::DeleteNamespaceRequest { name: other(ns).into() };
    let deleted = client.delete_namespace(w.req(who, ns, msg)).await;
    m.check(who, ns, &format!("auth delete namespace {}", other(ns)), tcode(&deleted), want);
}

/// Auth: changing the victim account's secret (with a wrong old one), then deleting it:
/// everyone else tries at once, then the admins (so the victim is there for every attempt).
async fn victim_account(w: &World, m: &mut Matrix) {
    let attempt = move |who: Who, ns: &'static str, delete: bool| {
        let (mut auth, tag) = (w.auth(), who.tag());
        async move {
            let got = if delete {
                tcode(&auth.delete_account(w.req(who, ns, apb::DeleteAccountRequest { id: "victim".into() })).await)
            } else {
                let old_secret = "a-wrong-guess".to_string();
                let msg = apb::ChangeSecretRequest { id: "victim".into(), old_secret, new_secret: format!("by-{tag}") };
                tcode(&auth.change_secret(w.req(who, ns, msg)).await)
            };
            (who, ns, got)
        }
    };
    let (admins, others): (Vec<Who>, Vec<Who>) = everyone().into_iter().partition(|w| matches!(w, Who::Admin(_)));
    for (delete, what, needs) in
        [(false, "change secret", Needs::AdminOrOldSecret), (true, "delete account", Needs::Admin)]
    {
        for round in [&others, &admins] {
            let calls = round.iter().flat_map(|&who| NAMESPACES.map(|ns| attempt(who, ns, delete)));
            for (who, ns, got) in futures::future::join_all(calls).await {
                m.check(who, ns, &format!("auth {what}"), got, expected(who, ns, needs));
            }
        }
    }
}

/// Zero cross-namespace leakage: each namespace holds only what its own admin wrote, and
/// lost only what its own identities were allowed to remove.
async fn leftovers(w: &World, m: &mut Matrix) {
    for ns in NAMESPACES {
        let admin = w.data(Who::Admin(ns), ns);
        let removed_by = |who: Who, needs| expected(who, ns, needs).is_none();
        let victims = |needs, removed: bool, f: &dyn Fn(String) -> String| -> Vec<String> {
            everyone().into_iter().filter(|w| removed_by(*w, needs) == removed).map(|w| f(w.tag())).collect()
        };

        let mut keys = victims(Needs::Admin, false, &|t| format!("victim/{t}"));
        keys.push("seed".into());
        let stored = admin.store.list(&Table::new(ns, "matrix"), "", &Query::default()).await.expect("read");
        m.expect(stored == sorted(keys.clone()), || format!("store of {ns}: {stored:?}, want {keys:?}"));
        let tables = admin.store.tables(ns).await.expect("read");
        m.expect(tables == ["matrix"], || format!("tables of {ns}: {tables:?}"));

        let mut objects = victims(Needs::Admin, false, &|t| format!("victim-{t}"));
        objects.push("seed".into());
        let listed: Vec<String> =
            admin.blob.list(ns, "matrix", "").await.expect("read").into_iter().map(|o| o.key).collect();
        m.expect(sorted(listed.clone()) == sorted(objects.clone()), || format!("blobs of {ns}: {listed:?}"));

        let topics = admin.events.topics(ns).await.expect("read");
        m.expect(topics == ["matrix"], || format!("topics of {ns}: {topics:?}"));
        let events = admin.events.read(ns, "matrix", &ReadOptions::default()).await.expect("read");
        let payloads: Vec<_> = events.iter().map(|e| e.payload.clone()).collect();
        m.expect(payloads == [format!("event of {ns}").into_bytes()], || format!("events of {ns}: {events:?}"));

        let kept: serde_json::Map<String, Value> =
            victims(Needs::Admin, false, &|t| t).into_iter().map(|t| (t, json!(true))).collect();
        let config = admin.config.get(ns, "", false).await.expect("read");
        let want = json!({ "matrix": { "owner": ns, "victims": kept } });
        m.expect(config.as_ref() == Some(&want), || format!("config of {ns}: {config:?}, want {want}"));

        // Locks: released only by identities allowed to.
        for who in everyone() {
            let free =
                admin.sync.lock(ns, &format!("held-{}", who.tag()), Duration::from_secs(1), Duration::ZERO).await;
            let want = if removed_by(who, Needs::Members) { None } else { Some(Code::DeadlineExceeded) };
            m.check(who, ns, "left the lock it tried to release", code(&free), want);
        }

        // Registrations: made and removed only by identities allowed to.
        let mut services = victims(Needs::RegisteredByOther, false, &|t| format!("victim-{t}"));
        services.extend(victims(Needs::Members, true, &|t| format!("matrix-{t}")));
        services.push("seed".into());
        let registry = w.registry(Who::Admin(ns));
        let listed = registry.list_services(ns).await.expect("read");
        let names = sorted(listed.iter().map(|s| s.name.clone()).collect());
        m.expect(names == sorted(services.clone()), || format!("services of {ns}: {names:?}, want {services:?}"));
        let nodes_elsewhere = listed.iter().flat_map(|s| &s.nodes).any(|n| !n.id.ends_with(&format!("-{ns}")));
        m.expect(!nodes_elsewhere, || format!("services of {ns} hold another namespace's nodes: {listed:?}"));

        // Accounts and rules.
        let mut auth = w.auth();
        let res = auth.list_accounts(w.req(Who::Admin(ns), ns, apb::ListAccountsRequest {})).await.expect("read");
        let accounts =
            sorted(res.into_inner().accounts.into_iter().map(|a| format!("{}@{}", a.id, a.namespace)).collect());
        let new = format!("new-admin-{ns}");
        let want: Vec<String> = ["boss", new.as_str(), "pat", "worker"].iter().map(|a| format!("{a}@{ns}")).collect();
        m.expect(accounts == want, || format!("accounts of {ns}: {accounts:?}, want {want:?}"));
        let res = auth.list_rules(w.req(Who::Admin(ns), ns, apb::ListRulesRequest {})).await.expect("read");
        let rules = sorted(res.into_inner().rules.into_iter().map(|r| r.id).collect());
        let mut want = victims(Needs::Admin, false, &|t| format!("doomed-{t}"));
        want.extend(["default".to_string(), format!("rule-admin-{ns}")]);
        m.expect(rules == sorted(want.clone()), || format!("rules of {ns}: {rules:?}, want {want:?}"));
    }
    let mut auth = w.auth();
    let res = auth.list_namespaces(request(Some(&w.root), "micro", apb::ListNamespacesRequest {})).await.expect("read");
    let namespaces = res.into_inner().namespaces;
    m.expect(!namespaces.contains(&"gamma".to_string()), || format!("namespaces: {namespaces:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_against_every_other_core_endpoint_in_both_namespaces() {
    let w = World::start(&everyone()).await;
    let locks = seed(&w).await;
    let mut m = Matrix::default();

    // Streams that stay open while the matrix runs: broker subscriptions and registry
    // watches, by everyone in both namespaces.
    let mut subscriptions = Vec::new();
    let mut watches = Vec::new();
    for who in everyone() {
        for ns in NAMESPACES {
            let want = expected(who, ns, Needs::Members);
            match w.data(who, ns).broker.subscribe(ns, "matrix", None).await {
                Ok(s) => subscriptions.push((who, ns, s)),
                Err(e) => _ = m.check(who, ns, "broker subscribe", Some(e.code()), want),
            }
            let want = expected(who, ns, Needs::Rules);
            match w.registry(who).watch(ns, None).await {
                Ok(s) => watches.push((who, ns, s)),
                Err(e) => _ = m.check(who, ns, "registry watch", Some(e.code()), want),
            }
        }
    }

    for who in everyone() {
        for ns in NAMESPACES {
            store(&w, &mut m, who, ns).await;
            blob(&w, &mut m, who, ns).await;
            events(&w, &mut m, who, ns).await;
            config(&w, &mut m, who, ns).await;
            sync(&w, &mut m, who, ns, &locks).await;
            registry(&w, &mut m, who, ns).await;
            auth(&w, &mut m, who, ns).await;
        }
    }

    victim_account(&w, &mut m).await;

    // The broker: each admin publishes in its namespace; every open subscription gets its
    // own namespace's message, and nothing of the other one.
    for ns in NAMESPACES {
        let message = micro_core::broker::Message {
            topic: "matrix".into(),
            payload: ns.as_bytes().to_vec(),
            ..Default::default()
        };
        w.data(Who::Admin(ns), ns).broker.publish(ns, &message).await.unwrap();
    }
    let received = futures::future::join_all(
        subscriptions.iter_mut().map(|(_, _, s)| drain(s, Duration::from_secs(5), Duration::from_millis(300))),
    )
    .await;
    for ((who, ns, _), items) in subscriptions.iter().zip(received) {
        let (who, ns) = (*who, *ns);
        let want = expected(who, ns, Needs::Members);
        match items.first() {
            // Refused on the first item rather than the call.
            Some(Err(c)) => _ = m.check(who, ns, "broker subscribe", Some(*c), want),
            _ => {
                m.check(who, ns, "broker subscribe", None, want);
                let payloads: Vec<String> =
                    items.iter().flatten().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
                m.expect(payloads == [ns], || format!("{who:?} subscribed in {ns} received {payloads:?}"));
            }
        }
    }
    // Registry watches saw only their namespace's changes.
    let seen = futures::future::join_all(
        watches.iter_mut().map(|(_, _, s)| drain(s, Duration::from_secs(5), Duration::from_millis(300))),
    )
    .await;
    for ((who, ns, _), events) in watches.iter().zip(seen) {
        let (who, ns) = (*who, *ns);
        let want = expected(who, ns, Needs::Rules);
        match events.first() {
            Some(Err(c)) => _ = m.check(who, ns, "registry watch", Some(*c), want),
            _ => {
                m.check(who, ns, "registry watch", None, want);
                let foreign: Vec<_> = events.iter().flatten().filter(|e| e.namespace != ns).collect();
                m.expect(!events.is_empty() && foreign.is_empty(), || format!("{who:?} watching {ns} saw {events:?}"));
            }
        }
    }

    leftovers(&w, &mut m).await;
    m.assert_clean();
}

/// The expected HTTP status for a call that succeeds with `ok`.
fn http_status(want: Option<Code>, ok: u16) -> u16 {
    match want {
        None => ok,
        Some(Code::Unauthenticated) => 401,
        Some(Code::PermissionDenied) => 403,
        Some(c) => panic!("no status for {c:?}"),
    }
}

/// The same policy through the HTTP gateway (JSON in and out, errors as JSON bodies), the
/// namespace by the `micro-namespace` header or by the caller's token alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_enforces_the_matrix_on_core_services() {
    let identities =
        [Who::Anonymous, Who::Admin("alpha"), Who::User("alpha"), Who::Admin("beta"), Who::Service("beta")];
    let w = World::start(&identities).await;
    let api = w.s.api();
    let mut m = Matrix::default();
    let payload = |who: Who, ns: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{}@{ns}", who.tag()))
    };

    for who in identities {
        let bearer = w.token(who).map(|t| format!("Bearer {t}"));
        // The namespace by header; for accounts also by their token alone (their own).
        let mut asks: Vec<(&str, bool)> = NAMESPACES.iter().map(|ns| (*ns, true)).collect();
        if let Some(own) = who.namespace() {
            asks.push((own, false));
        }
        for (ns, by_header) in asks {
            let mut headers = vec![("content-type", "application/json")];
            if by_header {
                headers.push(("micro-namespace", ns));
            }
            if let Some(b) = &bearer {
                headers.push(("authorization", b.as_str()));
            }
            let tag = who.tag();
            let key = format!("gw/{tag}");
            let mut calls: Vec<(&str, Value, u16)> = vec![
                (
                    "/store/store/write",
                    json!({"record": {"key": key, "value": "eA=="}, "options": {"table": "gateway"}}),
                    204,
                ),
                ("/store/store/read", json!({"key": key, "options": {"table": "gateway"}}), 200),
                ("/store/store/list", json!({"options": {"table": "gateway"}}), 200),
                ("/config/config/set", json!({"path": format!("gw.{tag}"), "value": true}), 204),
                ("/config/config/get", json!({"path": "gw"}), 200),
                ("/events/events/publish", json!({"topic": "gateway", "payload": payload(who, ns)}), 200),
                ("/auth/auth/list-accounts", json!({}), 200),
            ];
            if by_header {
                // A login reaches the namespace's auth service (no such account: its 401).
                calls.push(("/auth/auth/token", json!({"id": "nobody", "secret": "not-the-secret"}), 401));
            }
            for (path, body, ok) in calls {
                let body = body.to_string();
                let login = path.ends_with("/token");
                let want = if login { expected(who, ns, Needs::Rules) } else { expected(who, ns, Needs::Admin) };
                let want_status = http_status(want, ok);
                let r = micro_test::http(&api, "POST", path, &headers, body.as_bytes()).await;
                let what = format!("{who:?} POST {path} in {ns}{}", if by_header { "" } else { " (by token)" });
                m.expect(r.status == want_status, || {
                    format!("{what}: got {} {}, want {want_status}", r.status, r.body)
                });
                if r.status != want_status {
                    continue;
                }
                if want.is_some() || login {
                    let e = r.json();
                    let reason = if want_status == 401 { "Unauthorized" } else { "Forbidden" };
                    let detail = e["detail"].as_str().unwrap_or_default();
                    let ok =
                        e["code"] == want_status && e["status"] == reason && e["id"] == "auth" && !detail.is_empty();
                    m.expect(ok, || format!("{what}: error body {}", r.body));
                    if login && want.is_none() {
                        m.expect(detail.contains("wrong account id or secret"), || format!("{what}: {}", r.body));
                    }
                    continue;
                }
                match path {
                    "/store/store/read" => {
                        let key = r.json()["records"][0]["key"].clone();
                        m.expect(key == format!("gw/{tag}"), || format!("{what}: {}", r.body));
                    }
                    "/store/store/list" => {
                        m.expect(r.body.contains(&format!("gw/{tag}")), || format!("{what}: {}", r.body))
                    }
                    "/config/config/get" => {
                        m.expect(r.json()["value"][&tag] == true, || format!("{what}: {}", r.body));
                    }
                    "/auth/auth/list-accounts" => {
                        let v = r.json();
                        let accounts = v["accounts"].as_array().cloned().unwrap_or_default();
                        let mine = !accounts.is_empty() && accounts.iter().all(|a| a["namespace"] == ns);
                        m.expect(mine, || format!("{what}: {}", r.body));
                    }
                    _ => {}
                }
            }
        }
    }

    // Nothing crossed: each namespace holds only its own admin's writes.
    for ns in NAMESPACES {
        let admin = w.data(Who::Admin(ns), ns);
        let keys = admin.store.list(&Table::new(ns, "gateway"), "", &Query::default()).await;
        m.expect(keys.as_deref().ok() == Some(&[format!("gw/admin-{ns}")][..]), || format!("store of {ns}: {keys:?}"));
        let config = admin.config.get(ns, "gw", false).await;
        let want = json!({ format!("admin-{ns}"): true });
        m.expect(config.as_ref().ok() == Some(&Some(want)), || format!("config of {ns}: {config:?}"));
        let events = admin.events.read(ns, "gateway", &ReadOptions::default()).await.unwrap_or_default();
        let mine = events.iter().all(|e| e.payload == format!("admin-{ns}@{ns}").into_bytes());
        m.expect(events.len() == 2 && mine, || format!("events of {ns}: {events:?}"));
    }
    m.assert_clean();
}

/// A browser's `micro-token` cookie works at the gateway like the bearer header, but
/// only on requests a foreign page could not send without a CORS preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_takes_the_cookie_only_on_preflighted_requests() {
    let s = TestServer::start().await;
    s.create_account("alpha", "boss", "boss-secret-1", "user", &["admin"]).await;
    let token = micro_test::login(&s.proxy(), "alpha", "boss", "boss-secret-1").await;
    let cookie = format!("micro-token={token}");
    let body = br#"{"record":{"key":"k","value":"eA=="}}"#;
    let post = |headers: Vec<(&'static str, String)>| {
        let api = s.api();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            micro_test::http(&api, "POST", "/store/store/write", &h, body).await
        }
    };
    // A form post with only the cookie: anonymous, refused.
    let r = post(vec![("cookie", cookie.clone()), ("content-type", "text/plain".into())]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // JSON, or the namespace header: the cookie's account acts.
    let r = post(vec![("cookie", cookie.clone()), ("content-type", "application/json".into())]).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = post(vec![("cookie", cookie.clone()), ("micro-namespace", "alpha".into())]).await;
    assert_eq!(r.status, 204, "{}", r.body);
    // Another namespace's header with alpha's cookie: refused.
    let r = post(vec![("cookie", cookie), ("micro-namespace", "beta".into())]).await;
    assert_eq!(r.status, 403, "{}", r.body);
}

/// Changing a secret with the old one is a login by another name: the same limit on
/// failures, the same answer for unknown accounts, and it ends the old sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_secret_is_limited_like_a_login() {
    let s = TestServer::start().await;
    s.create_account("alpha", "pat", "pat-secret-1", "user", &[]).await;
    let mut auth = apb::auth_client::AuthClient::new(micro::data::channel(&s.proxy()).unwrap());
    let mut token = apb::TokenRequest { id: "pat".into(), secret: "pat-secret-1".into(), ..Default::default() };
    let mut login = tonic::Request::new(token.clone());
    login.metadata_mut().insert("micro-namespace", "alpha".parse().unwrap());
    let session = auth.token(login).await.unwrap().into_inner();
    let change = |id: &str, old: &str, new: &str| {
        let mut r = tonic::Request::new(apb::ChangeSecretRequest {
            id: id.into(),
            old_secret: old.into(),
            new_secret: new.into(),
        });
        r.metadata_mut().insert("micro-namespace", "alpha".parse().unwrap());
        r
    };
    // An unknown account and a wrong secret get the same answer.
    let unknown = auth.change_secret(change("nobody", "guess-guess", "new-secret-1")).await.unwrap_err();
    let wrong = auth.change_secret(change("pat", "guess-guess", "new-secret-1")).await.unwrap_err();
    assert_eq!((unknown.code(), unknown.message()), (wrong.code(), wrong.message()));
    // The right old secret changes it, and the old session's refresh token dies.
    auth.change_secret(change("pat", "pat-secret-1", "pat-secret-2")).await.unwrap();
    token.refresh_token = session.refresh_token;
    let mut refresh =
        tonic::Request::new(apb::TokenRequest { refresh_token: token.refresh_token, ..Default::default() });
    refresh.metadata_mut().insert("micro-namespace", "alpha".parse().unwrap());
    assert_eq!(auth.token(refresh).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    // Guessing: the 11th attempt at pat from this address within a minute gets 429
    // (ResourceExhausted). The right old secret above wiped the failures before it.
    let mut codes = Vec::new();
    for _ in 0..11 {
        codes.push(auth.change_secret(change("pat", "guess-guess", "new-secret-3")).await.unwrap_err().code());
    }
    assert_eq!(codes[..10], [tonic::Code::PermissionDenied; 10], "{codes:?}");
    assert_eq!(codes[10..], [tonic::Code::ResourceExhausted; 1], "{codes:?}");
}

/// Nobody registers nodes under a core service's name: calls for `auth` at the gateway
/// must reach the server's auth, whatever the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_service_names_are_reserved_in_the_registry() {
    let s = TestServer::start().await;
    let root: Arc<dyn TokenSource> = Arc::new(StaticToken(s.admin_token().await));
    let registry = micro::registry::RemoteRegistry::with_token(&s.proxy(), Some(root)).unwrap();
    for ns in ["micro", "alpha"] {
        let fake = service("auth", ns);
        let err = registry.register(ns, &fake, Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{ns}: {err}");
        let err = registry.deregister(ns, &fake).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{ns}: {err}");
    }
    // The server's own auth still answers, in alpha too.
    let body = br#"{"id":"nobody","secret":"wrong-secret"}"#;
    let r = micro_test::http(&s.api(), "POST", "/auth/auth/token", &[("micro-namespace", "alpha")], body).await;
    assert_eq!((r.status, r.json()["id"].as_str()), (401, Some("auth")), "{}", r.body);
    // An empty login is a bad request, said by auth.
    let r = micro_test::http(&s.api(), "POST", "/auth/auth/token", &[], b"{}").await;
    assert_eq!((r.status, r.json()["id"].as_str()), (400, Some("auth")), "{}", r.body);
}

/// A node belongs to the account that registered it: another account (or an anonymous
/// caller) can neither replace nor remove it; its owner and the namespace's admin can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_belong_to_who_registered_them() {
    let s = TestServer::start().await;
    s.create_account("alpha", "owner", "owner-secret-1", "service", &[]).await;
    s.create_account("alpha", "other", "other-secret-1", "service", &[]).await;
    s.create_account("alpha", "boss", "boss-secret-1", "user", &["admin"]).await;
    let as_ = |id: &'static str, secret: &'static str| {
        let proxy = s.proxy();
        async move {
            let token = micro_test::login(&proxy, "alpha", id, secret).await;
            let source: Arc<dyn TokenSource> = Arc::new(StaticToken(token));
            micro::registry::RemoteRegistry::with_token(&proxy, Some(source)).unwrap()
        }
    };
    let owner = as_("owner", "owner-secret-1").await;
    let other = as_("other", "other-secret-1").await;
    let boss = as_("boss", "boss-secret-1").await;
    let anonymous = micro::registry::RemoteRegistry::new(&s.proxy()).unwrap();
    let svc = service("owned", "alpha");
    owner.register("alpha", &svc, Duration::from_secs(60)).await.unwrap();
    owner.register("alpha", &svc, Duration::from_secs(60)).await.expect("its owner refreshes it");
    for (who, r, want) in [("other", &other, Code::PermissionDenied), ("anonymous", &anonymous, Code::Unauthenticated)]
    {
        let err = r.register("alpha", &svc, Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(err.code(), want, "{who} replaces: {err}");
        // A node of its own under the owner's name is refused too.
        let mut added = svc.clone();
        added.nodes[0].id = format!("{who}-node");
        added.nodes[0].address = "127.0.0.1:9".into();
        let err = r.register("alpha", &added, Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(err.code(), want, "{who} adds a node: {err}");
        let err = r.deregister("alpha", &svc).await.unwrap_err();
        assert_eq!(err.code(), want, "{who} removes: {err}");
        let all = Service { name: "owned".into(), ..Default::default() };
        assert_eq!(r.deregister("alpha", &all).await.unwrap_err().code(), want, "{who} removes all");
    }
    assert_eq!(owner.get_service("alpha", "owned").await.unwrap()[0].nodes.len(), 1, "still there");
    owner.deregister("alpha", &svc).await.expect("its owner removes it");
    owner.register("alpha", &svc, Duration::from_secs(60)).await.unwrap();
    boss.deregister("alpha", &svc).await.expect("the admin removes it");
    assert_eq!(owner.get_service("alpha", "owned").await.unwrap_err().code(), Code::NotFound);
}
