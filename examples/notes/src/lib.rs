//! The notes example: a service written with plain serde types only — no proto, no
//! code generation. Request and response schemas come from `schemars` and are published
//! to the registry, so the gateway, the CLI's dynamic commands and `micro get service`
//! work exactly as for proto services.
//!
//! Endpoints: `Notes.Create`, `Notes.Get`, `Notes.List`, `Notes.Delete` (unary) and
//! `Notes.Export` (server streaming, one note per message), reachable by the gateway's
//! path rules (`POST /notes/create`) and by declared REST routes (`GET /notes/{id}`).

use micro::{Context, Service, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A note.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Note {
    /// Assigned by the service (`1`, `2`, …).
    pub id: u64,
    /// Required, at most 200 characters.
    pub title: String,
    /// Free text.
    #[serde(default)]
    pub body: String,
    /// Labels to filter by.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `Notes.Create` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Required, at most 200 characters.
    pub title: String,
    /// Free text.
    #[serde(default)]
    pub body: String,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A request naming one note.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    /// The note's id.
    pub id: u64,
}

/// `Notes.List` and `Notes.Export` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// Only notes with this tag.
    #[serde(default)]
    pub tag: Option<String>,
}

/// `Notes.List` reply.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    /// The notes, oldest first.
    pub notes: Vec<Note>,
}

/// The reply of `Notes.Delete`: nothing (the gateway answers 204).
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

type Notes = Arc<Mutex<(u64, BTreeMap<u64, Note>)>>;

fn lock(notes: &Notes) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Note>)> {
    notes.lock().unwrap_or_else(|p| p.into_inner())
}

fn listed(notes: &Notes, tag: Option<&str>) -> Vec<Note> {
    lock(notes).1.values().filter(|n| tag.is_none_or(|t| n.tags.iter().any(|x| x == t))).cloned().collect()
}

/// The notes service (state in memory), ready to `start()` or `run()`.
pub fn service() -> Service {
    let notes: Notes = Arc::default();
    let (create, get, list, delete, export) =
        (notes.clone(), notes.clone(), notes.clone(), notes.clone(), notes.clone());
    Service::new("notes")
        .version(env!("CARGO_PKG_VERSION"))
        // REST-style routes beside the path rules (/notes/get, /notes/list, …).
        .route("GET /notes/{id}", "Notes.Get")
        .route("DELETE /notes/{id}", "Notes.Delete")
        .route("POST /notes", "Notes.Create")
        .route("GET /notes", "Notes.List")
        .handle("Notes.Create", move |_: Context, req: CreateRequest| {
            let notes = create.clone();
            async move {
                let title = req.title.trim();
                if title.is_empty() || title.chars().count() > 200 {
                    return Err(Status::bad_request("notes", "title is required (1 to 200 characters)"));
                }
                let mut g = lock(&notes);
                g.0 += 1;
                let note = Note { id: g.0, title: title.to_string(), body: req.body, tags: req.tags };
                g.1.insert(note.id, note.clone());
                Ok(note)
            }
        })
        .handle("Notes.Get", move |_: Context, req: IdRequest| {
            let notes = get.clone();
            async move {
                lock(&notes)
                    .1
                    .get(&req.id)
                    .cloned()
                    .ok_or_else(|| Status::not_found("notes", format!("no note {}", req.id)))
            }
        })
        .handle("Notes.List", move |_: Context, req: ListRequest| {
            let notes = list.clone();
            async move { Ok(ListReply { notes: listed(&notes, req.tag.as_deref()) }) }
        })
        .handle("Notes.Delete", move |_: Context, req: IdRequest| {
            let notes = delete.clone();
            async move {
                match lock(&notes).1.remove(&req.id) {
                    Some(_) => Ok(Empty {}),
                    None => Err(Status::not_found("notes", format!("no note {}", req.id))),
                }
            }
        })
        .stream("Notes.Export", move |_: Context, req: ListRequest| {
            futures::stream::iter(listed(&export, req.tag.as_deref()).into_iter().map(Ok))
        })
}
