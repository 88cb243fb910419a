//! The licence of the self-hosted platform, end to end with the real `micro` binary: a
//! server without a licence refuses the team plan (CLI and HTTP) with what to do; an
//! issuer key from `micro license keygen` trusted through `MICRO_LICENSE_KEYS`, a licence
//! from `micro license issue` installed with `micro license install` unlocks it at once;
//! altered, expired and other issuers' licences are refused by `install` and `show FILE`
//! with clear messages; a server whose data dir holds an expired licence runs unlicensed,
//! one in grace runs licensed, and a licence file that changes takes effect.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use micro_core::licence::{self, Licence};
use micro_test::cli::Cli;
use micro_test::process::ServerProcess;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const DAY: u64 = 86_400;

/// What refusing the team plan says.
const TEAM_REFUSED: &str = "the team plan is a paid feature of the self-hosted platform: install a licence that includes \"team\" (micro license install FILE)";

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(env!("CARGO_BIN_EXE_micro"))
}

/// A licence for `features` signed with the key in `key_file`, issued and expiring at
/// the given times (the CLI issues none that expired already).
fn signed(key_file: &Path, features: &[&str], issued: u64, expires: u64) -> String {
    let private = std::fs::read_to_string(key_file).unwrap();
    licence::issue(&private, &Licence::new("Acme", "ops@acme.example", features, issued, expires)).unwrap()
}

/// `micro license keygen` into `dir/name`: the public key.
async fn keygen(cli: &Cli, dir: &Path, name: &str) -> String {
    let out = dir.join(name);
    let public = cli.ok(&["license", "keygen", "--out", out.to_str().unwrap()]).await.trim().to_string();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "the private key is private");
    public
}

