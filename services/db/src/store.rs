//! Where the records are: embedded SQLite on one node ([`Records`]) or a PostgreSQL
//! database that nodes share ([`PgRecords`]). Both answer every call the same way;
//! the service talks to a [`Store`] and never knows which.

use crate::filter::Expr;
use crate::pg::PgRecords;
use crate::records::{AggregateOp, Change, DbError, Guard, IndexSpec, ListQuery, Page, Record, Records, Write};
use crate::sql::Request;
use serde_json::Value as Json;

/// The records of every namespace's collections, in one of the backends.
pub enum Store {
    /// Embedded SQLite (one node).
    Sqlite(Records),
    /// A shared PostgreSQL database (a cluster).
    Postgres(PgRecords),
}

/// The same call on whichever backend holds the records.
macro_rules! either {
    ($self:ident, $r:ident => $call:expr) => {
        match $self {
            Store::Sqlite($r) => $call,
            Store::Postgres($r) => $call,
        }
    };
}

impl Store {
    /// Whether the records are shared with other nodes (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// See [`Records::delete_namespace`].
    pub fn delete_namespace(&self, ns: &str) -> Result<(), DbError> {
        either!(self, r => r.delete_namespace(ns))
    }

    /// See [`Records::holds_namespace`].
    pub fn holds_namespace(&self, ns: &str) -> Result<bool, DbError> {
        either!(self, r => r.holds_namespace(ns))
    }

    /// See [`Records::collection`].
    pub fn collection(&self, ns: &str, name: &str) -> Result<Option<(Json, String, String)>, DbError> {
        either!(self, r => r.collection(ns, name))
    }

    /// See [`Records::collections`].
    pub fn collections(&self, ns: &str) -> Result<Vec<(String, Json, String, String)>, DbError> {
        either!(self, r => r.collections(ns))
    }

    /// See [`Records::save_collection`].
    // The collection, the caller and what is asked: each a different thing.
    #[allow(clippy::too_many_arguments)]
    pub fn save_collection(
        &self,
        ns: &str,
        name: &str,
        spec: &Json,
        renames: &[(String, String)],
        drops: &[String],
        indexes: &[IndexSpec],
        search: &[String],
    ) -> Result<(String, String), DbError> {
        either!(self, r => r.save_collection(ns, name, spec, renames, drops, indexes, search))
    }

    /// See [`Records::delete_collection`].
    pub fn delete_collection(&self, ns: &str, name: &str) -> Result<bool, DbError> {
        either!(self, r => r.delete_collection(ns, name))
    }

    /// See [`Records::get_as`].
    pub fn get_as(
        &self,
        ns: &str,
        collection: &str,
        id: &str,
        rule: Option<&Expr>,
        request: &Request,
    ) -> Result<Record, DbError> {
        either!(self, r => r.get_as(ns, collection, id, rule, request))
    }

    /// See [`Records::batch`].
    pub fn batch(&self, ns: &str, collection: &str, writes: Vec<Write>, guard: &Guard) -> Result<Vec<Change>, DbError> {
        either!(self, r => r.batch(ns, collection, writes, guard))
    }

    /// See [`Records::start`].
    pub fn start(&self, ns: &str, collection: &str) -> Result<(u64, u64, u64), DbError> {
        either!(self, r => r.start(ns, collection))
    }

    /// See [`Records::floor`].
    pub fn floor(&self, ns: &str, collection: &str) -> Result<u64, DbError> {
        either!(self, r => r.floor(ns, collection))
    }

