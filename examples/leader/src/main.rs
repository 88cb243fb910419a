//! Runs an instance of the `leader` example: it campaigns for leadership of the election
//! `scheduler` and, while leader, does the work only one instance may do. Start several
//! (`cargo run -p leader` in a few terminals) and stop the leader: another takes over
//! within the lease (`LEADER_TTL_MS`, default 2000).
//!
//! Prints `leader <pid>` when elected and `lost <pid>` if leadership is lost.

use std::time::Duration;

#[tokio::main]
async fn main() {
    micro::log::init("warn");
    let ttl = std::env::var("LEADER_TTL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let svc = micro::Service::new("leader");
    // Locks need an account of the namespace: MICRO_AUTH_ID and MICRO_AUTH_SECRET.
    if let Err(e) = svc.login().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let sync = svc.sync();
    let pid = std::process::id();
    loop {
        let mut leadership = match sync.elect("scheduler", Duration::from_millis(ttl)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        println!("leader {pid}");
        tokio::select! {
            _ = leadership.lost() => println!("lost {pid}"),
            _ = micro::server::signal() => {
                leadership.resign().await;
                return;
            }
        }
    }
}
