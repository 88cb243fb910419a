//! `-o json` is honest: every command of the `micro` CLI, run with it against a real
//! `micro server`, prints JSON on stdout (one document, or one a line for what streams:
//! `stream`, `events consume`, `logs`). The commands are found by walking `micro --help`,
//! so a new command without a case here fails the test.

use micro_test::cli::Cli;
use micro_test::eventually;
use micro_test::process::{ServerProcess, binary};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

/// Commands that print no JSON by nature: they run until stopped (`server`, `service`)
/// or print a shell script (`completion`).
const NOT_JSON: [&str; 3] = ["server", "service", "completion"];

/// Commands whose JSON needs a component this test does not run: `domain renew` needs an
/// ACME server (tests/tls.rs runs it with `-o json` against pebble), `cluster token` a
/// TLS cluster (tests/attacks/cluster.rs runs it with `-o json`), `team` and `namespace
/// switch` and `plan` people who signed up to the platform, and its mail (services/
/// platform/tests/teams.rs runs them with `-o json`), `network` other clusters
/// (tests/network.rs runs each with `-o json`).
const ELSEWHERE: [&str; 13] = [
    "domain renew",
    "cluster token",
    "team",
    "namespace switch",
    "plan",
    "network token",
    "network revoke-token",
    "network join",
    "network remove",
    "network nodes",
    "network routes",
    "network services",
    "network graph",
];

