//! The database (the `db` product): the namespace's collections; a collection's records
//! with the filter box, pages and a live view of its changes; its rules, each in words,
//! with an editor; its schema and indexes, and whether a filter uses one. Every action
//! is a call to the product's `Db.*` endpoints as the signed-in account, so the
//! collections' rules hold here as they do for the account's own code.
//!
//! `GET /db`, `POST /db` (`action`: `save`), `GET /db/{collection}[?filter=&sort=&page=]`,
//! `POST /db/{collection}` (`action`: `create`, `delete`, `rules`, `drop`),
//! `GET /db/{collection}/stream` (the live view, Server-Sent Events).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode};
use maud::{Markup, html};
use micro_core::Status;
use serde_json::{Map, Value, json};

/// The product's service name.
const DB: &str = "db";
/// Records a page shows.
const PER_PAGE: u32 = 50;
/// The operations rules decide, in the order they are shown.
const OPERATIONS: [&str; 5] = ["list", "view", "create", "update", "delete"];

/// `GET /db…`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => collections(page, None, None).await,
        [c] => collection(page, c, None, StatusCode::OK).await,
        [c, s] if s == "stream" => stream(page, c).await,
        _ => super::not_found(page),
    }
}

/// `POST /db…`.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    let client = page.client();
    match (page.rest.as_slice(), form.get("action")) {
        ([], "save") => {
            let name = form.get("name").trim().to_string();
            let schema = match form.get("schema").trim() {
                "" => Value::Null,
                text => match serde_json::from_str::<Value>(text) {
                    Ok(v @ Value::Array(_)) => v,
                    _ => {
                        let e = Status::bad_request(
                            DB,
                            "the schema is a JSON list of fields, like [{\"name\": \"title\", \"type\": \"text\"}]",
                        );
                        return collections(page, Some(e), Some(form)).await;
                    }
                },
            };
            let body = json!({"name": name, "schema": schema, "rules": rules_of(form), "create_only": true});
            match client.call_json(DB, "Db.SaveCollection", &body).await {
                Ok(_) => redirect(&format!("/db/{}", encode(&name))),
                Err(e) => collections(page, Some(e), Some(form)).await,
            }
        }
        ([c], action) => {
            let here = format!("/db/{}", encode(c));
            let done = |note: &str| redirect(&format!("{here}?done={}", encode(note)));
            let result = match action {
                "create" => match serde_json::from_str::<Value>(form.get("data")) {
                    Ok(data @ Value::Object(_)) => client
                        .call_json(DB, "Db.Create", &json!({"collection": c, "data": data}))
                        .await
                        .map(|r| format!("Record {} created.", r["id"].as_str().unwrap_or_default())),
                    _ => Err(Status::bad_request(DB, "a record is a JSON object, like {\"title\": \"milk\"}")),
                },
                "delete" => {
                    let id = form.get("id");
                    client
                        .call_json(DB, "Db.Delete", &json!({"collection": c, "id": id}))
                        .await
                        .map(|_| format!("Record {id} deleted."))
                }
                "rules" => save_rules(page, c, form).await.map(|_| "The rules are saved.".to_string()),
                "drop" => client
                    .call_json(DB, "Db.DeleteCollection", &json!({"name": c}))
                    .await
                    .map(|_| format!("Collection {c} deleted.")),
                _ => Err(Status::bad_request(DB, format!("unknown action {action:?}"))),
            };
            match (result, action) {
                (Ok(note), "drop") => redirect(&format!("/db?done={}", encode(&note))),
                (Ok(note), _) => done(&note),
                (Err(e), _) => collection(page, c, Some(e), StatusCode::OK).await,
            }
        }
        _ => super::not_found(page),
    }
}

/// The rules a form gives: each `<op>_mode` (`locked`, `anyone`, `filter`) and `<op>`.
fn rules_of(form: &Form) -> Value {
    let mut rules = Map::new();
    for op in OPERATIONS {
        let rule = match form.get(&format!("{op}_mode")) {
            "anyone" => Value::String(String::new()),
            "filter" => Value::String(form.get(op).trim().to_string()),
            _ => Value::Null,
        };
        rules.insert(op.to_string(), rule);
    }
    Value::Object(rules)
}

/// Saves collection `c` with the rules of `form` and the rest of its spec as it is.
async fn save_rules(page: &Page, c: &str, form: &Form) -> Result<Value, Status> {
    let client = page.client();
    let spec = client.call_json(DB, "Db.Collection", &json!({"name": c})).await?;
    let mut body = json!({"name": c, "rules": rules_of(form)});
    for keep in ["schema", "indexes", "search"] {
        if !spec[keep].is_null() {
            body[keep] = spec[keep].clone();
        }
    }
    client.call_json(DB, "Db.SaveCollection", &body).await
}

