//! Telemetry as an operator plugs it in: Debian's `prometheus` (installed by
//! `scripts/edge-setup`) scraping a running `micro server` and a service, and asked for
//! our series through its HTTP API. Without it the test skips with a notice, except
//! under `MICRO_TEST_REQUIRE_BACKENDS`, where it fails.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_core::registry::Registry as _;
use micro_test::free_port;
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
    // The server's gauges: its runtime and its response cache.
    for gauge in ["micro_runtime_services", "micro_runtime_instances", "micro_cache_entries", "micro_cache_bytes"] {
        let found = query(&web, &format!("{gauge}{{job=\"micro\"}}")).await;
        assert_eq!(found.len(), 1, "{gauge} is scraped: {found:?}");
    }
}

/// An OTLP/gRPC trace receiver built from the official OpenTelemetry protos: every span
/// it gets, with the `service.name` of the process that sent it.
#[derive(Clone, Default)]
struct Receiver {
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, Span)>>>,
}

use opentelemetry_proto::tonic::collector::trace::v1 as collector;
use opentelemetry_proto::tonic::trace::v1::Span;

#[tonic::async_trait]
impl collector::trace_service_server::TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<collector::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<collector::ExportTraceServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let process = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (process.clone(), s)));
            }
        }
        Ok(tonic::Response::new(collector::ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A call through the gateway to a service that publishes an event makes one trace:
/// spans of the gateway, its client, the service, the service's client, the proxy and
/// the core's events service, each the child of the one before, exported over OTLP by
/// `micro server` and by the service's process to a receiver; `micro trace` shows the
/// same spans from the processes' recent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_the_gateway_a_service_and_the_events_it_publishes() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(collector::trace_service_server::TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // This process's spans (the service's) go to the receiver too.
    micro::telemetry::export_to(&otlp);
    micro::log::init_with_traces("warn", "orders");

    let s = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro")))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start();
    let events = micro::data::Data::remote_with(
        &s.proxy,
        "micro",
        Some(std::sync::Arc::new(micro::data::StaticToken(s.admin_token().await))),
    )
    .events;
    let service = s
        .service("micro", "orders")
        .await
        .handle("Orders.Place", move |_: micro::Context, order: serde_json::Value| {
            let events = events.clone();
            async move {
                let m = micro_core::events::Message { payload: order.to_string().into_bytes(), ..Default::default() };
                events.publish("micro", "orders", &m).await?;
                Ok(serde_json::json!({"placed": true}))
            }
        })
        .start()
        .await
        .unwrap();

    // A consumer of the event (here, in this process) continues the trace: its span is
    // the publish's child, and what it calls while handling, its children.
    let data = micro::data::Data::remote_with(
        &s.proxy,
        "micro",
        Some(std::sync::Arc::new(micro::data::StaticToken(s.admin_token().await))),
    );
    let options =
        micro_core::events::ConsumeOptions { offset: micro_core::events::Offset::First, ..Default::default() };
    let mut deliveries = data.events.consume("micro", "orders", &options).await.unwrap();
    let consumer = tokio::spawn(async move {
        use futures::StreamExt as _;
        use micro::telemetry::FutureExt as _;
        let d = deliveries.next().await.expect("a delivery").expect("delivered");
        let cx = micro::telemetry::consumer("orders consume orders", &d.event.metadata);
        async {
            let t = micro_core::store::Table::new("micro", "shipments");
            let r = micro_core::store::Record::new("7", d.event.payload.clone());
            data.store.write(&t, &r, None).await.expect("written");
            d.ack().await.expect("acknowledged");
        }
        .with_context(cx)
        .await;
    });

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let r = micro_test::http(&s.api, "POST", "/orders/orders/place", &[("traceparent", &parent)], br#"{"id":7}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::timeout(Duration::from_secs(20), consumer).await.expect("consumed in time").unwrap();
    micro::telemetry::flush();

    // Both processes export: the trace's spans arrive, linked parent to child.
    let spans_of_trace = || {
        receiver.spans.lock().unwrap().iter().filter(|(_, s)| hex(&s.trace_id) == trace_id).cloned().collect::<Vec<_>>()
    };
    let linked = micro_test::eventually(Duration::from_secs(20), || async {
        let spans = spans_of_trace();
        spans.iter().any(|(_, s)| s.name.starts_with("micro /events.Events/Publish"))
            && spans.iter().any(|(p, _)| p == "orders")
            && spans.iter().any(|(_, s)| s.name.starts_with("micro /store.Store/Write"))
    })
    .await;
    let spans = spans_of_trace();
    let names: Vec<String> =
        spans.iter().map(|(p, s)| format!("{p}: {} ({})", s.name, hex(&s.parent_span_id))).collect();
    assert!(linked, "the trace's spans are exported: {names:#?}");
    // From the core's events service up to the gateway, each span's parent is there.
    let by_id: std::collections::HashMap<String, &Span> = spans.iter().map(|(_, s)| (hex(&s.span_id), s)).collect();
    let mut chain = Vec::new();
    let mut at = spans.iter().map(|(_, s)| s).find(|s| s.name.starts_with("micro /events.Events/Publish"));
    while let Some(s) = at {
        chain.push(s.name.clone());
        at = by_id.get(&hex(&s.parent_span_id)).copied();
    }
    let root = chain.last().cloned().unwrap_or_default();
    assert!(chain.len() >= 4, "at least four linked spans: {chain:#?} of {names:#?}");
    assert!(root.starts_with("api POST /orders/orders/place"), "the gateway's span is the root: {chain:#?}");
    for hop in ["proxy /events.Events/Publish", "orders /orders.Orders/Place"] {
        assert!(chain.iter().any(|n| n.starts_with(hop)), "{hop} is in the chain: {chain:#?}");
    }
    // The consumer's write goes up through the consumer's span to the publish, and so to
    // the gateway: one trace from the HTTP request to the event's handling.
    let mut chain = Vec::new();
    let mut at = spans.iter().map(|(_, s)| s).find(|s| s.name.starts_with("micro /store.Store/Write"));
    while let Some(s) = at {
        chain.push(s.name.clone());
        at = by_id.get(&hex(&s.parent_span_id)).copied();
    }
    let consumed = chain.iter().position(|n| n == "orders consume orders");
    let published = chain.iter().position(|n| n.starts_with("micro /events.Events/Publish"));
    assert!(
        matches!((consumed, published), (Some(c), Some(p)) if p == c + 1),
        "the consumer's span is the publish's child: {chain:#?}"
    );
    assert!(chain.last().is_some_and(|r| r == &root), "up to the gateway: {chain:#?}");
    let root_span = spans.iter().map(|(_, s)| s).find(|s| s.name == root).unwrap();
    assert_eq!(hex(&root_span.parent_span_id), "00f067aa0ba902b7", "the caller's traceparent is the root's parent");

    // `micro trace` finds the same spans in the server's and the service's rings.
    let cli = s.admin_cli().await;
    let shown = cli.json(&["trace", trace_id, "-o", "json"]).await;
    let shown: Vec<&str> = shown["spans"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    for hop in ["api POST /orders/orders/place", "orders /orders.Orders/Place", "micro /events.Events/Publish"] {
        assert!(shown.iter().any(|n| n.starts_with(hop)), "micro trace shows {hop}: {shown:#?}");
    }
    let table = cli.ok(&["trace", &parent]).await;
    assert!(table.contains("api POST /orders/orders/place") && table.contains("  "), "{table}");
    assert!(cli.error(&["trace", "not-a-trace"]).await.contains("not a trace id"));
    // Anonymous callers read none of the server's spans.
    let anonymous = s.cli();
    let err = anonymous.error(&["trace", trace_id, "--service", "registry"]).await;
    assert!(err.contains("no spans"), "{err}");

    service.stop().await;
    server_task.abort();
}
