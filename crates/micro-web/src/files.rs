//! Files (the `files` product): the namespace's files, newest first, each deleted with a
//! confirmation; and the settings (whether the app's users may upload, the largest
//! file, the namespace's total, the types allowed). Every action is a call to the
//! product's `Files.*` endpoints as the signed-in account: its team sees the files, its
//! admins change the settings. The files themselves are uploaded and served at the
//! gateway (`/files/v1/…`).
//!
//! `GET /files`, `POST /files` (`action`: `settings`, `delete`).

use super::html;
use super::{Form, Page, encode, page_response, redirect};
use axum::body::Body;
use http::{Response, StatusCode};
use micro_core::Status;
use serde_json::{Value, json};

/// The product's service name.
const FILES: &str = "files";
const MB: u64 = 1_000_000;

/// `GET /files`.
pub(crate) async fn get(page: &Page) -> Response<Body> {
    match page.rest.as_slice() {
        [] => files(page, None).await,
        _ => super::not_found(page),
    }
}

/// A size in megabytes from a form field, refused in words when it is not one.
fn megabytes(form: &Form, field: &str) -> Result<u64, Status> {
    let v = form.get(field).trim();
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok((n * MB as f64).round() as u64),
        _ => Err(Status::bad_request("web", format!("{field}: {v:?} is not a number of megabytes above 0"))),
    }
}

/// `POST /files`: saves the settings, or deletes a file.
pub(crate) async fn post(page: &Page, form: &Form) -> Response<Body> {
    if !page.rest.is_empty() {
        return super::not_found(page);
    }
    let client = page.client();
    match form.get("action") {
        "settings" => {
            let sizes = megabytes(form, "max_file_size").and_then(|f| Ok((f, megabytes(form, "max_total")?)));
            let (max_file_size, max_total) = match sizes {
                Ok(s) => s,
                Err(e) => return files(page, Some(e)).await,
            };
            let types: Vec<&str> =
                form.get("types").split([',', ' ', '\n']).map(str::trim).filter(|t| !t.is_empty()).collect();
            let settings = json!({
                "app_uploads": form.get("app_uploads") == "on",
                "max_file_size": max_file_size,
                "max_total": max_total,
                "types": types,
            });
            match client.call_json(FILES, "Files.SaveSettings", &settings).await {
                Ok(_) => redirect(&format!("/files?done={}", encode("The settings are saved."))),
                Err(e) => files(page, Some(e)).await,
            }
        }
        "delete" => {
            let id = form.get("id").trim().to_string();
            match client.call_json(FILES, "Files.Delete", &json!({"id": id})).await {
                Ok(_) => redirect(&format!("/files?done={}", encode(&format!("File {id} deleted.")))),
                Err(e) => files(page, Some(e)).await,
            }
        }
        other => files(page, Some(Status::bad_request("web", format!("unknown action {other:?}")))).await,
    }
}

/// The page: the settings, then the files.
async fn files(page: &Page, error: Option<Status>) -> Response<Body> {
    let client = page.client();
    let settings = match client.call_json(FILES, "Files.Settings", &json!({})).await {
        Ok(v) => v,
        Err(e) => {
            let body = html::refused(page, &e, "see this namespace's files (its team)");
            return page_response(super::status_code(&e), html::layout(page, "Files", "files", body));
        }
    };
    let (list, list_error) = match client.call_json(FILES, "Files.List", &json!({})).await {
        Ok(v) => (v["files"].as_array().cloned().unwrap_or_default(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mb = |k: &str| format!("{}", settings[k].as_u64().unwrap_or(0) as f64 / MB as f64);
    let types = settings["types"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let total: u64 = list.iter().filter_map(|f| f["size"].as_u64()).sum();
    let done = page.query("done").map(str::to_string);
    let ns = page.session.namespace.clone();
    let body = maud::html! {
        @if let Some(note) = done { p.notice role="status" { (note) } }
        @if let Some(e) = &error { (html::error(e)) }
        section {
            h2 { "Settings" }
            p { "Your apps upload files at " code { "/files/v1/files" } " in namespace " strong { (ns) }
                "; the team always may, the app's users when you let them." }
            form.stack method="post" action="/files" {
                (html::csrf(page))
                input type="hidden" name="action" value="settings";
                label { input name="app_uploads" type="checkbox" checked[settings["app_uploads"] == Value::Bool(true)]; " The app's users may upload (their own files)" }
                label for="max_file_size" { "Largest file (MB)" }
                input #max_file_size name="max_file_size" inputmode="decimal" value=(mb("max_file_size"));
                label for="max_total" { "All files together (MB)" }
                input #max_total name="max_total" inputmode="decimal" value=(mb("max_total"));
                label for="types" { "Types allowed (empty: any; image/ for every image)" }
                input #types name="types" value=(types) placeholder="image/, application/pdf";
                button type="submit" { "Save settings" }
            }
        }
        section {
            h2 { "Files" }
            @if let Some(e) = &list_error { (html::error(e)) }
            @if list.is_empty() {
                p #files-count { "No files yet." }
            } @else {
                p #files-count { (list.len()) @if list.len() == 1 { " file, " } @else { " files, " } (html::bytes(total)) "." }
                table.files {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Size" } th scope="col" { "Owner" } th scope="col" { "Public" } th scope="col" { "Uploaded" } th scope="col" { "Delete" } } }
                    tbody {
                        @for f in &list {
                            @let id = f["id"].as_str().unwrap_or_default();
                            @let name = f["name"].as_str().unwrap_or_default();
                            tr {
                                td { (name) @if let Some(r) = f["record"].as_str() { br; small { "on " (r) } } }
                                td { (f["type"].as_str().unwrap_or_default().split(';').next().unwrap_or_default()) }
                                td { (html::bytes(f["size"].as_u64().unwrap_or(0))) }
                                td { (f["owner"].as_str().unwrap_or_default()) @if f["owner_kind"] == "user" { " (app user)" } }
                                td { @if f["public"] == Value::Bool(true) { "yes" } @else { "no" } }
                                td { (micro_core::time::utc(f["created"].as_u64().unwrap_or(0) * 1000).get(..16).unwrap_or_default()) }
                                td {
                                    form.inline method="post" action="/files" data-confirm={ "Delete " (name) "? Its links stop working." } {
                                        (html::csrf(page))
                                        input type="hidden" name="action" value="delete";
                                        input type="hidden" name="id" value=(id);
                                        button.danger type="submit" aria-label={ "Delete " (name) } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.hint { "The same as " code { "micro files list" } " and " code { "micro files delete --id …" } "." }
        }
    };
    page_response(StatusCode::OK, html::layout(page, "Files", "files", body))
}
