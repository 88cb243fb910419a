//! Items 11 and 9 (part): users' own settings and services' `--env` at rest. Another
//! admin of the namespace tries to read (and replace) a user's git credentials through
//! the config; an account without the admin scope keeps its own; whoever can read the
//! server's data dir looks for the values in its files. The real `micro` binaries.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use crate::runtime_harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

const ALICE_TOKEN: &str = "alice-private-git-token-5b1e";
const BOB_TOKEN: &str = "bob-attacker-git-token-0c7d";
const CAROL_TOKEN: &str = "carol-member-git-token-93aa";
const HOST_KEY: &str = "git.credentials.git.example.com";

/// Every file under `dir` whose raw bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_admin_can_neither_read_nor_replace_my_git_credentials() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[]).await;
    let alice = s.namespace_admin("shop", "alice", "alice-password-1").await;
    s.ok(&[
        "--namespace",
        "shop",
        "auth",
        "create",
        "account",
        "bob",
        "--secret",
        "bob-password-1",
        "--scopes",
        "admin",
    ])
    .await;
    let bob = s.login("shop", "bob", "bob-password-1").await;
    s.ok(&["--namespace", "shop", "auth", "create", "account", "carol", "--secret", "carol-password-1"]).await;
    let carol = s.login("shop", "carol", "carol-password-1").await;

    alice.ok(&["user", "config", "set", HOST_KEY, ALICE_TOKEN]).await;
    assert!(alice.ok(&["user", "config", "get", HOST_KEY]).await.contains("is set"));

    // Bob, another admin of shop, reads the namespace's whole config with secrets: no
    // trace of Alice's settings (they are not in the config at all).
    let micro_test::cli::Output { stdout: out, stderr: err, .. } = bob.run(&["config", "get", "--secret"]).await;
    assert!(!out.contains(ALICE_TOKEN) && !err.contains(ALICE_TOKEN), "bob read alice's token: {out}{err}");
    assert!(!out.contains("users"), "settings are not kept in the config: {out}");
    // Writing where they used to be reaches nothing of Alice's.
    let _ = bob.run(&["config", "set", "micro.users.alice.git.credentials.git_2eexample_2ecom", BOB_TOKEN]).await;
    // His own setting is his own: Alice's is still set, and his `get` says nothing of hers.
    bob.ok(&["user", "config", "set", HOST_KEY, BOB_TOKEN]).await;
    bob.ok(&["user", "config", "del", HOST_KEY]).await;
    assert!(bob.fails(&["user", "config", "get", HOST_KEY]).await.contains("not set"));
    assert!(alice.ok(&["user", "config", "get", HOST_KEY]).await.contains("is set"));

    // Carol has no admin scope: she keeps her own settings, and cannot delete Alice's.
    carol.ok(&["user", "config", "set", HOST_KEY, CAROL_TOKEN]).await;
    assert!(carol.ok(&["user", "config", "get", HOST_KEY]).await.contains("is set"));
    let err = carol.fails(&["user", "config", "del", HOST_KEY, "--account", "alice"]).await;
    assert!(err.contains("admin"), "{err}");
    assert!(alice.ok(&["user", "config", "get", HOST_KEY]).await.contains("is set"));
    // An admin of another namespace reaches nothing in shop.
    let mallory = s.namespace_admin("evil", "mallory", "mallory-password-1").await;
    let _ = mallory.run(&["user", "config", "del", HOST_KEY, "--account", "alice"]).await;
    assert!(alice.ok(&["user", "config", "get", HOST_KEY]).await.contains("is set"));

    // No file of the server holds a token kept with `user config` in plain text (Bob's
    // own plain `config set` above is his to make).
    for token in [ALICE_TOKEN, CAROL_TOKEN] {
        let found = files_containing(data.path(), token);
        assert!(found.is_empty(), "{token} in plain text in {found:?}");
    }

    // Bob, as an admin, may delete Alice's setting (never read it).
    bob.ok(&["user", "config", "del", HOST_KEY, "--account", "alice"]).await;
    assert!(alice.fails(&["user", "config", "get", HOST_KEY]).await.contains("not set"));
    // Unknown keys are refused.
    let err = carol.fails(&["user", "config", "set", "git.password", "x"]).await;
    assert!(err.contains("git.credentials.HOST"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_values_are_sealed_in_the_data_dir_and_reach_the_service() {
    const CANARY: &str = "canary-env-sealed-value-e41b";
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path(), &[]).await;
    // The service prints the value upper-cased, so the log (in the data dir) holds
    // proof that it saw the value without holding the value itself.
    let app = project(&[
        ("micro.toml", "run = \"sh app.sh\"\n"),
        ("app.sh", "echo \"SEEN=$(printf %s \"$SECRET\" | tr a-z A-Z)\"\nexec sleep 600\n"),
    ]);
    let out =
        s.ok(&["run", app.path().to_str().unwrap(), "--name", "envsvc", "--env", &format!("SECRET={CANARY}")]).await;
    assert!(out.contains("envsvc running"), "{out}");
    let seen = format!("SEEN={}", CANARY.to_uppercase());
    s.wait_log(&["logs", "envsvc"], &seen, Duration::from_secs(30)).await;

    let found = files_containing(data.path(), CANARY);
    assert!(found.is_empty(), "the --env value in plain text in {found:?}");

    // After a restart the runtime opens it again for the restored service.
    let s = s.kill_and_restart().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = s.ok(&["logs", "envsvc"]).await;
        if logs.matches(&seen).count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the restored service did not see its --env: {logs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let found = files_containing(data.path(), CANARY);
    assert!(found.is_empty(), "the --env value in plain text in {found:?}");
    s.ok(&["kill", "envsvc"]).await;
}