/// The rule editor: for each operation, locked, anyone, or a filter.
fn rules_form(page: &Page, action: &str, rules: &Value, explained: &[String]) -> Markup {
    html! {
        form.rules method="post" action=(action) {
            (html::csrf(page))
            input type="hidden" name="action" value="rules";
            table.rules {
                thead { tr { th scope="col" { "Operation" } th scope="col" { "Who" } th scope="col" { "Filter" } th scope="col" { "In words" } } }
                tbody {
                    @for (i, op) in OPERATIONS.iter().enumerate() {
                        @let rule = &rules[*op];
                        @let mode = match rule { Value::Null => "locked", Value::String(s) if s.trim().is_empty() => "anyone", _ => "filter" };
                        tr {
                            th scope="row" { (op) }
                            td {
                                select name={ (op) "_mode" } aria-label={ "Who may " (op) } {
                                    option value="locked" selected[mode == "locked"] { "Admins and developers" }
                                    option value="anyone" selected[mode == "anyone"] { "Anyone" }
                                    option value="filter" selected[mode == "filter"] { "Where…" }
                                }
                            }
                            td { input name=(op) value=(rule.as_str().unwrap_or_default()) size="34" aria-label={ "The " (op) " rule's filter" } placeholder="owner = @request.auth.id"; }
                            td.explained { (explained.get(i).map(|e| e.split_once(": ").map_or(e.as_str(), |(_, w)| w)).unwrap_or_default()) }
                        }
                    }
                }
            }
            button type="submit" { "Save rules" }
        }
    }
}

