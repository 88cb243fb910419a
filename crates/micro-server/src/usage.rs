//! The meter: every request through the gateway and the proxy counted per namespace,
//! service, endpoint, caller account and status class, with its bytes in and out — what
//! billing and the marketplace will charge from.
//!
//! **Durability: a write-ahead record and an idempotent flush.** A request is recorded
//! before its answer leaves this process: one line appended (one `write`, no buffering in
//! the process) to the current segment file under `<data>/usage/`, and added to the
//! segment's sums in memory, both under one lock. Every flush interval the segment is
//! closed and a new one started; a closed segment's sums are written to the usage store
//! under keys that name the segment (`<namespace>/<start>/<process>/<seq>/<part>`), then
//! its file is deleted. A process killed with SIGKILL keeps its files (the kernel has
//! every line written): on the next start each left-over file is read back, summed the
//! same way and written under the same keys. A segment written twice is the same records
//! written twice, so nothing is counted twice; and a request whose line was not written
//! (a torn last line is ignored) never got its answer. What remains: a request killed
//! between its line and its answer is counted though its client saw an error, and lines
//! of a node whose disk is lost for good are lost with it.
//!
//! **The month's requests.** With a segment's sums, the requests it counted to each
//! namespace's own services (the core's and the products' excepted) are added to that
//! namespace's total for the calendar month (UTC) the segment started in, one total per
//! process (`<namespace>/<YYYY-MM>/<process>` in `usage-month`), which remembers the last
//! segment added: a segment stored again is not added again. What a plan's requests quota
//! counts is the sum of these totals (see [`Meter::month`]).

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use micro::proto::usage as pb;
use micro_core::Status;
use micro_core::store::{Query, Record, Store, Table};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tonic::body::Body;

/// Rows per stored record of a segment (a namespace's rows of one segment are split
/// into parts of this many, well under the store's value limit).
const ROWS_PER_RECORD: usize = 2000;
/// Longest label kept (service, endpoint, account), in bytes; longer ones are cut.
const MAX_LABEL: usize = 200;

/// One metered request (or, with `requests` 0, bytes of a streamed one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) service: &'a str,
    pub(crate) endpoint: &'a str,
    pub(crate) account: &'a str,
    /// The HTTP status of the answer (its class is kept).
    pub(crate) status: u16,
    pub(crate) requests: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

/// Sums of a group of requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.requests += o.requests;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// What a request is counted under: namespace, service, endpoint, account, status class.
type Key = (String, String, String, String, String);

/// The segment being written.
struct Segment {
    start_ms: u64,
    seq: u64,
    file: Option<std::fs::File>,
    /// Sums by the JSON of the key (the line's first part), so a request allocates
    /// nothing when its group exists.
    rows: HashMap<Box<[u8]>, Counts>,
    line: Vec<u8>,
}

impl Segment {
    fn new(seq: u64) -> Segment {
        Segment { start_ms: micro_core::store::now_ms(), seq, file: None, rows: HashMap::new(), line: Vec::new() }
    }
}

/// A segment no longer written, until its sums are stored.
struct Closed {
    start_ms: u64,
    process: String,
    seq: u64,
    rows: BTreeMap<Key, Counts>,
    file: PathBuf,
}

struct Inner {
    dir: PathBuf,
    /// This process's id in segment names.
    process: String,
    current: Mutex<Segment>,
    store: Arc<dyn Store>,
    table: Table,
    /// Each namespace's requests by month and process.
    months: Table,
    interval: Duration,
    /// Whether a failed write was reported (once).
    write_failed: std::sync::atomic::AtomicBool,
}

/// The meter. Cheap to clone; off, it records nothing.
#[derive(Clone)]
pub(crate) struct Meter {
    inner: Option<Arc<Inner>>,
}

/// Stores closed segments; runs as one task.
pub(crate) struct Flusher {
    meter: Arc<Inner>,
    pending: Vec<Closed>,
}

fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_LABEL {
        return s;
    }
    let mut end = MAX_LABEL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn segment_file(dir: &Path, start_ms: u64, process: &str, seq: u64) -> PathBuf {
    dir.join(format!("{start_ms:013}-{process}-{seq:08}.wal"))
}

/// A segment's start, process and sequence from its file name.
fn parse_segment_name(name: &str) -> Option<(u64, String, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let mut parts = stem.split('-');
    let (start, process, seq) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || process.is_empty() || !process.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((start.parse().ok()?, process.to_string(), seq.parse().ok()?))
}

/// One line of a segment file: the key and its counts; `None` for a torn or foreign line.
fn parse_line(line: &str) -> Option<(Key, Counts)> {
    let mut it = line.rsplitn(4, ' ');
    let bytes_out = it.next()?.parse().ok()?;
    let bytes_in = it.next()?.parse().ok()?;
    let requests = it.next()?.parse().ok()?;
    let key: Key = serde_json::from_str(it.next()?).ok()?;
    Some((key, Counts { requests, bytes_in, bytes_out }))
}

impl Meter {
    /// A meter that records nothing.
    pub(crate) fn off() -> Meter {
        Meter { inner: None }
    }

    /// The meter of a server whose data dir is `data_dir`, storing sums in `store`
    /// every `interval`; with the flusher that stores them (after the segments a killed
    /// process left, read back now).
    pub(crate) fn open(
        data_dir: &Path,
        store: Arc<dyn Store>,
        interval: Duration,
    ) -> Result<(Meter, Flusher), crate::Error> {
        let dir = data_dir.join("usage");
        let io = |source| crate::Error::DataDir { path: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut pending = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let Some((start_ms, process, seq)) = parse_segment_name(&name) else { continue };
            let file = dir.join(&name);
            let text = std::fs::read(&file).map_err(io)?;
            let mut rows: BTreeMap<Key, Counts> = BTreeMap::new();
            // A line is whole when its newline was written; the last may be torn.
            let whole = match text.iter().rposition(|b| *b == b'\n') {
                Some(end) => &text[..end],
                None => &[][..],
            };
            for line in whole.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match std::str::from_utf8(line).ok().and_then(parse_line) {
                    Some((key, counts)) => rows.entry(key).or_default().add(counts),
                    None => tracing::warn!(file = %file.display(), "a torn usage line was skipped"),
                }
            }
            tracing::info!(file = %file.display(), groups = rows.len(), "usage left by a previous process is stored again");
            pending.push(Closed { start_ms, process, seq, rows, file });
        }
        let process = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let inner = Arc::new(Inner {
            dir,
            process,
            current: Mutex::new(Segment::new(0)),
            store,
            table: Table::new(micro_core::namespace::DEFAULT, "usage"),
            months: Table::new(micro_core::namespace::DEFAULT, "usage-month"),
            interval,
            write_failed: std::sync::atomic::AtomicBool::new(false),
        });
        Ok((Meter { inner: Some(inner.clone()) }, Flusher { meter: inner, pending }))
    }

    /// Records `u`, durably (see the module's notes) before it returns.
    pub(crate) fn record(&self, u: &Usage<'_>) {
        let Some(inner) = &self.inner else { return };
        // Namespaces become parts of store keys: only valid ones are kept as they are.
        let namespace = if micro_core::namespace::validate(u.namespace).is_ok() {
            u.namespace
        } else {
            micro_core::namespace::DEFAULT
        };
        let key = (cut(namespace), cut(u.service), cut(u.endpoint), cut(u.account), class(u.status));
        let counts = Counts { requests: u.requests, bytes_in: u.bytes_in, bytes_out: u.bytes_out };
        let mut guard = inner.current.lock().unwrap_or_else(|e| e.into_inner());
        let seg = &mut *guard;
        seg.line.clear();
        if serde_json::to_writer(&mut seg.line, &key).is_err() {
            return;
        }
        let key_len = seg.line.len();
        let _ = writeln!(seg.line, " {} {} {}", counts.requests, counts.bytes_in, counts.bytes_out);
        if seg.file.is_none() {
            let path = segment_file(&inner.dir, seg.start_ms, &inner.process, seg.seq);
            match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => seg.file = Some(f),
                Err(e) => inner.report_failure(&e),
            }
        }
        if let Some(f) = &mut seg.file
            && let Err(e) = f.write_all(&seg.line)
        {
            inner.report_failure(&e);
        }
        match seg.rows.get_mut(&seg.line[..key_len]) {
            Some(c) => c.add(counts),
            None => {
                seg.rows.insert(Box::from(&seg.line[..key_len]), counts);
            }
        }
    }

    /// The sums of the stored segments that started in `[since_ms, until_ms)`, of
    /// `namespace` (every namespace for `None`), of `service` when given, grouped by
    /// `group` (the other dimensions blank): most requests first, and their total.
    pub(crate) async fn query(
        &self,
        namespace: Option<&str>,
        since_ms: u64,
        until_ms: u64,
        service: Option<&str>,
        group: &[Dim],
    ) -> Result<(Vec<pb::Row>, pb::Row), Status> {
        let Some(inner) = &self.inner else {
            return Err(Status::unavailable("usage", "metering is off on this server (MICRO_USAGE=off)"));
        };
        // Every key of a namespace's segments that start in the range shares the range's
        // common decimal prefix.
        let (a, b) = (format!("{since_ms:013}"), format!("{until_ms:013}"));
        let common: String = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect();
        let prefix = match namespace {
            Some(ns) => format!("{ns}/{common}"),
            None => String::new(),
        };
        let query = Query { prefix: true, ..Default::default() };
        let records = inner.store.read(&inner.table, &prefix, &query).await?;
        let mut groups: BTreeMap<Key, Counts> = BTreeMap::new();
        for r in records {
            // <namespace>/<start>/<process>/<seq>/<part>, nothing else.
            let parts: Vec<&str> = r.key.split('/').collect();
            let [ns, start, _, _, _] = parts[..] else { continue };
            let Ok(start) = start.parse::<u64>() else { continue };
            if start < since_ms || start >= until_ms || namespace.is_some_and(|n| n != ns) {
                continue;
            }
            let Ok(stored) = serde_json::from_slice::<Stored>(&r.value) else {
                tracing::warn!(key = %r.key, "an unreadable usage record was skipped");
                continue;
            };
            for (svc, ep, acct, status, requests, bytes_in, bytes_out) in stored.rows {
                if service.is_some_and(|s| s != svc) {
                    continue;
                }
                let pick = |d: Dim, v: &str| if group.contains(&d) { v.to_string() } else { String::new() };
                let key = (
                    pick(Dim::Namespace, ns),
                    pick(Dim::Service, &svc),
                    pick(Dim::Endpoint, &ep),
                    pick(Dim::Account, &acct),
                    pick(Dim::Status, &status),
                );
                groups.entry(key).or_default().add(Counts { requests, bytes_in, bytes_out });
            }
        }
        let mut total = Counts::default();
        let mut rows: Vec<pb::Row> = groups
            .into_iter()
            .map(|((namespace, service, endpoint, account, status), c)| {
                total.add(c);
                pb::Row {
                    namespace,
                    service,
                    endpoint,
                    account,
                    status,
                    requests: c.requests,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                }
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.requests));
        let total = pb::Row {
            requests: total.requests,
            bytes_in: total.bytes_in,
            bytes_out: total.bytes_out,
            ..Default::default()
        };
        Ok((rows, total))
    }
}

