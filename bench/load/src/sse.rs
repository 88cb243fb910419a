//! The `sse` case (B7): realtime fan-out over server-sent events.
//!
//! `--subs N` subscribers, each on a connection of its own (HTTP/1.1, one task each, a
//! minimal client: the head parsed with `httparse`, chunked bodies decoded, events split at
//! blank lines), all ready before one writer creates records at `--rate R` a second for
//! `--secs S` (`POST --write-path` with `--body`, where `{n}` is the write's number and
//! `{ts}` the wall-clock microseconds when it is sent). Every delivered event whose data holds
//! `"ts":<µs>` counts, with its latency: its arrival minus `ts`, so it includes the write
//! itself (the write's own latency is reported beside it). After the last write the
//! subscribers get up to `--drain` seconds to receive what is still on its way.
//!
//! Targets:
//! - `micro`: `GET --path` (`/db/v1/{c}/subscribe`); ready at its first event
//!   (`"action":"subscribed"`).
//! - `pocketbase`: `GET --path` (`/api/realtime`); its first event (`PB_CONNECT`) names the
//!   client, which then subscribes to `--topic` (`POST /api/realtime`, on one of a few
//!   shared connections); ready when that answers 2xx.
//!
//! `--header`s go with every request (the subscriptions, PocketBase's subscribe call and the
//! writes). The setup waits for every subscriber (at most 60 s plus 10 ms each), but gives
//! up after 15 s in which none got ready or failed: those still waiting are `subs_pending`
//! and take no part. The writer (16 connections) sends no write after the phase's end, and
//! gives a write 30 s. Adds `subs_ready`, `subs_failed`, `subs_pending`, `first_error`,
//! `setup_secs`, `writes` (successful), `write_errors`, `first_write_error`, `write_rate` (writes over
//! `write_secs`: from the first scheduled send to one interval after the last send),
//! `rate_target`, `write_p50_us`, `write_p99_us`, `send_lag_p50_us`, `send_lag_p99_us` (how
//! late writes left), `expected` (writes × ready subscribers), `delivered`, `delivered_pct`,
//! `complete_subs` (subscribers that got every write), `drain_secs`; `ops` is `delivered`
//! and `rate` deliveries per second of the writing phase.

use crate::{Args, Lat, report};
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Micro,
    PocketBase,
}

/// Decodes a chunked body (or passes an identity one through).
struct Dechunk {
    chunked: bool,
    /// Bytes left of the current chunk.
    remaining: usize,
    /// Bytes of the CRLF after a chunk still to skip.
    crlf: usize,
    /// The size line read so far.
    line: Vec<u8>,
    done: bool,
}

impl Dechunk {
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if !self.chunked {
            out.extend_from_slice(input);
            return Ok(());
        }
        while !input.is_empty() && !self.done {
            if self.remaining > 0 {
                let take = self.remaining.min(input.len());
                out.extend_from_slice(&input[..take]);
                self.remaining -= take;
                input = &input[take..];
                if self.remaining == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                self.crlf -= 1;
                input = &input[1..];
            } else {
                self.line.push(input[0]);
                input = &input[1..];
                if self.line.ends_with(b"\r\n") {
                    let hex = self.line[..self.line.len() - 2].split(|b| *b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                        .ok_or_else(|| bad("bad chunk size"))?;
                    self.line.clear();
                    if size == 0 {
                        self.done = true;
                    }
                    self.remaining = size;
                } else if self.line.len() > 64 {
                    return Err(bad("chunk size line too long"));
                }
            }
        }
        Ok(())
    }
}

/// One event: its `event:` name and its `data:` (lines joined).
struct Event<'a> {
    name: &'a [u8],
    data: &'a [u8],
}

