//! Files, a product of the platform: a namespace's apps upload files — whole (a raw body
//! or a multipart form) or in resumable chunks — and serve them with range requests,
//! conditional requests, signed expiring URLs for private files and image thumbnails on
//! request (`?thumb=200x200`, cached).
//!
//! `micro server` hosts it in its gateway (`/files/v1/…`): the requests come as they are,
//! with the caller the gateway identified. A file's bytes are a blob of the namespace
//! (bucket `files`: they count in its storage and go with it); what is known about it is
//! kept in the product's table under `{namespace}/`.
//!
//! Who may do what: a namespace's team (its accounts with the `data` or `developer` scope,
//! or its admins) uploads and manages every file; its app users (the users product's) upload
//! when the namespace's settings let them, and see and delete their own; anybody reads a
//! public file, and a private one with a signed URL its owner or the team asked for.

mod http_util;
mod service;
mod thumb;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use micro::auth::Caller;
use micro_core::auth::AccountType;
use micro_core::blob::Blob;
use micro_core::store::{Query, Record, Store, Table};
use micro_core::{Code, Status};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use http_util::{error, reply};
pub use micro::web::Body;
pub use service::{Empty, IdRequest, ListReply, ListRequest, service_with};

/// The product's name: its table, and the first segment of its paths.
pub const NAME: &str = "files";

/// The blob bucket of a namespace that holds its files.
pub const BUCKET: &str = "files";

/// Where the product keeps namespace `ns`'s data in its table.
pub fn tenant_prefix(ns: &str) -> String {
    format!("{ns}/")
}

/// The largest file a namespace's settings may allow.
pub const MAX_FILE_SIZE: u64 = 1 << 30;

/// The largest chunk of a resumable upload.
pub const MAX_CHUNK: u64 = 16 << 20;

/// How long an unfinished resumable upload is kept.
const UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a finished upload's record is kept.
const FINISHED_TTL: Duration = Duration::from_secs(3600);

/// The longest a signed URL lasts.
const MAX_EXPIRY: u64 = 7 * 24 * 3600;

/// How much of a file is read to tell its type.
const SNIFF: usize = 8192;

/// A namespace's settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Whether the namespace's app users may upload (their own files).
    pub app_uploads: bool,
    /// The largest file, in bytes.
    pub max_file_size: u64,
    /// The most bytes the namespace's files may hold together.
    pub max_total: u64,
    /// The content types allowed (`image/png`, or `image/` for every image); empty: any.
    pub types: Vec<String>,
    /// The thumbnail sizes asked for with `?thumb=WxH` (others are refused: each is made
    /// once and kept, in the namespace's storage).
    pub thumbs: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            app_uploads: false,
            max_file_size: 10 << 20,
            max_total: 1 << 30,
            types: Vec::new(),
            thumbs: ["100x100", "200x200", "400x400"].map(String::from).to_vec(),
        }
    }
}

impl Settings {
    fn check(&self) -> Result<(), Status> {
        if self.max_file_size == 0 || self.max_file_size > MAX_FILE_SIZE {
            return Err(bad(format!("max_file_size is 1 to {MAX_FILE_SIZE} bytes")));
        }
        if self.max_total < self.max_file_size {
            return Err(bad("max_total is at least max_file_size"));
        }
        if self.types.len() > 50 {
            return Err(bad("at most 50 types"));
        }
        if self.thumbs.len() > 10 {
            return Err(bad("at most 10 thumbnail sizes"));
        }
        for t in &self.thumbs {
            thumb::size(t)?;
        }
        for t in &self.types {
            let ok = t.len() <= 100
                && t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                        && !b.starts_with('.')
                        && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
                });
            if !ok {
                return Err(bad(format!("{t:?} is not a content type (like image/png, or image/ for all images)")));
            }
        }
        Ok(())
    }

    fn allows(&self, content_type: &str) -> bool {
        let base = content_type.split(';').next().unwrap_or("").trim();
        self.types.is_empty()
            || self.types.iter().any(|t| if t.ends_with('/') { base.starts_with(t.as_str()) } else { base == t })
    }
}

/// What is known about a file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct File {
    /// Its id.
    pub id: String,
    /// Its name (no path).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its content type, as its content tells.
    #[serde(rename = "type")]
    pub content_type: String,
    /// Whether anybody may read it.
    pub public: bool,
    /// Who uploaded it: an app user's id, or an account's.
    pub owner: String,
    /// Whether the owner is an app user (`user`) or an account of the team (`account`).
    pub owner_kind: String,
    /// The SHA-256 of its content, hex.
    pub sha256: String,
    /// When it was uploaded (Unix seconds).
    pub created: u64,
    /// The database record it is attached to (`collection/id`): who may see the record
    /// may see it, and it is deleted with the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// When that record was made: a record made later with the same id is another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_created: Option<String>,
}

impl File {
    /// What a caller who is neither its owner nor the team sees of it: not who uploaded
    /// it, nor the record it is attached to.
    fn for_viewer(mut self, full: bool) -> File {
        if !full {
            self.owner.clear();
            self.owner_kind.clear();
            self.record = None;
            self.record_created = None;
        }
        self
    }

    fn to_json(&self, ns: &str) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["url"] = json!(content_path(ns, &self.id, &self.name));
        v
    }
}

/// An unfinished resumable upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Upload {
    id: String,
    name: String,
    size: u64,
    declared: String,
    public: bool,
    owner: String,
    owner_kind: String,
    received: u64,
    created: u64,
    #[serde(default)]
    record: Option<String>,
    /// The file it made, once finished (kept an hour, so a client whose last answer was
    /// lost learns it).
    #[serde(default)]
    file: Option<String>,
}

/// What a file's name keeps as it is in a URL or a header's `filename*`.
pub(crate) const NAME_CHARS: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The path a file's content is served at.
fn content_path(ns: &str, id: &str, name: &str) -> String {
    let name = percent_encoding::utf8_percent_encode(name, NAME_CHARS);
    format!("/files/v1/content/{ns}/{id}/{name}")
}

fn bad(detail: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, NAME, detail)
}

fn not_found() -> Status {
    Status::new(Code::NotFound, NAME, "no such file")
}

fn denied(detail: impl Into<String>) -> Status {
    Status::new(Code::PermissionDenied, NAME, detail)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random_id() -> Result<String, Status> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| Status::internal(NAME, format!("randomness: {e}")))?;
    Ok(bytes.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect())
}