impl Inner {
    fn report_failure(&self, e: &std::io::Error) {
        if !self.write_failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(dir = %self.dir.display(), error = %e, "writing usage failed: requests are counted in memory only until it works again");
        }
    }

    /// Closes the current segment and starts the next; the closed one, if it has rows.
    fn rotate(&self) -> Option<Closed> {
        let old = {
            let mut seg = self.current.lock().unwrap_or_else(|e| e.into_inner());
            let next = Segment::new(seg.seq + 1);
            std::mem::replace(&mut *seg, next)
        };
        let file = segment_file(&self.dir, old.start_ms, &self.process, old.seq);
        drop(old.file);
        if old.rows.is_empty() {
            return None;
        }
        let mut rows = BTreeMap::new();
        for (key, counts) in old.rows {
            match serde_json::from_slice::<Key>(&key) {
                Ok(k) => rows.insert(k, counts),
                Err(_) => continue,
            };
        }
        Some(Closed { start_ms: old.start_ms, process: self.process.clone(), seq: old.seq, rows, file })
    }

    /// Writes a closed segment's records (the same keys and values however often), then
    /// deletes its file.
    async fn store(&self, c: &Closed) -> Result<(), Status> {
        let mut by_ns: BTreeMap<&str, Vec<StoredRow>> = BTreeMap::new();
        for ((ns, svc, ep, acct, status), n) in &c.rows {
            by_ns.entry(ns.as_str()).or_default().push((
                svc.clone(),
                ep.clone(),
                acct.clone(),
                status.clone(),
                n.requests,
                n.bytes_in,
                n.bytes_out,
            ));
        }
        for (ns, rows) in by_ns {
            for (part, chunk) in rows.chunks(ROWS_PER_RECORD).enumerate() {
                let key = format!("{ns}/{:013}/{}/{:08}/{part}", c.start_ms, c.process, c.seq);
                let value = serde_json::to_vec(&StoredRef { rows: chunk })
                    .map_err(|e| Status::internal("usage", format!("encoding usage: {e}")))?;
                self.store.write(&self.table, &Record::new(key, value), None).await?;
            }
        }
        self.add_to_months(c).await?;
        match std::fs::remove_file(&c.file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Status::internal("usage", format!("deleting {}: {e}", c.file.display()))),
        }
    }
}