/// The leaf commands of `micro` (like `auth create account`), from its help.
fn commands(micro: &std::path::Path, path: &[String]) -> Vec<String> {
    let out = Command::new(micro).args(path).arg("--help").output().expect("micro --help runs");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some((_, list)) = help.split_once("Commands:\n") else { return vec![path.join(" ")] };
    let names: Vec<String> = list
        .lines()
        .take_while(|l| !l.trim().is_empty())
        // A command's line; a description's continuation is indented further.
        .filter_map(|l| l.strip_prefix("  ").filter(|r| !r.starts_with(' '))?.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(String::from)
        .collect();
    let mut leaves: Vec<String> =
        names.iter().flat_map(|n| commands(micro, &[path, std::slice::from_ref(n)].concat())).collect();
    // A command whose subcommand is optional (`micro env`) runs on its own too.
    if help.contains("[COMMAND]") {
        leaves.push(path.join(" "));
    }
    leaves
}

/// Runs `micro -o json args`; every JSON document on stdout (at least one).
async fn json(cli: &Cli, args: &[&str]) -> Vec<Value> {
    let args = [&["-o", "json"], args].concat();
    let out = cli.ok(&args).await;
    let docs: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(&out).into_iter::<Value>().collect();
    let docs = docs.unwrap_or_else(|e| panic!("micro {args:?} printed something else than JSON ({e}):\n{out}"));
    assert!(!docs.is_empty(), "micro {args:?} printed nothing");
    docs
}

/// One JSON document.
async fn one(cli: &Cli, args: &[&str]) -> Value {
    let docs = json(cli, args).await;
    assert_eq!(docs.len(), 1, "micro {args:?}: {docs:?}");
    docs.into_iter().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_with_o_json() {
    let micro = binary(env!("CARGO_BIN_EXE_micro"));
    let dns = micro_test::dns::TxtServer::start().await;
    // An issuer key the server trusts, for `license issue` and `license install`.
    let licences = tempfile::tempdir().unwrap();
    let (private, public) = micro_core::licence::generate_key().unwrap();
    let issuer_key = licences.path().join("issuer.key");
    std::fs::write(&issuer_key, &private).unwrap();
    let s = ServerProcess::start(
        &micro,
        &[("MICRO_RUNTIME_SANDBOX", "none"), ("MICRO_DNS", &dns.addr), ("MICRO_LICENSE_KEYS", &public)],
    );
    let cli = s.cli().env("MICRO_LICENSE_KEYS", &public);
    let mut ran = BTreeSet::new();
    let mut run = |name: &str| ran.insert(name.to_string());

    // Logging in and out; who is logged in.
    let v = one(&cli, &["login", "--password", &s.admin_password]).await;
    assert_eq!(v["logged_in"], "admin", "{v}");
    run("login");
    assert_eq!(one(&cli, &["whoami"]).await["id"], "admin");
    run("whoami");

    // Accounts, rules, namespaces.
    let v = one(&cli, &["auth", "create", "account", "alice", "--scopes", "staff"]).await;
    assert!(v["id"] == "alice" && v["secret"].as_str().is_some_and(|s| s.len() >= 32), "{v}");
    run("auth create account");
    one(&cli, &["auth", "create", "rule", "lock", "--resource", "service:foo:*", "--scope", "staff"]).await;
    run("auth create rule");
    assert!(one(&cli, &["auth", "list", "accounts"]).await.as_array().is_some_and(|a| a.len() >= 2));
    run("auth list accounts");
    assert!(one(&cli, &["auth", "list", "rules"]).await.is_array());
    run("auth list rules");
    assert_eq!(one(&cli, &["auth", "delete", "rule", "lock"]).await["id"], "lock");
    run("auth delete rule");
    assert_eq!(one(&cli, &["auth", "delete", "account", "alice"]).await["id"], "alice");
    run("auth delete account");
    one(&cli, &["namespace", "create", "shop"]).await;
    run("namespace create");
    assert!(one(&cli, &["namespace", "list"]).await.as_array().is_some_and(|a| a.contains(&"shop".into())));
    run("namespace list");
    one(&cli, &["namespace", "delete", "shop"]).await;
    run("namespace delete");

    // The data services.
    one(&cli, &["store", "write", "user/1", r#"{"name":"Alice"}"#]).await;
    run("store write");
    assert_eq!(one(&cli, &["store", "read", "user/1"]).await[0]["value"]["name"], "Alice");
    run("store read");
    assert_eq!(one(&cli, &["store", "list"]).await, serde_json::json!(["user/1"]));
    run("store list");
    assert!(one(&cli, &["store", "databases"]).await.is_array());
    run("store databases");
    assert!(one(&cli, &["store", "tables"]).await.is_array());
    run("store tables");
    one(&cli, &["store", "delete", "user/1"]).await;
    run("store delete");
    one(&cli, &["config", "set", "app.mode", "production"]).await;
    run("config set");
    assert_eq!(one(&cli, &["config", "get", "app.mode"]).await, "production");
    run("config get");
    one(&cli, &["config", "del", "app.mode"]).await;
    run("config del");
    assert_eq!(one(&cli, &["publish", "orders", r#"{"id":1}"#]).await["seq"], 1);
    run("publish");
    assert_eq!(one(&cli, &["events", "read", "orders"]).await[0]["payload"]["id"], 1);
    run("events read");
    assert!(one(&cli, &["events", "topics"]).await.is_array());
    run("events topics");
    let events =
        json(&cli, &["events", "consume", "orders", "--group", "g", "--offset", "first", "--count", "1"]).await;
    assert_eq!(events[0]["seq"], 1, "{events:?}");
    run("events consume");
    assert!(one(&cli, &["events", "groups", "orders"]).await.is_array());
    run("events groups");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "meow").unwrap();
    one(&cli, &["blob", "put", "pets", "cats/tom.txt", file.path().to_str().unwrap()]).await;
    run("blob put");
    assert_eq!(one(&cli, &["blob", "get", "pets", "cats/tom.txt"]).await["value"], "meow");
    let copy = tempfile::tempdir().unwrap();
    let copy = copy.path().join("tom.txt");
    one(&cli, &["blob", "get", "pets", "cats/tom.txt", copy.to_str().unwrap()]).await;
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "meow");
    run("blob get");
    assert!(one(&cli, &["blob", "list", "pets"]).await.is_array());
    run("blob list");
    one(&cli, &["blob", "delete", "pets", "cats/tom.txt"]).await;
    run("blob delete");

    // A service: registered, described, called, streamed, checked, through its own command.
    let _helloworld = s.helloworld().await;
    assert!(one(&cli, &["services"]).await.as_array().is_some_and(|a| a.iter().any(|s| s["name"] == "helloworld")));
    run("services");
    assert_eq!(one(&cli, &["get", "service", "helloworld"]).await[0]["name"], "helloworld");
    run("get service");
    let hello = ["call", "helloworld", "Greeter.Hello", r#"{"name":"Ada"}"#];
    assert_eq!(one(&cli, &hello).await["message"], "Hello Ada");
    run("call");
    assert_eq!(json(&cli, &["stream", "helloworld", "Greeter.Stream", r#"{"name":"Bo","count":2}"#]).await.len(), 2);
    run("stream");
    one(&cli, &["health", "helloworld"]).await;
    run("health");
    one(&cli, &["stats", "helloworld"]).await;
    run("stats");
    assert_eq!(one(&cli, &["helloworld", "greeter", "hello", "--name=Cy"]).await["message"], "Hello Cy");

    // The runtime: a service from a folder, its status and logs, an update, a kill.
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir(folder.path().join(".git")).unwrap();
    std::fs::write(
        folder.path().join("micro.toml"),
        "name = \"ticker\"\nrun = \"sh -c 'echo started; exec sleep 600'\"\n",
    )
    .unwrap();
    let folder = folder.path().to_str().unwrap();
    assert_eq!(one(&cli, &["run", folder]).await["status"], "running");
    run("run");
    assert_eq!(one(&cli, &["status", "ticker"]).await[0]["status"], "running");
    run("status");
    let logged = eventually(Duration::from_secs(10), || async {
        let out = cli.ok(&["-o", "json", "logs", "ticker"]).await;
        out.lines().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["line"] == "started"))
    })
    .await;
    assert!(logged, "no JSON line `started` in the logs");
    json(&cli, &["logs", "ticker"]).await;
    run("logs");
    assert_eq!(one(&cli, &["update", folder, "--detach"]).await["status"], "updating");
    run("update");
    assert_eq!(one(&cli, &["kill", "ticker"]).await["killed"], "ticker");
    run("kill");

    // The gateway's rate limits.
    assert_eq!(one(&cli, &["ratelimit", "set", "api", "--rate", "100/s"]).await["rule"]["rate"], "100/s");
    run("ratelimit set");
    assert_eq!(one(&cli, &["ratelimit", "list"]).await["api"]["per"], "ip");
    run("ratelimit list");
    assert_eq!(one(&cli, &["ratelimit", "delete", "api"]).await["deleted"], "api");
    run("ratelimit delete");

    // The gateway's response cache.
    assert_eq!(
        one(&cli, &["cache", "set", "items", "--route", "/shop/items", "--ttl", "30s"]).await["rule"]["ttl"],
        "30s"
    );
    run("cache set");
    assert_eq!(one(&cli, &["cache", "list"]).await["items"]["route"], "/shop/items");
    run("cache list");
    assert!(one(&cli, &["cache", "purge"]).await["purged"].is_u64());
    run("cache purge");
    assert_eq!(one(&cli, &["cache", "delete", "items"]).await["deleted"], "items");
    run("cache delete");

    // Custom domains, proved by a record on the test's name server.
    let claim = one(&cli, &["domain", "add", "json.example.test"]).await;
    assert_eq!(claim["verified"], false, "{claim}");
    run("domain add");
    dns.set(claim["txt"]["name"].as_str().unwrap(), claim["txt"]["value"].as_str().unwrap());
    assert_eq!(one(&cli, &["domain", "verify", "json.example.test"]).await["verified"], true);
    run("domain verify");
    assert_eq!(one(&cli, &["domain", "list"]).await[0]["domain"], "json.example.test");
    run("domain list");
    assert_eq!(one(&cli, &["domain", "remove", "json.example.test"]).await["removed"], "json.example.test");
    run("domain remove");

    // Static sites.
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<h1>json</h1>").unwrap();
    let folder = site.path().to_str().unwrap();
    let d1 = one(&cli, &["app", "deploy", folder, "--name", "jsonsite"]).await;
    assert_eq!(d1["deploy"]["files"], 1, "{d1}");
    run("app deploy");
    assert_eq!(
        one(&cli, &["app", "deploy", folder, "--name", "jsonsite"]).await["app"]["history"][0],
        d1["deploy"]["id"]
    );
    assert_eq!(one(&cli, &["app", "list"]).await["apps"][0]["name"], "jsonsite");
    run("app list");
    assert_eq!(one(&cli, &["app", "deploys", "jsonsite"]).await["deploys"].as_array().map(Vec::len), Some(2));
    run("app deploys");
    assert_eq!(one(&cli, &["app", "rollback", "jsonsite"]).await["current"], d1["deploy"]["id"]);
    run("app rollback");
    assert_eq!(one(&cli, &["app", "delete", "jsonsite"]).await["deleted"], "jsonsite");
    run("app delete");

    // Public hosting (no hosting domain here: gateway paths only).
    let h = one(&cli, &["hosting"]).await;
    assert_eq!((h["domain"].as_str(), h["private"].as_bool()), (Some(""), Some(false)), "{h}");
    run("hosting");
    assert!(one(&cli, &["hosting", "list"]).await["services"].is_array());
    run("hosting list");
    let set = |h: &Value, name: &str| {
        h["services"].as_array().into_iter().flatten().find(|x| x["name"] == name).map(|x| x["private"].clone())
    };
    let h = one(&cli, &["hosting", "private", "items"]).await;
    assert_eq!(set(&h, "items"), Some(Value::Bool(true)), "{h}");
    run("hosting private");
    assert_eq!(one(&cli, &["hosting", "public"]).await["private"], false);
    run("hosting public");
    assert_eq!(set(&one(&cli, &["hosting", "default", "items"]).await, "items"), None);
    run("hosting default");

    // What was metered (the calls above, stored within a flush or two).
    let metered = eventually(Duration::from_secs(10), || async {
        one(&cli, &["usage", "--by", "service"]).await["total"]["requests"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(metered, "usage counts the calls");
    run("usage");
    let traced = one(&cli, &["trace", "4bf92f3577b34da6a3ce929d0e0e4736"]).await;
    assert!(traced["spans"].is_array(), "{traced}");
    run("trace");

    // The account's own settings.
    one(&cli, &["user", "config", "set", "git.credentials.example.com", "a-token-of-mine"]).await;
    run("user config set");
    assert_eq!(one(&cli, &["user", "config", "get", "git.credentials.example.com"]).await["set"], true);
    run("user config get");
    one(&cli, &["user", "config", "del", "git.credentials.example.com"]).await;
    run("user config del");

    // Environments and projects (local).
    assert!(one(&cli, &["env"]).await["envs"]["local"].is_object());
    run("env");
    assert!(one(&cli, &["env", "add", "staging", "127.0.0.1:1"]).await["envs"]["staging"].is_object());
    run("env add");
    assert_eq!(one(&cli, &["env", "set", "staging"]).await["current"], "staging");
    run("env set");
    assert_eq!(one(&cli, &["env", "set", "local"]).await["current"], "local");
    assert!(one(&cli, &["env", "del", "staging"]).await["envs"].get("staging").is_none());
    run("env del");
    let project = tempfile::tempdir().unwrap();
    let dir = project.path().join("demo");
    assert_eq!(one(&cli, &["new", "demo", "--dir", dir.to_str().unwrap()]).await["id"], "demo");
    run("new");
    // The licence: an issuer key, a licence issued, shown offline, installed, shown.
    let path = |name: &str| licences.path().join(name).to_str().unwrap().to_string();
    assert!(one(&cli, &["license", "keygen", "--out", &path("new.key")]).await["public_key"].is_string());
    run("license keygen");
    let issue = [
        "license",
        "issue",
        "--key",
        issuer_key.to_str().unwrap(),
        "--customer",
        "Acme",
        "--email",
        "ops@acme.example",
        "--features",
        "team",
        "--days",
        "30",
    ];
    let file = path("acme.license");
    assert_eq!(one(&cli, &[&issue[..], &["--out", &file]].concat()).await["licence"]["customer"], "Acme");
    assert_eq!(one(&cli, &issue).await["format"], "micro-licence-1", "the licence itself is JSON");
    run("license issue");
    assert_eq!(one(&cli, &["license", "show", &file]).await["state"], "valid");
    assert_eq!(one(&cli, &["license", "show"]).await["state"], "unlicensed");
    run("license show");
    assert_eq!(one(&cli, &["license", "install", &file]).await["state"], "valid");
    run("license install");

    assert_eq!(one(&cli, &["logout"]).await["logged_out"], true);
    run("logout");

    // Every command of the help was run (or prints no JSON by nature).
    let all: BTreeSet<String> = commands(&micro, &[]).into_iter().collect();
    let missing: Vec<&String> = all
        .iter()
        .filter(|c| !ran.contains(*c) && !NOT_JSON.contains(&c.as_str()) && !ELSEWHERE.contains(&c.as_str()))
        .collect();
    assert!(missing.is_empty(), "commands this test does not run with -o json: {missing:?}");
    let unknown: Vec<&String> = ran.iter().filter(|c| !all.contains(*c)).collect();
    assert!(unknown.is_empty(), "not commands of `micro --help`: {unknown:?}");
}
