//! Models: typed records over the store, with declared indexes.
//!
//! ```no_run
//! # async fn demo(store: micro::data::StoreHandle) -> Result<(), micro::Status> {
//! use micro::model::{Index, Model, Query};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User { id: String, email: String, age: u32 }
//!
//! let users = Model::<User>::new(store.table("users"), "id")
//!     .index(Index::new("email").unique())
//!     .index(Index::new("age"));
//! users.save(&User { id: "1".into(), email: "a@example.com".into(), age: 30 }).await?;
//! let by_email = users.query(&Query::eq("email", "a@example.com")).await?;
//! let oldest = users.query(&Query::by("age").desc().limit(10)).await?;
//! # Ok(()) }
//! ```
//!
//! Records live at `r/<id>`; every index keeps entries `i/<field>/<value>/<id>` whose keys
//! sort like the values (numbers numerically, strings bytewise), so equality and ordered
//! queries are prefix reads. A unique index also keeps `u/<field>/<value>` → id.
//! Unique checks are made before writing and are not atomic across concurrent writers of
//! the same value; hold a lock (`Service::sync`) around saves when that matters.

use crate::data::StoreHandle;
use micro_core::Status;
use micro_core::store::{Order, Query as StoreQuery, Record};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::marker::PhantomData;

/// A declared index on a field (a dot path into the record's JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    field: String,
    unique: bool,
}

impl Index {
    /// An index on `field`, usable for equality and ordered (asc/desc) queries.
    pub fn new(field: &str) -> Index {
        Index { field: field.to_string(), unique: false }
    }

    /// No two records may share a value.
    pub fn unique(mut self) -> Index {
        self.unique = true;
        self
    }
}

/// A query over one declared index.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    field: String,
    value: Option<Value>,
    order: Order,
    limit: u32,
    offset: u32,
}

impl Query {
    /// Records whose `field` equals `value`.
    pub fn eq(field: &str, value: impl Into<Value>) -> Query {
        Query { field: field.to_string(), value: Some(value.into()), order: Order::Asc, limit: 0, offset: 0 }
    }

    /// Every record, ordered by `field` (ascending unless [`Query::desc`]).
    pub fn by(field: &str) -> Query {
        Query { field: field.to_string(), value: None, order: Order::Asc, limit: 0, offset: 0 }
    }

    /// Descending order.
    pub fn desc(mut self) -> Query {
        self.order = Order::Desc;
        self
    }

    /// At most `n` records.
    pub fn limit(mut self, n: u32) -> Query {
        self.limit = n;
        self
    }

    /// Skip the first `n` records.
    pub fn offset(mut self, n: u32) -> Query {
        self.offset = n;
        self
    }
}

/// Typed records of `T` in one store table.
pub struct Model<T> {
    store: StoreHandle,
    key: String,
    indexes: Vec<Index>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Model<T> {
    fn clone(&self) -> Self {
        Model { store: self.store.clone(), key: self.key.clone(), indexes: self.indexes.clone(), _t: PhantomData }
    }
}

fn bad(detail: impl Into<String>) -> Status {
    Status::bad_request("model", detail)
}

/// The value at a dot path of a JSON object.
fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, seg| v.get(seg))
}

/// Escapes `/` and `%` so a value is one key segment.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// A key segment that sorts like the value: type tag, then an order-preserving form.
fn encode(v: &Value) -> Result<String, Status> {
    Ok(match v {
        Value::Null => "z".to_string(),
        Value::Bool(b) => format!("b{}", u8::from(*b)),
        Value::Number(n) => {
            let f = n.as_f64().ok_or_else(|| bad("a number out of range cannot be indexed"))?;
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 1 { !bits } else { bits ^ (1 << 63) };
            format!("n{ordered:016x}")
        }
        Value::String(s) => format!("s{}", escape(s)),
        Value::Array(_) | Value::Object(_) => {
            return Err(bad("only strings, numbers, booleans and null can be indexed"));
        }
    })
}

impl<T: Serialize + DeserializeOwned> Model<T> {
    /// Records of `T` in `store`'s table, identified by the field `key` (a string or
    /// number).
    pub fn new(store: StoreHandle, key: &str) -> Model<T> {
        Model { store, key: key.to_string(), indexes: Vec::new(), _t: PhantomData }
    }

    /// Declares an index.
    pub fn index(mut self, index: Index) -> Model<T> {
        self.indexes.retain(|i| i.field != index.field);
        self.indexes.push(index);
        self
    }

    fn id_of(&self, v: &Value) -> Result<String, Status> {
        match field(v, &self.key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(escape(s)),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(bad(format!("the key field {:?} must be a non-empty string or a number", self.key))),
        }
    }

    /// Index entries of a record: `(key, unique key)` per index.
    fn entries(&self, v: &Value, id: &str) -> Result<Vec<(String, Option<String>)>, Status> {
        self.indexes
            .iter()
            .map(|i| {
                let enc = encode(field(v, &i.field).unwrap_or(&Value::Null))?;
                let entry = format!("i/{}/{enc}/{id}", i.field);
                let unique = i.unique.then(|| format!("u/{}/{enc}", i.field));
                Ok((entry, unique))
            })
            .collect()
    }

