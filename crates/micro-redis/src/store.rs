//! The store in Redis: one hash per record, expiring natively, and two sorted sets per
//! table that index its keys.
//!
//! # Layout
//!
//! A store named `<s>` (`store` for the store service) keeps, for the table `<t>` of the
//! database `<db>` (neither name can hold a `:`, so every key below parses one way):
//!
//! | Key | Type | Holds |
//! |---|---|---|
//! | `micro:<s>:record:<db>:<t>:<key>` | hash | `v` value, `m` metadata (JSON), `e` expiry (Unix ms) |
//! | `micro:<s>:keys:<db>:<t>` | sorted set | every key of the table, all with score 0 |
//! | `micro:<s>:expiry:<db>:<t>` | sorted set | the keys that expire, scored by their expiry |
//! | `micro:<s>:tables` | sorted set | `<db>:<t>` of every table holding records, all with score 0 |
//!
//! A record with an expiry has it in `e` and expires at that instant (`PEXPIREAT`).
//!
//! Why: members of a sorted set with equal scores are ordered bytewise, so the key index
//! answers a prefix read with one `ZRANGEBYLEX` (or `ZREVRANGEBYLEX` for descending) over
//! `[prefix, prefix + 0xFF)` (UTF-8 never holds `0xFF`), with `LIMIT offset count` done
//! by Redis: ordered like the other backends (bytewise, as PostgreSQL's `C` collation),
//! and costing O(log n + returned) rather than a `SCAN` of the keyspace. Records expire
//! natively, so an exact read never sees an expired one and their memory is freed by
//! Redis. The index cannot expire members by itself (the score must stay 0 for
//! lexicographic ranges), so the expiring keys are also kept in a second set scored by
//! expiry: every read, list and catalog call first drops the members that expired by the
//! server's clock (`ZRANGEBYSCORE -inf now`, amortised: each is dropped once), and a
//! background task does so for every table every 10 s, so tables nobody reads do not
//! keep dead members. A table leaves the catalog when its key index is empty, which
//! makes [`Store::databases`] and [`Store::tables`] one range over the catalog.
//!
//! Every operation is one Lua script, so a write (record, both indexes, catalog), a
//! delete, and a purge-then-read are atomic, and nodes sharing the server never see an
//! index out of step with the records. Suffix matches cannot use the order, so they scan
//! the table's (or the prefix's) keys inside the script.

use crate::{Redis, redis_error};
use micro_core::Status;
use micro_core::store::{Order, Query, Record, Store, Table, validate_key, validate_record};
use redis::Script;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

const ID: &str = "store";

/// How often expired records are dropped from the indexes of every table.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Helpers every script starts with. `ARGV[1]` is always the store's key prefix and the
/// scripts build the other keys from it (one server, not a cluster: see the crate docs).
macro_rules! lua {
    ($body:literal) => {
        concat!(
            r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drops the records of table `tid` that expired by `now` (and the table from the
-- catalog when it holds none); returns how many.
local function purge(base, tid, now)
  local keys, expiry = base .. 'keys:' .. tid, base .. 'expiry:' .. tid
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  for _, k in ipairs(gone) do
    redis.call('DEL', base .. 'record:' .. tid .. ':' .. k)
    redis.call('ZREM', keys, k)
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
  end
  if redis.call('EXISTS', keys) == 0 then
    redis.call('ZREM', base .. 'tables', tid)
  end
  return #gone
end
"#,
            $body
        )
    };
}

/// Writes a record. ARGV: base, table id, key, value, metadata, expiry (`""`: none).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r#"
local base, tid, k, expiry = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local rec = base .. 'record:' .. tid .. ':' .. k
local keys, exp = base .. 'keys:' .. tid, base .. 'expiry:' .. tid
redis.call('DEL', rec)
if expiry ~= '' and tonumber(expiry) <= now_ms() then
  -- Expired already: writing it is deleting it.
  redis.call('ZREM', keys, k)
  redis.call('ZREM', exp, k)
  if redis.call('EXISTS', keys) == 0 then
    redis.call('ZREM', base .. 'tables', tid)
  end
  return 0