/// `GET /db`: the collections, and a form for a new one.
async fn collections(page: &Page, error: Option<Status>, input: Option<&Form>) -> Response<Body> {
    let all = match page.client().call_json(DB, "Db.Collections", &json!({})).await {
        Ok(v) => v["collections"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            let body = html::refused(page, &e, "see its collections");
            return page_response(super::status_code(&e), html::layout(page, "Database", "db", body));
        }
    };
    let get = |k: &str| input.map(|f| f.get(k).to_string()).unwrap_or_default();
    let body = html! {
        @if let Some(note) = page.query("done") { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        @if all.is_empty() {
            p { "No collections yet in " code { (page.session.namespace) } ". Make one below, or write a record: an admin's first write makes its collection." }
        } @else {
            table.collections {
                thead { tr { th scope="col" { "Collection" } th scope="col" { "Fields" } th scope="col" { "Indexes" } th scope="col" { "Search" } th scope="col" { "Changed" } } }
                tbody {
                    @for c in &all {
                        @let name = c["name"].as_str().unwrap_or_default();
                        tr {
                            th scope="row" { a href={ "/db/" (encode(name)) } { (name) } }
                            td { @match c["schema"].as_array() { Some(f) => { (f.len()) }, None => { "any" } } }
                            td { (c["indexes"].as_array().map_or(0, Vec::len)) }
                            td { (c["search"].as_array().map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            td { (c["updated"].as_str().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        h2 #new { "New collection" }
        form.stack method="post" action="/db" {
            (html::csrf(page))
            input type="hidden" name="action" value="save";
            label for="db-name" { "Name" }
            input #db-name name="name" value=(get("name")) required pattern="[A-Za-z_][A-Za-z0-9_]*" placeholder="todos";
            label for="db-schema" { "Schema (optional): a JSON list of fields" }
            textarea #db-schema name="schema" rows="4" placeholder="[{\"name\": \"title\", \"type\": \"text\", \"required\": true}]" { (get("schema")) }
            p.hint { "Types: text, number, bool, date, array, object, json, relation (with \"collection\"); with required, unique, min, max, enum. Without a schema any JSON object is a record." }
            (rules_form_fields(&json!({})))
            button type="submit" { "Create collection" }
        }
        p.hint { "The same as " code { "micro call db Db.SaveCollection '{…}'" } " and " code { "POST /db/v1/collections" } " (docs/backend.md)." }
    };
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    page_response(status, html::layout(page, "Database", "db", body))
}

/// The rules' fields inside another form (a new collection: every rule locked at first).
fn rules_form_fields(rules: &Value) -> Markup {
    html! {
        fieldset {
            legend { "Rules (locked unless opened)" }
            @for op in OPERATIONS {
                @let rule = &rules[op];
                div.rule {
                    label for={ "new-" (op) } { (op) }
                    select name={ (op) "_mode" } aria-label={ "Who may " (op) } {
                        option value="locked" selected[rule.is_null()] { "Admins and developers" }
                        option value="anyone" { "Anyone" }
                        option value="filter" { "Where…" }
                    }
                    input #{ "new-" (op) } name=(op) size="30" placeholder="owner = @request.auth.id";
                }
            }
        }
    }
}

/// `GET /db/{collection}`: its records (filtered, sorted, paged), rules, schema, indexes
/// and the live view.
async fn collection(page: &Page, c: &str, error: Option<Status>, status: StatusCode) -> Response<Body> {
    let client = page.client();
    let spec = match client.call_json(DB, "Db.Collection", &json!({"name": c})).await {
        Ok(v) => v,
        Err(e) => {
            let body =
                html! { (html::refused(page, &e, "see this collection")) p { a href="/db" { "← Collections" } } };
            return page_response(super::status_code(&e), html::layout(page, c, "db", body));
        }
    };
    let filter = page.query("filter").unwrap_or_default().to_string();
    let sort = page.query("sort").unwrap_or("-created").to_string();
    let number = page.query("page").and_then(|p| p.parse::<u32>().ok()).filter(|p| *p > 0).unwrap_or(1);
    let query =
        json!({"collection": c, "filter": filter, "sort": sort, "page": number, "per_page": PER_PAGE, "total": true});
    let explain = json!({"collection": c, "filter": filter, "sort": sort});
    let (listed, plan) =
        tokio::join!(client.call_json(DB, "Db.List", &query), client.call_json(DB, "Db.Explain", &explain));
    let here = format!("/db/{}", encode(c));
    let explained: Vec<String> = spec["explained"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let list_error = listed.as_ref().err().cloned();
    let status =
        if list_error.as_ref().is_some_and(|e| e.http_status() == 400) { StatusCode::BAD_REQUEST } else { status };
    let listed = listed.unwrap_or(Value::Null);
    let items = listed["items"].as_array().cloned().unwrap_or_default();
    let total = listed["total"].as_u64().unwrap_or(0);
    let pages = total.div_ceil(u64::from(PER_PAGE)).max(1);
    let link = |p: u64| format!("{here}?filter={}&sort={}&page={p}", encode(&filter), encode(&sort));
    let body = html! {
        p { a href="/db" { "← Collections" } }
        @if let Some(note) = page.query("done") { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        section #records {
            h2 { "Records" }
            form.filters method="get" action=(here) role="search" {
                label for="db-filter" { "Filter" }
                input #db-filter name="filter" value=(filter) size="40" placeholder="done = false && owner = 'alice'";
                label for="db-sort" { "Sort" }
                input #db-sort name="sort" value=(sort) size="14";
                button type="submit" { "Apply" }
            }
            @if let Some(e) = &list_error {
                (html::error(e))
            } @else {
                p.hint #db-count { (total) " record" @if total != 1 { "s" } @if !filter.is_empty() { " match" } "." }
                @match &plan {
                    Ok(p) if p["scan"] == true => p.hint #db-plan { "This list reads the whole collection: an index on the filtered fields would help." },
                    Ok(p) => @match p["indexes"].as_array().and_then(|i| i.first()).and_then(Value::as_array) {
                        Some(fields) => p.hint #db-plan { "Served by the index on " (fields.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) "." },
                        None => p.hint #db-plan { "Served by the records' ids." },
                    },
                    Err(_) => {},
                }
                @if !items.is_empty() {
                    table.records {
                        thead { tr { th scope="col" { "Id" } th scope="col" { "Updated" } th scope="col" { "Version" } th scope="col" { "Fields" } th scope="col" { span.sr { "Actions" } } } }
                        tbody {
                            @for r in &items {
                                @let id = r["id"].as_str().unwrap_or_default();
                                @let mut fields = r.as_object().cloned().unwrap_or_default();
                                @let _ = ["id", "created", "updated", "version"].map(|k| fields.remove(k));
                                tr {
                                    td { code title=(id) { (id.get(..12).unwrap_or(id)) "…" } }
                                    td { (r["updated"].as_str().unwrap_or_default()) }
                                    td { (r["version"].as_u64().unwrap_or(0)) }
                                    td { (html::json(&Value::Object(fields))) }
                                    td {
                                        form.inline method="post" action=(here) data-confirm={ "Delete the record " (id) "?" } {
                                            (html::csrf(page))
                                            input type="hidden" name="action" value="delete";
                                            input type="hidden" name="id" value=(id);
                                            button.danger type="submit" aria-label={ "Delete record " (id) } { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if pages > 1 {
                    nav.actions aria-label="Pages" {
                        @if u64::from(number) > 1 { a href=(link(u64::from(number) - 1)) { "← Previous" } }
                        span { "Page " (number) " of " (pages) }
                        @if u64::from(number) < pages { a href=(link(u64::from(number) + 1)) { "Next →" } }
                    }
                }
            }
            form.stack method="post" action=(here) {
                (html::csrf(page))
                input type="hidden" name="action" value="create";
                label for="db-data" { "New record (JSON)" }
                textarea #db-data name="data" rows="3" placeholder="{\"title\": \"milk\"}" {}
                button type="submit" { "Create record" }
            }
        }
        section #live {
            h2 { "Live" }
            p.hint { "Changes as they commit, as the rules let you see them." }
            pre.log role="log" aria-label={ "Live changes of " (c) } data-stream={ (here) "/stream" } {}
        }
        section #rules {
            h2 { "Rules" }
            ul.explained {
                @for line in &explained { li { (line) } }
            }
            (rules_form(page, &here, &spec["rules"], &explained))
        }
        section #schema {
            h2 { "Schema" }
            @match spec["schema"].as_array() {
                None => p { "No schema: any JSON object is a record." },
                Some(fields) => table.schema {
                    thead { tr { th scope="col" { "Field" } th scope="col" { "Type" } th scope="col" { "Checks" } } }
                    tbody {
                        @for f in fields {
                            tr {
                                th scope="row" { (f["name"].as_str().unwrap_or_default()) }
                                td { (f["type"].as_str().unwrap_or_default()) @if let Some(to) = f["collection"].as_str() { " → " a href={ "/db/" (encode(to)) } { (to) } } }
                                td { (checks(f)) }
                            }
                        }
                    }
                },
            }
            h3 { "Indexes" }
            @match spec["indexes"].as_array().filter(|i| !i.is_empty()) {
                None => p { "None declared." },
                Some(ixs) => ul.indexes {
                    @for ix in ixs {
                        li { (ix["fields"].as_array().map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) @if ix["unique"] == true { " (unique)" } }
                    }
                },
            }
        }
        section #danger {
            h2 { "Delete the collection" }
            form.inline method="post" action=(here) data-confirm={ "Delete the collection " (c) " and every record of it?" } {
                (html::csrf(page))
                input type="hidden" name="action" value="drop";
                button.danger type="submit" { "Delete " (c) " and every record of it" }
            }
        }
    };
    page_response(status, html::layout(page, c, "db", body))
}

/// A schema field's checks, in words.
fn checks(f: &Value) -> String {
    let mut out = Vec::new();
    if f["required"] == true {
        out.push("required".to_string());
    }
    if f["unique"] == true {
        out.push("unique".to_string());
    }
    if let Some(min) = f["min"].as_f64() {
        out.push(format!("at least {min}"));
    }
    if let Some(max) = f["max"].as_f64() {
        out.push(format!("at most {max}"));
    }
    if let Some(values) = f["enum"].as_array() {
        out.push(format!("one of {}", values.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")));
    }
    out.join("; ")
}

/// `GET /db/{collection}/stream`: the collection's changes as Server-Sent Events, a line
/// each (`create 01a2… {…}`), as the signed-in account's rules let it see them.
async fn stream(page: &Page, c: &str) -> Response<Body> {
    let request = Bytes::from(json!({"collection": c}).to_string());
    let opts = micro::CallOptions::default();
    let mut changes = match page.client().stream_json(DB, "Db.Subscribe", futures::stream::iter([request]), &opts).await
    {
        Ok(s) => s,
        Err(e) => return super::events::plain(super::status_code(&e), e.detail()),
    };
    let body = async_stream::stream! {
        yield Bytes::from_static(b"retry: 3000\n\n");
        let keep = super::events::KEEP_ALIVE;
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + keep, keep);
        loop {
            tokio::select! {
                m = changes.next() => match m {
                    Some(Ok(b)) => {
                        let Ok(v) = serde_json::from_slice::<Value>(&b) else { continue };
                        let action = v["action"].as_str().unwrap_or_default();
                        if action == "subscribed" {
                            continue;
                        }
                        let line = match v.get("record") {
                            Some(r) => format!("{action} {} {r}", r["id"].as_str().unwrap_or_default()),
                            None => format!("{action}: the collection is gone"),
                        };
                        yield Bytes::from(super::events::sse_data(&line));
                    }
                    Some(Err(e)) => {
                        yield Bytes::from(super::events::sse_data(&format!("(the live view stopped: {})", e.detail())));
                        break;
                    }
                    None => break,
                },
                _ = keep_alive.tick() => yield Bytes::from_static(b": keep-alive\n\n"),
            }
        }
    };
    super::events::sse_response(page, body)
}