/// Parses the event in `block` (the lines before a blank line). Only the last `data:`
/// line is kept: the servers measured send one.
fn event(block: &[u8]) -> Event<'_> {
    let (mut name, mut data): (&[u8], &[u8]) = (b"", b"");
    for line in block.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let field = |prefix: &[u8]| line.strip_prefix(prefix).map(|v| v.strip_prefix(b" ").unwrap_or(v));
        if let Some(v) = field(b"data:") {
            data = v;
        } else if let Some(v) = field(b"event:") {
            name = v;
        }
    }
    Event { name, data }
}

/// The number after `"key":` in `data`.
fn number_after(data: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(data, key)? + key.len();
    let digits = data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&data[at..at + digits]).ok()?.parse().ok()
}

/// The string after `"key":"` in `data`.
fn string_after<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = memchr::memmem::find(data, key)? + key.len();
    let end = memchr::memchr(b'"', &data[at..])?;
    std::str::from_utf8(&data[at..at + end]).ok()
}

/// A subscriber's connection: reads the head, then yields events.
struct Stream {
    tcp: TcpStream,
    raw: Vec<u8>,
    dechunk: Dechunk,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    /// Where the next event starts in `body`.
    start: usize,
}

impl Stream {
    async fn open(addr: &str, path: &str, headers: &[String]) -> io::Result<Stream> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await?;
        let mut raw = Vec::with_capacity(4096);
        let (head_len, chunked) = loop {
            let mut buf = [0u8; 4096];
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the answer's head"));
            }
            raw.extend_from_slice(&buf[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&raw) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = res.code.unwrap_or(0);
                    if status != 200 {
                        let body = String::from_utf8_lossy(&raw[len..]).chars().take(300).collect::<String>();
                        return Err(bad(format!("GET {path} answered {status}: {body}")));
                    }
                    let chunked = res.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("transfer-encoding")
                            && h.value.to_ascii_lowercase().windows(7).any(|w| w == b"chunked")
                    });
                    break (len, chunked);
                }
                Ok(httparse::Status::Partial) if raw.len() < 64 * 1024 => {}
                Ok(httparse::Status::Partial) => return Err(bad("answer head too long")),
                Err(e) => return Err(bad(format!("bad answer head: {e}"))),
            }
        };
        let mut s = Stream {
            tcp,
            raw: Vec::new(),
            dechunk: Dechunk { chunked, remaining: 0, crlf: 0, line: Vec::new(), done: false },
            body: Vec::with_capacity(4096),
            start: 0,
        };
        let rest = raw.split_off(head_len);
        s.dechunk.feed(&rest, &mut s.body)?;
        s.raw = raw;
        s.raw.clear();
        s.raw.resize(8 * 1024, 0);
        Ok(s)
    }

    /// The next whole event's block (without its blank line), reading as needed.
    fn pop(&mut self) -> Option<(usize, usize)> {
        let from = self.start;
        let at = memchr::memmem::find(&self.body[from..], b"\n\n")?;
        self.start = from + at + 2;
        Some((from, from + at))
    }

    /// Reads more of the body; false at its end.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.body.drain(..self.start);
            self.start = 0;
        }
        let n = self.tcp.read(&mut self.raw).await?;
        if n == 0 || self.dechunk.done {
            return Ok(false);
        }
        let (raw, body) = (&self.raw[..n], &mut self.body);
        self.dechunk.feed(raw, body)?;
        Ok(!self.dechunk.done)
    }

    /// The next event, as (name, data) copied out.
    async fn next(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        loop {
            if let Some((a, b)) = self.pop() {
                let e = event(&self.body[a..b]);
                return Ok((e.name.to_vec(), e.data.to_vec()));
            }
            if !self.fill().await? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the event stream ended"));
            }
        }
    }

    fn close(self) {
        // No TIME_WAIT left behind: thousands of subscribers a run would use up the ports.
        let _ = self.tcp.set_zero_linger();
    }
}

/// What a subscriber saw.
#[derive(Default)]
struct Seen {
    lat: Lat,
    events: u64,
    error: Option<String>,
}