end
redis.call('HSET', rec, 'v', ARGV[4], 'm', ARGV[5])
if expiry ~= '' then
  redis.call('HSET', rec, 'e', expiry)
  redis.call('PEXPIREAT', rec, expiry)
  redis.call('ZADD', exp, expiry, k)
else
  redis.call('ZREM', exp, k)
end
redis.call('ZADD', keys, 0, k)
redis.call('ZADD', base .. 'tables', 0, tid)
return 1
"#
    ))
});

/// Deletes a record; returns 1 when it was live. ARGV: base, table id, key.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r#"
local base, tid, k = ARGV[1], ARGV[2], ARGV[3]
local keys = base .. 'keys:' .. tid
local n = redis.call('DEL', base .. 'record:' .. tid .. ':' .. k)
redis.call('ZREM', keys, k)
redis.call('ZREM', base .. 'expiry:' .. tid, k)
if redis.call('EXISTS', keys) == 0 then
  redis.call('ZREM', base .. 'tables', tid)
end
return n
"#
    ))
});

/// Reads or lists. ARGV: base, table id, mode (`exact`, `prefix`, `suffix`, `both`,
/// `all`), key, order (`asc`, `desc`), offset, limit (0: none), `1` to return records
/// (flat: key, value, metadata, expiry) rather than keys.
static QUERY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r#"
local base, tid, mode, k = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local desc, offset, limit, values = ARGV[5] == 'desc', tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
purge(base, tid, now_ms())
local keys = base .. 'keys:' .. tid
local lo, hi = '-', '+'
if mode == 'exact' then
  lo, hi = '[' .. k, '[' .. k
elseif mode == 'prefix' or mode == 'both' then
  lo, hi = '[' .. k, '(' .. k .. '\255'
end
local members
if mode == 'suffix' or mode == 'both' then
  -- No order helps: scan the range, keep the keys ending with k (and, for both, long
  -- enough to start and end with it apart), then page.
  local all
  if desc then all = redis.call('ZREVRANGEBYLEX', keys, hi, lo) else all = redis.call('ZRANGEBYLEX', keys, lo, hi) end
  local n, min = #k, #k
  if mode == 'both' then min = 2 * n end
  members = {}
  local skipped = 0
  for _, m in ipairs(all) do
    if #m >= min and string.sub(m, -n) == k then
      if skipped < offset then
        skipped = skipped + 1
      else
        members[#members + 1] = m
        if limit > 0 and #members >= limit then break end
      end
    end
  end
else
  local count = -1
  if limit > 0 then count = limit end
  if desc then
    members = redis.call('ZREVRANGEBYLEX', keys, hi, lo, 'LIMIT', offset, count)
  else
    members = redis.call('ZRANGEBYLEX', keys, lo, hi, 'LIMIT', offset, count)
  end
end
if not values then return members end
local out = {}
for _, m in ipairs(members) do
  local r = redis.call('HMGET', base .. 'record:' .. tid .. ':' .. m, 'v', 'm', 'e')
  if r[1] then
    out[#out + 1] = m
    out[#out + 1] = r[1]
    out[#out + 1] = r[2]
    out[#out + 1] = r[3]
  end
end
return out
"#
    ))
});

/// Purges the tables of one database (ARGV[2]) or of all (`""`); returns the number of
/// records purged and the `<db>:<table>` ids still holding records.
static CATALOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r#"
local base, db = ARGV[1], ARGV[2]
local tables = base .. 'tables'
local lo, hi = '-', '+'
if db ~= '' then lo, hi = '[' .. db .. ':', '(' .. db .. ';' end
local now, n = now_ms(), 0
for _, tid in ipairs(redis.call('ZRANGEBYLEX', tables, lo, hi)) do
  n = n + purge(base, tid, now)
end
return {n, redis.call('ZRANGEBYLEX', tables, lo, hi)}
"#
    ))
});

struct Inner {
    redis: Redis,
    /// `micro:<name>:`, the prefix of every key of this store.
    base: String,
}

