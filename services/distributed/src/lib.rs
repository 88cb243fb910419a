//! Distributed: collaboration for distributed teams, a product of the platform built with
//! the framework like any user's service. It starts with notes (markdown, tagged, one set
//! per namespace); sprints and scheduling are to come.
//!
//! It is a platform service ([`micro::Service::platform`]): registered once in the `micro`
//! namespace and served to every namespace. A call acts in the caller's namespace, which
//! the framework's authorizer resolved and verified; by default any account of that
//! namespace may use it (a rule naming `distributed` can open it wider or close it).
//! Notes are kept in the service's own table of the store, under the namespace they
//! belong to, so no namespace sees another's.
//!
//! Endpoints: `Notes.Create`, `Notes.Get`, `Notes.List`, `Notes.Update`, `Notes.Delete`,
//! at the gateway as `POST /distributed/notes/create` and so on.

use micro::{Context, Service, Status};
use micro_core::store::Query;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The service's name.
pub const NAME: &str = "distributed";

/// The longest title, in characters.
const MAX_TITLE: usize = 200;
/// The largest body, in bytes.
const MAX_BODY: usize = 64 * 1024;
/// The most tags on a note.
const MAX_TAGS: usize = 20;

/// A note.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Note {
    /// Assigned by the service.
    pub id: String,
    /// 1 to 200 characters.
    pub title: String,
    /// Markdown, up to 64 KiB.
    #[serde(default)]
    pub body: String,
    /// Labels to filter by.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The account that wrote it.
    pub author: String,
    /// Created, Unix seconds.
    pub created: u64,
    /// Last changed, Unix seconds.
    pub updated: u64,
}

/// `Notes.Create` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// 1 to 200 characters.
    pub title: String,
    /// Markdown.
    #[serde(default)]
    pub body: String,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `Notes.Update` request: the fields given replace the note's.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The note's id.
    pub id: String,
    /// A new title.
    #[serde(default)]
    pub title: Option<String>,
    /// A new body.
    #[serde(default)]
    pub body: Option<String>,
    /// New labels.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// A request naming one note.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    /// The note's id.
    pub id: String,
}

/// `Notes.List` request.
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
    /// The namespace's notes, oldest first.
    pub notes: Vec<Note>,
}

/// The reply of `Notes.Delete`.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Who calls and in which namespace: every endpoint needs an account.
fn caller(ctx: &Context) -> Result<(String, String), Status> {
    match ctx.caller() {
        Some(c) => match c.id() {
            Some(id) => Ok((c.namespace.clone(), id.to_string())),
            None => Err(Status::new(micro_core::Code::Unauthenticated, NAME, "notes need an account: log in first")),
        },
        None => Err(Status::internal(NAME, "the service runs without an authorizer")),
    }
}

fn check(title: &str, body: &str, tags: &[String]) -> Result<(), Status> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        return Err(Status::bad_request(NAME, format!("title is required (1 to {MAX_TITLE} characters)")));
    }
    if body.len() > MAX_BODY {
        return Err(Status::bad_request(NAME, format!("body is larger than {MAX_BODY} bytes")));
    }
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.chars().count() > 50) {
        return Err(Status::bad_request(NAME, format!("at most {MAX_TAGS} tags of 1 to 50 characters")));
    }
    Ok(())
}

fn valid_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Status::bad_request(NAME, format!("invalid note id {id:?}")));
    }
    Ok(())
}

/// Where everything of namespace `ns` is kept in the service's table: the server deletes
/// it with the namespace.
pub fn tenant_prefix(ns: &str) -> String {
    format!("notes/{ns}/")
}

/// The store key of note `id` of namespace `ns`.
fn key(ns: &str, id: &str) -> String {
    format!("{}{id}", tenant_prefix(ns))
}

fn decode(value: &[u8]) -> Result<Note, Status> {
    serde_json::from_slice(value).map_err(|e| Status::internal(NAME, format!("a stored note is unreadable: {e}")))
}

fn encode(note: &Note) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(note).map_err(|e| Status::internal(NAME, e.to_string()))
}

/// Distributed's handlers on `service` (named [`NAME`], configured by the host: its
/// server, account and namespace), as a platform service.
pub fn service(service: Service) -> Service {
    // A platform service's data lives in the micro namespace: set before the handles.
    let service = service.platform();
    let store = service.store();
    let (create, get, list, update, delete) = (store.clone(), store.clone(), store.clone(), store.clone(), store);
    service
        .version(env!("CARGO_PKG_VERSION"))
        .handle("Notes.Create", move |ctx: Context, req: CreateRequest| {
            let store = create.clone();
            async move {
                let (ns, author) = caller(&ctx)?;
                check(&req.title, &req.body, &req.tags)?;
                let t = now();
                let id = uuid::Uuid::new_v4().simple().to_string();
                let note = Note {
                    id,
                    title: req.title.trim().to_string(),
                    body: req.body,
                    tags: req.tags,
                    author,
                    created: t,
                    updated: t,
                };
                store.put(&key(&ns, &note.id), encode(&note)?).await?;
                Ok(note)
            }
        })
        .handle("Notes.Get", move |ctx: Context, req: IdRequest| {
            let store = get.clone();
            async move {
                let (ns, _) = caller(&ctx)?;
                valid_id(&req.id)?;
                decode(&store.get(&key(&ns, &req.id)).await?.value)
            }
        })
        .handle("Notes.List", move |ctx: Context, req: ListRequest| {
            let store = list.clone();
            async move {
                let (ns, _) = caller(&ctx)?;
                let records = store.read(&tenant_prefix(&ns), &Query { prefix: true, ..Default::default() }).await?;
                let mut notes = records.iter().map(|r| decode(&r.value)).collect::<Result<Vec<_>, _>>()?;
                notes.retain(|n| req.tag.as_ref().is_none_or(|t| n.tags.contains(t)));
                notes.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
                Ok(ListReply { notes })
            }
        })
        .handle("Notes.Update", move |ctx: Context, req: UpdateRequest| {
            let store = update.clone();
            async move {
                let (ns, _) = caller(&ctx)?;
                valid_id(&req.id)?;
                let mut note = decode(&store.get(&key(&ns, &req.id)).await?.value)?;
                if let Some(title) = req.title {
                    note.title = title.trim().to_string();
                }
                if let Some(body) = req.body {
                    note.body = body;
                }
                if let Some(tags) = req.tags {
                    note.tags = tags;
                }
                check(&note.title, &note.body, &note.tags)?;
                note.updated = now();
                store.put(&key(&ns, &note.id), encode(&note)?).await?;
                Ok(note)
            }
        })
        .handle("Notes.Delete", move |ctx: Context, req: IdRequest| {
            let store = delete.clone();
            async move {
                let (ns, who) = caller(&ctx)?;
                valid_id(&req.id)?;
                let note = decode(&store.get(&key(&ns, &req.id)).await?.value)?;
                // Its author or the namespace's admin.
                if note.author != who && !ctx.caller().is_some_and(|c| c.is_admin()) {
                    return Err(Status::new(
                        micro_core::Code::PermissionDenied,
                        NAME,
                        "only its author or an admin deletes a note",
                    ));
                }
                store.delete(&key(&ns, &req.id)).await?;
                Ok(Empty {})
            }
        })
}