/// Sets `ns`'s plan to `plan` over HTTP as the holder of `token`: (status, body).
async fn set_plan_http(api: &str, token: &str, ns: &str, plan: &str) -> (u16, Value) {
    micro_test::post_json(api, Some(token), None, "/platform/plan/set", &json!({"namespace": ns, "plan": plan})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_plan_needs_a_licence_and_install_brings_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Offline commands need no server.
    let offline = Cli::new(micro(), "127.0.0.1:9");
    let public = keygen(&offline, dir.path(), "issuer.key").await;
    let err = offline.error(&["license", "keygen", "--out", &path("issuer.key")]).await;
    assert!(err.contains("exists"), "a key is never overwritten: {err}");
    let _other = keygen(&offline, dir.path(), "other.key").await;

    let s = ServerProcess::builder(micro()).env("MICRO_LICENSE_KEYS", &public).start();
    let admin = s.admin_cli().await.env("MICRO_LICENSE_KEYS", &public);
    admin.ok(&["namespace", "create", "acme"]).await;
    let token = s.admin_token().await;

    // Unlicensed: the team plan is refused, with what to do; the others are not.
    let shown = admin.ok(&["license", "show"]).await;
    assert!(shown.contains("unlicensed"), "{shown}");
    let err = admin.error(&["--namespace", "acme", "plan", "set", "team"]).await;
    assert!(err.contains(TEAM_REFUSED), "{err}");
    let (status, body) = set_plan_http(&s.api, &token, "acme", "team").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], TEAM_REFUSED, "{body}");
    admin.ok(&["--namespace", "acme", "plan", "set", "personal"]).await;

    // Licences: a good one, and the bad kinds.
    let good = path("acme.license");
    let out = admin
        .ok(&[
            "license",
            "issue",
            "--key",
            &path("issuer.key"),
            "--customer",
            "Acme",
            "--email",
            "ops@acme.example",
            "--features",
            "team,billing",
            "--seats",
            "25",
            "--days",
            "365",
            "--out",
            &good,
        ])
        .await;
    assert!(out.contains("issued licence") && out.contains("team, billing"), "{out}");
    let text = std::fs::read_to_string(&good).unwrap();
    let mut file: Value = serde_json::from_str(&text).unwrap();
    let now = licence::now();

    let mut altered: Licence =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(file["payload"].as_str().unwrap()).unwrap()).unwrap();
    altered.seats = 10_000;
    file["payload"] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&altered).unwrap()).into();
    file["licence"] = serde_json::to_value(&altered).unwrap();
    let tampered = path("tampered.license");
    std::fs::write(&tampered, file.to_string()).unwrap();

    let expired = path("expired.license");
    std::fs::write(&expired, signed(&dir.path().join("issuer.key"), &["team"], now - 400 * DAY, now - 30 * DAY))
        .unwrap();
    let foreign = path("foreign.license");
    std::fs::write(&foreign, signed(&dir.path().join("other.key"), &["team"], now, now + 30 * DAY)).unwrap();
    let garbage = path("garbage.license");
    std::fs::write(&garbage, "this is not a licence").unwrap();

    let refusals = [
        (&tampered, "signed by another issuer or altered"),
        (&expired, "the licence expired on"),
        (&foreign, "is not trusted"),
        (&garbage, "not a licence file"),
    ];
    for (file, says) in refusals {
        let err = admin.error(&["license", "show", file]).await;
        assert!(err.contains(says), "show {file}: {err}");
        let err = admin.error(&["license", "install", file]).await;
        assert!(err.contains("licence refused") && err.contains(says), "install {file}: {err}");
    }
    // Without the issuer's key, even the good one is another issuer's.
    let err = Cli::new(micro(), &s.proxy).error(&["license", "show", &good]).await;
    assert!(err.contains("is not trusted"), "{err}");
    assert!(!s.data_dir().join(micro_server::LICENSE_FILE).exists(), "nothing refused was installed");
    assert!(admin.error(&["--namespace", "acme", "plan", "set", "team"]).await.contains(TEAM_REFUSED));

    // The good one: shown offline, installed, in force at once.
    let shown = admin.ok(&["license", "show", &good]).await;
    assert!(shown.contains("Acme <ops@acme.example>") && shown.contains("state     valid"), "{shown}");
    assert!(shown.contains("seats     25"), "{shown}");
    let out = admin.ok(&["license", "install", &good]).await;
    assert!(out.contains("installed") && out.contains("valid"), "{out}");
    let shown = admin.json(&["-o", "json", "license", "show"]).await;
    assert_eq!(shown["state"], "valid", "{shown}");
    assert_eq!(shown["licence"]["features"], json!(["team", "billing"]), "{shown}");
    assert_eq!(shown["problem"], "", "{shown}");
    let installed = s.data_dir().join(micro_server::LICENSE_FILE);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o600);

    let out = admin.ok(&["--namespace", "acme", "plan", "set", "team"]).await;
    assert!(out.contains("team plan"), "{out}");
    let (status, body) = set_plan_http(&s.api, &token, "acme", "team").await;
    assert_eq!(status, 200, "{body}");

    // A bad licence installed over the good one changes nothing.
    admin.error(&["license", "install", &tampered]).await;
    assert_eq!(admin.json(&["-o", "json", "license", "show"]).await["state"], "valid");

    // Kept across a restart.
    let s = s.kill().start();
    let admin = s.admin_cli().await;
    assert_eq!(admin.json(&["-o", "json", "license", "show"]).await["state"], "valid");
    admin.ok(&["--namespace", "acme", "plan", "set", "team"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_licence_runs_unlicensed_one_in_grace_licensed_and_changes_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("issuer.key");
    let public = keygen(&Cli::new(micro(), "127.0.0.1:9"), dir.path(), "issuer.key").await;
    let now = licence::now();

    // Expired past its grace, in the data dir: refused with a warning; the server runs.
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join(micro_server::LICENSE_FILE);
    std::fs::write(&file, signed(&key, &["team"], now - 400 * DAY, now - 30 * DAY)).unwrap();
    let s =
        ServerProcess::builder(micro()).env("MICRO_LICENSE_KEYS", &public).data_temp_dir(data).capture_stderr().start();
    assert!(s.output().contains("the licence is refused"), "a warning: {}", s.output());
    let admin = s.admin_cli().await;
    let shown = admin.ok(&["license", "show"]).await;
    assert!(shown.contains("unlicensed") && shown.contains("the licence expired on"), "{shown}");
    let err = admin.error(&["plan", "set", "team"]).await;
    assert!(err.contains("paid feature"), "{err}");

    // A good licence written to the file takes effect without a restart.
    std::fs::write(&file, signed(&key, &["team"], now, now + 30 * DAY)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if admin.json(&["-o", "json", "license", "show"]).await["state"] == "valid" {
            break;
        }
        assert!(Instant::now() < deadline, "the changed file took effect");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    admin.ok(&["plan", "set", "team"]).await;
    drop(s);

    // In grace, from MICRO_LICENSE's file: licensed, with a warning and the days left.
    let grace = dir.path().join("grace.license");
    std::fs::write(&grace, signed(&key, &["team"], now - 400 * DAY, now - 3 * DAY)).unwrap();
    let s = ServerProcess::builder(micro())
        .env("MICRO_LICENSE_KEYS", &public)
        .env("MICRO_LICENSE", &grace)
        .capture_stderr()
        .start();
    assert!(s.output().contains("the licence expired"), "a warning: {}", s.output());
    let admin = s.admin_cli().await;
    let shown = admin.ok(&["license", "show"]).await;
    assert!(shown.contains("in grace (11 days left)"), "{shown}");
    admin.ok(&["plan", "set", "team"]).await;

    // A server licensed by the test harness.
    let s = ServerProcess::builder(micro()).licensed(&["team"]).start();
    let admin = s.admin_cli().await;
    admin.ok(&["plan", "set", "team"]).await;
}