/// Shared counters of the run.
#[derive(Default)]
struct Counters {
    ready: AtomicUsize,
    failed: AtomicUsize,
    delivered: AtomicU64,
    /// The setup is over: a subscriber ready later does not take part.
    closed: AtomicBool,
}

/// How long the setup waits without a subscriber getting ready (or failing) before it
/// gives up on the rest: they count as `subs_pending`.
const SETUP_STALL: Duration = Duration::from_secs(15);

/// PocketBase's subscribe calls go over a few shared connections.
struct Pool {
    conns: RefCell<Vec<crate::http::RawConn>>,
    addr: String,
}

impl Pool {
    async fn post(&self, req: &[u8]) -> io::Result<u16> {
        let conn = self.conns.borrow_mut().pop();
        let mut c = match conn {
            Some(c) => c,
            None => crate::http::RawConn::connect(&self.addr).await?,
        };
        let status = c.request(req).await?;
        self.conns.borrow_mut().push(c);
        Ok(status)
    }
}

fn encode(method: &str, addr: &str, path: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()));
    r.push_str(body);
    r.into_bytes()
}

async fn subscriber(
    a: Rc<Args>,
    target: Target,
    pool: Rc<Pool>,
    counters: Rc<Counters>,
    gate: Rc<tokio::sync::Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let setup = async {
        let _permit = gate.acquire().await.map_err(|e| bad(e.to_string()))?;
        let mut s = Stream::open(&a.addr, &a.path, &a.headers).await?;
        let (name, data) = s.next().await?;
        match target {
            Target::Micro => {
                if name == b"error" || string_after(&data, b"\"action\":\"") != Some("subscribed") {
                    return Err(bad(format!("first event: {}", String::from_utf8_lossy(&data))));
                }
            }
            Target::PocketBase => {
                let id = string_after(&data, b"\"clientId\":\"")
                    .ok_or_else(|| bad(format!("first event: {}", String::from_utf8_lossy(&data))))?;
                let body = format!(r#"{{"clientId":"{id}","subscriptions":["{}"]}}"#, a.topic);
                let req = encode("POST", &a.addr, "/api/realtime", &a.headers, &body);
                let status = pool.post(&req).await?;
                if !(200..300).contains(&status) {
                    return Err(bad(format!("POST /api/realtime answered {status}")));
                }
            }
        }
        Ok::<_, io::Error>(s)
    };
    let setup = tokio::select! {
        r = setup => r,
        // Still not ready at the end: it took no part.
        _ = stop.changed() => return seen,
    };
    let mut s = match setup {
        Ok(s) if counters.closed.load(Ordering::Relaxed) => {
            s.close();
            return seen;
        }
        Ok(s) => s,
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            seen.error = Some(e.to_string());
            return seen;
        }
    };
    counters.ready.fetch_add(1, Ordering::Relaxed);
    loop {
        let now = now_us();
        while let Some((from, to)) = s.pop() {
            let e = event(&s.body[from..to]);
            if e.name == b"error" {
                seen.error = Some(format!("error event: {}", String::from_utf8_lossy(e.data)));
                continue;
            }
            if let Some(ts) = number_after(e.data, b"\"ts\":") {
                seen.events += 1;
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                seen.lat.push(Duration::from_micros(now.saturating_sub(ts)));
            }
        }
        tokio::select! {
            r = s.fill() => match r {
                Ok(true) => {}
                Ok(false) => {
                    seen.error = Some("the event stream ended".into());
                    break;
                }
                Err(e) => {
                    seen.error = Some(e.to_string());
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    s.close();
    seen
}

/// How long a write may take before it counts as failed (and its connection is opened anew).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the writer did.
struct Written {
    ok: u64,
    errors: u64,
    /// Each successful write's latency.
    lat: Lat,
    /// How late each write left after its scheduled time.
    lag: Lat,
    /// From the first scheduled send to the last answer.
    secs: f64,
    /// The first failure's text.
    first_error: Option<String>,
    /// From the first scheduled send to one interval after the last send: the writes
    /// a second are `ok` over it.
    send_secs: f64,
}

/// The writer: `rate` records a second for `secs`, over `conns` connections, each write
/// at its scheduled time (a connection still waiting for its previous answer sends late).
async fn writer(a: Rc<Args>, conns: usize) -> Result<Written, String> {
    let body = a.body.clone().unwrap_or_else(|| r#"{"ts":{ts}}"#.into());
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let total = (a.secs * a.rate).round() as u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs) + interval;
    let mut tasks = Vec::new();
    for w in 0..conns as u64 {
        let (a, body) = (a.clone(), body.clone());
        let mut c = crate::http::RawConn::connect(&a.addr).await.map_err(|e| format!("writer: connect: {e}"))?;
        tasks.push(tokio::task::spawn_local(async move {
            let (mut ok, mut errors, mut lat, mut lag) = (0u64, 0u64, Lat::default(), Lat::default());
            let mut first_error = None::<String>;
            let mut last_send = start;
            let mut k = w;
            while k < total {
                let due = start + interval * k as u32;
                // Writes not sent by the end of the phase are not sent: the rate shows it.
                if Instant::now() > end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                lag.add(due);
                last_send = Instant::now();
                let ts = now_us();
                let b = body.replace("{n}", &(a.seq + k).to_string()).replace("{ts}", &ts.to_string());
                let req = encode("POST", &a.addr, &a.write_path, &a.headers, &b);
                let t = Instant::now();
                let answer = tokio::time::timeout(WRITE_TIMEOUT, c.request(&req))
                    .await
                    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer within 30 s")));
                match answer {
                    Ok(s) if (200..300).contains(&s) => {
                        ok += 1;
                        lat.add(t);
                    }
                    Ok(s) => {
                        if errors == 0 {
                            eprintln!("bench-load: writer: POST {} answered {s}", a.write_path);
                        }
                        first_error.get_or_insert(format!("POST {} answered {s}", a.write_path));
                        errors += 1;
                    }
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("bench-load: writer: {e}");
                        }
                        first_error.get_or_insert(e.to_string());
                        errors += 1;
                        match crate::http::RawConn::connect(&a.addr).await {
                            Ok(n) => c = n,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
                k += conns as u64;
            }
            (ok, errors, lat, lag, last_send, first_error)
        }));
    }
    let mut out = Written {
        ok: 0,
        errors: 0,
        lat: Lat::default(),
        lag: Lat::default(),
        secs: 0.0,
        send_secs: 0.0,
        first_error: None,
    };
    let mut last = start;
    for t in tasks {
        let (o, e, l, g, s, f) = t.await.map_err(|e| format!("writer failed: {e}"))?;
        if out.first_error.is_none() {
            out.first_error = f;
        }
        out.ok += o;
        out.errors += e;
        out.lat.merge(l);
        out.lag.merge(g);
        last = last.max(s);
    }
    out.secs = start.elapsed().as_secs_f64();
    out.send_secs = (last - start + interval).as_secs_f64();
    Ok(out)
}

/// Raises the soft limit of open files to the hard one (a connection each subscriber).
fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub(crate) async fn run(a: &Args) -> Result<(), String> {
    let target = match a.target.as_str() {
        "micro" => Target::Micro,
        "pocketbase" => Target::PocketBase,
        t => return Err(format!("unknown sse target {t}: micro or pocketbase")),
    };
    if target == Target::PocketBase && a.topic.is_empty() {
        return Err("--topic is needed for pocketbase".into());
    }
    if a.rate <= 0.0 {
        return Err("--rate must be above 0 (writes a second)".into());
    }
    raise_nofile();
    // Subscribers are !Send (Rc): a LocalSet on this runtime.
    let local = tokio::task::LocalSet::new();
    let a = Rc::new(a.clone());
    local
        .run_until(async move {
            let counters = Rc::new(Counters::default());
            let pool = Rc::new(Pool { conns: RefCell::new(Vec::new()), addr: a.addr.clone() });
            // At most this many subscriptions being set up at once.
            let gate = Rc::new(tokio::sync::Semaphore::new(256));
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let setup_start = Instant::now();
            let subs: Vec<_> = (0..a.subs)
                .map(|_| {
                    tokio::task::spawn_local(subscriber(
                        a.clone(),
                        target,
                        pool.clone(),
                        counters.clone(),
                        gate.clone(),
                        stop_rx.clone(),
                    ))
                })
                .collect();
            // Every subscriber ready (or failed), for at most 60 s plus 10 ms each, and
            // while some get ready or fail: not one in 15 s ends the setup.
            let setup_deadline = setup_start + Duration::from_secs(60) + Duration::from_millis(10) * a.subs as u32;
            let (mut done, mut progress) = (0, Instant::now());
            while done < a.subs && Instant::now() < setup_deadline && progress.elapsed() < SETUP_STALL {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now_done = counters.ready.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
                if now_done > done {
                    (done, progress) = (now_done, Instant::now());
                }
            }
            counters.closed.store(true, Ordering::Relaxed);
            let setup_secs = setup_start.elapsed().as_secs_f64();
            let ready = counters.ready.load(Ordering::Relaxed);
            let pending = a.subs - ready - counters.failed.load(Ordering::Relaxed);
            eprintln!(
                "bench-load: {ready} of {} subscribers ready in {setup_secs:.2} s ({} failed, {pending} still waiting)",
                a.subs,
                counters.failed.load(Ordering::Relaxed)
            );
            // Let the servers settle after the setup burst.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let delivered_before = counters.delivered.load(Ordering::Relaxed);
            let w = writer(a.clone(), 16).await?;
            let (writes, write_errors, secs) = (w.ok, w.errors, w.secs);
            let expected = writes * ready as u64;
            let drain_start = Instant::now();
            let drain_end = drain_start + Duration::from_secs_f64(a.drain);
            while counters.delivered.load(Ordering::Relaxed) - delivered_before < expected && Instant::now() < drain_end
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let drain_secs = drain_start.elapsed().as_secs_f64();
            let _ = stop_tx.send(true);
            let mut lat = Lat::default();
            let (mut delivered, mut complete, mut first_error) = (0u64, 0usize, None::<String>);
            let mut errors = 0u64;
            for t in subs {
                let seen = t.await.map_err(|e| format!("subscriber failed: {e}"))?;
                delivered += seen.events;
                if writes > 0 && seen.events >= writes {
                    complete += 1;
                }
                if let Some(e) = seen.error {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
                lat.merge(seen.lat);
            }
            let ws = w.lat.summary();
            let lag = w.lag.summary();
            let extra = serde_json::json!({
                "subs_ready": ready, "subs_failed": counters.failed.load(Ordering::Relaxed), "subs_pending": pending,
                "first_error": first_error, "setup_secs": setup_secs,
                "writes": writes, "write_errors": write_errors, "first_write_error": w.first_error,
                "write_rate": if w.send_secs > 0.0 { writes as f64 / w.send_secs } else { 0.0 },
                "write_secs": w.send_secs, "send_lag_p50_us": lag["p50_us"], "send_lag_p99_us": lag["p99_us"],
                "rate_target": a.rate,
                "write_p50_us": ws["p50_us"], "write_p99_us": ws["p99_us"],
                "expected": expected, "delivered": delivered,
                "delivered_pct": if expected > 0 { delivered as f64 * 100.0 / expected as f64 } else { 0.0 },
                "complete_subs": complete, "drain_secs": drain_secs,
            });
            report(&a, delivered, secs, lat, errors + write_errors, extra);
            Ok(())
        })
        .await
}
