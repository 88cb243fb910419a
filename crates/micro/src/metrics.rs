//! Request metrics: counts, errors and latency per service, endpoint and code, rendered
//! in the Prometheus text format.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use micro_core::Code;
use std::collections::HashMap;
use std::fmt::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

const BUCKETS: [f64; 10] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0];

/// A shared metrics registry. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<SeriesMap>>,
}

/// Series by (service, endpoint).
type SeriesMap = HashMap<(Arc<str>, Arc<str>), Series>;

#[derive(Default)]
struct Series {
    by_code: HashMap<Code, u64>,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
    count: u64,
}

/// Totals across all series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests served.
    pub requests: u64,
    /// Requests that ended with an error code.
    pub errors: u64,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, service: &str, endpoint: &Arc<str>, code: Code, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::from(service), endpoint.clone());
        let s = m.entry(key).or_default();
        *s.by_code.entry(code).or_default() += 1;
        let secs = elapsed.as_secs_f64();
        s.sum += secs;
        s.count += 1;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    /// Totals across every series.
    pub fn totals(&self) -> Totals {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = Totals::default();
        for s in m.values() {
            for (code, n) in &s.by_code {
                t.requests += n;
                if *code != Code::Ok {
                    t.errors += n;
                }
            }
        }
        t
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<_> = m.keys().cloned().collect();
        keys.sort();
        let mut out = String::new();
        out.push_str("# HELP micro_requests_total Requests handled, by service, endpoint and status code.\n");
        out.push_str("# TYPE micro_requests_total counter\n");
        for k in &keys {
            let mut codes: Vec<_> = m[k].by_code.iter().collect();
            codes.sort_by_key(|(c, _)| c.grpc());
            for (code, n) in codes {
                let _ = writeln!(
                    out,
                    "micro_requests_total{{service=\"{}\",endpoint=\"{}\",code=\"{}\"}} {n}",
                    esc(&k.0),
                    esc(&k.1),
                    code
                );
            }
        }
        out.push_str("# HELP micro_request_duration_seconds Time to the response headers (unary: the whole call).\n");
        out.push_str("# TYPE micro_request_duration_seconds histogram\n");
        for k in &keys {
            let s = &m[k];
            let labels = format!("service=\"{}\",endpoint=\"{}\"", esc(&k.0), esc(&k.1));
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "micro_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}", s.buckets[i]);
            }
            let _ = writeln!(out, "micro_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(out, "micro_request_duration_seconds_sum{{{labels}}} {}", s.sum);
            let _ = writeln!(out, "micro_request_duration_seconds_count{{{labels}}} {}", s.count);
        }
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A response body that records the call when its gRPC trailers (or its end) arrive.
pub(crate) struct ObservedBody<B> {
    inner: B,
    pending: Option<(Metrics, Arc<str>, Arc<str>, Instant)>,
}

impl<B> ObservedBody<B> {
    pub(crate) fn new(inner: B, metrics: Metrics, service: Arc<str>, endpoint: Arc<str>, start: Instant) -> Self {
        ObservedBody { inner, pending: Some((metrics, service, endpoint, start)) }
    }

    fn finish(&mut self, code: Code) {
        if let Some((m, s, e, start)) = self.pending.take() {
            m.observe(&s, &e, code, start.elapsed());
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = f.trailers_ref() {
                    let code = match micro_core::Status::from_grpc_headers(t) {
                        Some(Err(s)) => s.code(),
                        _ => Code::Ok,
                    };
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Code::Cancelled),
            Poll::Ready(None) => self.finish(Code::Ok),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // A body dropped before its end: the client went away.
        self.finish(Code::Cancelled);
    }
}
