//! The store: key-value records scoped by database (a namespace) and table (by default
//! the calling service).

use crate::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// The largest value, in bytes (use blobs for more).
pub const MAX_VALUE: usize = 1024 * 1024;

/// One record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The key: 1 to [`MAX_KEY`] bytes of UTF-8 without NUL.
    pub key: String,
    /// The value: up to [`MAX_VALUE`] bytes.
    pub value: Vec<u8>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When the record expires, in Unix milliseconds (`None`: never). Set on reads.
    #[serde(default)]
    pub expiry: Option<u64>,
}

impl Record {
    /// A record with `key` and `value` and no metadata.
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Record {
        Record { key: key.into(), value: value.into(), ..Default::default() }
    }
}

/// Where records live: a database (the namespace) and a table in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Table {
    /// The database: a namespace.
    pub database: String,
    /// The table: by default the calling service's name.
    pub table: String,
}

impl Table {
    /// The table `table` of database `database`.
    pub fn new(database: impl Into<String>, table: impl Into<String>) -> Table {
        Table { database: database.into(), table: table.into() }
    }

    /// Checks both names (namespace rules for the database; 1–128 of `a-z A-Z 0-9 . _ -`
    /// for the table).
    pub fn validate(&self) -> Result<(), Status> {
        crate::namespace::validate(&self.database)
            .map_err(|_| Status::bad_request("store", format!("invalid database {:?}", self.database)))?;
        let t = &self.table;
        let ok = !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok { Ok(()) } else { Err(Status::bad_request("store", format!("invalid table {t:?}"))) }
    }
}

/// Key order of multi-record reads and lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Ascending by key (the default).
    #[default]
    Asc,
    /// Descending by key.
    Desc,
}

/// How a read or list matches keys. With neither `prefix` nor `suffix`, a read takes the
/// exact key (and a list takes every key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The key is a prefix.
    #[serde(default)]
    pub prefix: bool,
    /// The key is a suffix.
    #[serde(default)]
    pub suffix: bool,
    /// At most this many records (0: no limit).
    #[serde(default)]
    pub limit: u32,
    /// Skip this many first.
    #[serde(default)]
    pub offset: u32,
    /// Key order.
    #[serde(default)]
    pub order: Order,
}

/// Checks a read or list: the table, and the key unless it is an empty prefix or suffix
/// (which matches everything). Returns whether the read is exact.
pub fn check_query(table: &Table, key: &str, query: &Query) -> Result<bool, Status> {
    table.validate()?;
    let exact = !query.prefix && !query.suffix;
    if exact || !key.is_empty() {
        validate_key(key)?;
    }
    Ok(exact)
}

/// The bytes a record takes in a storage quota: its key, its value and its metadata (as
/// the JSON it is kept as).
pub fn record_size(key: &str, value: &[u8], metadata: &BTreeMap<String, String>) -> u64 {
    let meta = serde_json::to_vec(metadata).map(|m| m.len()).unwrap_or(0);
    (key.len() + value.len() + meta) as u64
}

/// The store interface.
///
/// Expired records are never returned (and are purged in the background).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records matching `key` as `query` says. An exact read of a missing key is
    /// `NotFound`; a prefix or suffix read may return none.
    async fn read(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<Record>, Status>;
    /// Writes (creates or replaces) a record, expiring after `ttl` when given (otherwise
    /// at `record.expiry`, if set).
    async fn write(&self, table: &Table, record: &Record, ttl: Option<Duration>) -> Result<(), Status>;
    /// Deletes a record; `NotFound` when there was none.
    async fn delete(&self, table: &Table, key: &str) -> Result<(), Status>;
    /// Keys matching `key` as `query` says (an empty key with no flags lists every key).
    async fn list(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<String>, Status>;
    /// The databases holding records.
    async fn databases(&self) -> Result<Vec<String>, Status>;
    /// The tables of a database holding records.
    async fn tables(&self, database: &str) -> Result<Vec<String>, Status>;
    /// The bytes a database's records hold ([`record_size`] each, expired ones excepted):
    /// what a plan's storage quota counts. This default reads every record; a backend
    /// that can sum where the data is does.
    async fn size(&self, database: &str) -> Result<u64, Status> {
        let mut total = 0u64;
        for name in self.tables(database).await? {
            let table = Table::new(database, name);
            let all = Query { prefix: true, ..Default::default() };
            for r in self.read(&table, "", &all).await? {
                total = total.saturating_add(record_size(&r.key, &r.value, &r.metadata));
            }
        }
        Ok(total)
    }
}

/// Checks the name of a separate store of a shared backend (`store`, `auth`, …):
/// lowercase letters, digits and `_`, as it becomes part of a table or key name.
pub fn validate_store_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(Status::bad_request("store", format!("invalid store name {name:?}")));
    }
    Ok(())
}