fn valid_id(id: &str) -> bool {
    id.len() == 20 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A file's name as given, refused when it is a path or holds control characters.
fn file_name(name: &str) -> Result<String, Status> {
    let name = name.trim();
    if name.is_empty() {
        return Ok("file".to_string());
    }
    if name.len() > 255 {
        return Err(bad("a file name is at most 255 bytes"));
    }
    if name.contains(['/', '\\']) || name == "." || name == ".." || name.chars().any(char::is_control) {
        return Err(bad(format!("{name:?} is not a file name (no paths, no control characters)")));
    }
    Ok(name.to_string())
}

/// Who calls, as far as files go.
struct Who<'a> {
    caller: &'a Caller,
    ns: &'a str,
}

impl Who<'_> {
    /// An account of the namespace's team that may write its data.
    fn team_writer(&self) -> bool {
        self.caller.account.as_ref().is_some_and(|a| a.kind != AccountType::App && a.may_use_data_of(self.ns))
    }

    /// Anybody of the namespace's team (viewers too).
    fn team(&self) -> bool {
        self.caller.is_operator()
            || self.caller.account.as_ref().is_some_and(|a| a.namespace == self.ns && a.kind != AccountType::App)
    }

    /// The namespace's app user, when the caller is one.
    fn app_user(&self) -> Option<&str> {
        self.caller
            .account
            .as_ref()
            .filter(|a| a.kind == AccountType::App && a.namespace == self.ns)
            .map(|a| a.id.as_str())
    }

    /// `f` as the caller may see it.
    fn shown(&self, f: File) -> File {
        let full = self.team() || self.owns(&f);
        f.for_viewer(full)
    }

    fn owns(&self, f: &File) -> bool {
        match self.caller.account.as_ref() {
            Some(a) if a.namespace == self.ns => {
                a.id == f.owner && (a.kind == AccountType::App) == (f.owner_kind == "user")
            }
            _ => false,
        }
    }

    /// The owner of what the caller uploads now, refused when they may not.
    fn uploader(&self, settings: &Settings) -> Result<(String, &'static str), Status> {
        if self.team_writer() {
            let id = self.caller.id().unwrap_or_default().to_string();
            return Ok((id, "account"));
        }
        if let Some(uid) = self.app_user() {
            if settings.app_uploads {
                return Ok((uid.to_string(), "user"));
            }
            return Err(denied("this app's users may not upload files (the namespace's files settings)"));
        }
        match self.caller.account {
            None => Err(Status::new(Code::Unauthenticated, NAME, "sign in to upload files")),
            Some(_) => {
                Err(denied(format!("uploading files of namespace {} needs its data or developer scope", self.ns)))
            }
        }
    }
}

/// The files product.
#[derive(Clone)]
pub struct Files {
    store: Arc<dyn Store>,
    blob: Arc<dyn Blob>,
    table: Table,
    /// The database whose records files are attached to, when the server hosts it.
    db: Option<Arc<micro_db::Db>>,
    /// Thumbnails being made on this node at once.
    thumbnailing: Arc<tokio::sync::Semaphore>,
}

impl Files {
    /// Files kept in `store` (the product's table of the `micro` namespace) and `blob`
    /// (each namespace's `files` bucket).
    pub fn new(store: Arc<dyn Store>, blob: Arc<dyn Blob>) -> Files {
        Files {
            store,
            blob,
            table: Table::new(micro_core::namespace::DEFAULT, NAME),
            db: None,
            thumbnailing: Arc::new(tokio::sync::Semaphore::new(2)),
        }
    }

    /// Files attached to the records of `db` (by its rules), deleted with them: the hook
    /// is set on `db`.
    pub fn with_db(mut self, db: Arc<micro_db::Db>) -> Files {
        self.db = Some(db.clone());
        let files = self.clone();
        db.on_delete(Arc::new(move |ns: &str, collection: &str, id: Option<&str>| {
            let (files, ns, collection, id) =
                (files.clone(), ns.to_string(), collection.to_string(), id.map(str::to_string));
            tokio::spawn(async move {
                if let Err(e) = files.record_deleted(&ns, &collection, id.as_deref()).await {
                    tracing::warn!(service = NAME, namespace = %ns, error = %e, "deleting the files of a deleted record");
                }
            });
        }));
        self
    }

