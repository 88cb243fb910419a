//! Revocation: deleting an account or a namespace ends its access at once, not when its
//! access tokens expire. A revocation says "tokens of this account (or of every account
//! of this namespace) issued at or before this second are void"; it is kept in the auth
//! store, shared by every node, and followed by each through a version record checked
//! every second. A revocation outlives every token it voids (access tokens last
//! [`crate::ACCESS_TTL`]), and then expires with its record.

use micro::auth::token::{Claims, LEEWAY, now};
use micro_core::store::{Query, Record, Store, Table};
use micro_core::{Code, Status};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The revocations in force, shared by the nodes through the auth store.
pub(crate) struct Revocations {
    store: Arc<dyn Store>,
    /// `namespace/account` (or `namespace/*`) → the last second whose tokens are void.
    list: RwLock<HashMap<String, u64>>,
    /// The shared version this node's list follows.
    version: Mutex<Option<String>>,
}

/// The key of every account of a namespace.
const EVERYONE: &str = "*";

fn table() -> Table {
    Table::new(micro_core::namespace::DEFAULT, "revocations")
}

fn versions() -> Table {
    Table::new(micro_core::namespace::DEFAULT, "versions")
}

impl Revocations {
    /// The revocations kept in `store` (loaded by the first [`Revocations::follow`]).
    pub(crate) fn new(store: Arc<dyn Store>) -> Revocations {
        Revocations { store, list: RwLock::new(HashMap::new()), version: Mutex::new(None) }
    }

    /// Refuses claims that a revocation voids.
    pub(crate) fn check(&self, claims: &Claims) -> Result<(), Status> {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        if list.is_empty() {
            return Ok(());
        }
        let void = |who: &str| list.get(&format!("{}/{who}", claims.ns)).is_some_and(|before| claims.iat <= *before);
        if void(&claims.sub) || void(EVERYONE) {
            return Err(Status::new(
                Code::Unauthenticated,
                "auth",
                "token revoked: its account or namespace was deleted",
            ));
        }
        Ok(())
    }

    /// The earliest issue time a new token of account `id` of `ns` may have: after any
    /// revocation of it or its namespace, so a token issued in the same second as a
    /// deletion (to a re-created account) is not void.
    pub(crate) fn first_valid_iat(&self, ns: &str, id: &str) -> u64 {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        [format!("{ns}/{id}"), format!("{ns}/{EVERYONE}")]
            .iter()
            .filter_map(|k| list.get(k).map(|before| before + 1))
            .max()
            .unwrap_or(0)
    }

    /// Voids every token issued so far to account `id` of `ns` (every account of `ns`
    /// when `id` is `None`), here at once and on the other nodes within a second.
    pub(crate) async fn revoke(&self, ns: &str, id: Option<&str>) -> Result<(), Status> {
        let key = format!("{ns}/{}", id.unwrap_or(EVERYONE));
        // Tokens issued since an earlier revocation in this second carry the next second
        // (see `first_valid_iat`): this one voids them too, whichever node made it.
        self.follow().await?;
        let earlier = self.list.read().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        let before = now().max(earlier.map_or(0, |t| t + 1));
        // Kept until every token it voids has expired.
        // (`before` may be a second or more ahead: tokens dated up to it must expire first.)
        let keep = crate::ACCESS_TTL + Duration::from_secs(LEEWAY + 60 + before.saturating_sub(now()));
        self.store.write(&table(), &Record::new(key.clone(), before.to_string().into_bytes()), Some(keep)).await?;
        self.list.write().unwrap_or_else(|e| e.into_inner()).insert(key, before);
        let version = uuid::Uuid::new_v4().to_string();
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = Some(version.clone());
        self.store.write(&versions(), &Record::new("revocations", version.into_bytes()), None).await
    }

    /// Reloads the list when another node changed it (the shared version moved).
    pub(crate) async fn follow(&self) -> Result<(), Status> {
        let seen = match self.store.read(&versions(), "revocations", &Query::default()).await {
            Ok(r) => r.into_iter().next().map(|r| String::from_utf8_lossy(&r.value).to_string()),
            Err(e) if e.code() == Code::NotFound => None,
            Err(e) => return Err(e),
        };
        if *self.version.lock().unwrap_or_else(|e| e.into_inner()) == seen {
            return Ok(());
        }
        let all = Query { prefix: true, ..Default::default() };
        let records = match self.store.read(&table(), "", &all).await {
            Ok(r) => r,
            Err(e) if e.code() == Code::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut list: HashMap<String, u64> = records
            .into_iter()
            .filter_map(|r| String::from_utf8_lossy(&r.value).parse::<u64>().ok().map(|before| (r.key, before)))
            .collect();
        let mut current = self.list.write().unwrap_or_else(|e| e.into_inner());
        // A revocation made here while the list was read stays in force.
        let horizon = now().saturating_sub(crate::ACCESS_TTL.as_secs() + LEEWAY);
        for (k, before) in current.drain() {
            if before > horizon {
                list.entry(k).or_insert(before);
            }
        }
        *current = list;
        drop(current);
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        Ok(())
    }
}
