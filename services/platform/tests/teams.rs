//! Teams through a real `micro server` and SMTP server: people who signed up make a team
//! namespace, invite each other with roles, switch into it; and a role matrix — owner,
//! admin, developer, viewer × every kind of operation × the gateway, gRPC (through the
//! proxy) and the CLI — shows no role does more than it should.

use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// `POST path` at `addr` with `token` (and `ns` as `micro-namespace` when given).
async fn call(addr: &str, token: &str, ns: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    micro_test::post_json(addr, Some(token), ns, path, &body).await
}

async fn anon(api: &str, path: &str, body: Value) -> (u16, Value) {
    micro_test::post_json(api, None, None, path, &body).await
}

/// The newest mail to `to` whose text matches after `marker`: the word that follows it.
async fn mailed(sink: &SmtpSink, to: &str, marker: &str) -> String {
    for _ in 0..200 {
        for m in sink.messages().iter().rev() {
            let text = m.text.clone().unwrap_or_default();
            if m.rcpt_tos.iter().any(|r| r == to)
                && let Some(rest) = text.split(marker).nth(1)
            {
                return rest.split_whitespace().next().unwrap_or_default().trim_end_matches('.').to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no mail to {to} with {marker:?}: {:#?}", sink.messages());
}

/// Signs `email` up (join, confirm, invited by the operator, accept): their home token.
async fn signup(s: &ServerProcess, sink: &SmtpSink, admin: &str, email: &str) -> (String, String) {
    let api = &s.api;
    assert_eq!(anon(api, "/platform/signup/join", json!({"email": email})).await.0, 200);
    let code = mailed(sink, email, "waitlist is ").await;
    assert_eq!(anon(api, "/platform/signup/verify", json!({"email": email, "code": code})).await.0, 200);
    let (status, body) = call(api, admin, None, "/platform/platform/invite", json!({"emails": [email]})).await;
    assert_eq!(status, 200, "{body}");
    let code = mailed(sink, email, "invite code: ").await;
    let password = format!("{email} password");
    let (status, body) =
        anon(api, "/platform/signup/accept", json!({"email": email, "code": code, "password": password})).await;
    assert_eq!(status, 200, "{body}");
    let ns = body["namespace"].as_str().expect("a namespace").to_string();
    (ns.clone(), micro_test::login(&s.proxy, &ns, email, &password).await)
}

/// What each role may do: (operation, the least role allowed).
const MATRIX: &[(&str, usize)] = &[
    ("store read", 0),
    ("store write", 1),
    ("services and their status", 0),
    ("kill a service", 1),
    ("events read", 0),
    ("events publish", 1),
    ("accounts", 2),
    ("take a lock", 1),
    ("publish on the broker", 1),
];
const ROLES: [&str; 4] = ["viewer", "developer", "admin", "owner"];

/// Whether an answer is a refusal of the caller's rights (and not some other error).
fn refused(status: u16) -> bool {
    status == 403
}

/// Does `op` through the gateway at `api` as `token` in `ns`: the HTTP status.
async fn by_gateway(api: &str, token: &str, ns: &str, op: &str) -> u16 {
    let (path, body) = match op {
        "store read" => ("/store/store/read", json!({"key": "k"})),
        "store write" => ("/store/store/write", json!({"record": {"key": "k", "value": "eA=="}})),
        "services and their status" => ("/runtime/runtime/read", json!({})),
        "kill a service" => ("/runtime/runtime/delete", json!({"name": "nothing-here"})),
        "events read" => ("/events/events/read", json!({"topic": "t"})),
        "events publish" => ("/events/events/publish", json!({"topic": "t", "payload": "eA=="})),
        "accounts" => ("/auth/auth/list-accounts", json!({})),
        "take a lock" => ("/sync/sync/lock", json!({"id": "matrix", "ttl_ms": 1000, "wait_ms": 0})),
        "publish on the broker" => ("/broker/broker/publish", json!({"message": {"topic": "t", "payload": "eA=="}})),
        _ => unreachable!(),
    };
    call(api, token, Some(ns), path, body).await.0
}

/// Does `op` over gRPC through the proxy: the HTTP status of the error (200 when none).
async fn by_grpc(proxy: &str, token: &str, ns: &str, op: &str) -> u16 {
    let (service, endpoint, body) = match op {
        "store read" => ("store", "Store.Read", json!({"key": "k"})),
        "store write" => ("store", "Store.Write", json!({"record": {"key": "k", "value": "eA=="}})),
        "services and their status" => ("runtime", "Runtime.Read", json!({})),
        "kill a service" => ("runtime", "Runtime.Delete", json!({"name": "nothing-here"})),
        "events read" => ("events", "Events.Read", json!({"topic": "t"})),
        "events publish" => ("events", "Events.Publish", json!({"topic": "t", "payload": "eA=="})),
        "accounts" => ("auth", "Auth.ListAccounts", json!({})),
        "take a lock" => ("sync", "Sync.Lock", json!({"id": "matrix-grpc", "ttl_ms": 1000, "wait_ms": 0})),
        "publish on the broker" => ("broker", "Broker.Publish", json!({"message": {"topic": "t", "payload": "eA=="}})),
        _ => unreachable!(),
    };
    let source = std::sync::Arc::new(micro::data::StaticToken(token.to_string()));
    let client = micro::Client::via_proxy(proxy).namespace(ns).auth(std::sync::Arc::new(micro::auth::Bearer(source)));
    match client.call_json(service, endpoint, &body).await {
        Ok(_) => 200,
        Err(e) => e.http_status(),
    }
}

/// Does `op` with the CLI switched into `ns`: 403 when it says so, else 0 (done or
/// another error); `None` for an operation the CLI has no command for.
async fn by_cli(cli: &micro_test::cli::Cli, op: &str) -> Option<u16> {
    let args: &[&str] = match op {
        "store read" => &["store", "read", "k"],
        "store write" => &["store", "write", "k", "x"],
        "services and their status" => &["status"],
        "kill a service" => &["kill", "nothing-here"],
        "events read" => &["events", "read", "t"],
        "events publish" => &["publish", "t", "{}"],
        "accounts" => &["auth", "list", "accounts"],
        _ => return None,
    };
    let out = cli.run(args).await;
    Some(if out.stderr.contains("(403)") { 403 } else { 0 })
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_roles_and_the_role_matrix() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = ServerProcess::builder(micro()).env("MICRO_SMTP", sink.url()).start();
    let admin = s.admin_token().await;
    let (status, body) =
        call(&s.api, &admin, None, "/platform/platform/settings", json!({"joins_per_address": 1000})).await;
    assert_eq!(status, 200, "{body}");
    let people = ["olga@one.example", "vic@two.example", "dev@three.example", "adm@four.example", "out@five.example"];
    let mut home = Vec::new();
    for p in people {
        home.push(signup(&s, &sink, &admin, p).await);
    }
    let token = |i: usize| home[i].1.clone();

    // Olga makes a team; its name must be free and not reserved.
    let (status, body) = call(&s.api, &token(0), None, "/platform/team/create", json!({"name": "acme"})).await;
    assert_eq!((status, body["role"].as_str()), (200, Some("owner")), "{body}");
    let (status, body) = call(&s.api, &token(4), None, "/platform/team/create", json!({"name": "acme"})).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = call(&s.api, &token(4), None, "/platform/team/create", json!({"name": "admin"})).await;
    assert_eq!(status, 400);

    // She invites Vic as viewer, Dev as developer and Adm as admin; each accepts with the
    // code mailed to them, from their own namespace.
    for (i, role) in [(1, "viewer"), (2, "developer"), (3, "admin")] {
        let (status, body) = call(
            &s.api,
            &token(0),
            None,
            "/platform/team/invite",
            json!({"namespace": "acme", "email": people[i], "role": role}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let code = mailed(&sink, people[i], "Your code: ").await;
        if i == 2 {
            // Somebody else cannot use Dev's invite, nor guess it.
            let (status, _) =
                call(&s.api, &token(4), None, "/platform/team/accept", json!({"namespace": "acme", "code": code}))
                    .await;
            assert_eq!(status, 400, "another person's invite");
            let (status, body) = call(
                &s.api,
                &token(2),
                None,
                "/platform/team/accept",
                json!({"namespace": "acme", "code": "0".repeat(32)}),
            )
            .await;
            assert_eq!(status, 400, "{body}");
        }
        let (status, body) =
            call(&s.api, &token(i), None, "/platform/team/accept", json!({"namespace": "acme", "code": code})).await;
        assert_eq!((status, body["role"].as_str()), (200, Some(role)), "{body}");
    }
    // Members see the team; a viewer or developer cannot invite; an outsider sees nothing.
    let (status, body) = call(&s.api, &token(1), None, "/platform/team/members", json!({"namespace": "acme"})).await;
    assert_eq!(status, 200, "{body}");
    let roles: Vec<(&str, &str)> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [
            ("olga@one.example", "owner"),
            ("adm@four.example", "admin"),
            ("dev@three.example", "developer"),
            ("vic@two.example", "viewer")
        ]
    );
    for i in [1, 2, 4] {
        let invite = json!({"namespace": "acme", "email": people[4], "role": "viewer"});
        let (status, body) = call(&s.api, &token(i), None, "/platform/team/invite", invite).await;
        assert_eq!(status, 403, "{}: {body}", people[i]);
    }
    let (status, _) = call(&s.api, &token(4), None, "/platform/team/members", json!({"namespace": "acme"})).await;
    assert_eq!(status, 403, "an outsider");
    let (status, body) = call(&s.api, &token(4), None, "/platform/team/switch", json!({"namespace": "acme"})).await;
    assert_eq!(status, 403, "an outsider gets no token in acme: {body}");

    // Each member switches in: a token of their account in acme.
    let mut member = Vec::new();
    for i in [1, 2, 3, 0] {
        let (status, body) = call(&s.api, &token(i), None, "/platform/team/switch", json!({"namespace": "acme"})).await;
        assert_eq!((status, body["namespace"].as_str()), (200, Some("acme")), "{body}");
        member.push(body["access_token"].as_str().unwrap().to_string());
    }
    // Team calls are made as the person, from their own namespace: not with a team token.
    let (status, body) = call(&s.api, &member[3], None, "/platform/team/members", json!({"namespace": "acme"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap_or("").contains("your own namespace"), "{body}");

    // The matrix: viewer, developer, admin, owner × operations × gateway and gRPC.
    let mut clis = Vec::new();
    for (r, role) in ROLES.iter().enumerate() {
        for (op, least) in MATRIX {
            let allowed = r >= *least;
            let gw = by_gateway(&s.api, &member[r], "acme", op).await;
            let grpc = by_grpc(&s.proxy, &member[r], "acme", op).await;
            assert_eq!(!refused(gw), allowed, "{role} {op} at the gateway: {gw}");
            assert_eq!(!refused(grpc), allowed, "{role} {op} over gRPC: {grpc}");
            assert!(![401, 500].contains(&gw) && ![401, 500].contains(&grpc), "{role} {op}: {gw} {grpc}");
        }
        // And with the CLI, logged in as the person and switched into acme.
        let i = [1, 2, 3, 0][r];
        let cli = s.cli();
        let (ns, password) = (home[i].0.clone(), format!("{} password", people[i]));
        cli.ok(&["--namespace", &ns, "login", "--id", people[i], "--password", &password]).await;
        let out = cli.ok(&["namespace", "switch", "acme"]).await;
        assert!(out.contains("now in acme"), "{out}");
        for (op, least) in MATRIX {
            if let Some(got) = by_cli(&cli, op).await {
                assert_eq!(got != 403, r >= *least, "{role} {op} with the CLI");
            }
        }
        clis.push(cli);
    }
    // The CLI's team commands act as the person, for the namespace switched to.
    let listed = clis[3].json(&["-o", "json", "team", "members"]).await;
    assert_eq!(listed["members"].as_array().map(Vec::len), Some(4), "{listed}");
    let err = clis[0].fails(&["team", "invite", "--email", people[4], "--role", "viewer"]).await;
    assert!(err.contains("403"), "a viewer invites nobody: {err}");
    let switched = clis[3].json(&["-o", "json", "namespace", "switch", &home[0].0]).await;
    assert_eq!(switched, json!({"namespace": home[0].0, "account": people[0]}));
    let back = clis[3].ok(&["status"]).await;
    assert!(!back.contains("403"), "back home: {back}");

    // Roles change at once: Dev becomes a viewer and his old token stops.
    let (status, body) = call(
        &s.api,
        &token(0),
        None,
        "/platform/team/set-role",
        json!({"namespace": "acme", "email": people[2], "role": "viewer"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let status = by_gateway(&s.api, &member[1], "acme", "store write").await;
    assert_eq!(status, 401, "the developer's old token is revoked");
    let (_, body) = call(&s.api, &token(2), None, "/platform/team/switch", json!({"namespace": "acme"})).await;
    let dev_now = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(by_gateway(&s.api, &dev_now, "acme", "store write").await, 403, "now a viewer");
    // A removed member's token stops at once too; the owner cannot be removed.
    let (status, _) =
        call(&s.api, &token(3), None, "/platform/team/remove", json!({"namespace": "acme", "email": people[1]})).await;
    assert_eq!(status, 204);
    assert_eq!(by_gateway(&s.api, &member[0], "acme", "store read").await, 401, "removed: the token is dead");
    let (status, _) =
        call(&s.api, &token(3), None, "/platform/team/remove", json!({"namespace": "acme", "email": people[0]})).await;
    assert_eq!(status, 403, "nobody removes the owner");
    // Ownership moves: Adm owns acme, Olga is an admin.
    let (status, body) =
        call(&s.api, &token(0), None, "/platform/team/transfer", json!({"namespace": "acme", "email": people[3]}))
            .await;
    assert_eq!(status, 204, "{body}");
    let (_, body) = call(&s.api, &token(3), None, "/platform/team/namespaces", json!({})).await;
    assert_eq!(body["teams"], json!([{"namespace": "acme", "role": "owner"}]), "{body}");
    // Nobody becomes someone else: an account Olga makes in her own namespace with her
    // address plus a tag is not a person; a deleted home made again is not its old owner's.
    let olga_ns = home[0].0.clone();
    let (status, body) = call(
        &s.api,
        &token(0),
        None,
        "/auth/auth/generate",
        json!({"id": "olga+1@one.example", "secret": "another person?", "scopes": ["admin"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let tagged = micro_test::login(&s.proxy, &olga_ns, "olga+1@one.example", "another person?").await;
    let (status, body) = call(&s.api, &tagged, None, "/platform/team/create", json!({"name": "tagged"})).await;
    assert_eq!(status, 403, "{body}");
    let out_ns = home[4].0.clone();
    let (status, body) = call(
        &s.api,
        &token(3),
        None,
        "/platform/team/invite",
        json!({"namespace": "acme", "email": people[4], "role": "viewer"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let code = mailed(&sink, people[4], "Your code: ").await;
    let (status, _) =
        call(&s.api, &token(4), None, "/platform/team/accept", json!({"namespace": "acme", "code": code})).await;
    assert_eq!(status, 200);
    let (status, body) = call(&s.api, &admin, None, "/auth/auth/delete-namespace", json!({"name": out_ns})).await;
    assert!(status < 300, "{status} {body}");
    let mut made = false;
    for _ in 0..100 {
        let (status, _) = call(&s.api, &token(0), None, "/platform/team/create", json!({"name": out_ns})).await;
        if status == 200 {
            made = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(made, "the deleted name is free again");
    let (_, body) = call(&s.api, &token(0), None, "/platform/team/switch", json!({"namespace": out_ns})).await;
    let olga_there = body["access_token"].as_str().expect("a token").to_string();
    let forged = json!({"id": people[4], "secret": "i am out now", "scopes": ["admin"]});
    let (status, body) = call(&s.api, &olga_there, Some(&out_ns), "/auth/auth/generate", forged).await;
    assert_eq!(status, 200, "{body}");
    let fake = micro_test::login(&s.proxy, &out_ns, people[4], "i am out now").await;
    let (status, body) = call(&s.api, &fake, None, "/platform/team/switch", json!({"namespace": "acme"})).await;
    assert_eq!(status, 403, "not the person who signed up into it: {body}");

    // Dev leaves.
    let (status, _) =
        call(&s.api, &token(2), None, "/platform/team/remove", json!({"namespace": "acme", "email": people[2]})).await;
    assert_eq!(status, 204);
    let (_, body) = call(&s.api, &token(2), None, "/platform/team/namespaces", json!({})).await;
    assert_eq!(body["teams"], json!([]), "{body}");
}

/// Whether bubblewrap sandboxes here: the runtime runs a tenant's code only in one.
fn sandboxed() -> bool {
    let ok = std::process::Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "--dev", "/dev", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "bwrap is needed (scripts/sandbox-setup)");
        eprintln!("notice: skipping the quota test: bwrap does not work here (scripts/sandbox-setup)");
    }
    ok
}

/// A service folder whose manifest runs `sleep`.
fn sleeper(dir: &std::path::Path, name: &str) -> String {
    service(dir, name, &[("micro.toml", &format!("name = \"{name}\"\nrun = \"sleep 300\"\n"))])
}

/// A service folder `name` in `dir` holding `files`; its path.
fn service(dir: &std::path::Path, name: &str, files: &[(&str, &str)]) -> String {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).expect("a folder");
    for (file, text) in files {
        std::fs::write(p.join(file), text).expect("a file of the service");
    }
    p.to_str().expect("a UTF-8 path").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_hold_namespaces_to_their_quotas() {
    if !sandboxed() {
        return;
    }
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = ServerProcess::builder(micro()).env("MICRO_SMTP", sink.url()).start();
    let admin = s.admin_token().await;
    let (status, body) =
        call(&s.api, &admin, None, "/platform/platform/settings", json!({"joins_per_address": 1000})).await;
    assert_eq!(status, 200, "{body}");
    let (ns, _) = signup(&s, &sink, &admin, "pat@one.example").await;
    let (_, vic) = signup(&s, &sink, &admin, "vic@two.example").await;
    let cli = s.cli();
    cli.ok(&["--namespace", &ns, "login", "--id", "pat@one.example", "--password", "pat@one.example password"]).await;
    let plan = cli.ok(&["plan"]).await;
    assert!(plan.contains(&format!("namespace {ns} is on the community plan")), "{plan}");
    let json = cli.json(&["-o", "json", "plan"]).await;
    assert_eq!((json["plan"].as_str(), json["limits"]["services"].as_u64()), (Some("community"), Some(2)), "{json}");

    // The community plan runs 2 services: the third is refused, naming the quota and the
    // plan that lifts it; so is a second instance or more memory, at run or update.
    let dir = tempfile::tempdir().expect("a temp dir");
    for name in ["one", "two"] {
        cli.ok(&["run", &sleeper(dir.path(), name), "--detach"]).await;
    }
    let err = cli.fails(&["run", &sleeper(dir.path(), "three"), "--detach"]).await;
    assert!(
        err.contains(&format!("namespace {ns} may run 2 services on the community plan and runs 2"))
            && err.contains("the personal plan allows 10: micro plan set personal")
            && err.contains("(429)"),
        "{err}"
    );
    let usage = cli.ok(&["plan"]).await;
    assert!(usage.lines().any(|l| l.contains("services running") && l.ends_with("2 of 2")), "{usage}");
    let json = cli.json(&["-o", "json", "plan"]).await;
    assert_eq!(json["used"]["services"], 2, "{json}");
    let err = cli.fails(&["update", "one", "--instances", "2"]).await;
    assert!(err.contains("may run 1 of a service on the community plan"), "{err}");
    let err = cli.fails(&["update", "one", "--memory", "1G"]).await;
    assert!(err.contains("may give 256 MiB"), "{err}");

    // Only its owner changes a namespace's plan; then the third runs.
    let (status, _) = call(&s.api, &vic, None, "/platform/plan/set", json!({"namespace": ns, "plan": "team"})).await;
    assert_eq!(status, 403, "a stranger changes no plan");
    let err = cli.fails(&["plan", "set", "gold"]).await;
    assert!(err.contains("unknown plan"), "{err}");
    let out = cli.ok(&["plan", "set", "personal"]).await;
    assert!(out.contains("personal plan"), "{out}");
    cli.ok(&["run", &sleeper(dir.path(), "three"), "--detach"]).await;
    cli.ok(&["update", "one", "--instances", "2", "--detach"]).await;
    for name in ["one", "two", "three"] {
        cli.ok(&["kill", name]).await;
    }

    // A viewer of a team sees its services, not the values of their environment.
    let pat = micro_test::login(&s.proxy, &ns, "pat@one.example", "pat@one.example password").await;
    let (status, body) = call(&s.api, &pat, None, "/platform/team/create", json!({"name": "lab"})).await;
    assert_eq!(status, 200, "{body}");
    let invite = json!({"namespace": "lab", "email": "vic@two.example", "role": "viewer"});
    assert_eq!(call(&s.api, &pat, None, "/platform/team/invite", invite).await.0, 200);
    let code = mailed(&sink, "vic@two.example", "Your code: ").await;
    assert_eq!(
        call(&s.api, &vic, None, "/platform/team/accept", json!({"namespace": "lab", "code": code})).await.0,
        200
    );
    cli.ok(&["namespace", "switch", "lab"]).await;
    cli.ok(&["run", &sleeper(dir.path(), "labsvc"), "--env", "TOKEN=s3cret-value", "--detach"]).await;
    let (_, body) = call(&s.api, &vic, None, "/platform/team/switch", json!({"namespace": "lab"})).await;
    let viewer = body["access_token"].as_str().expect("a token").to_string();
    let (status, seen) = call(&s.api, &viewer, Some("lab"), "/runtime/runtime/read", json!({})).await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen.to_string().contains("labsvc") && !seen.to_string().contains("s3cret-value"), "{seen}");
    let (_, body) = call(&s.api, &pat, None, "/platform/team/switch", json!({"namespace": "lab"})).await;
    let owner = body["access_token"].as_str().expect("a token").to_string();
    let (_, seen) = call(&s.api, &owner, Some("lab"), "/runtime/runtime/read", json!({})).await;
    assert!(seen.to_string().contains("s3cret-value"), "the owner sees it: {seen}");
    cli.ok(&["kill", "labsvc"]).await;
}

/// A service folder whose manifest runs a Python HTTP app answering `hello`.
fn web_app(dir: &std::path::Path, name: &str) -> String {
    let app = "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
               class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200)\n        \
               self.send_header('content-length', '5')\n        self.end_headers()\n        self.wfile.write(b'hello')\n    \
               def log_message(self, *a):\n        pass\n\
               HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()\n";
    let manifest = format!("name = \"{name}\"\nrun = \"python3 app.py\"\n[http]\n");
    service(dir, name, &[("app.py", app), ("micro.toml", &manifest)])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_of_requests_runs_out_at_the_gateway_until_the_plan_changes() {
    if !sandboxed() {
        return;
    }
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = ServerProcess::builder(micro()).env("MICRO_SMTP", sink.url()).env("MICRO_USAGE_FLUSH", "1").start();
    let admin = s.admin_token().await;
    // The operator makes the community plan's month 5 requests long.
    let (status, plans) = call(&s.api, &admin, None, "/platform/platform/plans", json!({})).await;
    assert_eq!(status, 200, "{plans}");
    let mut plans = plans["plans"].clone();
    plans["community"]["requests_per_month"] = json!(5);
    let (status, body) = call(&s.api, &admin, None, "/platform/platform/plans", json!({"plans": plans})).await;
    assert_eq!(status, 200, "{body}");
    let (ns, pat) = signup(&s, &sink, &admin, "pat@one.example").await;
    let cli = s.cli();
    cli.ok(&["--namespace", &ns, "login", "--id", "pat@one.example", "--password", "pat@one.example password"]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    cli.ok(&["run", &web_app(dir.path(), "hello")]).await;

    let auth = format!("Bearer {pat}");
    let headers = [("authorization", auth.as_str())];
    let get = || micro_test::http(&s.api, "GET", "/hello/", &headers, b"");
    for _ in 0..5 {
        let r = get().await;
        assert_eq!((r.status, r.body.as_str()), (200, "hello"), "{}", r.head);
    }
    // Counted within seconds (the meter flushes each second here): then refused.
    let mut refused = None;
    for _ in 0..100 {
        let r = get().await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = refused.expect("the month's requests run out");
    let body = r.json();
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("namespace {ns} has made its 5 requests this month on the community plan"))
            && detail.contains("the personal plan allows")
            && detail.contains("micro plan set personal"),
        "{body}"
    );
    assert_eq!(body["code"], 429, "{body}");
    let head = r.head.to_ascii_lowercase();
    assert!(head.contains("retry-after: ") && head.contains("\"requests-per-month\";r=0"), "{}", r.head);
    // The platform still answers: the plan shows what was spent, and the owner upgrades.
    let plan = cli.ok(&["plan"]).await;
    let line = plan.lines().find(|l| l.contains("requests this month")).unwrap_or_default().to_string();
    let spent: u64 = line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(spent >= 5 && line.contains(" of 5 "), "{plan}");
    let json = cli.json(&["-o", "json", "plan"]).await;
    assert!(json["used"]["requests"].as_u64().is_some_and(|n| n >= 5), "{json}");
    // Another namespace's requests are its own.
    let (_, vic) = signup(&s, &sink, &admin, "vic@two.example").await;
    let (status, _) = call(&s.api, &vic, None, "/runtime/runtime/read", json!({})).await;
    assert_eq!(status, 200);
    cli.ok(&["plan", "set", "personal"]).await;
    let mut served = false;
    for _ in 0..50 {
        if get().await.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the personal plan's month has room again");
    cli.ok(&["kill", "hello"]).await;
}

/// Two servers sharing PostgreSQL act as one platform: a signup begun on one finishes on
/// the other, a team made on one is joined through the other, a plan set on one holds on
/// both, and the month's requests are counted across both gateways.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_sharing_postgres_are_one_platform() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    if !sandboxed() {
        return;
    }
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_platform_{}", std::process::id())).await;
    let password = "two-node-admin-password";
    let node = || {
        ServerProcess::builder(micro())
            .env("MICRO_BACKEND", &schema.url)
            // The nodes share the config (plans' quotas are kept there) under one key.
            .env("MICRO_CONFIG_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .env("MICRO_SMTP", sink.url())
            .env("MICRO_USAGE_FLUSH", "1")
            .admin_password(password)
            .start()
    };
    let (a, b) = (node(), node());
    let admin = a.admin_token().await;
    let mut plans = call(&b.api, &admin, None, "/platform/platform/plans", json!({})).await.1["plans"].clone();
    plans["community"]["requests_per_month"] = json!(6);
    let (status, body) = call(&a.api, &admin, None, "/platform/platform/plans", json!({"plans": plans})).await;
    assert_eq!(status, 200, "{body}");

    // Joined on A, confirmed on B, invited from A, accepted on B: a namespace on both.
    let email = "pat@one.example";
    assert_eq!(anon(&a.api, "/platform/signup/join", json!({"email": email})).await.0, 200);
    let code = mailed(&sink, email, "waitlist is ").await;
    assert_eq!(anon(&b.api, "/platform/signup/verify", json!({"email": email, "code": code})).await.0, 200);
    let (status, body) = call(&a.api, &admin, None, "/platform/platform/invite", json!({"emails": [email]})).await;
    assert_eq!(status, 200, "{body}");
    let code = mailed(&sink, email, "invite code: ").await;
    let pw = format!("{email} password");
    let (status, body) =
        anon(&b.api, "/platform/signup/accept", json!({"email": email, "code": code, "password": pw})).await;
    assert_eq!(status, 200, "{body}");
    let ns = body["namespace"].as_str().expect("a namespace").to_string();
    let pat = micro_test::login(&a.proxy, &ns, email, &pw).await;
    let (vic_ns, vic) = signup(&b, &sink, &admin, "vic@two.example").await;

    // A team made on B, its invite sent through A and accepted through B; the member's
    // token, from A, works on B.
    let (status, body) = call(&b.api, &pat, None, "/platform/team/create", json!({"name": "duo"})).await;
    assert_eq!(status, 200, "{body}");
    let invite = json!({"namespace": "duo", "email": "vic@two.example", "role": "developer"});
    assert_eq!(call(&a.api, &pat, None, "/platform/team/invite", invite).await.0, 200);
    let code = mailed(&sink, "vic@two.example", "Your code: ").await;
    let (status, body) =
        call(&b.api, &vic, None, "/platform/team/accept", json!({"namespace": "duo", "code": code})).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = call(&a.api, &vic, None, "/platform/team/switch", json!({"namespace": "duo"})).await;
    let dev = body["access_token"].as_str().expect("a member token").to_string();
    let (status, body) = call(&b.api, &dev, Some("duo"), "/runtime/runtime/read", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, members) = call(&a.api, &pat, None, "/platform/team/members", json!({"namespace": "duo"})).await;
    assert_eq!(members["members"].as_array().map(Vec::len), Some(2), "{members}");

    // The developer deploys an app through B's CLI; the cluster runs it once.
    let cli = b.cli();
    cli.ok(&["--namespace", &vic_ns, "login", "--id", "vic@two.example", "--password", "vic@two.example password"])
        .await;
    cli.ok(&["namespace", "switch", "duo"]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    cli.ok(&["run", &web_app(dir.path(), "hello")]).await;
    // Its month of 6 requests is spent through both gateways together.
    let auth = format!("Bearer {dev}");
    let headers = [("authorization", auth.as_str()), ("micro-namespace", "duo")];
    let get = |api: &str| {
        let (api, headers) = (api.to_string(), headers);
        async move {
            let r = micro_test::http(&api, "GET", "/hello/", &headers, b"").await;
            let body = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
            (r.status, body)
        }
    };
    let mut served = 0;
    let mut refused = None;
    for i in 0..300 {
        let api = if i % 2 == 0 { &a.api } else { &b.api };
        let (status, body) = get(api).await;
        match status {
            200 => served += 1,
            429 => {
                refused = Some((i, body));
                break;
            }
            other => panic!("{other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (at, body) = refused.expect("the month runs out across the nodes");
    // (Counted within seconds: the meter flushes every second, each gateway rereads the
    // count every two.)
    assert!((6..100).contains(&served), "{served} served before the refusal at {at}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("has made its 6 requests this month"), "{body}");
    for api in [&a.api, &b.api] {
        let mut status = 0;
        for _ in 0..100 {
            status = get(api).await.0;
            if status == 429 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 429, "refused on both nodes, within seconds");
    }
    // The owner upgrades through A; B serves again.
    let (status, body) =
        call(&a.api, &pat, None, "/platform/plan/set", json!({"namespace": "duo", "plan": "personal"})).await;
    assert_eq!(status, 200, "{body}");
    let (_, plan) = call(&b.api, &vic, None, "/platform/plan/get", json!({"namespace": "duo"})).await;
    assert_eq!(plan["plan"], "personal", "{plan}");
    let mut ok = false;
    for _ in 0..50 {
        if get(&b.api).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the personal plan's month has room");
    cli.ok(&["kill", "hello"]).await;
    drop((a, b));
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plans_storage_runs_out_for_writes_not_for_deletes() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = ServerProcess::builder(micro()).env("MICRO_SMTP", sink.url()).start();
    let admin = s.admin_token().await;
    // The operator makes the community plan keep 1 MiB.
    let mut plans = call(&s.api, &admin, None, "/platform/platform/plans", json!({})).await.1["plans"].clone();
    plans["community"]["storage_mb"] = json!(1);
    let (status, body) = call(&s.api, &admin, None, "/platform/platform/plans", json!({"plans": plans})).await;
    assert_eq!(status, 200, "{body}");
    let (ns, _) = signup(&s, &sink, &admin, "pat@one.example").await;
    let cli = s.cli();
    cli.ok(&["--namespace", &ns, "login", "--id", "pat@one.example", "--password", "pat@one.example password"]).await;
    // 120 KiB a record (one command-line argument holds at most 128 KiB).
    let value = "v".repeat(120 << 10);
    // Metadata counts as much as a value.
    let meta = format!("big={value}");
    let out = cli.run(&["store", "write", "meta", "1", "-m", &meta]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut written = 0;
    let refused = loop {
        let out = cli.run(&["store", "write", &format!("k{written}"), &value]).await;
        if out.code != 0 {
            break out.stderr;
        }
        written += 1;
        assert!(written < 20, "1 MiB holds fewer than 20 records of 120 KiB");
    };
    assert_eq!(written, 7, "7 records of 120 KiB fit in 1 MiB beside the metadata, the 8th does not: {refused}");
    assert!(
        refused.contains(&format!(
            "namespace {ns} keeps 1 MiB of data (store and blobs) and may keep 1 MiB on the community plan"
        )) && refused.contains("delete some to write more")
            && refused.contains("micro plan set personal")
            && refused.contains("429"),
        "{refused}"
    );
    // `micro plan` shows what it keeps against the quota.
    let plan = cli.ok(&["plan"]).await;
    assert!(plan.lines().any(|l| l.contains("storage") && l.ends_with("1 MiB of 1 MiB")), "{plan}");
    let json = cli.json(&["-o", "json", "plan"]).await;
    assert!(json["used"]["storage_bytes"].as_u64().is_some_and(|b| b > 900 << 10), "{json}");
    // Blobs count too.
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("small.bin");
    std::fs::write(&file, vec![7u8; 64 << 10]).expect("a file");
    let file = file.to_str().expect("a UTF-8 path");
    // (Held as its bytes come: 64 KiB do not fit.)
    let err = cli.fails(&["blob", "put", "files", "b.bin", file]).await;
    assert!(err.contains("may keep 1 MiB"), "{err}");
    let err = cli.fails(&["blob", "get", "files", "b.bin"]).await;
    assert!(err.contains("(404)"), "nothing stored: {err}");
    // Deletes always pass; once summed again, there is room.
    for i in 0..3 {
        cli.ok(&["store", "delete", &format!("k{i}")]).await;
    }
    let mut passed = false;
    for _ in 0..60 {
        if cli.run(&["blob", "put", "files", "b.bin", file]).await.code == 0 {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(passed, "room again after the deletes");
    // A plan that keeps more lifts it (within the second the quota is read again in).
    cli.ok(&["plan", "set", "personal"]).await;
    for i in 0..5 {
        let mut tries = 0;
        loop {
            let out = cli.run(&["store", "write", &format!("more{i}"), &value]).await;
            if out.code == 0 {
                break;
            }
            tries += 1;
            assert!(tries < 30, "more{i}: {}", out.stderr);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A service folder whose manifest builds with `build` and then sleeps.
fn built(dir: &std::path::Path, name: &str, build: &str) -> String {
    let manifest = format!("name = \"{name}\"\nbuild = \"{build}\"\nrun = \"sleep 300\"\n");
    service(dir, name, &[("micro.toml", &manifest)])
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_are_held_to_the_plans_minutes_and_the_servers_longest_build() {
    if !sandboxed() {
        return;
    }
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s =
        ServerProcess::builder(micro()).env("MICRO_SMTP", sink.url()).env("MICRO_RUNTIME_BUILD_TIMEOUT", "3").start();
    let admin = s.admin_token().await;
    // The operator gives the community plan no build minutes.
    let mut plans = call(&s.api, &admin, None, "/platform/platform/plans", json!({})).await.1["plans"].clone();
    plans["community"]["build_minutes"] = json!(0);
    let (status, body) = call(&s.api, &admin, None, "/platform/platform/plans", json!({"plans": plans})).await;
    assert_eq!(status, 200, "{body}");
    let (ns, _) = signup(&s, &sink, &admin, "pat@one.example").await;
    let cli = s.cli();
    cli.ok(&["--namespace", &ns, "login", "--id", "pat@one.example", "--password", "pat@one.example password"]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let quick = built(dir.path(), "quick", "true");
    let err = cli.fails(&["run", &quick]).await;
    assert!(
        err.contains(&format!("namespace {ns} has used its 0 build minutes this month on the community plan"))
            && err.contains("micro plan set personal"),
        "{err}"
    );
    cli.ok(&["kill", "quick"]).await;
    // The personal plan builds.
    cli.ok(&["plan", "set", "personal"]).await;
    let out = cli.ok(&["run", &quick]).await;
    assert!(out.contains("quick running"), "{out}");
    // A build longer than the server allows is stopped, its processes with it.
    let slow = built(dir.path(), "slow", "sleep 120");
    let started = std::time::Instant::now();
    let err = cli.fails(&["run", &slow]).await;
    assert!(err.contains("stopped after 3s") && err.contains("MICRO_RUNTIME_BUILD_TIMEOUT"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    // Its time counts: `micro plan` shows the month's build minutes against the quota.
    let json = cli.json(&["-o", "json", "plan"]).await;
    assert!(json["used"]["build_seconds"].as_u64().is_some_and(|s| s >= 3), "{json}");
    let plan = cli.ok(&["plan"]).await;
    assert!(plan.lines().any(|l| l.contains("build minutes this month") && l.ends_with("1 of 300")), "{plan}");
    for name in ["quick", "slow"] {
        cli.ok(&["kill", name]).await;
    }
}