impl Inner {
    /// Adds a closed segment's requests to each namespace's own services to the month's
    /// totals of its process, unless they have it already.
    async fn add_to_months(&self, c: &Closed) -> Result<(), Status> {
        let month = micro_core::time::month(c.start_ms);
        let mut own: BTreeMap<&str, u64> = BTreeMap::new();
        for ((ns, svc, ..), n) in &c.rows {
            if counts_against_quota(svc) {
                *own.entry(ns.as_str()).or_default() += n.requests;
            }
        }
        for (ns, requests) in own.into_iter().filter(|(_, n)| *n > 0) {
            let key = format!("{ns}/{month}/{}", c.process);
            let old: Option<MonthTotal> = match self.store.read(&self.months, &key, &Query::default()).await {
                Ok(r) => r.first().and_then(|r| serde_json::from_slice(&r.value).ok()),
                Err(e) if e.code() == micro_core::Code::NotFound => None,
                Err(e) => return Err(e),
            };
            if old.as_ref().is_some_and(|o| o.seq >= c.seq) {
                continue;
            }
            let total = MonthTotal { requests: old.map_or(0, |o| o.requests) + requests, seq: c.seq };
            let value = serde_json::to_vec(&total).map_err(|e| Status::internal("usage", e.to_string()))?;
            self.store.write(&self.months, &Record::new(key, value), None).await?;
        }
        Ok(())
    }
}

/// One process's requests to a namespace's own services in a month, up to segment `seq`.
#[derive(Debug, Serialize, Deserialize)]
struct MonthTotal {
    requests: u64,
    seq: u64,
}

/// Whether requests to `service` count against a plan's requests quota: those to a
/// namespace's own services do; to the core's and the products' (signing in, deploying,
/// changing plan) and to no service at all do not.
pub(crate) fn counts_against_quota(service: &str) -> bool {
    !service.is_empty() && !crate::CORE_SERVICES.contains(&service) && !crate::products::NAMES.contains(&service)
}

