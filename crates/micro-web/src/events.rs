//! Events: the namespace's topics, a topic's most recent events with a live tail (Server-Sent
//! Events from a private consumer group), and a form that publishes to a topic.
//!
//! `GET /events`, `GET /events/{topic}[?before=SEQ]`, `GET /events/{topic}/stream`,
//! `POST /events` and `POST /events/{topic}` (publish). Topic names may contain `/`, so links
//! carry the topic as one percent-encoded path segment.

use super::html::{self, csrf};
use super::{Form, Page, encode, page_response};
use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode, header};
use maud::{Markup, html};
use micro_core::Status;
use micro_core::events::{ConsumeOptions, Event, Events, MAX_PAYLOAD, Message, Offset, ReadOptions, validate_topic};
use micro_core::time::utc;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

/// How many events a topic page shows.
const PAGE: u64 = 50;
/// A comment line sent this often keeps proxies from closing an idle tail and lets the
/// server notice a client that has gone away.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most metadata entries a published event may carry.
const MAX_METADATA: usize = 64;

/// `GET /events`, `/events/{topic}`, `/events/{topic}/stream`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => topics(page, None, None).await,
        [.., last] if last == "stream" && page.rest.len() > 1 => {
            stream(page, &page.rest[..page.rest.len() - 1].join("/")).await
        }
        rest => topic_page(page, &rest.join("/"), None, None).await,
    }
}

/// `POST /events` (topic in the form) and `POST /events/{topic}`: publishes.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    let from_topic_page = !page.rest.is_empty();
    let input = Input::from_form(form, from_topic_page.then(|| page.rest.join("/")));
    let (topic, message) = match input.parse() {
        Ok(m) => m,
        Err(problem) => {
            return if from_topic_page {
                topic_page(page, &input.topic, Some(&input), Some(&problem)).await
            } else {
                topics(page, Some(&input), Some(&problem)).await
            };
        }
    };
    match page.data().events.publish(&page.session.namespace, &topic, &message).await {
        Ok(event) => super::redirect(&format!("/events/{}?published={}", encode(&topic), event.seq)),
        Err(e) => failed(page, &format!("Publish to {topic}"), &e),
    }
}

/// The topics of the namespace, and a publish form.
async fn topics(page: &Page, input: Option<&Input>, problem: Option<&str>) -> Response<Body> {
    let names = match page.data().events.topics(&page.session.namespace).await {
        Ok(t) => t,
        Err(e) => return failed(page, "Events", &e),
    };
    let body = html! {
        @if names.is_empty() {
            p { "No events have been published in " code { (page.session.namespace) } " yet." }
        } @else {
            table {
                caption.hint { "Topics of " (page.session.namespace) }
                thead { tr { th scope="col" { "Topic" } } }
                tbody {
                    @for name in &names {
                        tr { td { a href={ "/events/" (encode(name)) } { (name) } } }
                    }
                }
            }
        }
        h2 #publish { "Publish an event" }
        (publish_form(page, "/events", true, input, problem))
    };
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    page_response(status, html::layout(page, "Events", "events", body))
}

