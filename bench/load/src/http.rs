//! The `http` case: HTTP/1.1 keep-alive load, closed loop or at a fixed rate.
//!
//! One task per connection. Two clients: `raw`, a minimal HTTP/1.1 client (the request is
//! encoded once when every request is the same, else per request; answers are parsed with
//! `httparse`, bodies by `content-length` or chunked encoding, then dropped), and `hyper`
//! (`hyper::client::conn::http1`, whose connection runs as a task of its own). Both set
//! `TCP_NODELAY`.
//!
//! Requests may differ: `--paths FILE` gives one path a line, taken in turns by a counter
//! shared by every connection, and `{n}` in `--body` is replaced by `--seq` plus that
//! counter (a unique number a request). `--header 'Name: value'` adds headers.

use crate::{Args, Lat, report};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the requests of a run send.
pub(crate) struct Template {
    pub(crate) addr: String,
    method: http::Method,
    /// Taken in turns (one path unless `--paths`).
    paths: Vec<String>,
    headers: Vec<(String, String)>,
    /// The body; `{n}` in it (when `templated`) is the request's number, `{k}` that number
    /// modulo `--keys` (one of K users, say).
    body: String,
    templated: bool,
    /// The whole request, encoded once, when every request is the same (the raw client).
    fixed: Option<Bytes>,
    next: AtomicU64,
    seq: u64,
    keys: u64,
}

/// `{"name":"xxx…"}`, padded with `x` so the whole body is `size` bytes (at least
/// `{"name":"x"}`).
fn json_body(size: usize) -> Bytes {
    const FRAME: usize = r#"{"name":""}"#.len();
    let name = "x".repeat(size.saturating_sub(FRAME).max(1));
    Bytes::from(format!(r#"{{"name":"{name}"}}"#))
}

impl Template {
    pub(crate) fn new(a: &Args) -> Result<Template, String> {
        let paths = match &a.paths {
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| format!("--paths {f}: {e}"))?;
                let paths: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                if let Some(p) = paths.iter().find(|p| !p.starts_with('/')) {
                    return Err(format!("--paths {f}: a path must start with /: {p}"));
                }
                if paths.is_empty() {
                    return Err(format!("--paths {f}: no paths"));
                }
                paths
            }
            None => vec![a.path.clone()],
        };
        Template::with(a, &a.method, paths, a.body.clone())
    }

    /// A template for `method` on `paths` with `body` (default: for POST, PUT and PATCH
    /// `{"name":"xxx…"}` of `--size` bytes) and `--header`s, `--seq` of `a`.
    pub(crate) fn with(a: &Args, method: &str, paths: Vec<String>, body: Option<String>) -> Result<Template, String> {
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" => {
                http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?
            }
            m => return Err(format!("--method {m}: use GET, POST, PUT, PATCH or DELETE")),
        };
        let has_body = matches!(method, http::Method::POST | http::Method::PUT | http::Method::PATCH);
        let body = match body {
            Some(b) => b,
            None if has_body => String::from_utf8_lossy(&json_body(a.size)).into_owned(),
            None => String::new(),
        };
        let mut headers = Vec::new();
        for h in &a.headers {
            let (name, value) = h.split_once(':').ok_or(format!("--header must be 'Name: value': {h}"))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let templated = body.contains("{n}") || body.contains("{k}");
        let mut t = Template {
            addr: a.addr.clone(),
            method,
            paths,
            headers,
            body,
            templated,
            fixed: None,
            next: AtomicU64::new(0),
            seq: a.seq,
            keys: a.keys.max(1),
        };
        if !t.templated && t.paths.len() == 1 {
            t.fixed = Some(t.encode(&t.paths[0], &t.body));
        }
        Ok(t)
    }

    /// The next request's path and body.
    pub(crate) fn next(&self) -> (&str, Cow<'_, str>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let path = &self.paths[(i % self.paths.len() as u64) as usize];
        let body = if self.templated {
            let n = self.seq + i;
            Cow::Owned(self.body.replace("{n}", &n.to_string()).replace("{k}", &(n % self.keys).to_string()))
        } else {
            Cow::Borrowed(self.body.as_str())
        };
        (path, body)
    }

    /// The next request, encoded.
    pub(crate) fn next_encoded(&self) -> Bytes {
        if let Some(b) = &self.fixed {
            return b.clone();
        }
        let (path, body) = self.next();
        self.encode(path, &body)
    }

    fn encode(&self, path: &str, body: &str) -> Bytes {
        let mut head = format!("{} {} HTTP/1.1\r\nhost: {}\r\n", self.method, path, self.addr);
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut encoded = head.into_bytes();
        encoded.extend_from_slice(body.as_bytes());
        Bytes::from(encoded)
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.paths[0])
    }
}