/// Checks a key: 1 to [`MAX_KEY`] bytes, no NUL.
pub fn validate_key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::bad_request("store", "the key is empty"));
    }
    if key.len() > MAX_KEY {
        return Err(Status::bad_request("store", format!("the key is longer than {MAX_KEY} bytes")));
    }
    if key.contains('\0') {
        return Err(Status::bad_request("store", "the key contains NUL"));
    }
    Ok(())
}

/// Checks a record before it is written.
pub fn validate_record(record: &Record) -> Result<(), Status> {
    validate_key(&record.key)?;
    if record.value.len() > MAX_VALUE {
        let detail = format!("the value is {} bytes; the limit is {MAX_VALUE}", record.value.len());
        return Err(Status::bad_request("store", detail));
    }
    Ok(())
}

/// When a record written with `ttl` expires, Unix milliseconds: `ttl` from now, none
/// for a zero TTL, else the record's own expiry.
pub fn expiry_of(record: &Record, ttl: Option<std::time::Duration>) -> Option<u64> {
    match ttl {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(now_ms().saturating_add(t.as_millis() as u64)),
        None => record.expiry,
    }
}

/// The error of an exact read or a delete of a key that has no live record.
pub fn not_found(key: &str, table: &Table) -> Status {
    Status::not_found("store", format!("no record {key:?} in {}/{}", table.database, table.table))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The value of record `key` of `table` as JSON (`None` when there is none): how a
/// product reads its own records.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    table: &Table,
    key: &str,
) -> Result<Option<T>, Status> {
    match store.read(table, key, &Query::default()).await {
        Ok(r) => match r.first() {
            Some(r) => serde_json::from_slice(&r.value).map(Some).map_err(|e| {
                Status::internal(
                    "store",
                    format!("record {key} of {}/{} is unreadable: {e}", table.database, table.table),
                )
            }),
            None => Ok(None),
        },
        Err(e) if e.code() == crate::Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` as JSON at `key` of `table`, expiring after `ttl` when given.
pub async fn write_json<T: Serialize>(
    store: &dyn Store,
    table: &Table,
    key: &str,
    value: &T,
    ttl: Option<Duration>,
) -> Result<(), Status> {
    let bytes = serde_json::to_vec(value).map_err(|e| Status::internal("store", e.to_string()))?;
    store.write(table, &Record::new(key, bytes), ttl).await
}

/// A secret of 30 random bytes kept at `key` of `table` (a signing key), made on first
/// use. Two nodes making one at the same time both use the one kept.
pub async fn secret(store: &dyn Store, table: &Table, key: &str) -> Result<Vec<u8>, Status> {
    if let Ok(r) = store.read(table, key, &Query::default()).await
        && let Some(r) = r.first()
    {
        return Ok(r.value.clone());
    }
    // Two version-4 UUIDs: 244 random bits from the system's generator.
    let fresh: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().flat_map(|u| u.into_bytes()).collect();
    store.write(table, &Record::new(key, fresh), None).await?;
    let r = store.read(table, key, &Query::default()).await?;
    r.first().map(|r| r.value.clone()).ok_or_else(|| Status::internal("store", format!("the secret {key} vanished")))
}
