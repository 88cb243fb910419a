//! Store: databases (a namespace each), their tables, a table's keys (prefix search, 100
//! at a time), one record (its value as JSON, text or bytes, its metadata and expiry),
//! and forms to write and delete records.
//!
//! Every call goes to the `store` service as the signed-in account: a database is a
//! namespace, and the service refuses one the account may not act in, so the pages show
//! what the calls return and nothing else.

use super::html::{self, csrf};
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use base64::Engine;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro_core::store::{MAX_VALUE, Query, Record, Table};
use micro_core::{Code, Status};
use std::time::Duration;

/// Keys listed per page.
const PAGE: u32 = 100;
/// Bytes of a binary value shown as hex.
const HEX_BYTES: usize = 512;
/// Bytes of a binary value shown as base64.
const BASE64_BYTES: usize = 64 << 10;
/// The longest TTL accepted (100 years), so milliseconds never overflow.
const MAX_TTL: u64 = 100 * 365 * 86_400;

fn bad(detail: impl Into<String>) -> Status {
    Status::bad_request("web", detail)
}

fn failed(page: &Page, title: &str, trail: Markup, e: &Status) -> Response<Body> {
    let body = html! { (trail) (html::error(e)) };
    page_response(super::status_code(e), html::layout(page, title, "store", body))
}

/// The table a URL names, checked.
fn table_of(db: &str, table: &str) -> Result<Table, Status> {
    let t = Table::new(db, table);
    t.validate()?;
    Ok(t)
}

/// Where a page is: Store › database › table.
fn trail(db: Option<&str>, table: Option<&str>) -> Markup {
    html! {
        nav.hint aria-label="Breadcrumb" {
            a href="/store" { "Store" }
            @if let Some(db) = db {
                " › " a href={ "/store/" (encode(db)) } { (db) }
                @if let Some(t) = table {
                    " › " a href={ "/store/" (encode(db)) "/" (encode(t)) } { (t) }
                }
            }
        }
    }
}

fn notice(text: Option<String>) -> Markup {
    html! { @if let Some(t) = text { p.ok role="status" { (t) } } }
}

/// `GET /store`, `/store/{db}[?table=]`, `/store/{db}/{table}[?prefix=&offset=]`,
/// `/store/{db}/{table}?key=`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => databases(page).await,
        [db] => match page.query("table") {
            Some(t) => match table_of(db, t.trim()) {
                Ok(t) => redirect(&format!("/store/{}/{}", encode(&t.database), encode(&t.table))),
                Err(e) => tables(page, db, t, Some(e)).await,
            },
            None => tables(page, db, "", None).await,
        },
        [db, table] => match page.query("key") {
            Some(key) if !key.is_empty() => record(page, db, table, key, None, None).await,
            _ => keys(page, db, table, &RecordForm::default(), None).await,
        },
        _ => super::not_found(page),
    }
}

/// `POST /store/{db}/{table}` with `action` write or delete.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    let [db, table] = page.rest.as_slice() else { return super::not_found(page) };
    match form.get("action") {
        "write" => write(page, db, table, form).await,
        "delete" => delete(page, db, table, form.get("key")).await,
        _ => keys(page, db, table, &RecordForm::default(), Some(bad("unknown action"))).await,
    }
}