impl Meter {
    /// The requests to namespace `ns`'s own services in the calendar month (UTC) of
    /// `now_ms`, as stored so far (what this and every other process flushed).
    pub(crate) async fn month(&self, ns: &str, now_ms: u64) -> Result<u64, Status> {
        let Some(inner) = &self.inner else {
            return Err(Status::unavailable("usage", "metering is off on this server (MICRO_USAGE=off)"));
        };
        let prefix = format!("{ns}/{}/", micro_core::time::month(now_ms));
        let records = inner.store.read(&inner.months, &prefix, &Query { prefix: true, ..Default::default() }).await?;
        Ok(records.iter().filter_map(|r| serde_json::from_slice::<MonthTotal>(&r.value).ok()).map(|t| t.requests).sum())
    }
}

/// Whom an answer is counted under.
#[derive(Clone, Debug, Default)]
pub(crate) struct Labels {
    pub(crate) namespace: String,
    pub(crate) service: String,
    pub(crate) endpoint: String,
    pub(crate) account: String,
}

impl Labels {
    /// The account label of `caller`: its id in its own namespace, `ns/id` acting in
    /// another, empty when anonymous.
    pub(crate) fn account_of(caller: &micro::auth::Caller) -> String {
        match &caller.account {
            Some(a) if a.namespace == caller.namespace => a.id.clone(),
            Some(a) => format!("{}/{}", a.namespace, a.id),
            None => String::new(),
        }
    }
}

/// Bytes of a request body as they are read.
#[derive(Clone, Debug, Default)]
pub(crate) struct BytesIn(pub(crate) Arc<AtomicU64>);