    /// Deletes the files attached to record `id` of `collection` (every record's, without
    /// an id).
    pub async fn record_deleted(&self, ns: &str, collection: &str, id: Option<&str>) -> Result<(), Status> {
        let prefix = match id {
            Some(id) => format!("{ns}/record/{collection}/{id}/"),
            None => format!("{ns}/record/{collection}/"),
        };
        let keys = self.store.list(&self.table, &prefix, &Query { prefix: true, ..Default::default() }).await?;
        for key in keys {
            if let Some(file) = key.rsplit('/').next() {
                self.delete(ns, file).await?;
            }
            match self.store.delete(&self.table, &key).await {
                Err(e) if e.code() != Code::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `caller`, acting in `ns`, may do `access` to the record `record` names.
    async fn record_allows(
        &self,
        caller: &Caller,
        ns: &str,
        record: &str,
        access: micro_db::Access,
    ) -> Result<Option<String>, Status> {
        let Some(db) = &self.db else { return Ok(None) };
        let Some((collection, id)) = record.split_once('/') else { return Ok(None) };
        let mut acting = caller.clone();
        acting.namespace = ns.to_string();
        db.allows(&acting, collection, id, access).await
    }

    /// The record a file is to be attached to (`collection/id`), checked: it exists and
    /// the caller may change it.
    async fn attach_to(&self, who: &Who<'_>, record: Option<String>) -> Result<Option<String>, Status> {
        let Some(record) = record.filter(|r| !r.is_empty()) else { return Ok(None) };
        let valid = record.split_once('/').is_some_and(|(c, id)| {
            let ok = |s: &str, extra: &[u8]| {
                (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
            };
            ok(c, b"_") && ok(id, b"_-")
        });
        if !valid {
            return Err(bad(format!("record is collection/id, not {record:?}")));
        }
        if self.db.is_none() {
            return Err(Status::new(
                Code::FailedPrecondition,
                NAME,
                "the database is not hosted here: files attach to no record",
            ));
        }
        if self.record_allows(who.caller, who.ns, &record, micro_db::Access::Update).await?.is_none() {
            return Err(denied(format!("no record {record} that you may change")));
        }
        Ok(Some(record))
    }

    /// Serves a request under `/files/v1/` of `caller` (as the gateway identified them).
    pub async fn serve<B>(&self, req: http::Request<B>, caller: &Caller) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        match self.route(req, caller).await {
            Ok(res) => res,
            Err(e) => error(&e),
        }
    }

    async fn route<B>(&self, req: http::Request<B>, caller: &Caller) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix("/files/v1/") else {
            return Err(Status::new(
                Code::NotFound,
                NAME,
                format!("no route {path}: the files API is under /files/v1/"),
            ));
        };
        if let Some(name) = micro::web::repeated_param(req.uri().query()) {
            return Err(bad(format!("the query gives {name} twice")));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let method = req.method().clone();
        let ns = caller.namespace.clone();
        let who = Who { caller, ns: &ns };
        match (&method, segs.as_slice()) {
            (&Method::GET | &Method::HEAD, ["content", cns, id, ..]) => {
                let cns = cns.to_string();
                let id = id.to_string();
                self.content(&req, caller, &cns, &id).await
            }
            (&Method::POST, ["files"]) => self.upload(req, &who).await,
            (&Method::GET, ["files"]) => {
                let query = req.uri().query();
                let (owner, record) = (http_util::query_param(query, "owner"), http_util::query_param(query, "record"));
                let files = self.list(&who, owner, record).await?;
                let items: Vec<Value> = files.into_iter().map(|f| who.shown(f).to_json(&ns)).collect();
                Ok(reply(StatusCode::OK, &json!({"files": items})))
            }
            (&Method::GET, ["files", id]) => {
                let f = self.readable(&who, id).await?;
                Ok(reply(StatusCode::OK, &who.shown(f).to_json(&ns)))
            }
            (&Method::DELETE, ["files", id]) => {
                let f = self.managed(&who, id).await?;
                self.delete(&ns, &f.id).await?;
                Ok(http_util::empty(StatusCode::NO_CONTENT))
            }
            (&Method::POST, ["files", id, "url"]) => {
                let id = id.to_string();
                let body = http_util::json_body(req.into_body(), 4096).await?;
                self.signed_url(&who, &id, body).await
            }
            (&Method::POST, ["uploads"]) => {
                let body = http_util::json_body(req.into_body(), 4096).await?;
                self.start_upload(&who, body).await
            }
            (&Method::GET, ["uploads", id]) => {
                let u = self.upload_of(&who, id).await?;
                Ok(reply(StatusCode::OK, &self.upload_state(&ns, &u).await?))
            }
            (&Method::PUT | &Method::PATCH, ["uploads", id]) => {
                let id = id.to_string();
                self.chunk(req, &who, &id).await
            }
            (&Method::DELETE, ["uploads", id]) => {
                let u = self.upload_of(&who, id).await?;
                self.drop_upload(&ns, &u.id).await?;
                Ok(http_util::empty(StatusCode::NO_CONTENT))
            }
            (&Method::GET, ["settings"]) => {
                let settings = self.team_settings(&who).await?;
                Ok(reply(StatusCode::OK, &serde_json::to_value(settings).unwrap_or_default()))
            }
            (&Method::POST | &Method::PUT, ["settings"]) => {
                let body = http_util::json_body(req.into_body(), 16 * 1024).await?;
                let settings: Settings = serde_json::from_value(body).map_err(|e| bad(format!("bad settings: {e}")))?;
                let saved = self.save_settings(&who, settings).await?;
                Ok(reply(StatusCode::OK, &serde_json::to_value(saved).unwrap_or_default()))
            }
            _ => Err(Status::new(Code::NotFound, NAME, format!("no route {method} {path}"))),
        }
    }

    /// The namespace's settings, for its team.
    async fn team_settings(&self, who: &Who<'_>) -> Result<Settings, Status> {
        if !who.team() {
            return Err(denied("the files settings are the namespace team's"));
        }
        self.settings(who.ns).await
    }

    /// Saves the namespace's settings, for its admins.
    async fn save_settings(&self, who: &Who<'_>, settings: Settings) -> Result<Settings, Status> {
        if !who.caller.account.as_ref().is_some_and(|a| a.kind != AccountType::App && a.is_admin_of(who.ns)) {
            return Err(denied("the namespace's admins change its files settings"));
        }
        settings.check()?;
        self.write_json(format!("{}/settings", who.ns), &settings, None).await?;
        Ok(settings)
    }

    async fn settings(&self, ns: &str) -> Result<Settings, Status> {
        Ok(self.read_json(&format!("{ns}/settings")).await?.unwrap_or_default())
    }

    async fn read_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Status> {
        micro_core::store::read_json(self.store.as_ref(), &self.table, key).await
    }

    async fn write_json<T: Serialize>(&self, key: String, v: &T, ttl: Option<Duration>) -> Result<(), Status> {
        micro_core::store::write_json(self.store.as_ref(), &self.table, &key, v, ttl).await
    }

    async fn file(&self, ns: &str, id: &str) -> Result<File, Status> {
        if !valid_id(id) {
            return Err(not_found());
        }
        self.read_json(&format!("{ns}/file/{id}")).await?.ok_or_else(not_found)
    }

    /// A file the caller may read by who they are (a signed URL aside).
    async fn readable(&self, who: &Who<'_>, id: &str) -> Result<File, Status> {
        let f = self.file(who.ns, id).await?;
        if self.may_read(who, &f).await? {
            return Ok(f);
        }
        // Nothing tells a private file from none.
        Err(not_found())
    }

    /// Whether the caller may read `f` by who they are: anybody a public file, the team,
    /// its owner, and (a file attached to a record) whoever may see the record.
    async fn may_read(&self, who: &Who<'_>, f: &File) -> Result<bool, Status> {
        if f.public || who.team() || who.owns(f) {
            return Ok(true);
        }
        match &f.record {
            Some(record) => {
                let made = self.record_allows(who.caller, who.ns, record, micro_db::Access::View).await?;
                Ok(made.is_some_and(|m| same_record(f, &m)))
            }
            None => Ok(false),
        }
    }

    /// When record `record` (`collection/id`) of `ns` was made, if it exists.
    async fn record_made(&self, ns: &str, record: &str) -> Result<Option<String>, Status> {
        // The product itself, as an operator acting in the namespace, sees every record.
        let operator = micro_core::auth::Account {
            id: format!("product-{NAME}"),
            namespace: micro_core::namespace::DEFAULT.to_string(),
            scopes: vec![micro_core::auth::ADMIN_SCOPE.to_string()],
            ..Default::default()
        };
        let caller = Caller { account: Some(operator), namespace: ns.to_string(), expires: None };
        self.record_allows(&caller, ns, record, micro_db::Access::View).await
    }

    /// A file the caller may delete and sign URLs of.
    async fn managed(&self, who: &Who<'_>, id: &str) -> Result<File, Status> {
        let f = self.file(who.ns, id).await?;
        if who.team_writer() || who.owns(&f) {
            return Ok(f);
        }
        if f.public || who.team() {
            return Err(denied("only the file's owner or the namespace's team may change it"));
        }
        Err(not_found())
    }

    /// The files the caller may list: a record's (for who may see it), else the team's
    /// every file and an app user's own, newest first.
    async fn list(&self, who: &Who<'_>, owner: Option<String>, record: Option<String>) -> Result<Vec<File>, Status> {
        if let Some(record) = record {
            // A record's files: for whoever may see the record.
            let Some(made) = self.record_allows(who.caller, who.ns, &record, micro_db::Access::View).await? else {
                return Err(Status::new(Code::NotFound, NAME, format!("no record {record}")));
            };
            let prefix = format!("{}/record/{record}/", who.ns);
            let keys = self.store.list(&self.table, &prefix, &Query { prefix: true, ..Default::default() }).await?;
            let mut files = Vec::new();
            for key in keys {
                let Some(id) = key.rsplit('/').next() else { continue };
                if let Some(f) = self.read_json::<File>(&format!("{}/file/{id}", who.ns)).await?
                    && same_record(&f, &made)
                {
                    files.push(f);
                }
            }
            return Ok(files);
        }
        let team = who.team();
        let own = who.app_user();
        if !team && own.is_none() {
            return Err(match who.caller.account {
                None => Status::new(Code::Unauthenticated, NAME, "sign in to list files"),
                Some(_) => denied("no files of this namespace to list"),
            });
        }
        let keys = self
            .store
            .list(&self.table, &format!("{}/file/", who.ns), &Query { prefix: true, ..Default::default() })
            .await?;
        let mut files = Vec::new();
        for key in keys {
            let Some(f) = self.read_json::<File>(&key).await? else { continue };
            let mine = who.owns(&f);
            if (team || mine) && owner.as_deref().is_none_or(|o| o == f.owner) {
                files.push(f);
            }
        }
        files.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(files)
    }

    /// The bytes the namespace's files hold.
    async fn used(&self, ns: &str) -> Result<u64, Status> {
        match self.blob.list(ns, BUCKET, "").await {
            Ok(all) => Ok(all.iter().map(|b| b.size).sum()),
            Err(e) if e.code() == Code::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// How many bytes one more file may have now.
    async fn room(&self, ns: &str, settings: &Settings) -> Result<u64, Status> {
        let used = self.used(ns).await?;
        let room = settings.max_total.saturating_sub(used).min(settings.max_file_size);
        if room == 0 {
            return Err(Status::new(
                Code::ResourceExhausted,
                NAME,
                format!("the namespace's files hold {used} bytes, its most (max_total): delete some first"),
            )
            .with_http_status(413));
        }
        Ok(room)
    }

    async fn upload<B>(&self, req: http::Request<B>, who: &Who<'_>) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        let (parts, body) = req.into_parts();
        let query = parts.uri.query();
        let name = http_util::query_param(query, "name").unwrap_or_default();
        let public = http_util::query_param(query, "public").is_some_and(|v| v == "true" || v == "1");
        let record = http_util::query_param(query, "record");
        let declared = http_util::header_str(&parts.headers, header::CONTENT_TYPE).unwrap_or("").to_string();
        let multipart = declared.to_ascii_lowercase().starts_with("multipart/form-data");
        // What can be refused before the body is read is; the body is then read and
        // dropped, so a client still sending it reads the answer.
        let checked = async {
            let settings = self.settings(who.ns).await?;
            let (owner, owner_kind) = who.uploader(&settings)?;
            let room = self.room(who.ns, &settings).await?;
            if let Some(len) = http_util::content_length(&parts.headers)
                && len > room.saturating_add(64 * 1024)
            {
                return Err(too_large(room));
            }
            let raw =
                if multipart { None } else { Some((file_name(&name)?, self.attach_to(who, record.clone()).await?)) };
            let boundary = if multipart {
                Some(multer::parse_boundary(&declared).map_err(|e| bad(format!("a multipart form: {e}")))?)
            } else {
                None
            };
            Ok((settings, owner, owner_kind, room, raw, boundary))
        }
        .await;
        let (settings, owner, owner_kind, room, raw, boundary) = match checked {
            Ok(c) => c,
            Err(e) => {
                micro::web::drain(body, 16 << 20).await;
                return Err(e);
            }
        };
        let stream = http_util::body_stream(body);
        let f = if let Some(boundary) = boundary {
            // The form's stream is shared: what is left of it after a refusal is drained.
            let shared = Shared(Arc::new(std::sync::Mutex::new(Box::pin(stream))));
            let rest = shared.clone();
            // Each text field a few kB, the file what there is room for.
            let limits = multer::SizeLimit::new()
                .whole_stream(room.saturating_add(64 * 1024))
                .per_field(4096)
                .for_field("file", room.saturating_add(1));
            let form =
                multer::Multipart::with_constraints(shared, boundary, multer::Constraints::new().size_limit(limits));
            let parsed =
                self.upload_form(who, form, &settings, (name, public, record), (owner, owner_kind), room).await;
            if parsed.is_err() {
                let drained = async {
                    let mut rest = rest;
                    let mut n = 0usize;
                    while let Some(Ok(b)) = rest.next().await {
                        n += b.len();
                        if n > 16 << 20 {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
            }
            parsed?
        } else {
            let (name, record) = raw.ok_or_else(|| Status::internal(NAME, "a raw upload was not checked"))?;
            let file = File {
                id: random_id()?,
                name,
                size: 0,
                content_type: String::new(),
                public,
                owner,
                owner_kind: owner_kind.to_string(),
                sha256: String::new(),
                created: now(),
                record,
                record_created: None,
            };
            self.store_file(who.ns, &settings, file, &declared, room, Box::pin(stream)).await?
        };
        tracing::info!(service = NAME, namespace = %who.ns, size = f.size, "a file was uploaded");
        Ok(reply(StatusCode::OK, &f.to_json(who.ns)))
    }

    /// The file of a multipart form (its fields before it).
    async fn upload_form(
        &self,
        who: &Who<'_>,
        mut form: multer::Multipart<'static>,
        settings: &Settings,
        (mut name, mut public, mut record): (String, bool, Option<String>),
        (owner, owner_kind): (String, &'static str),
        room: u64,
    ) -> Result<File, Status> {
        {
            let mut stored = None;
            while let Some(field) = form.next_field().await.map_err(multipart_error)? {
                match field.name().unwrap_or("") {
                    "file" if stored.is_none() => {
                        let given = field.file_name().map(str::to_string).unwrap_or_default();
                        let declared = field.content_type().map(|m| m.to_string()).unwrap_or_default();
                        let name = file_name(if name.is_empty() { &given } else { &name })?;
                        let record = self.attach_to(who, record.take()).await?;
                        let chunks = field.map(|r| r.map_err(multipart_error));
                        let file = File {
                            id: random_id()?,
                            name,
                            size: 0,
                            content_type: String::new(),
                            public,
                            owner: owner.clone(),
                            owner_kind: owner_kind.to_string(),
                            sha256: String::new(),
                            created: now(),
                            record: record.clone(),
                            record_created: None,
                        };
                        stored =
                            Some(self.store_file(who.ns, settings, file, &declared, room, Box::pin(chunks)).await?);
                    }
                    "file" => return Err(bad("one file per upload")),
                    _ if stored.is_some() => {
                        if let Some(f) = &stored {
                            let _ = self.delete(who.ns, &f.id).await;
                        }
                        return Err(bad("put the form's fields before its file"));
                    }
                    "name" => name = field.text().await.map_err(multipart_error)?,
                    "public" => {
                        let v = field.text().await.map_err(multipart_error)?;
                        public = v == "true" || v == "1" || v == "on";
                    }
                    "record" => record = Some(field.text().await.map_err(multipart_error)?),
                    other => {
                        return Err(bad(format!("unknown form field {other:?}: file, name, public and record are")));
                    }
                }
            }
            stored.ok_or_else(|| bad("the form has no file field"))
        }
    }

    /// Stores `file`'s content from `chunks` (at most `room` bytes), its type told by the
    /// content, and what is known about it.
    async fn store_file(
        &self,
        ns: &str,
        settings: &Settings,
        mut file: File,
        declared: &str,
        room: u64,
        mut chunks: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>,
    ) -> Result<File, Status> {
        // The first bytes tell the type.
        let mut head = Vec::new();
        while head.len() < SNIFF {
            match chunks.next().await {
                Some(Ok(b)) => head.extend_from_slice(&b),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        let content_type = sniff(&head, declared)?;
        if !settings.allows(&content_type) {
            return Err(Status::new(
                Code::InvalidArgument,
                NAME,
                format!("files of type {content_type} are not allowed here (allowed: {})", settings.types.join(", ")),
            )
            .with_http_status(415));
        }
        let hasher = Arc::new(std::sync::Mutex::new(<sha2::Sha256 as sha2::Digest>::new()));
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (h, c) = (hasher.clone(), counted.clone());
        let all = futures::stream::once(async move { Ok(Bytes::from(head)) }).chain(chunks).map(move |r| {
            let b = r?;
            let n = c.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed) + b.len() as u64;
            if n > room {
                return Err(too_large(room));
            }
            sha2::Digest::update(&mut *h.lock().unwrap_or_else(|e| e.into_inner()), &b);
            Ok(b)
        });
        let info = match self.blob.put(ns, BUCKET, &file.id, &content_type, Box::pin(all)).await {
            Ok(info) => info,
            Err(_) if counted.load(std::sync::atomic::Ordering::Relaxed) > room => return Err(too_large(room)),
            Err(e) if e.code() == Code::ResourceExhausted => return Err(e.with_http_status(413)),
            Err(e) => return Err(e),
        };
        file.size = info.size;
        file.content_type = content_type;
        let digest = sha2::Digest::finalize(std::mem::take(&mut *hasher.lock().unwrap_or_else(|e| e.into_inner())));
        file.sha256 = digest.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(record) = &file.record {
            // Which record it is: a later one made with the same id is another.
            file.record_created = self.record_made(ns, record).await?;
            if file.record_created.is_none() {
                let _ = self.blob.delete(ns, BUCKET, &file.id).await;
                return Err(Status::new(Code::NotFound, NAME, format!("record {record} was deleted meanwhile")));
            }
            // The record's index first: a file whose record is deleted meanwhile is found.
            let key = format!("{ns}/record/{record}/{}", file.id);
            if let Err(e) = self.store.write(&self.table, &Record::new(key, Vec::new()), None).await {
                let _ = self.blob.delete(ns, BUCKET, &file.id).await;
                return Err(e);
            }
        }
        if let Err(e) = self.write_json(format!("{ns}/file/{}", file.id), &file, None).await {
            let _ = self.blob.delete(ns, BUCKET, &file.id).await;
            return Err(e);
        }
        if let Some(record) = &file.record
            && self.record_made(ns, record).await? != file.record_created
        {
            // Deleted while the file came: it goes too.
            self.delete(ns, &file.id).await?;
            return Err(Status::new(Code::NotFound, NAME, format!("record {record} was deleted meanwhile")));
        }
        Ok(file)
    }

    /// Deletes a file: what is known of it, its content and its thumbnails.
    async fn delete(&self, ns: &str, id: &str) -> Result<(), Status> {
        if let Some(f) = self.read_json::<File>(&format!("{ns}/file/{id}")).await?
            && let Some(record) = &f.record
        {
            match self.store.delete(&self.table, &format!("{ns}/record/{record}/{id}")).await {
                Err(e) if e.code() != Code::NotFound => return Err(e),
                _ => {}
            }
        }
        match self.store.delete(&self.table, &format!("{ns}/file/{id}")).await {
            Err(e) if e.code() != Code::NotFound => return Err(e),
            _ => {}
        }
        let objects = match self.blob.list(ns, BUCKET, id).await {
            Ok(o) => o,
            Err(e) if e.code() == Code::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for o in objects.iter().filter(|o| o.key == id || o.key.starts_with(&format!("{id}."))) {
            match self.blob.delete(ns, BUCKET, &o.key).await {
                Err(e) if e.code() != Code::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The namespace's key that signs URLs (made on first use).
    async fn key(&self, ns: &str) -> Result<Vec<u8>, Status> {
        micro_core::store::secret(self.store.as_ref(), &self.table, &format!("{ns}/key")).await
    }

    fn signature(key: &[u8], ns: &str, id: &str, expires: u64) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(format!("{ns}\n{id}\n{expires}").as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    async fn signed_url(&self, who: &Who<'_>, id: &str, body: Value) -> Result<Response<Body>, Status> {
        let f = self.managed(who, id).await?;
        let expires_in = match body.get("expires_in") {
            None | Some(Value::Null) => 3600,
            Some(v) => v
                .as_u64()
                .filter(|s| (1..=MAX_EXPIRY).contains(s))
                .ok_or_else(|| bad(format!("expires_in is 1 to {MAX_EXPIRY} seconds")))?,
        };
        if let Some(other) = body.as_object().and_then(|o| o.keys().find(|k| *k != "expires_in")) {
            return Err(bad(format!("unknown field {other:?}: expires_in is")));
        }
        let expires = now() + expires_in;
        let sig = Self::signature(&self.key(who.ns).await?, who.ns, &f.id, expires);
        let url = format!("{}?expires={expires}&sig={sig}", content_path(who.ns, &f.id, &f.name));
        Ok(reply(StatusCode::OK, &json!({"url": url, "expires": expires})))
    }

    /// Serves a file's content (`GET`/`HEAD /files/v1/content/{ns}/{id}/{name}`).
    async fn content<B>(
        &self,
        req: &http::Request<B>,
        caller: &Caller,
        ns: &str,
        id: &str,
    ) -> Result<Response<Body>, Status> {
        if micro_core::namespace::validate(ns).is_err() {
            return Err(not_found());
        }
        let who = Who { caller, ns };
        let f = self.file(ns, id).await?;
        let query = req.uri().query();
        let signed = match (http_util::query_param(query, "expires"), http_util::query_param(query, "sig")) {
            (Some(exp), Some(sig)) => {
                let exp: u64 = exp.parse().map_err(|_| bad("expires is a Unix time"))?;
                let want = Self::signature(&self.key(ns).await?, ns, &f.id, exp);
                if !bool::from(subtle::ConstantTimeEq::ct_eq(want.as_bytes(), sig.as_bytes())) {
                    return Err(denied("the URL's signature is wrong"));
                }
                if exp < now() {
                    return Err(denied("the URL expired: ask for a new one"));
                }
                true
            }
            (None, None) => false,
            _ => return Err(bad("a signed URL has both expires and sig")),
        };
        if !signed && !self.may_read(&who, &f).await? {
            return Err(not_found());
        }
        let thumb = match http_util::query_param(query, "thumb") {
            Some(t) => {
                let size = thumb::size(&t)?;
                let allowed = self.settings(ns).await?.thumbs;
                if !allowed.contains(&t) {
                    return Err(bad(format!("thumb is one of the namespace's sizes: {}", allowed.join(", "))));
                }
                Some(size)
            }
            None => None,
        };
        let (key, content_type, etag) = match thumb {
            Some((w, h)) => {
                let (key, content_type) = self.thumbnail(ns, &f, w, h).await?;
                (key, content_type, format!("\"{}-{w}x{h}\"", &f.sha256[..32.min(f.sha256.len())]))
            }
            None => (f.id.clone(), f.content_type.clone(), format!("\"{}\"", &f.sha256[..32.min(f.sha256.len())])),
        };
        let cache = if f.public { "public, max-age=3600" } else { "private, max-age=300" };
        let mut headers = HeaderMap::new();
        http_util::file_headers(&mut headers, &content_type, &f.name, &etag, cache, f.public);
        if let Some(inm) = http_util::header_str(req.headers(), header::IF_NONE_MATCH)
            && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
        {
            let mut res = http_util::empty(StatusCode::NOT_MODIFIED);
            res.headers_mut().extend(headers);
            return Ok(res);
        }
        let (info, chunks) = self
            .blob
            .get(ns, BUCKET, &key)
            .await
            .map_err(|e| if e.code() == Code::NotFound { not_found() } else { e })?;
        let size = info.size;
        let range = http_util::range(req.headers(), size, &etag);
        let head = req.method() == Method::HEAD;
        let (status, start, len) = match range {
            http_util::Range::Full => (StatusCode::OK, 0, size),
            http_util::Range::Part(a, b) => {
                let cr = format!("bytes {a}-{b}/{size}");
                headers
                    .insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).unwrap_or(HeaderValue::from_static("")));
                (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
            }
            http_util::Range::Unsatisfiable => {
                let mut res = error(
                    &Status::new(Code::OutOfRange, NAME, format!("the file has {size} bytes")).with_http_status(416),
                );
                let cr = format!("bytes */{size}");
                if let Ok(v) = HeaderValue::from_str(&cr) {
                    res.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(res);
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let body = if head { http_util::empty_body() } else { http_util::slice_body(chunks, start, len) };
        let mut res = Response::new(body);
        *res.status_mut() = status;
        res.headers_mut().extend(headers);
        Ok(res)
    }

    /// The blob key and type of `f`'s thumbnail of `w`×`h`, made and kept when missing.
    async fn thumbnail(&self, ns: &str, f: &File, w: u32, h: u32) -> Result<(String, String), Status> {
        let Some(format) = thumb::format_of(&f.content_type) else {
            return Err(bad(format!("thumbnails are of images (png, jpeg, gif, webp), not {}", f.content_type)));
        };
        if f.size > thumb::MAX_SOURCE {
            return Err(bad(format!("thumbnails are of images up to {} bytes", thumb::MAX_SOURCE)));
        }
        let key = format!("{}.thumb.{w}x{h}", f.id);
        let out_type = thumb::output_type(format);
        match self.blob.list(ns, BUCKET, &key).await {
            Ok(found) if found.iter().any(|o| o.key == key) => return Ok((key, out_type.to_string())),
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => return Err(e),
        }
        // A few at a time on a node: each decodes a whole image.
        let _turn = self.thumbnailing.acquire().await.map_err(|e| Status::internal(NAME, e.to_string()))?;
        let (_, chunks) = self.blob.get(ns, BUCKET, &f.id).await?;
        let source: Vec<Bytes> = chunks.collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
        let source = source.concat();
        let made = tokio::task::spawn_blocking(move || thumb::make(&source, format, w, h))
            .await
            .map_err(|e| Status::internal(NAME, e.to_string()))??;
        // Kept thumbnails count in the namespace's files.
        let settings = self.settings(ns).await?;
        if self.room(ns, &settings).await? < made.len() as u64 {
            return Err(no_room());
        }
        self.blob
            .put(ns, BUCKET, &key, out_type, Box::pin(futures::stream::once(async { Ok(Bytes::from(made)) })))
            .await?;
        Ok((key, out_type.to_string()))
    }

    async fn start_upload(&self, who: &Who<'_>, body: Value) -> Result<Response<Body>, Status> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Start {
            name: Option<String>,
            size: u64,
            #[serde(rename = "type", default)]
            content_type: String,
            #[serde(default)]
            public: bool,
            #[serde(default)]
            record: Option<String>,
        }
        let start: Start = serde_json::from_value(body).map_err(|e| bad(format!("an upload: {e}")))?;
        let settings = self.settings(who.ns).await?;
        let (owner, owner_kind) = who.uploader(&settings)?;
        self.sweep_parts(who.ns).await?;
        let room = self.room(who.ns, &settings).await?;
        if start.size == 0 {
            return Err(bad("an upload has a size of at least 1 byte"));
        }
        if start.size > room {
            return Err(too_large(room));
        }
        let u = Upload {
            id: random_id()?,
            name: file_name(start.name.as_deref().unwrap_or(""))?,
            size: start.size,
            declared: start.content_type,
            public: start.public,
            owner,
            owner_kind: owner_kind.to_string(),
            received: 0,
            created: now(),
            record: self.attach_to(who, start.record).await?,
            file: None,
        };
        self.write_json(format!("{}/upload/{}", who.ns, u.id), &u, Some(UPLOAD_TTL)).await?;
        Ok(reply(StatusCode::OK, &json!({"id": u.id, "offset": 0, "size": u.size, "chunk": MAX_CHUNK})))
    }

    /// Deletes the parts of uploads nobody finished (their records expired).
    async fn sweep_parts(&self, ns: &str) -> Result<(), Status> {
        let objects = match self.blob.list(ns, BUCKET, "").await {
            Ok(o) => o,
            Err(e) if e.code() == Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut uploads: Vec<&str> =
            objects.iter().filter_map(|o| o.key.split_once(".part.").map(|(u, _)| u)).collect();
        uploads.dedup();
        for id in uploads {
            if self.read_json::<Upload>(&format!("{ns}/upload/{id}")).await?.is_none() {
                self.drop_upload(ns, id).await?;
            }
        }
        Ok(())
    }

    async fn upload_of(&self, who: &Who<'_>, id: &str) -> Result<Upload, Status> {
        let none = || Status::new(Code::NotFound, NAME, "no such upload (finished, cancelled or expired)");
        if !valid_id(id) {
            return Err(none());
        }
        let u: Upload = self.read_json(&format!("{}/upload/{id}", who.ns)).await?.ok_or_else(none)?;
        let own = who.caller.account.as_ref().is_some_and(|a| {
            a.namespace == who.ns && a.id == u.owner && (a.kind == AccountType::App) == (u.owner_kind == "user")
        });
        if !(own || who.team_writer()) {
            return Err(none());
        }
        Ok(u)
    }

    async fn drop_upload(&self, ns: &str, id: &str) -> Result<(), Status> {
        let _ = self.store.delete(&self.table, &format!("{ns}/upload/{id}")).await;
        let parts = match self.blob.list(ns, BUCKET, &format!("{id}.part.")).await {
            Ok(p) => p,
            Err(e) if e.code() == Code::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for p in parts {
            let _ = self.blob.delete(ns, BUCKET, &p.key).await;
        }
        Ok(())
    }

    /// A chunk of a resumable upload: `PUT /files/v1/uploads/{id}` with
    /// `Content-Range: bytes {offset}-{last}/{size}`, at the offset received so far.
    async fn chunk<B>(&self, req: http::Request<B>, who: &Who<'_>, id: &str) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        let mut u = self.upload_of(who, id).await?;
        let (parts, body) = req.into_parts();
        if u.file.is_some() {
            // Finished: the last chunk again (its answer was lost) gets the same answer.
            micro::web::drain(body, MAX_CHUNK).await;
            return Ok(reply(StatusCode::OK, &self.upload_state(who.ns, &u).await?));
        }
        // What is refused before the chunk is read, its body is read and dropped for.
        let checked = async {
            let Some((first, last, total)) =
                http_util::header_str(&parts.headers, header::CONTENT_RANGE).and_then(http_util::content_range)
            else {
                return Err(bad("a chunk has a Content-Range: bytes {first}-{last}/{size}"));
            };
            if total != u.size {
                return Err(bad(format!("the upload has {} bytes, not {total}", u.size)));
            }
            if first != u.received {
                let detail = format!("the upload is at offset {}: send from there", u.received);
                return Err(Status::new(Code::FailedPrecondition, NAME, detail).with_http_status(409));
            }
            let len = last + 1 - first;
            if last >= total || len > MAX_CHUNK {
                return Err(bad(format!("a chunk is at most {MAX_CHUNK} bytes, within the upload")));
            }
            // The parts so far count in the namespace's files: unfinished uploads cannot
            // hold more than it may.
            let settings = self.settings(who.ns).await?;
            if self.room(who.ns, &settings).await? < len {
                return Err(no_room());
            }
            Ok((first, last, len))
        }
        .await;
        let (first, last, len) = match checked {
            Ok(c) => c,
            Err(e) => {
                micro::web::drain(body, MAX_CHUNK).await;
                if e.http_status() == 409 {
                    let mut res = error(&e);
                    res.headers_mut().insert("upload-offset", HeaderValue::from(u.received));
                    return Ok(res);
                }
                return Err(e);
            }
        };
        let data = http_util::collect_limited(body, len).await?;
        if data.len() as u64 != len {
            return Err(bad(format!("the chunk has {} bytes, not the {len} its range says", data.len())));
        }
        let key = format!("{}.part.{first:015}", u.id);
        self.blob
            .put(who.ns, BUCKET, &key, "application/octet-stream", Box::pin(futures::stream::once(async { Ok(data) })))
            .await?;
        u.received = last + 1;
        if u.received < u.size {
            self.write_json(format!("{}/upload/{}", who.ns, u.id), &u, Some(UPLOAD_TTL)).await?;
            return Ok(reply(StatusCode::OK, &json!({"id": u.id, "offset": u.received, "size": u.size})));
        }
        // The last chunk: the parts become the file.
        let settings = self.settings(who.ns).await?;
        let room = self.room(who.ns, &settings).await?.saturating_add(u.size);
        let mut keys: Vec<String> = match self.blob.list(who.ns, BUCKET, &format!("{}.part.", u.id)).await {
            Ok(p) => p.into_iter().map(|p| p.key).collect(),
            Err(e) if e.code() == Code::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        keys.sort();
        let blob = self.blob.clone();
        let ns = who.ns.to_string();
        let parts_stream = futures::stream::iter(keys)
            .then(move |k| {
                let (blob, ns) = (blob.clone(), ns.clone());
                async move {
                    match blob.get(&ns, BUCKET, &k).await {
                        Ok((_, chunks)) => chunks,
                        Err(e) => Box::pin(futures::stream::once(async move { Err(e) })) as micro_core::blob::Chunks,
                    }
                }
            })
            .flatten();
        let file = File {
            id: random_id()?,
            name: u.name.clone(),
            size: 0,
            content_type: String::new(),
            public: u.public,
            owner: u.owner.clone(),
            owner_kind: u.owner_kind.clone(),
            sha256: String::new(),
            created: now(),
            record: u.record.clone(),
            record_created: None,
        };
        let stored = self.store_file(who.ns, &settings, file, &u.declared, room, Box::pin(parts_stream)).await;
        self.drop_upload(who.ns, &u.id).await?;
        let f = stored?;
        u.file = Some(f.id.clone());
        self.write_json(format!("{}/upload/{}", who.ns, u.id), &u, Some(FINISHED_TTL)).await?;
        Ok(reply(StatusCode::OK, &json!({"id": u.id, "offset": u.size, "size": u.size, "file": f.to_json(who.ns)})))
    }

    /// Where an upload is: its offset, and its file once finished.
    async fn upload_state(&self, ns: &str, u: &Upload) -> Result<Value, Status> {
        let mut v = json!({"id": u.id, "offset": u.received, "size": u.size});
        if let Some(id) = &u.file {
            let f = self.file(ns, id).await?;
            v["offset"] = json!(u.size);
            v["file"] = f.to_json(ns);
        }
        Ok(v)
    }
}

/// A stream two hold: the form parser reads it, and the upload drains what is left.
#[derive(Clone)]
struct Shared(Arc<std::sync::Mutex<BodyChunks>>);

/// A request body's chunks.
type BodyChunks = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl Stream for Shared {
    type Item = Result<Bytes, Status>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_mut().poll_next(cx)
    }
}

/// Whether `f` is attached to the record made at `made` (a file from before the time was
/// kept is taken as the record's).
fn same_record(f: &File, made: &str) -> bool {
    f.record_created.as_deref().is_none_or(|c| c == made)
}

fn no_room() -> Status {
    Status::new(Code::ResourceExhausted, NAME, "the namespace's files hold their most (max_total): delete some first")
        .with_http_status(413)
}

fn too_large(room: u64) -> Status {
    Status::new(Code::ResourceExhausted, NAME, format!("the file is larger than the {room} bytes allowed"))
        .with_http_status(413)
}

fn multipart_error(e: multer::Error) -> Status {
    match e {
        multer::Error::FieldSizeExceeded { limit, field_name } if field_name.as_deref() == Some("file") => {
            too_large(limit.saturating_sub(1))
        }
        multer::Error::StreamSizeExceeded { limit } => {
            Status::new(Code::ResourceExhausted, NAME, format!("the form is larger than the {limit} bytes allowed"))
                .with_http_status(413)
        }
        e => bad(format!("a multipart form: {e}")),
    }
}

/// The type of a file by its first bytes (`declared` trusted only for text that is
/// valid UTF-8), refused when it claims to be an image and is not one.
fn sniff(head: &[u8], declared: &str) -> Result<String, Status> {
    let declared = declared.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let found = infer::get(head).map(|t| t.mime_type().to_string());
    if let Some(t) = found {
        if declared.starts_with("image/") && !t.starts_with("image/") {
            return Err(wrong_type(&declared, &t));
        }
        return Ok(t);
    }
    if declared.starts_with("image/") && declared != "image/svg+xml" {
        return Err(wrong_type(&declared, "not an image"));
    }
    // Text, unless a character is cut off at the end of what was read.
    let text = !head.contains(&0)
        && match std::str::from_utf8(head) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        };
    if text {
        let textual = declared.starts_with("text/")
            || ["application/json", "application/xml", "image/svg+xml", "application/javascript"]
                .contains(&declared.as_str());
        if textual {
            return Ok(format!("{declared}; charset=utf-8"));
        }
        return Ok("text/plain; charset=utf-8".into());
    }
    Ok(micro_core::blob::DEFAULT_CONTENT_TYPE.into())
}

fn wrong_type(declared: &str, found: &str) -> Status {
    Status::new(Code::InvalidArgument, NAME, format!("the content is {found}, not the {declared} it was sent as"))
        .with_http_status(415)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(created: Option<&str>) -> File {
        File {
            id: "a".repeat(20),
            name: "x.png".into(),
            size: 1,
            content_type: "image/png".into(),
            public: false,
            owner: "zoe".into(),
            owner_kind: "user".into(),
            sha256: String::new(),
            created: 0,
            record: Some("posts/p1".into()),
            record_created: created.map(str::to_string),
        }
    }

    #[test]
    fn a_record_made_again_with_the_same_id_is_another_record() {
        let f = attached(Some("2026-12-06 10:00:00.000Z"));
        assert!(same_record(&f, "2026-12-06 10:00:00.000Z"));
        assert!(!same_record(&f, "2026-12-06 10:05:00.000Z"), "a later record of the same id");
        assert!(same_record(&attached(None), "2026-12-06 10:05:00.000Z"), "a file from before the time was kept");
        let shown = attached(Some("t")).for_viewer(false);
        assert!(shown.owner.is_empty() && shown.record.is_none() && shown.record_created.is_none());
    }

    #[test]
    fn names_and_types() {
        assert_eq!(file_name("  ").unwrap(), "file");
        for bad in ["../x", "a/b", "a\\b", ".", "..", "a\u{0}b", "a\nb"] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png").unwrap(), "image/png");
        assert!(sniff(b"hello", "image/png").is_err());
        assert_eq!(sniff(b"hello", "text/csv").unwrap(), "text/csv; charset=utf-8");
        assert_eq!(sniff(b"hello", "").unwrap(), "text/plain; charset=utf-8");
        assert_eq!(sniff(&[0, 1, 2, 3], "").unwrap(), "application/octet-stream");
    }
}