/// The store in Redis: each record a hash that Redis expires itself, the keys of each
/// table indexed by a sorted set ordered bytewise, everything under `micro:<name>:`. The
/// full key layout, and why it is so, is in the docs of this module's source
/// (`src/store.rs`). Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://host:port`), checks that it answers, and
    /// purges expired index entries in the background.
    pub async fn connect(url: &str) -> Result<RedisStore, Status> {
        RedisStore::open(&Redis::connect(url)?, "store").await
    }

    /// The store under `micro:<name>:` on `redis` (`store` for the store service; a
    /// separate one for example for auth data, which must not be reachable through the
    /// store service). `name` is lowercase letters, digits and `_`. Checks that the server
    /// answers (`Unavailable` when it does not) and purges expired index entries in the
    /// background until the last clone is dropped.
    pub async fn open(redis: &Redis, name: &str) -> Result<RedisStore, Status> {
        micro_core::store::validate_store_name(name)?;
        redis.ping().await.map_err(|e| Status::new(e.code(), ID, e.detail()))?;
        let store = RedisStore { inner: Arc::new(Inner { redis: redis.clone(), base: format!("micro:{name}:") }) };
        let weak: Weak<Inner> = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PURGE_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (RedisStore { inner }).purge().await {
                    tracing::warn!(error = %e, "purging expired records failed");
                }
            }
        });
        Ok(store)
    }

    /// Drops expired records from the indexes of every table now; returns how many.
    pub async fn purge(&self) -> Result<u64, Status> {
        Ok(self.catalog("").await?.0)
    }

    /// Purges the tables of `database` (every database for `""`) and returns how many
    /// records that dropped and the `<db>:<table>` ids left.
    async fn catalog(&self, database: &str) -> Result<(u64, Vec<String>), Status> {
        let mut conn = self.inner.redis.conn();
        CATALOG.arg(&self.inner.base).arg(database).invoke_async(&mut conn).await.map_err(|e| redis_error(ID, e))
    }

    /// Runs the query script; `values` to return records (flat) rather than keys.
    async fn query<T: redis::FromRedisValue>(
        &self,
        table: &Table,
        key: &str,
        query: &Query,
        values: bool,
    ) -> Result<T, Status> {
        let mode = match (query.prefix, query.suffix) {
            // An empty key (with or without flags) matches every key.
            _ if key.is_empty() => "all",
            (false, false) => "exact",
            (true, false) => "prefix",
            (false, true) => "suffix",
            (true, true) => "both",
        };
        let order = match query.order {
            Order::Asc => "asc",
            Order::Desc => "desc",
        };
        let mut conn = self.inner.redis.conn();
        QUERY
            .arg(&self.inner.base)
            .arg(table_id(table))
            .arg(mode)
            .arg(key)
            .arg(order)
            .arg(query.offset)
            .arg(query.limit)
            .arg(if values { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(ID, e))
    }
}

/// The id of a table in key names: `<db>:<table>` (neither name holds a `:`).
fn table_id(table: &Table) -> String {
    format!("{}:{}", table.database, table.table)
}