async fn databases(page: &Page) -> Response<Body> {
    let ns = &page.session.namespace;
    let mut dbs = match page.data().store.databases().await {
        Ok(d) => d,
        Err(e) => return failed(page, "Store", trail(None, None), &e),
    };
    // The store lists every database to any account of the default namespace, but only
    // its admins may open another namespace's (as with the namespace switcher): the
    // others' names are no business of anyone else, and their links would only be refused.
    if !(page.session.admin && page.session.home == micro_core::namespace::DEFAULT) {
        dbs.retain(|d| d == ns);
    }
    dbs.sort();
    let body = html! {
        @if dbs.is_empty() {
            p { "No database holds records yet." }
        } @else {
            p.hint { "A database is a namespace; its tables are usually named after the services that write them." }
            ul {
                @for d in &dbs {
                    li { a href={ "/store/" (encode(d)) } { (d) } @if d == ns { " " span.badge { "this namespace" } } }
                }
            }
        }
        @if !dbs.contains(ns) {
            p { "The database of " code { (ns) } " has no records yet: " a href={ "/store/" (encode(ns)) } { "open it" } "." }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Store", "store", body))
}

async fn tables(page: &Page, db: &str, typed: &str, problem: Option<Status>) -> Response<Body> {
    let title = format!("Store · {db}");
    if let Err(e) = micro_core::namespace::validate(db) {
        return failed(page, &title, trail(None, None), &bad(e.detail()));
    }
    let mut names = match page.data().store.tables(db).await {
        Ok(t) => t,
        Err(e) => return failed(page, &title, trail(Some(db), None), &e),
    };
    names.sort();
    let status = problem.as_ref().map_or(StatusCode::OK, super::status_code);
    let body = html! {
        (trail(Some(db), None))
        @if names.is_empty() {
            p { "No table of " code { (db) } " holds records." }
        } @else {
            ul { @for t in &names { li { a href={ "/store/" (encode(db)) "/" (encode(t)) } { (t) } } } }
        }
        h2 { "Open a table" }
        @if let Some(e) = &problem { (html::error(e)) }
        form.stack method="get" action={ "/store/" (encode(db)) } {
            div.field {
                label for="open-table" { "Table" }
                input #open-table name="table" value=(typed) required pattern="[A-Za-z0-9._\\-]{1,128}" aria-describedby="open-table-hint";
                span.hint #open-table-hint { "A new table appears once it holds a record." }
            }
            div.actions { button type="submit" { "Open" } }
        }
    };
    page_response(status, html::layout(page, &title, "store", body))
}

/// What the record form holds (kept when it is shown again with a problem).
#[derive(Default)]
struct RecordForm {
    key: String,
    value: String,
    /// text, json or base64.
    format: String,
    ttl: String,
    metadata: String,
}

impl RecordForm {
    fn of(form: &Form) -> RecordForm {
        RecordForm {
            key: form.get("key").to_string(),
            value: form.get("value").to_string(),
            format: form.get("format").to_string(),
            ttl: form.get("ttl").trim().to_string(),
            metadata: form.get("metadata").to_string(),
        }
    }

    /// The form for editing `r`.
    fn editing(r: &Record) -> RecordForm {
        let (format, value) = editable(&r.value);
        let ttl = r
            .expiry
            .map(|x| x.saturating_sub(micro_core::store::now_ms()).div_ceil(1000).max(1).to_string())
            .unwrap_or_default();
        let metadata = r.metadata.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        RecordForm { key: r.key.clone(), value, format: format.into(), ttl, metadata }
    }

    /// The record and TTL to write, or what is wrong with the form.
    fn record(&self) -> Result<(Record, Option<Duration>), String> {
        if self.key.is_empty() {
            return Err("Enter a key.".into());
        }
        micro_core::store::validate_key(&self.key).map_err(|e| format!("The key is not valid: {}.", e.detail()))?;
        let value = parse_value(&self.format, &self.value)?;
        let ttl = parse_ttl(&self.ttl)?;
        let metadata =
            super::runtime::parse_pairs(&self.metadata).map_err(|e| format!("Metadata: {e}"))?.into_iter().collect();
        Ok((Record { key: self.key.clone(), value, metadata, expiry: None }, ttl))
    }
}

/// Text as a browser submits it, with its `\r\n` line ends made `\n`.
fn unix_lines(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// The bytes a submitted value stands for in its format (text, json or base64).
fn parse_value(format: &str, text: &str) -> Result<Vec<u8>, String> {
    let bytes = match format {
        "" | "text" => unix_lines(text).into_bytes(),
        "json" => {
            let text = unix_lines(text);
            if text.trim().is_empty() {
                return Err("Enter a JSON value (or choose text).".into());
            }
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("The value is not valid JSON ({e}); choose text to store it as it is."))?;
            text.into_bytes()
        }
        "base64" => {
            let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| format!("The value is not valid base64 ({e})."))?
        }
        other => return Err(format!("Unknown value format {other:?}.")),
    };
    if bytes.len() > MAX_VALUE {
        return Err(format!("The value is {} bytes; the store takes at most {MAX_VALUE}.", bytes.len()));
    }
    Ok(bytes)
}

/// The TTL field: empty for none, else whole seconds above 0.
fn parse_ttl(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match t.parse::<u64>() {
        Ok(n) if (1..=MAX_TTL).contains(&n) => Ok(Some(Duration::from_secs(n))),
        _ => Err(format!("The TTL must be a whole number of seconds from 1 to {MAX_TTL} (or empty for none).")),
    }
}

/// How a value is shown.
#[derive(Debug, PartialEq)]
enum Shown {
    /// Valid JSON, pretty-printed.
    Json(String),
    /// UTF-8 text.
    Text(String),
    /// Anything else: a hex dump of the first bytes and base64 (both maybe cut).
    Binary { hex: String, base64: String, cut: bool },
}

fn show(value: &[u8]) -> Shown {
    if let Ok(text) = std::str::from_utf8(value)
        && !text.contains('\0')
    {
        return match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => Shown::Json(serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_string())),
            Err(_) => Shown::Text(text.to_string()),
        };
    }
    let mut hex = String::new();
    for (i, row) in value[..value.len().min(HEX_BYTES)].chunks(16).enumerate() {
        let bytes: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String =
            row.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
        hex.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, bytes.join(" ")));
    }
    let base64 = base64::engine::general_purpose::STANDARD.encode(&value[..value.len().min(BASE64_BYTES)]);
    Shown::Binary { hex, base64, cut: value.len() > HEX_BYTES }
}