/// A topic: its most recent events (or those before `?before=`), the live tail and a
/// publish form.
async fn topic_page(page: &Page, topic: &str, input: Option<&Input>, problem: Option<&str>) -> Response<Body> {
    if let Err(e) = validate_topic(topic) {
        let body = html! { (html::error(&e)) p { a href="/events" { "← Topics" } } };
        return page_response(StatusCode::BAD_REQUEST, html::layout(page, "Events", "events", body));
    }
    let events = page.data().events;
    let ns = page.session.namespace.clone();
    let before = page.query("before").and_then(|b| b.parse::<u64>().ok()).filter(|b| *b > 1);
    let read = async {
        let last = last_seq(|n| first_at(events.as_ref(), &ns, topic, n)).await?;
        let Some(last) = last else { return Ok((0, Vec::new())) };
        let end = before.map_or(last, |b| (b - 1).min(last));
        let start = end.saturating_sub(PAGE - 1).max(1);
        let options =
            ReadOptions { offset: Some(Offset::Seq(start)), limit: (end - start + 1) as u32, offset_count: 0 };
        Ok::<_, Status>((last, events.read(&ns, topic, &options).await?))
    };
    let (last, recent) = match read.await {
        Ok(r) => r,
        Err(e) if e.code() == micro_core::Code::NotFound => (0, Vec::new()),
        Err(e) => return failed(page, topic, &e),
    };
    // A failure here is shown in its section rather than failing the page.
    let groups = match events.groups(&ns, topic).await {
        Err(e) if e.code() == micro_core::Code::NotFound => Ok(Vec::new()),
        other => other,
    };
    let published = page.query("published").and_then(|p| p.parse::<u64>().ok());
    let here = format!("/events/{}", encode(topic));
    let body = html! {
        p { a href="/events" { "← Topics" } }
        @if let Some(seq) = published {
            p.ok role="status" { "Published event #" (seq) "." }
        }
        @if last == 0 {
            p { "Nothing has been published to " code { (topic) } " yet (or its events are past their retention)." }
        } @else {
            h2 #recent { @if before.is_some() { "Earlier events" } @else { "Most recent events" } }
            p.hint { "Latest sequence number: " (last) ". Oldest first; the newest is at the bottom." }
            @if recent.is_empty() {
                p { "No events are retained before #" (before.unwrap_or(0)) "." }
            } @else {
                (event_table(&recent, published))
            }
            nav.actions aria-label="Older and newer events" {
                @if let Some(first) = recent.first().filter(|e| e.seq > 1) {
                    a href={ (here) "?before=" (first.seq) } { "← Older" }
                }
                @if before.is_some() {
                    a href=(here) { "Newest →" }
                }
            }
        }
        h2 #tail { "Live tail" }
        p.hint { "Events published from now on, as they arrive (a private consumer group that acknowledges each event, so no other consumer is affected)." }
        pre.log role="log" aria-label={ "Live events of " (topic) } data-stream={ (here) "/stream" } {}
        h2 #groups { "Consumer groups" }
        (group_table(topic, &groups))
        h2 #publish { "Publish to " (topic) }
        (publish_form(page, &here, false, input, problem))
    };
    let status = if problem.is_some() {
        StatusCode::BAD_REQUEST
    } else if last == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    page_response(status, html::layout(page, topic, "events", body))
}