    /// See [`Records::changes`].
    pub fn changes(
        &self,
        ns: &str,
        collection: &str,
        id: Option<&str>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Change>, DbError> {
        either!(self, r => r.changes(ns, collection, id, after, limit))
    }

    /// See [`Records::matches`].
    pub fn matches(&self, record: &Record, exprs: &[&Expr], request: &Request) -> Result<bool, DbError> {
        either!(self, r => r.matches(record, exprs, request))
    }

    /// See [`Records::list_as`].
    pub fn list_as(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &Request,
    ) -> Result<Page, DbError> {
        either!(self, r => r.list_as(ns, collection, q, rule, request))
    }

    /// See [`Records::explain`].
    pub fn explain(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &Request,
    ) -> Result<Vec<String>, DbError> {
        either!(self, r => r.explain(ns, collection, q, rule, request))
    }

    /// The name the backend gives a collection's index (as its plans show it).
    pub fn index_name(&self, ix: &IndexSpec, ns: &str, collection: &str) -> String {
        match self {
            Store::Sqlite(_) => ix.name(ns, collection),
            Store::Postgres(_) => crate::pg::index_name(ix, ns, collection),
        }
    }

    /// Whether a plan of [`Store::explain`] reads the whole collection: no index narrows
    /// the filter (a search by the primary key does only when it names the record's id).
    pub fn scans(&self, plan: &[String]) -> bool {
        match self {
            Store::Sqlite(_) => plan.iter().any(|p| {
                p.starts_with("SCAN records")
                    || (p.contains("USING PRIMARY KEY") && !p.contains("id="))
                    || p.contains("sqlite_autoindex")
            }),
            Store::Postgres(_) => {
                let by_key = plan.iter().any(|p| p.contains("db_records_pkey"));
                let by_id = plan.iter().any(|p| p.starts_with("Index Cond") && p.contains("(id = "));
                plan.iter().any(|p| p.contains("Seq Scan")) || (by_key && !by_id)
            }
        }
    }

    /// Refuses a list (or an aggregate) that would read more than `limit` records of
    /// `collection` because no index serves its filter, rule or sort (0: no limit). A
    /// list of everything in id order (an export) is never refused.
    pub fn refuse_scan(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &Request,
        limit: u64,
    ) -> Result<(), DbError> {
        let by_id =
            q.sort.split(',').map(|s| s.trim().trim_start_matches(['-', '+'])).all(|s| s.is_empty() || s == "id");
        if limit == 0 || (q.filter.trim().is_empty() && rule.is_none() && by_id) {
            return Ok(());
        }
        let plan = match self {
            Store::Sqlite(r) => r.explain(ns, collection, q, rule, request)?,
            // PostgreSQL reads a small table whole even when an index would serve.
            Store::Postgres(r) => r.explain_big(ns, collection, q, rule, request)?,
        };
        if !self.scans(&plan) {
            return Ok(());
        }
        let n = either!(self, r => r.count_upto(ns, collection, limit + 1))?;
        if n > limit {
            return Err(DbError::Invalid(format!(
                "this would read all of {collection}'s more than {limit} records: no index serves its filter, rule or \
                 sort. Add an index on the fields it filters or sorts by (see its explain), or narrow it"
            )));
        }
        Ok(())
    }

    /// See [`Records::search`].
    // The collection, the caller and what is asked: each a different thing.
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        ns: &str,
        collection: &str,
        text: &str,
        prefix: bool,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &Request,
    ) -> Result<Page, DbError> {
        either!(self, r => r.search(ns, collection, text, prefix, q, rule, request))
    }

    /// See [`Records::aggregate`].
    // The collection, the caller and what is asked: each a different thing.
    #[allow(clippy::too_many_arguments)]
    pub fn aggregate(
        &self,
        ns: &str,
        collection: &str,
        q: &ListQuery,
        rule: Option<&Expr>,
        request: &Request,
        group: &[String],
        ops: &[(AggregateOp, Option<String>)],
        limit: u32,
    ) -> Result<Vec<Vec<Json>>, DbError> {
        either!(self, r => r.aggregate(ns, collection, q, rule, request, group, ops, limit))
    }

    /// See [`Records::trim_changes`].
    pub fn trim_changes(&self, age: std::time::Duration) -> Result<u64, DbError> {
        either!(self, r => r.trim_changes(age))
    }
}
