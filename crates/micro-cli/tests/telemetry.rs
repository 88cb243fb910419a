//! Telemetry as an operator plugs it in: Debian's `prometheus` (installed by
//! `scripts/edge-setup`) scraping a running `micro server` and a service, and asked for
//! our series through its HTTP API. Without it the test skips with a notice, except
//! under `MICRO_TEST_REQUIRE_BACKENDS`, where it fails.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_core::registry::Registry as _;
use micro_test::process::{Reaped, ServerProcess, binary};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Whether a component the test needs is installed; without it the test skips with a
/// notice, except under `MICRO_TEST_REQUIRE_BACKENDS`, where it fails.
fn installed(path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(),
        "{path} is missing (scripts/edge-setup installs it) but MICRO_TEST_REQUIRE_BACKENDS is set"
    );
    eprintln!("notice: skipping a telemetry test: {path} is missing (run scripts/edge-setup)");
    false
}

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Prometheus's answer to an instant query: the label sets of the series it returns.
async fn query(prometheus: &str, promql: &str) -> Vec<serde_json::Value> {
    let escaped: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect();
    let path = format!("/api/v1/query?query={escaped}");
    // Not listening yet: nothing.
    if tokio::net::TcpStream::connect(prometheus).await.is_err() {
        return Vec::new();
    }
    let r = micro_test::http(prometheus, "GET", &path, &[], b"").await;
    if r.status != 200 {
        return Vec::new();
    }
    let v = r.json();
    v["data"]["result"].as_array().cloned().unwrap_or_default().into_iter().map(|s| s["metric"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_server_and_a_service() {
    if !installed(PROMETHEUS) {
        return;
    }
    let s = ServerProcess::start(&binary(env!("CARGO_BIN_EXE_micro")), &[]);
    let _hello = s.helloworld().await;
    let registry = micro::registry::RemoteRegistry::new(&s.proxy).unwrap();
    let node = registry.get_service("micro", "helloworld").await.unwrap()[0].nodes[0].address.clone();
    // Some calls to count: through the gateway to the service.
    for i in 0..5 {
        let body = format!(r#"{{"name":"p{i}"}}"#);
        assert_eq!(
            micro_test::http(&s.api, "POST", "/helloworld/greeter/hello", &[], body.as_bytes()).await.status,
            200
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: micro\n    static_configs:\n      - targets: ['{}']\n  - job_name: helloworld\n    static_configs:\n      - targets: ['{node}']\n",
        s.api
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = Reaped::spawn(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    // Both targets are up, and their request counters are there with our labels.
    let up = micro_test::eventually(Duration::from_secs(30), || async {
        query(&web, "up == 1").await.iter().filter(|m| m["job"] == "micro" || m["job"] == "helloworld").count() == 2
    })
    .await;
    if !up {
        let targets = micro_test::http(&web, "GET", "/api/v1/targets", &[], b"").await;
        panic!("prometheus scrapes both targets: {}", targets.body);
    }
    let series = |job: &'static str| {
        let web = web.clone();
        async move { query(&web, &format!("micro_requests_total{{job=\"{job}\"}}")).await }
    };
    let gateway_counts = micro_test::eventually(Duration::from_secs(15), || async {
        series("micro")
            .await
            .iter()
            .any(|m| m["service"] == "api:helloworld" && m["endpoint"] == "Greeter.Hello" && m["code"] == "Ok")
    })
    .await;
    assert!(gateway_counts, "the gateway's series: {:?}", series("micro").await);
    let service_counts = micro_test::eventually(Duration::from_secs(15), || async {
        series("helloworld").await.iter().any(|m| m["service"] == "helloworld" && m["endpoint"] == "Greeter.Hello")
    })
    .await;
    assert!(service_counts, "the service's series: {:?}", series("helloworld").await);
    let latency = query(&web, "micro_request_duration_seconds_bucket{job=\"helloworld\"}").await;
    assert!(!latency.is_empty(), "latency histograms are scraped");
}