/// The topic's durable consumer groups and how far along each is.
fn group_table(topic: &str, groups: &Result<Vec<micro_core::events::GroupInfo>, Status>) -> Markup {
    html! {
        @match groups {
            Err(e) => (html::error(e)),
            Ok(groups) if groups.is_empty() => {
                p { "No consumer group reads " code { (topic) } " yet. Private consumers, like the live tail, are not listed." }
            }
            Ok(groups) => {
                p.hint {
                    "Delivered: the highest sequence number handed to the group. Acked: every event up to it is done. "
                    "Pending: delivered, not acknowledged yet. Lag: events the group has still to finish."
                }
                table {
                    caption.hint { "Consumer groups of " (topic) }
                    thead {
                        tr {
                            th scope="col" { "Group" } th scope="col" { "Delivered" } th scope="col" { "Acked" }
                            th scope="col" { "Pending" } th scope="col" { "Lag" }
                        }
                    }
                    tbody {
                        @for g in groups {
                            tr {
                                th scope="row" { code { (g.name) } }
                                td { (g.delivered) } td { (g.acked) } td { (g.pending) } td { (g.lag) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn event_table(events: &[Event], highlight: Option<u64>) -> Markup {
    html! {
        table {
            thead {
                tr {
                    th scope="col" { "Seq" } th scope="col" { "Time (UTC)" } th scope="col" { "Key" }
                    th scope="col" { "Metadata" } th scope="col" { "Payload" }
                }
            }
            tbody {
                @for e in events {
                    tr id={ "seq-" (e.seq) } aria-current=[(highlight == Some(e.seq)).then_some("true")] {
                        th scope="row" { (e.seq) }
                        td { time datetime=(iso(e.timestamp)) { (utc(e.timestamp)) } }
                        td { @if e.key.is_empty() { span.hint { "—" } } @else { code { (e.key) } } }
                        td { @for (k, v) in &e.metadata { code { (k) "=" (v) } " " } }
                        td { pre { (payload_text(&e.payload, true)) } }
                    }
                }
            }
        }
    }
}

fn publish_form(page: &Page, action: &str, with_topic: bool, input: Option<&Input>, problem: Option<&str>) -> Markup {
    let empty = Input::default();
    let v = input.unwrap_or(&empty);
    html! {
        @if let Some(p) = problem {
            div.error role="alert" { (p) }
        }
        form.stack method="post" action=(action) {
            (csrf(page))
            @if with_topic {
                div.field {
                    label for="topic" { "Topic" }
                    input #topic name="topic" value=(v.topic) required maxlength="256" pattern="[A-Za-z0-9_\\-\\/][A-Za-z0-9._\\-\\/]*" aria-describedby="topic-hint";
                    span.hint #topic-hint { "Letters, digits, " code { "." } " " code { "_" } " " code { "-" } " " code { "/" } "; not starting with a dot." }
                }
            }
            fieldset {
                legend { "The payload is" }
                label { input type="radio" name="format" value="json" checked[v.format != "text"]; " JSON" }
                label { input type="radio" name="format" value="text" checked[v.format == "text"]; " text" }
            }
            div.field {
                label for="payload" { "Payload" }
                textarea #payload name="payload" spellcheck="false" placeholder=r#"{"hello": "world"}"# { (v.payload) }
            }
            div.field {
                label for="key" { "Ordering key" }
                input #key name="key" value=(v.key) maxlength="256" aria-describedby="key-hint";
                span.hint #key-hint { "Optional: events with the same key reach each group in publish order." }
            }
            div.field {
                label for="metadata" { "Metadata" }
                textarea #metadata name="metadata" rows="3" spellcheck="false" aria-describedby="metadata-hint" { (v.metadata) }
                span.hint #metadata-hint { "Optional: one " code { "key=value" } " per line." }
            }
            div.actions { button type="submit" { "Publish" } }
        }
    }
}

/// The publish form as submitted.
#[derive(Default)]
struct Input {
    topic: String,
    format: String,
    payload: String,
    key: String,
    metadata: String,
}

impl Input {
    fn from_form(form: &Form, topic: Option<String>) -> Input {
        Input {
            topic: topic.unwrap_or_else(|| form.get("topic").trim().to_string()),
            format: form.get("format").to_string(),
            payload: form.get("payload").to_string(),
            key: form.get("key").to_string(),
            metadata: form.get("metadata").to_string(),
        }
    }

    /// The topic and message, or what is wrong with the form, in words.
    fn parse(&self) -> Result<(String, Message), String> {
        if self.topic.is_empty() {
            return Err("Enter the topic to publish to.".into());
        }
        validate_topic(&self.topic).map_err(|e| format!("Topic: {}", e.detail()))?;
        let payload = match self.format.as_str() {
            "" | "json" => {
                let text = self.payload.trim();
                if text.is_empty() {
                    return Err("Enter a JSON payload (or choose text).".into());
                }
                serde_json::from_str::<serde_json::Value>(text)
                    .map_err(|e| format!("The payload is not valid JSON: {e}. Choose text to publish it as it is."))?;
                text.as_bytes().to_vec()
            }
            "text" => self.payload.as_bytes().to_vec(),
            other => return Err(format!("Unknown payload format {other:?}: choose JSON or text.")),
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(format!("The payload is {} bytes; the limit is {MAX_PAYLOAD}.", payload.len()));
        }
        let key = self.key.trim().to_string();
        if key.len() > 256 || key.chars().any(char::is_control) {
            return Err("The ordering key must be at most 256 characters, without control characters.".into());
        }
        let metadata = parse_metadata(&self.metadata)?;
        Ok((self.topic.clone(), Message { key, metadata, payload }))
    }
}

/// Parses metadata lines `key=value` (blank lines ignored; keys unique).
fn parse_metadata(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("Metadata line {n}: write key=value."));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.len() > 256 || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("Metadata line {n}: the key must be 1-256 characters without spaces."));
        }
        if v.len() > 4096 || v.chars().any(char::is_control) {
            return Err(format!("Metadata line {n}: the value must be at most 4096 characters."));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("Metadata line {n}: the key {k:?} is given twice."));
        }
    }
    if out.len() > MAX_METADATA {
        return Err(format!("At most {MAX_METADATA} metadata entries."));
    }
    Ok(out)
}

/// The sequence number of the first retained event of `topic` at or after `n`.
async fn first_at(events: &dyn Events, ns: &str, topic: &str, n: u64) -> Result<Option<u64>, Status> {
    let options = ReadOptions { offset: Some(Offset::Seq(n)), limit: 1, offset_count: 0 };
    Ok(events.read(ns, topic, &options).await?.first().map(|e| e.seq))
}

/// The last sequence number of a topic (`None`: nothing retained), found with a
/// logarithmic number of `probe`s, each the first sequence number at or after its argument
/// (the events API has no call for it).
async fn last_seq<F, Fut>(probe: F) -> Result<Option<u64>, Status>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<Option<u64>, Status>>,
{
    let Some(mut lo) = probe(1).await? else { return Ok(None) };
    // Gallop up to a bound past the end, then bisect: an event exists at `lo`, none at or
    // after `hi`.
    let mut step = 64u64;
    let mut hi = loop {
        let n = lo.saturating_add(step);
        match probe(n).await? {
            Some(s) if s > lo => {
                lo = s;
                step = step.saturating_mul(2);
            }
            _ => break n,
        }
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match probe(mid).await? {
            Some(s) if s >= mid && s < hi => lo = s,
            _ => hi = mid,
        }
    }
    Ok(Some(lo))
}

/// `GET /events/{topic}/stream`: the live tail as Server-Sent Events, one `data:` per line.
async fn stream(page: &Page, topic: &str) -> Response<Body> {
    if let Err(e) = validate_topic(topic) {
        return plain(StatusCode::BAD_REQUEST, e.detail());
    }
    let options = ConsumeOptions { group: String::new(), offset: Offset::New, auto_ack: true, ..Default::default() };
    let mut deliveries = match page.data().events.consume(&page.session.namespace, topic, &options).await {
        Ok(d) => d,
        Err(e) => {
            let status = super::status_code(&e);
            return plain(status, e.detail());
        }
    };
    // Ends when the client goes away (hyper drops the body, and with it the consumer, which
    // then leaves its group) or when the consume stream ends.
    let body = async_stream::stream! {
        yield Bytes::from_static(b"retry: 3000\n\n");
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            tokio::select! {
                d = deliveries.next() => match d {
                    Some(Ok(d)) => yield Bytes::from(sse_data(&tail_line(&d.event))),
                    Some(Err(e)) => {
                        yield Bytes::from(sse_data(&format!("(the tail stopped: {})", e.detail())));
                        break;
                    }
                    None => break,
                },
                _ = keep_alive.tick() => yield Bytes::from_static(b": keep-alive\n\n"),
            }
        }
    };
    sse_response(page, body)
}

/// A live view's answer: `body`'s chunks as Server-Sent Events, ending when the server
/// stops.
pub(crate) fn sse_response<S>(page: &Page, body: S) -> Response<Body>
where
    S: futures::Stream<Item = Bytes> + Send + 'static,
{
    let frames = page.web.until_stopped(body).map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
    let mut r = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    r
}

pub(crate) fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(http_body_util::Full::new(Bytes::from(format!("{text}\n")))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// One event as a tail line: `#seq HH:MM:SS key=… payload`.
fn tail_line(e: &Event) -> String {
    let time = utc(e.timestamp);
    let clock = time.get(11..19).unwrap_or(&time);
    let key = if e.key.is_empty() { String::new() } else { format!(" key={}", e.key) };
    format!("#{} {clock}{key} {}", e.seq, payload_text(&e.payload, false))
}

/// `text` as one Server-Sent Event: a `data:` field per line (any of `\r\n`, `\n`, `\r`).
pub(crate) fn sse_data(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split("\r\n").flat_map(|l| l.split(['\n', '\r'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A payload for people: JSON (pretty or compact), else the text, else its size.
fn payload_text(payload: &[u8], pretty: bool) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
        return text.unwrap_or_default();
    }
    match std::str::from_utf8(payload) {
        Ok(s) => s.to_string(),
        Err(_) => format!("({} bytes of binary data)", payload.len()),
    }
}

/// Unix milliseconds as an HTML `datetime` (ISO 8601, UTC).
fn iso(ms: u64) -> String {
    format!("{}Z", utc(ms).replacen(' ', "T", 1))
}

fn failed(page: &Page, title: &str, e: &Status) -> Response<Body> {
    let status = super::status_code(e);
    let hint = match e.code() {
        micro_core::Code::PermissionDenied => {
            "Reading and publishing events needs the admin scope of this namespace, or an account of it with the data scope."
        }
        micro_core::Code::Unavailable | micro_core::Code::DeadlineExceeded => {
            "The events service did not answer; try again shortly."
        }
        _ => "",
    };
    let body = html! {
        (html::error(e))
        @if !hint.is_empty() { p { (hint) } }
        @if !page.rest.is_empty() { p { a href="/events" { "← Topics" } } }
    };
    page_response(status, html::layout(page, title, "events", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn metadata_lines() {
        let m = parse_metadata("a=1\n\n  b = two words \r\nc=\nd=x=y").unwrap();
        let pairs: Vec<(&str, &str)> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("a", "1"), ("b", "two words"), ("c", ""), ("d", "x=y")]);
        assert!(parse_metadata("").unwrap().is_empty());
        assert!(parse_metadata("a=1\nnope").unwrap_err().contains("line 2"));
        assert!(parse_metadata("=v").unwrap_err().contains("key"));
        assert!(parse_metadata("a b=v").is_err());
        assert!(parse_metadata("a=1\na=2").unwrap_err().contains("twice"));
    }

    #[test]
    fn publish_forms_are_checked() {
        let ok = Input::from_form(&form(&[("topic", " orders/new "), ("payload", " {\"a\": 1} "), ("key", "k")]), None);
        let (topic, m) = ok.parse().unwrap();
        assert_eq!((topic.as_str(), m.key.as_str(), m.payload.as_slice()), ("orders/new", "k", &b"{\"a\": 1}"[..]));
        let text = Input::from_form(&form(&[("format", "text"), ("payload", "hello\nworld")]), Some("t".into()));
        assert_eq!(text.parse().unwrap().1.payload, b"hello\nworld");
        let bad_json = Input::from_form(&form(&[("topic", "t"), ("payload", "{nope")]), None);
        assert!(bad_json.parse().unwrap_err().contains("not valid JSON"));
        let no_topic = Input::from_form(&form(&[("payload", "1")]), None);
        assert!(no_topic.parse().unwrap_err().contains("topic"));
        let bad_topic = Input::from_form(&form(&[("topic", ".hidden"), ("payload", "1")]), None);
        assert!(bad_topic.parse().unwrap_err().starts_with("Topic:"));
        let bad_meta = Input::from_form(&form(&[("topic", "t"), ("payload", "1"), ("metadata", "x")]), None);
        assert!(bad_meta.parse().unwrap_err().contains("key=value"));
    }

    #[test]
    fn server_sent_events_split_lines() {
        assert_eq!(sse_data("one"), "data: one\n\n");
        assert_eq!(sse_data("a\nb\r\nc\rd"), "data: a\ndata: b\ndata: c\ndata: d\n\n");
        let e = Event {
            seq: 7,
            timestamp: 1_700_000_000_123,
            key: "k".into(),
            payload: b"{\"a\": [1, 2]}".to_vec(),
            ..Default::default()
        };
        assert_eq!(tail_line(&e), r#"#7 22:13:20 key=k {"a":[1,2]}"#);
        let text = Event { seq: 8, payload: b"x\ny".to_vec(), ..Default::default() };
        assert_eq!(sse_data(&tail_line(&text)), "data: #8 00:00:00 x\ndata: y\n\n");
        assert_eq!(payload_text(&[0xff, 0xfe], false), "(2 bytes of binary data)");
    }

    #[test]
    fn times_in_utc() {
        assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[tokio::test]
    async fn the_last_sequence_number_is_found() {
        for (floor, last) in [(1, 1), (1, 50), (1, 64), (1, 65), (1, 1000), (30, 31), (500, 123_457), (1, 1 << 20)] {
            let probe = |n: u64| async move { Ok(if n > last { None } else { Some(n.max(floor)) }) };
            assert_eq!(last_seq(probe).await.unwrap(), Some(last), "{floor}..={last}");
        }
        let empty = |_: u64| async { Ok(None) };
        assert_eq!(last_seq(empty).await.unwrap(), None);
    }
}