impl BytesIn {
    /// `body`, counting into this as it is read.
    pub(crate) fn count(&self, body: Body) -> Body {
        Body::new(Counting { inner: body, bytes: self.clone() })
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Counting {
    inner: Body,
    bytes: BytesIn,
}

impl HttpBody for Counting {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled
            && let Some(d) = f.data_ref()
        {
            self.bytes.0.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Meter {
    /// Whether this meter records anything.
    pub(crate) fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Meters an answer: a gRPC answer when its status passes (its trailers, or its
    /// headers for a trailers-only answer), anything else now, with its size when known
    /// (a body of unknown size adds its bytes as it ends).
    pub(crate) fn answer(&self, labels: Labels, bytes_in: BytesIn, res: http::Response<Body>) -> http::Response<Body> {
        if self.inner.is_none() {
            return res;
        }
        let grpc = res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/grpc"));
        let status_now = match grpc {
            true => res.headers().get("grpc-status").map(|v| grpc_http(v.to_str().ok())),
            false => Some(res.status().as_u16()),
        };
        let size = res.body().size_hint().exact();
        let mut pending = Pending { meter: self.clone(), labels, bytes_in, status: 0, requests: 1, bytes: 0 };
        if let Some(status) = status_now {
            pending.status = status;
            pending.bytes = size.unwrap_or(0);
            pending.record();
            if size.is_some() || res.body().is_end_stream() {
                return res;
            }
            // The bytes of a body of unknown size, once it ends.
            pending.requests = 0;
            pending.bytes = 0;
        }
        let (parts, body) = res.into_parts();
        http::Response::from_parts(
            parts,
            Body::new(Metered { inner: body, pending: Some(pending), grpc: status_now.is_none() }),
        )
    }
}

/// The HTTP status a `grpc-status` value maps to.
fn grpc_http(v: Option<&str>) -> u16 {
    let code = v.and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(2);
    micro_core::Code::from_grpc(code).http()
}

/// A record waiting for the end of an answer.
struct Pending {
    meter: Meter,
    labels: Labels,
    bytes_in: BytesIn,
    status: u16,
    requests: u64,
    bytes: u64,
}

impl Pending {
    fn record(&self) {
        if self.requests == 0 && self.bytes == 0 {
            return;
        }
        self.meter.record(&Usage {
            namespace: &self.labels.namespace,
            service: &self.labels.service,
            endpoint: &self.labels.endpoint,
            account: &self.labels.account,
            status: self.status,
            requests: self.requests,
            bytes_in: if self.requests > 0 { self.bytes_in.get() } else { 0 },
            bytes_out: self.bytes,
        });
    }
}

/// An answer's body that meters it as it ends: at a gRPC answer's trailers (before they
/// are sent), else when it ends or is dropped.
struct Metered {
    inner: Body,
    pending: Option<Pending>,
    grpc: bool,
}

impl Metered {
    fn finish(&mut self, status: Option<u16>) {
        if let Some(mut p) = self.pending.take() {
            if let Some(s) = status {
                p.status = s;
            }
            p.record();
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // Ended early (the client went away) or without trailers.
        let status = self.grpc.then(|| micro_core::Code::Cancelled.http());
        self.finish(status);
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    if let Some(p) = &mut self.pending {
                        p.bytes += n;
                    }
                } else if let Some(t) = f.trailers_ref() {
                    let status = self.grpc.then(|| grpc_http(t.get("grpc-status").and_then(|v| v.to_str().ok())));
                    self.finish(status);
                }
            }
            Poll::Ready(None) => {
                let status = self.grpc.then_some(500);
                self.finish(status);
            }
            Poll::Ready(Some(Err(_))) => {
                let status = self.grpc.then_some(500);
                self.finish(status);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stored row: service, endpoint, account, status class, requests, bytes in, bytes out.
type StoredRow = (String, String, String, String, u64, u64, u64);

#[derive(Deserialize)]
struct Stored {
    rows: Vec<StoredRow>,
}

#[derive(Serialize)]
struct StoredRef<'a> {
    rows: &'a [StoredRow],
}

impl Flusher {
    /// Stores closed segments every interval until `stop`, then closes and stores the
    /// last one. What cannot be stored (the store is down) is tried again next time, its
    /// file kept until then.
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.meter.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|v| *v) => true,
            };
            if let Some(c) = self.meter.rotate() {
                self.pending.push(c);
            }
            let mut kept = Vec::new();
            let mut failed = false;
            for c in std::mem::take(&mut self.pending) {
                if failed {
                    kept.push(c);
                    continue;
                }
                if let Err(e) = self.meter.store(&c).await {
                    tracing::warn!(error = %e, "storing usage failed; trying again at the next flush");
                    failed = true;
                    kept.push(c);
                }
            }
            self.pending = kept;
            if stopping {
                return;
            }
        }
    }
}

/// A dimension usage is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dim {
    Namespace,
    Service,
    Endpoint,
    Account,
    Status,
}

impl std::str::FromStr for Dim {
    type Err = Status;
    fn from_str(s: &str) -> Result<Dim, Status> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "namespace" => Dim::Namespace,
            "service" => Dim::Service,
            "endpoint" => Dim::Endpoint,
            "account" => Dim::Account,
            "status" => Dim::Status,
            other => {
                return Err(Status::bad_request(
                    "usage",
                    format!("cannot group by {other:?}: use namespace, service, endpoint, account or status"),
                ));
            }
        })
    }
}

/// The `usage` core service.
pub(crate) struct UsageService {
    pub(crate) meter: Meter,
    /// What namespaces keep (for `Month`).
    pub(crate) storage: crate::storage::StorageQuota,
    /// Where builds run and are counted (for `Month`).
    pub(crate) runtime: crate::runtime::Runtime,
}

fn t(s: Status) -> tonic::Status {
    micro::status::to_tonic(&s)
}