async fn connect(addr: &str) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A minimal HTTP/1.1 client connection: one request at a time, no pipelining.
pub(crate) struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The server said `connection: close` (or ended the body by closing).
    closed: bool,
}

impl RawConn {
    pub(crate) async fn connect(addr: &str) -> io::Result<RawConn> {
        Ok(RawConn { stream: connect(addr).await?, buf: vec![0; 16 * 1024], start: 0, end: 0, closed: false })
    }

    /// Reads more bytes after `end`; moves the unconsumed bytes to the front (so offsets
    /// relative to `start` stay valid) and grows the buffer when needed.
    async fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server"));
        }
        self.end += n;
        Ok(())
    }

    /// Makes sure `buf[start..start + n]` is there.
    async fn need(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.start < n {
            self.fill().await?;
        }
        Ok(())
    }

    /// The offset (relative to `start`) of the CRLF ending the line at relative `from`.
    async fn line(&mut self, from: usize) -> io::Result<usize> {
        loop {
            let unread = &self.buf[self.start + from..self.end];
            if let Some(i) = unread.windows(2).position(|w| w == b"\r\n") {
                return Ok(from + i);
            }
            if unread.len() > 8 * 1024 {
                return Err(bad("line too long in a chunked body"));
            }
            self.fill().await?;
        }
    }

    /// Sends the request and reads the whole answer; returns its status.
    pub(crate) async fn request(&mut self, req: &[u8]) -> io::Result<u16> {
        self.stream.write_all(req).await?;
        // The head.
        let (status, head_len, length, chunked, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = res.code.unwrap_or(0);
                    let (mut length, mut chunked, mut close) = (None, false, false);
                    for h in res.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                            length = Some(v.ok_or_else(|| bad("bad content-length"))?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.to_ascii_lowercase().windows(7).any(|w| w == b"chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    if res.version == Some(0) {
                        close = true;
                    }
                    break (status, n, length, chunked, close);
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(e) => return Err(bad(format!("bad response head: {e}"))),
            }
        };
        self.start += head_len;
        // The body, dropped.
        if chunked {
            let mut pos = 0;
            loop {
                let eol = self.line(pos).await?;
                let line = &self.buf[self.start + pos..self.start + eol];
                let hex = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                    .ok_or_else(|| bad("bad chunk size"))?;
                pos = eol + 2;
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        let eol = self.line(pos).await?;
                        let empty = eol == pos;
                        pos = eol + 2;
                        if empty {
                            break;
                        }
                    }
                    break;
                }
                self.need(pos + size + 2).await?;
                pos += size + 2;
            }
            self.start += pos;
        } else if let Some(n) = length {
            self.need(n).await?;
            self.start += n;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            // No length: the body ends when the server closes the connection.
            loop {
                self.start = self.end;
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            self.closed = true;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        self.closed |= close;
        Ok(status)
    }
}