/// The format and text a value is edited as.
fn editable(value: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(value) {
        Ok(t) if !t.contains('\0') => {
            let json = serde_json::from_str::<serde_json::Value>(t).is_ok();
            (if json { "json" } else { "text" }, t.to_string())
        }
        _ => ("base64", base64::engine::general_purpose::STANDARD.encode(value)),
    }
}

/// Unix milliseconds as a UTC date and time, to the second.
fn utc(ms: u64) -> String {
    let t = micro_core::time::utc(ms);
    format!("{} UTC", t.get(..19).unwrap_or_default())
}

/// How long until Unix-milliseconds `at`, from `now`.
fn until(at: u64, now: u64) -> String {
    let s = at.saturating_sub(now) / 1000;
    match s {
        0..60 => format!("in {s}s"),
        60..3600 => format!("in {}m {}s", s / 60, s % 60),
        3600..86400 => format!("in {}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("in {}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// The write form: a new record (key editable) or an existing one (key fixed).
fn record_form(page: &Page, table: &Table, f: &RecordForm, editing: bool) -> Markup {
    let action = format!("/store/{}/{}", encode(&table.database), encode(&table.table));
    let format = if f.format.is_empty() { "text" } else { f.format.as_str() };
    html! {
        form.stack method="post" action=(action) {
            (csrf(page))
            input type="hidden" name="action" value="write";
            @if editing {
                input type="hidden" name="_from" value="record";
                input type="hidden" name="key" value=(f.key);
            } @else {
                div.field {
                    label for="rec-key" { "Key" }
                    input #rec-key name="key" value=(f.key) required maxlength="1024" aria-describedby="rec-key-hint";
                    span.hint #rec-key-hint { "Writing an existing key replaces its record." }
                }
            }
            div.field {
                label for="rec-value" { "Value" }
                textarea #rec-value name="value" rows="8" spellcheck="false" { (f.value) }
            }
            div.field {
                label for="rec-format" { "The value is" }
                select #rec-format name="format" {
                    option value="text" selected[format == "text"] { "text (stored as typed)" }
                    option value="json" selected[format == "json"] { "JSON (checked, stored as typed)" }
                    option value="base64" selected[format == "base64"] { "base64 (decoded to bytes)" }
                }
            }
            div.field {
                label for="rec-ttl" { "TTL (seconds)" }
                input #rec-ttl name="ttl" type="number" min="1" step="1" inputmode="numeric" value=(f.ttl) aria-describedby="rec-ttl-hint";
                span.hint #rec-ttl-hint { "Optional: the record expires this many seconds after the write. Empty: never." }
            }
            div.field {
                label for="rec-meta" { "Metadata" }
                textarea #rec-meta name="metadata" rows="2" spellcheck="false" aria-describedby="rec-meta-hint" { (f.metadata) }
                span.hint #rec-meta-hint { "Optional: one KEY=VALUE per line." }
            }
            div.actions { button type="submit" { @if editing { "Save" } @else { "Write record" } } }
        }
    }
}

async fn keys(page: &Page, db: &str, table: &str, form: &RecordForm, problem: Option<Status>) -> Response<Body> {
    let title = format!("Store · {db} · {table}");
    let t = match table_of(db, table) {
        Ok(t) => t,
        Err(e) => return failed(page, &title, trail(None, None), &bad(e.detail())),
    };
    let prefix = page.query("prefix").unwrap_or("");
    let offset = match page.query("offset").map(str::trim).filter(|o| !o.is_empty()) {
        None => 0,
        Some(o) => match o.parse::<u32>() {
            Ok(n) => n,
            Err(_) => return failed(page, &title, trail(Some(db), Some(table)), &bad("offset must be a whole number")),
        },
    };
    // One more than a page, to know whether there is a next one.
    let query = Query { prefix: true, limit: PAGE + 1, offset, ..Default::default() };
    let mut found = match page.data().store.list(&t, prefix, &query).await {
        Ok(k) => k,
        Err(e) => return failed(page, &title, trail(Some(db), Some(table)), &e),
    };
    let more = found.len() > PAGE as usize;
    found.truncate(PAGE as usize);
    let base = format!("/store/{}/{}", encode(db), encode(table));
    let with_prefix = |offset: u32| {
        let mut url = format!("{base}?offset={offset}");
        if !prefix.is_empty() {
            url.push_str(&format!("&prefix={}", encode(prefix)));
        }
        url
    };
    let deleted = page.query("deleted").map(|k| format!("Deleted {k}."));
    let status = problem.as_ref().map_or(StatusCode::OK, super::status_code);
    let body = html! {
        (trail(Some(db), Some(table)))
        (notice(deleted))
        // Not `form.inline` (a row that never wraps, wider than a phone): inline
        // elements, which wrap.
        form method="get" action=(base) role="search" {
            label for="prefix" { "Keys starting with" } " "
            input #prefix name="prefix" value=(prefix) type="search"; " "
            button type="submit" { "Search" }
        }
        @if found.is_empty() {
            p { @if prefix.is_empty() { "No records." } @else { "No key starts with " code { (prefix) } "." } }
        } @else {
            p.hint { "Keys " (offset + 1) "–" (offset as usize + found.len()) }
            ul {
                @for k in &found {
                    li { a href={ (base) "?key=" (encode(k)) } { code { (k) } } }
                }
            }
        }
        nav.actions aria-label="Pages" {
            @if offset > 0 { a href=(with_prefix(offset.saturating_sub(PAGE))) { "← Previous" } }
            @if more { a href=(with_prefix(offset + PAGE)) { "More →" } }
        }
        h2 #write { "Write a record" }
        @if let Some(e) = &problem { (html::error(e)) }
        (record_form(page, &t, form, false))
    };
    page_response(status, html::layout(page, &title, "store", body))
}

async fn record(
    page: &Page,
    db: &str,
    table: &str,
    key: &str,
    form: Option<&RecordForm>,
    problem: Option<Status>,
) -> Response<Body> {
    let title = format!("Store · {db} · {table} · {key}");
    let t = match table_of(db, table) {
        Ok(t) => t,
        Err(e) => return failed(page, &title, trail(None, None), &bad(e.detail())),
    };
    let r = match page.data().store.read(&t, key, &Query::default()).await {
        Ok(mut r) if !r.is_empty() => r.remove(0),
        Ok(_) => return failed(page, &title, trail(Some(db), Some(table)), &micro_core::store::not_found(key, &t)),
        Err(e) => return failed(page, &title, trail(Some(db), Some(table)), &e),
    };
    let editing = RecordForm::editing(&r);
    let form = form.unwrap_or(&editing);
    let saved = page.query("saved").map(|_| "Saved.".to_string());
    let base = format!("/store/{}/{}", encode(db), encode(table));
    let status = problem.as_ref().map_or(StatusCode::OK, super::status_code);
    let now = micro_core::store::now_ms();
    let body = html! {
        (trail(Some(db), Some(table)))
        (notice(saved))
        h2 { "Value" }
        p.hint { (r.value.len()) " bytes" }
        @match show(&r.value) {
            Shown::Json(text) => { pre.json { code { (text) } } }
            Shown::Text(text) => { pre { (text) } }
            Shown::Binary { hex, base64, cut } => {
                p { "Binary (not UTF-8 text). Hex" @if cut { " of the first " (HEX_BYTES) " bytes" } ":" }
                pre { (hex) }
                details {
                    summary { "Base64" @if r.value.len() > BASE64_BYTES { " (the first " (BASE64_BYTES) " bytes)" } }
                    pre { (base64) }
                }
            }
        }
        h2 { "Details" }
        table {
            tbody {
                tr { th scope="row" { "Key" } td { code { (r.key) } } }
                tr {
                    th scope="row" { "Expires" }
                    td { @match r.expiry { Some(x) => { (until(x, now)) " (" (utc(x)) ")" } None => { "never" } } }
                }
                tr {
                    th scope="row" { "Metadata" }
                    td { @if r.metadata.is_empty() { "none" } @else { @for (k, v) in &r.metadata { code { (k) "=" (v) } br; } } }
                }
            }
        }
        h2 #edit { "Edit" }
        @if let Some(e) = &problem { (html::error(e)) }
        (record_form(page, &t, form, true))
        h2 { "Delete" }
        form.inline method="post" action=(base) data-confirm={ "Delete the record " (key) "?" } {
            (csrf(page))
            input type="hidden" name="action" value="delete";
            input type="hidden" name="key" value=(key);
            button.danger type="submit" { "Delete this record" }
        }
    };
    page_response(status, html::layout(page, &title, "store", body))
}

async fn write(page: &Page, db: &str, table: &str, form: &Form) -> Response<Body> {
    let f = RecordForm::of(form);
    // The record page sends its key hidden: a problem shows that page again.
    let editing = form.get("_from") == "record";
    let t = match table_of(db, table) {
        Ok(t) => t,
        Err(e) => return write_again(page, db, table, &f, editing, bad(e.detail())).await,
    };
    let (rec, ttl) = match f.record() {
        Ok(r) => r,
        Err(problem) => return write_again(page, db, table, &f, editing, bad(problem)).await,
    };
    match page.data().store.write(&t, &rec, ttl).await {
        Ok(()) => redirect(&format!("/store/{}/{}?key={}&saved=1", encode(db), encode(table), encode(&rec.key))),
        Err(e) => write_again(page, db, table, &f, editing, e).await,
    }
}

/// The page a write came from again, with its form as sent and the problem.
async fn write_again(
    page: &Page,
    db: &str,
    table: &str,
    f: &RecordForm,
    editing: bool,
    problem: Status,
) -> Response<Body> {
    if editing && !f.key.is_empty() {
        record(page, db, table, &f.key, Some(f), Some(problem)).await
    } else {
        keys(page, db, table, f, Some(problem)).await
    }
}

async fn delete(page: &Page, db: &str, table: &str, key: &str) -> Response<Body> {
    let t = match table_of(db, table) {
        Ok(t) => t,
        Err(e) => return keys(page, db, table, &RecordForm::default(), Some(bad(e.detail()))).await,
    };
    if key.is_empty() {
        return keys(page, db, table, &RecordForm::default(), Some(bad("Which record? The key is empty."))).await;
    }
    match page.data().store.delete(&t, key).await {
        Ok(()) => redirect(&format!("/store/{}/{}?deleted={}", encode(db), encode(table), encode(key))),
        Err(e) if e.code() == Code::NotFound => keys(page, db, table, &RecordForm::default(), Some(e)).await,
        Err(e) => record(page, db, table, key, None, Some(e)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_by_format() {
        assert_eq!(parse_value("text", "a\r\nb").unwrap(), b"a\nb");
        assert_eq!(parse_value("", "").unwrap(), b"");
        assert_eq!(parse_value("json", "{\"a\": 1}").unwrap(), b"{\"a\": 1}");
        assert!(parse_value("json", "{nope").unwrap_err().contains("not valid JSON"));
        assert!(parse_value("json", "  ").is_err());
        assert_eq!(parse_value("base64", "AAEC\n/w==").unwrap(), [0, 1, 2, 255]);
        assert!(parse_value("base64", "!!").is_err());
        assert!(parse_value("yaml", "a: 1").is_err());
        assert!(parse_value("text", &"x".repeat(MAX_VALUE + 1)).is_err());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl(""), Ok(None));
        assert_eq!(parse_ttl(" 60 "), Ok(Some(Duration::from_secs(60))));
        for bad in ["0", "-1", "1.5", "soon", "99999999999999"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_forms() {
        let f = RecordForm {
            key: "k".into(),
            value: "v".into(),
            ttl: "5".into(),
            metadata: "a=b".into(),
            ..Default::default()
        };
        let (r, ttl) = f.record().unwrap();
        assert_eq!((r.key.as_str(), r.value.as_slice(), ttl), ("k", &b"v"[..], Some(Duration::from_secs(5))));
        assert_eq!(r.metadata.get("a").map(String::as_str), Some("b"));
        assert!(RecordForm::default().record().unwrap_err().contains("key"));
        let nul = RecordForm { key: "a\0b".into(), ..Default::default() };
        assert!(nul.record().is_err());
        let bad_meta = RecordForm { key: "k".into(), metadata: "nope".into(), ..Default::default() };
        assert!(bad_meta.record().unwrap_err().contains("Metadata"));
        let rec = Record { key: "k".into(), value: vec![0xff, 0], metadata: Default::default(), expiry: None };
        let e = RecordForm::editing(&rec);
        assert_eq!((e.format.as_str(), e.value.as_str(), e.ttl.as_str()), ("base64", "/wA=", ""));
    }

    #[test]
    fn values_show_as_json_text_or_bytes() {
        assert_eq!(show(b"{\"a\":[1]}"), Shown::Json("{\n  \"a\": [\n    1\n  ]\n}".into()));
        assert_eq!(show(b"hello <b>"), Shown::Text("hello <b>".into()));
        let Shown::Binary { hex, base64, cut } = show(&[0u8, 1, 0x41, 0xff]) else { panic!("binary") };
        assert_eq!(hex, format!("00000000  {:<47}  ..A.\n", "00 01 41 ff"));
        assert_eq!((base64.as_str(), cut), ("AAFB/w==", false));
        let Shown::Binary { cut, .. } = show(&[0xffu8; HEX_BYTES + 1]) else { panic!("binary") };
        assert!(cut);
        assert_eq!(editable(b"42"), ("json", "42".to_string()));
        assert_eq!(editable(b"hi"), ("text", "hi".to_string()));
    }

    #[test]
    fn times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_735_689_599_000), "2024-12-31 23:59:59 UTC");
        assert_eq!(until(10_000, 5_000), "in 5s");
        assert_eq!(until(5_000, 10_000), "in 0s");
        assert_eq!(until(3_600_000 + 61_000, 0), "in 1h 1m");
    }
}