#[tonic::async_trait]
impl pb::usage_server::Usage for UsageService {
    async fn query(
        &self,
        req: tonic::Request<pb::QueryRequest>,
    ) -> Result<tonic::Response<pb::QueryResponse>, tonic::Status> {
        let caller = micro::auth::Caller::of(&req).cloned();
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        if r.all_namespaces && !caller.as_ref().is_some_and(|c| c.is_operator()) {
            return Err(t(Status::new(
                micro_core::Code::PermissionDenied,
                "usage",
                "every namespace's usage is for the server's admins (the micro namespace's)",
            )));
        }
        let now = micro_core::store::now_ms();
        let ms = |secs: i64, name: &str| -> Result<u64, Status> {
            u64::try_from(secs)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .ok_or_else(|| Status::bad_request("usage", format!("{name} must be Unix seconds, not {secs}")))
        };
        let since =
            if r.since == 0 { now.saturating_sub(24 * 3600 * 1000) } else { ms(r.since, "since").map_err(t)? };
        let until = if r.until == 0 { now.saturating_add(1000) } else { ms(r.until, "until").map_err(t)? };
        if since >= until {
            return Err(t(Status::bad_request("usage", "since must be before until")));
        }
        let group = r.group_by.iter().map(|g| g.parse::<Dim>()).collect::<Result<Vec<_>, _>>().map_err(t)?;
        let namespace = (!r.all_namespaces).then_some(ns.as_str());
        let service = Some(r.service.as_str()).filter(|s| !s.is_empty());
        let (rows, total) = self.meter.query(namespace, since, until, service, &group).await.map_err(t)?;
        Ok(tonic::Response::new(pb::QueryResponse { rows, total: Some(total) }))
    }