/// Records from the query script's flat reply (key, value, metadata, expiry; repeated).
fn records(flat: Vec<Option<Vec<u8>>>) -> Result<Vec<Record>, Status> {
    let bad = |what: &str| Status::internal(ID, format!("Redis returned a malformed record ({what})"));
    if !flat.len().is_multiple_of(4) {
        return Err(bad("length"));
    }
    let mut out = Vec::with_capacity(flat.len() / 4);
    let mut it = flat.into_iter();
    while let (Some(key), Some(value), Some(metadata), Some(expiry)) = (it.next(), it.next(), it.next(), it.next()) {
        let key = String::from_utf8(key.ok_or_else(|| bad("no key"))?).map_err(|_| bad("key"))?;
        let metadata = metadata
            .map(|m| serde_json::from_slice::<BTreeMap<String, String>>(&m).unwrap_or_default())
            .unwrap_or_default();
        let expiry = match expiry {
            Some(e) => {
                Some(std::str::from_utf8(&e).ok().and_then(|e| e.parse::<u64>().ok()).ok_or_else(|| bad("expiry"))?)
            }
            None => None,
        };
        out.push(Record { key, value: value.unwrap_or_default(), metadata, expiry });
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn read(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<Record>, Status> {
        let exact = micro_core::store::check_query(table, key, query)?;
        let flat: Vec<Option<Vec<u8>>> = self.query(table, key, query, true).await?;
        let records = records(flat)?;
        if exact && records.is_empty() {
            return Err(micro_core::store::not_found(key, table));
        }
        Ok(records)
    }

    async fn write(&self, table: &Table, record: &Record, ttl: Option<Duration>) -> Result<(), Status> {
        table.validate()?;
        validate_record(record)?;
        let expiry = micro_core::store::expiry_of(record, ttl);
        if expiry.is_some_and(|e| e > i64::MAX as u64) {
            return Err(Status::bad_request(ID, "the expiry is out of range"));
        }
        let metadata = serde_json::to_string(&record.metadata).map_err(|e| Status::internal(ID, e.to_string()))?;
        let mut conn = self.inner.redis.conn();
        let _: i64 = WRITE
            .arg(&self.inner.base)
            .arg(table_id(table))
            .arg(&record.key)
            .arg(&record.value[..])
            .arg(metadata)
            .arg(expiry.map(|e| e.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(ID, e))?;
        Ok(())
    }

    async fn delete(&self, table: &Table, key: &str) -> Result<(), Status> {
        table.validate()?;
        validate_key(key)?;
        let mut conn = self.inner.redis.conn();
        let n: i64 = DELETE
            .arg(&self.inner.base)
            .arg(table_id(table))
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(ID, e))?;
        if n == 1 { Ok(()) } else { Err(micro_core::store::not_found(key, table)) }
    }

    async fn list(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<String>, Status> {
        table.validate()?;
        if !key.is_empty() {
            validate_key(key)?;
        }
        self.query(table, key, query, false).await
    }

    async fn databases(&self) -> Result<Vec<String>, Status> {
        let (_, ids) = self.catalog("").await?;
        let dbs: BTreeSet<String> =
            ids.iter().filter_map(|id| id.split_once(':')).map(|(db, _)| db.to_string()).collect();
        Ok(dbs.into_iter().collect())
    }

    async fn tables(&self, database: &str) -> Result<Vec<String>, Status> {
        micro_core::namespace::validate(database)
            .map_err(|_| Status::bad_request(ID, format!("invalid database {database:?}")))?;
        let (_, ids) = self.catalog(database).await?;
        let prefix = format!("{database}:");
        Ok(ids.iter().filter_map(|id| id.strip_prefix(&prefix)).map(str::to_string).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use micro_core::Code;

    /// A database name no earlier run used.
    fn unique(what: &str) -> String {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("redis-{what}-{}", t % 1_000_000_000_000)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let store = RedisStore::connect(&url).await.expect("connects");
        micro_conformance::store::store(Arc::new(store.clone())).await;
        // Two nodes on one server see each other's writes.
        let other = RedisStore::connect(&url).await.expect("a second node connects");
        let t = Table::new(unique("shared"), "t");
        store.write(&t, &Record::new("k", b"from a".to_vec()), None).await.unwrap();
        assert_eq!(other.read(&t, "k", &Query::default()).await.unwrap()[0].value, b"from a");
        other.delete(&t, "k").await.unwrap();
        assert_eq!(store.read(&t, "k", &Query::default()).await.unwrap_err().code(), Code::NotFound);
        // A named store on a shared connection is separate.
        let redis = Redis::connect(&url).unwrap();
        let auth = RedisStore::open(&redis, "test_separate").await.expect("a named store");
        let main = RedisStore::open(&redis, "store").await.expect("the store on the same connection");
        main.write(&t, &Record::new("k", b"x".to_vec()), None).await.unwrap();
        assert_eq!(store.read(&t, "k", &Query::default()).await.unwrap()[0].value, b"x", "same keys as connect()");
        assert!(auth.list(&t, "", &Query::default()).await.unwrap().is_empty());
        assert!(!auth.databases().await.unwrap().contains(&t.database));
        main.delete(&t, "k").await.unwrap();
        for bad in ["Bad", "a:b", "", "x y"] {
            let err = RedisStore::open(&redis, bad).await.err().expect("a bad name");
            assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_expire_natively_and_leave_the_indexes() {
        let Some(url) = crate::test_url() else { return };
        let redis = Redis::connect(&url).unwrap();
        let store = RedisStore::open(&redis, "store").await.unwrap();
        let t = Table::new(unique("expiry"), "t");
        let id = table_id(&t);
        let mut conn = redis.conn();
        store.write(&t, &Record::new("short", b"x".to_vec()), Some(Duration::from_millis(200))).await.unwrap();
        store.write(&t, &Record::new("kept", b"y".to_vec()), None).await.unwrap();
        let pttl: i64 =
            redis::cmd("PTTL").arg(format!("micro:store:record:{id}:short")).query_async(&mut conn).await.unwrap();
        assert!(pttl > 0 && pttl <= 200, "Redis expires the record itself: {pttl}");
        let pttl: i64 =
            redis::cmd("PTTL").arg(format!("micro:store:record:{id}:kept")).query_async(&mut conn).await.unwrap();
        assert_eq!(pttl, -1, "no TTL, no expiry");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.purge().await.unwrap() >= 1, "the expired key is purged from the index");
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("micro:store:keys:{id}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(members, ["kept"]);
        let n: i64 = redis::cmd("EXISTS").arg(format!("micro:store:expiry:{id}")).query_async(&mut conn).await.unwrap();
        assert_eq!(n, 0, "the expiry index is gone once empty");
        // A table whose records all expired leaves the catalog.
        store.delete(&t, "kept").await.unwrap();
        let other = Table::new(&t.database, "other");
        store.write(&other, &Record::new("k", b"z".to_vec()), Some(Duration::from_millis(100))).await.unwrap();
        assert_eq!(store.tables(&t.database).await.unwrap(), ["other"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.tables(&t.database).await.unwrap().is_empty(), "expired tables are not listed");
        assert!(!store.databases().await.unwrap().contains(&t.database), "nor their databases");
        // A record written already expired is not stored.
        let mut old = Record::new("old", b"x".to_vec());
        old.expiry = Some(micro_core::store::now_ms() - 1000);
        store.write(&t, &old, None).await.unwrap();
        assert_eq!(store.read(&t, "old", &Query::default()).await.unwrap_err().code(), Code::NotFound);
        assert!(store.tables(&t.database).await.unwrap().is_empty());
        // An expiry Redis cannot hold is refused.
        old.expiry = Some(u64::MAX);
        assert_eq!(store.write(&t, &old, None).await.unwrap_err().code(), Code::InvalidArgument);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefix_suffix_and_paging_edges() {
        let Some(url) = crate::test_url() else { return };
        let store = RedisStore::connect(&url).await.unwrap();
        let t = Table::new(unique("edges"), "t");
        for k in ["ab", "abab", "aba", "ab\u{e9}", "b", "zz"] {
            store.write(&t, &Record::new(k, k.as_bytes().to_vec()), None).await.unwrap();
        }
        let list = |q: Query, k: &'static str| {
            let store = store.clone();
            let t = t.clone();
            async move { store.list(&t, k, &q).await.unwrap() }
        };
        let both = Query { prefix: true, suffix: true, ..Default::default() };
        assert_eq!(list(both.clone(), "ab").await, ["abab"], "prefix and suffix: starts and ends with it apart");
        let prefix = Query { prefix: true, ..Default::default() };
        assert_eq!(list(prefix.clone(), "ab").await, ["ab", "aba", "abab", "ab\u{e9}"], "bytewise order");
        assert_eq!(
            list(Query { suffix: true, ..Default::default() }, "").await.len(),
            6,
            "an empty suffix matches all"
        );
        let page = Query { suffix: true, order: Order::Desc, offset: 1, limit: 1, ..Default::default() };
        assert_eq!(list(page, "b").await, ["abab"], "suffix with desc, offset and limit (b, abab, ab)");
        assert_eq!(list(Query::default(), "zz").await, ["zz"], "an exact list");
        assert!(list(Query { offset: 1, ..Default::default() }, "zz").await.is_empty());
        let err = store.read(&t, "zz", &Query { offset: 1, ..Default::default() }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let none = Query { prefix: true, limit: 0, offset: 10, ..Default::default() };
        assert!(list(none, "").await.is_empty(), "offset past the end");
    }
}