/// A `hyper::client::conn::http1` connection; its connection future runs as a task.
struct HyperConn {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl HyperConn {
    async fn connect(addr: &str) -> io::Result<HyperConn> {
        let io = hyper_util::rt::TokioIo::new(connect(addr).await?);
        let (tx, conn) = hyper::client::conn::http1::handshake(io).await.map_err(io::Error::other)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HyperConn { tx, task })
    }

    async fn request(&mut self, t: &Template) -> io::Result<u16> {
        self.tx.ready().await.map_err(io::Error::other)?;
        let (path, body) = t.next();
        let mut req =
            http::Request::builder().method(t.method.clone()).uri(path).header(http::header::HOST, t.addr.as_str());
        for (k, v) in &t.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let body = Bytes::from(body.into_owned());
        let req = req.body(Full::new(body)).map_err(|e| bad(e.to_string()))?;
        let res = self.tx.send_request(req).await.map_err(io::Error::other)?;
        let status = res.status().as_u16();
        res.into_body().collect().await.map_err(io::Error::other)?;
        Ok(status)
    }
}

impl Drop for HyperConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Conn {
    Raw(RawConn),
    Hyper(HyperConn),
}

impl Conn {
    async fn connect(addr: &str, hyper: bool) -> io::Result<Conn> {
        Ok(if hyper { Conn::Hyper(HyperConn::connect(addr).await?) } else { Conn::Raw(RawConn::connect(addr).await?) })
    }

    async fn request(&mut self, t: &Template) -> io::Result<u16> {
        match self {
            Conn::Raw(c) => c.request(&t.next_encoded()).await,
            Conn::Hyper(c) => c.request(t).await,
        }
    }

    /// Whether the connection can take another request.
    fn reusable(&self) -> bool {
        match self {
            Conn::Raw(c) => !c.closed,
            Conn::Hyper(c) => !c.tx.is_closed(),
        }
    }
}

/// Waits until an instant with microsecond precision, for the open loop's schedule.
///
/// tokio's timer has millisecond granularity (and rounds up), which would make requests
/// leave up to a millisecond or two late — and, since latency counts from the scheduled
/// time, show as latency the server did not cause. On Linux a timerfd per connection
/// (an hrtimer, without the timer slack that poll timeouts get) wakes the runtime on time;
/// elsewhere, sleep with tokio to 2 ms before, then yield until the instant.
struct Pacer {
    #[cfg(target_os = "linux")]
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl Pacer {
    #[cfg(target_os = "linux")]
    fn new() -> io::Result<Pacer> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the returned descriptor is checked and then owned.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd moves into the AsyncFd, so the descriptor stays open and the
        // same for the AsyncFd's whole life.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Pacer { fd })
    }

    #[cfg(target_os = "linux")]
    async fn wait_until(&self, t: Instant) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // Wake a little early, then yield until the instant: waking takes some µs.
        let Some(d) =
            t.checked_duration_since(Instant::now()).and_then(|d| d.checked_sub(EARLY)).filter(|d| !d.is_zero())
        else {
            return spin_until(t).await;
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ },
        };
        let fd = self.fd.get_ref().as_raw_fd();
        // SAFETY: `fd` is our timerfd and `spec` a valid itimerspec; a relative, one-shot timer.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            let read =
                ready.try_io(|fd| match unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) } {
                    n if n < 0 => Err(io::Error::last_os_error()),
                    _ => Ok(()),
                });
            match read {
                Ok(r) => {
                    r?;
                    return spin_until(t).await;
                }
                Err(_would_block) => continue,
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> io::Result<Pacer> {
        Ok(Pacer {})
    }

    #[cfg(not(target_os = "linux"))]
    async fn wait_until(&self, t: Instant) -> io::Result<()> {
        if let Some(c) = t.checked_sub(Duration::from_millis(2))
            && c > Instant::now()
        {
            tokio::time::sleep_until(c.into()).await;
        }
        spin_until(t).await
    }
}

/// How early the timer wakes before the scheduled instant (the rest is yielded away).
#[cfg(target_os = "linux")]
const EARLY: Duration = Duration::from_micros(30);