    async fn month(
        &self,
        req: tonic::Request<pb::MonthRequest>,
    ) -> Result<tonic::Response<pb::MonthResponse>, tonic::Status> {
        let ns = micro::namespace(&req);
        let now = micro_core::store::now_ms();
        let metered = self.meter.is_on();
        let requests = if metered { self.meter.month(&ns, now).await.map_err(t)? } else { 0 };
        let month = micro_core::time::month(now);
        let build = self.runtime.build_time(&ns, &month).await;
        let storage_bytes = self.storage.kept(&ns).await.map_err(t)?;
        Ok(tonic::Response::new(pb::MonthResponse {
            month,
            requests,
            resets: (micro_core::time::next_month(now) / 1000) as i64,
            metered,
            build_seconds: build.as_secs(),
            storage_bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_names_read_back() {
        let key: Key = ("shop".into(), "web".into(), "Web.Get".into(), "alice".into(), "2xx".into());
        let mut line = serde_json::to_vec(&key).unwrap();
        line.extend_from_slice(b" 1 20 300");
        let (k, c) = parse_line(std::str::from_utf8(&line).unwrap()).unwrap();
        assert_eq!(k, key);
        assert_eq!(c, Counts { requests: 1, bytes_in: 20, bytes_out: 300 });
        // A torn line is no line.
        assert!(parse_line(&String::from_utf8_lossy(&line[..line.len() - 4])).is_none());
        assert!(parse_line("[\"a\"").is_none());
        let p = segment_file(Path::new("/d"), 17, "abc123", 5);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(name), Some((17, "abc123".into(), 5)));
        assert_eq!(parse_segment_name("x.wal"), None);
        assert_eq!(parse_segment_name("1-a-b-2.wal"), None);
    }

    fn usage<'a>(ns: &'a str, service: &'a str, status: u16) -> Usage<'a> {
        Usage {
            namespace: ns,
            service,
            endpoint: "Api.Call",
            account: "alice",
            status,
            requests: 1,
            bytes_in: 10,
            bytes_out: 100,
        }
    }

    async fn totals(meter: &Meter, ns: Option<&str>) -> Vec<(String, String, u64)> {
        let (rows, _) = meter.query(ns, 0, u64::MAX / 2, None, &[Dim::Namespace, Dim::Status]).await.unwrap();
        let mut v: Vec<_> = rows.into_iter().map(|r| (r.namespace, r.status, r.requests)).collect();
        v.sort();
        v
    }

    /// A segment stored, then read back from its file as if the process had been killed
    /// before deleting it, is stored again under the same keys: counted once. One never
    /// stored is stored from its file; a torn last line is skipped.
    #[tokio::test]
    async fn segments_are_stored_once_however_often_they_are_replayed() {
        let data = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            micro_embedded::store::EmbeddedStore::open_named(&micro_embedded::DataDir::new(data.path()), "usage")
                .unwrap(),
        );
        let (meter, _flusher) = Meter::open(data.path(), store.clone(), Duration::from_secs(60)).unwrap();
        let inner = meter.inner.clone().unwrap();
        for _ in 0..3 {
            meter.record(&usage("shop", "web", 200));
        }
        meter.record(&usage("blog", "web", 404));
        let closed = inner.rotate().unwrap();
        let lines = std::fs::read(&closed.file).unwrap();
        inner.store(&closed).await.unwrap();
        assert!(!closed.file.exists(), "a stored segment's file is deleted");
        // Killed after storing, before deleting: the file is still there at the next start.
        std::fs::write(&closed.file, &lines).unwrap();
        // And a segment never stored, its last line torn by the kill.
        meter.record(&usage("shop", "web", 500));
        meter.record(&usage("shop", "web", 200));
        let open = segment_file(&inner.dir, inner.current.lock().unwrap().start_ms, &inner.process, 1);
        let mut torn = std::fs::read(&open).unwrap();
        torn.truncate(torn.len() - 3);
        std::fs::write(&open, &torn).unwrap();
        drop((meter, inner));

        let (meter, flusher) = Meter::open(data.path(), store.clone(), Duration::from_secs(60)).unwrap();
        assert_eq!(flusher.pending.len(), 2);
        for c in &flusher.pending {
            flusher.meter.store(c).await.unwrap();
        }
        let expect = vec![
            ("blog".to_string(), "4xx".to_string(), 1),
            ("shop".into(), "2xx".into(), 3),
            ("shop".into(), "5xx".into(), 1),
        ];
        assert_eq!(totals(&meter, None).await, expect);
        // Stored again: still once.
        for c in &flusher.pending {
            flusher.meter.store(c).await.unwrap();
        }
        assert_eq!(totals(&meter, None).await, expect);
        assert_eq!(totals(&meter, Some("blog")).await, vec![("blog".to_string(), "4xx".to_string(), 1)]);
        assert!(std::fs::read_dir(data.path().join("usage")).unwrap().next().is_none(), "every file is gone");
        // The month's requests to each namespace's own services, once however often
        // segments were stored (the torn line was never answered: not counted).
        let now = micro_core::store::now_ms();
        assert_eq!((meter.month("shop", now).await.unwrap(), meter.month("blog", now).await.unwrap()), (4, 1));
        assert_eq!(meter.month("nobody", now).await.unwrap(), 0);
        let last_month = micro_core::time::next_month(now) + 1;
        assert_eq!(meter.month("shop", last_month).await.unwrap(), 0, "a new month starts from nothing");
        // Calls to the core and the products count for no plan.
        meter.record(&usage("shop", "store", 200));
        meter.record(&usage("shop", "platform", 200));
        meter.record(&usage("shop", "", 404));
        meter.record(&usage("shop", "web", 200));
        let closed = flusher.meter.rotate().unwrap();
        flusher.meter.store(&closed).await.unwrap();
        assert_eq!(meter.month("shop", now).await.unwrap(), 5);
        assert!(counts_against_quota("web") && !counts_against_quota("auth") && !counts_against_quota("email"));
    }

    #[test]
    fn classes_and_labels() {
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(429), "4xx");
        assert_eq!(class(0), "5xx");
        let long = "é".repeat(150);
        assert!(cut(&long).len() <= MAX_LABEL);
        assert!(long.starts_with(cut(&long)));
    }
}