    async fn get_value(&self, id: &str) -> Result<Option<Value>, Status> {
        match self.store.get(&format!("r/{id}")).await {
            Ok(r) => serde_json::from_slice(&r.value).map(Some).map_err(|e| Status::internal("model", e.to_string())),
            Err(e) if e.code() == micro_core::Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves a record (creating or replacing it by its key); `AlreadyExists` when a unique
    /// index already holds its value for another record.
    pub async fn save(&self, record: &T) -> Result<(), Status> {
        let v = serde_json::to_value(record).map_err(|e| bad(format!("the record does not serialise: {e}")))?;
        let id = self.id_of(&v)?;
        let entries = self.entries(&v, &id)?;
        for (_, unique) in &entries {
            if let Some(u) = unique {
                match self.store.get(u).await {
                    Ok(owner) if owner.value != id.as_bytes() => {
                        return Err(Status::new(
                            micro_core::Code::AlreadyExists,
                            "model",
                            format!("{} is taken", u.trim_start_matches("u/")),
                        ));
                    }
                    Ok(_) => {}
                    Err(e) if e.code() == micro_core::Code::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Drop the old record's index entries that change.
        if let Some(old) = self.get_value(&id).await? {
            let new: Vec<&String> = entries.iter().map(|(e, _)| e).collect();
            for (entry, unique) in self.entries(&old, &id)? {
                if !new.contains(&&entry) {
                    self.store.delete(&entry).await.or_else(ignore_missing)?;
                    if let Some(u) = unique {
                        self.store.delete(&u).await.or_else(ignore_missing)?;
                    }
                }
            }
        }
        for (entry, unique) in &entries {
            self.store.put(entry, id.as_bytes().to_vec()).await?;
            if let Some(u) = unique {
                self.store.put(u, id.as_bytes().to_vec()).await?;
            }
        }
        let body = serde_json::to_vec(&v).map_err(|e| Status::internal("model", e.to_string()))?;
        self.store.write(&Record::new(format!("r/{id}"), body), None).await
    }

    /// The record with key `id`; `NotFound` when absent.
    pub async fn get(&self, id: &str) -> Result<T, Status> {
        let v = self
            .get_value(&escape(id))
            .await?
            .ok_or_else(|| Status::not_found("model", format!("no record {id:?}")))?;
        serde_json::from_value(v).map_err(|e| Status::internal("model", format!("stored record does not fit: {e}")))
    }

    /// Deletes the record with key `id`; `NotFound` when absent.
    pub async fn delete(&self, id: &str) -> Result<(), Status> {
        let id = escape(id);
        let old = self.get_value(&id).await?.ok_or_else(|| Status::not_found("model", format!("no record {id:?}")))?;
        for (entry, unique) in self.entries(&old, &id)? {
            self.store.delete(&entry).await.or_else(ignore_missing)?;
            if let Some(u) = unique {
                self.store.delete(&u).await.or_else(ignore_missing)?;
            }
        }
        self.store.delete(&format!("r/{id}")).await
    }

    /// Every record, by key.
    pub async fn list(&self) -> Result<Vec<T>, Status> {
        let q = StoreQuery { prefix: true, ..Default::default() };
        self.store
            .read("r/", &q)
            .await?
            .iter()
            .map(|r| serde_json::from_slice(&r.value).map_err(|e| Status::internal("model", e.to_string())))
            .collect()
    }

    /// Records matching a query on a declared index; `InvalidArgument` for an undeclared
    /// one.
    pub async fn query(&self, query: &Query) -> Result<Vec<T>, Status> {
        if !self.indexes.iter().any(|i| i.field == query.field) {
            let declared: Vec<&str> = self.indexes.iter().map(|i| i.field.as_str()).collect();
            return Err(bad(format!(
                "no index on {:?}; declared indexes: {}",
                query.field,
                if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
            )));
        }
        let prefix = match &query.value {
            Some(v) => format!("i/{}/{}/", query.field, encode(v)?),
            None => format!("i/{}/", query.field),
        };
        let q =
            StoreQuery { prefix: true, limit: query.limit, offset: query.offset, order: query.order, suffix: false };
        let mut out = Vec::new();
        for entry in self.store.read(&prefix, &q).await? {
            let id = String::from_utf8_lossy(&entry.value).into_owned();
            // An entry whose record is gone (a crash between writes) is skipped.
            if let Some(v) = self.get_value(&id).await? {
                out.push(serde_json::from_value(v).map_err(|e| Status::internal("model", e.to_string()))?);
            }
        }
        Ok(out)
    }
}

fn ignore_missing(e: Status) -> Result<(), Status> {
    if e.code() == micro_core::Code::NotFound { Ok(()) } else { Err(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_sorts_like_the_values() {
        let nums = [-1e9, -2.5, -1.0, 0.0, 0.5, 1.0, 2.0, 10.0, 1e12];
        let enc: Vec<String> = nums.iter().map(|n| encode(&serde_json::json!(n)).unwrap()).collect();
        let mut sorted = enc.clone();
        sorted.sort();
        assert_eq!(enc, sorted);
        assert!(encode(&serde_json::json!("a/b")).unwrap().contains("%2F"));
        assert!(encode(&serde_json::json!({"a": 1})).is_err());
    }
}