/// Yields until `t` (each yield also polls the sockets, so other connections go on).
async fn spin_until(t: Instant) -> io::Result<()> {
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
    Ok(())
}

struct Outcome {
    lat: Lat,
    /// Open loop: how late each request left after its scheduled time.
    lag: Lat,
    errors: u64,
}

/// One connection's loop. `interval` zero: closed loop; else request `k` is due at
/// `first + k × interval` and its latency counts from then.
async fn worker(
    t: std::sync::Arc<Template>,
    hyper: bool,
    mut conn: Option<Conn>,
    first: Instant,
    interval: Duration,
    deadline: Instant,
) -> Outcome {
    let mut out = Outcome { lat: Lat::default(), lag: Lat::default(), errors: 0 };
    let open_loop = !interval.is_zero();
    let pacer = if open_loop {
        match Pacer::new() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("bench-load: cannot create a timer: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let mut k: u32 = 0;
    loop {
        let due = if open_loop {
            let due = first + interval * k;
            if due >= deadline {
                break;
            }
            if let Some(p) = &pacer
                && let Err(e) = p.wait_until(due).await
            {
                eprintln!("bench-load: timer: {e}");
                std::process::exit(1);
            }
            due
        } else {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            now
        };
        k = k.saturating_add(1);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&t.addr, hyper).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    if out.errors == 0 {
                        eprintln!("bench-load: connect {}: {e}", t.addr);
                    }
                    out.errors += 1;
                    if !open_loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            },
        };
        if open_loop {
            out.lag.add(due);
        }
        match c.request(&t).await {
            Ok(status) if (200..300).contains(&status) => out.lat.add(due),
            Ok(status) => {
                if out.errors == 0 {
                    eprintln!("bench-load: {} answered {status}", t.describe());
                }
                out.errors += 1;
            }
            Err(e) => {
                if out.errors == 0 {
                    eprintln!("bench-load: request to {}: {e}", t.addr);
                }
                out.errors += 1;
                conn = None;
                continue;
            }
        }
        if !c.reusable() {
            conn = None;
        }
    }
    out
}

pub(crate) async fn run(a: &Args) -> Result<(), String> {
    let hyper = match a.client.as_str() {
        "raw" => false,
        "hyper" => true,
        c => return Err(format!("--client {c}: use raw or hyper")),
    };
    let t = std::sync::Arc::new(Template::new(a)?);
    let n = a.conns.max(1);
    // Open every connection before the clock starts.
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::connect(&a.addr, hyper).await.map_err(|e| format!("cannot connect to {}: {e}", a.addr))?);
    }
    let interval = if a.rate > 0.0 { Duration::from_secs_f64(n as f64 / a.rate) } else { Duration::ZERO };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.secs);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, c)| {
            // Spread the connections' schedules evenly over one interval.
            let first = start + interval.mul_f64(w as f64 / n as f64);
            tokio::spawn(worker(t.clone(), hyper, Some(c), first, interval, deadline))
        })
        .collect();
    let (mut lat, mut lag) = (Lat::default(), Lat::default());
    let mut errors = 0;
    for task in tasks {
        let o = task.await.map_err(|e| format!("worker failed: {e}"))?;
        lat.merge(o.lat);
        lag.merge(o.lag);
        errors += o.errors;
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = lat.0.len() as u64;
    let mut extra = serde_json::json!({
        "rate_target": a.rate, "method": a.method, "path": t.paths[0], "paths": t.paths.len(), "client": a.client,
    });
    if a.rate > 0.0 {
        // How late requests left after their scheduled time (the generator's own timing,
        // plus waiting for the connection's previous answer): a check on the generator.
        let lag = lag.summary();
        extra["send_lag_p50_us"] = lag["p50_us"].clone();
        extra["send_lag_p99_us"] = lag["p99_us"].clone();
    }
    report(a, ops, secs, lat, errors, extra);
    Ok(())
}
