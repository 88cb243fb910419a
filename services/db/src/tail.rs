//! The recent changes of each collection that has subscribers, read from the change log
//! once for all of them: a commit wakes every subscriber, the first to ask reads what is
//! new (and the collection's spec and floor) and the others take it from memory. Whether
//! a change may be delivered is tested once per change and distinct rule (the same rule
//! with the same caller's values gives the same answer), not once per subscriber.
//!
//! A subscriber whose cursor is older than what the tail holds reads the log itself until
//! it catches up.

use crate::filter::Expr;
use crate::records::{Change, DbError};
use crate::store::Store;
use serde_json::Value as Json;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The most changes a tail keeps.
const KEEP: usize = 4096;
/// The most bytes of records a tail keeps (at least one change).
const KEEP_BYTES: usize = 16 << 20;
/// The most remembered verdicts of a tail before they are forgotten.
const VERDICTS: usize = 100_000;
/// How stale what a tail holds may be when nothing woke it (a lost notification, a spec
/// saved).
const FRESH: Duration = Duration::from_secs(2);

/// The tails of the collections with subscribers.
#[derive(Default)]
pub struct Tails {
    open: Mutex<HashMap<(String, String), Weak<Tail>>>,
}

impl Tails {
    /// Marks the tail of `collection` in `ns` (if it has one) as behind the log: a commit
    /// wrote to it.
    pub fn bump(&self, ns: &str, collection: &str) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = open.get(&(ns.to_string(), collection.to_string())).and_then(Weak::upgrade) {
            t.behind.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Marks every tail as behind the log (commits may have been missed).
    pub fn bump_all(&self) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for t in open.values().filter_map(Weak::upgrade) {
            t.behind.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// The tail of `collection` in `ns`, made at `newest` (the log's newest change of it)
    /// when it has none.
    pub fn of(&self, ns: &str, collection: &str, newest: u64) -> Arc<Tail> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_string(), collection.to_string());
        if let Some(t) = open.get(&key).and_then(Weak::upgrade) {
            return t;
        }
        open.retain(|_, t| t.strong_count() > 0);
        let tail = Arc::new(Tail {
            behind: Default::default(),
            ns: key.0.clone(),
            collection: key.1.clone(),
            state: tokio::sync::Mutex::new(State {
                signal: None,
                at: Instant::now(),
                base: newest,
                head: newest,
                ring: VecDeque::new(),
                bytes: 0,
                spec: None,
                floor: 0,
                verdicts: HashMap::new(),
                rules: HashMap::new(),
            }),
        });
        open.insert(key, Arc::downgrade(&tail));
        tail
    }
}

/// The recent changes of one collection.
pub struct Tail {
    /// Raised at every commit to the collection (of any node): the tail reads on when it
    /// is above what it read at.
    behind: std::sync::atomic::AtomicU64,
    ns: String,
    collection: String,
    state: tokio::sync::Mutex<State>,
}

struct State {
    /// `behind` at the last read (none: never read).
    signal: Option<u64>,
    /// When the last read was.
    at: Instant,
    /// The ring holds every change after `base` up to `head`.
    base: u64,
    head: u64,
    ring: VecDeque<Arc<Change>>,
    bytes: usize,
    /// The collection's spec and when it changed, as of the last read (none: no such
    /// collection).
    spec: Option<(Json, String)>,
    /// Cursors below it cannot resume.
    floor: u64,
    /// Whether a change (its `seq`) may be delivered under a rule (its number in `rules`).
    verdicts: HashMap<(u64, u32), bool>,
    /// The rules (with the callers' values) verdicts were given under, numbered.
    rules: HashMap<String, u32>,
}

/// What a subscriber at a cursor gets from a tail.
pub struct View {
    /// The changes after its cursor (at most 500); none when its cursor is older than the
    /// tail: it reads the log itself.
    pub changes: Option<Vec<Arc<Change>>>,
    /// The collection's spec and when it changed (none: no such collection).
    pub spec: Option<(Json, String)>,
    /// Cursors below it cannot resume.
    pub floor: u64,
}

impl Tail {
    /// What is after `cursor` (of record `id` alone when given), reading the log first if
    /// a commit to the collection was signalled or what is held is older than 2 s.
    pub async fn after(&self, store: &Arc<Store>, cursor: u64, id: Option<&str>) -> Result<View, DbError> {
        let signal = self.behind.load(std::sync::atomic::Ordering::Acquire);
        let mut s = self.state.lock().await;
        if s.signal != Some(signal) || s.at.elapsed() >= FRESH {
            self.read(store, &mut s).await?;
            s.signal = Some(signal);
            s.at = Instant::now();
        }
        let changes = (cursor >= s.base).then(|| {
            s.ring
                .iter()
                .filter(|c| c.seq > cursor)
                .filter(|c| id.is_none_or(|id| c.record.id == id || c.action == crate::records::Action::Reset))
                .take(500)
                .cloned()
                .collect()
        });
        Ok(View { changes, spec: s.spec.clone(), floor: s.floor })
    }

    /// Reads what is new in the log, the spec and the floor.
    async fn read(&self, store: &Arc<Store>, s: &mut State) -> Result<(), DbError> {
        let (st, ns, name, head) = (store.clone(), self.ns.clone(), self.collection.clone(), s.head);
        let (news, spec, floor) = run(move || {
            let mut news = Vec::new();
            let mut after = head;
            loop {
                let page = st.changes(&ns, &name, None, after, 500)?;
                let done = page.is_empty();
                after = page.last().map_or(after, |c| c.seq);
                news.extend(page);
                if done || news.len() >= KEEP {
                    break;
                }
            }
            let spec = st.collection(&ns, &name)?.map(|(spec, _, updated)| (spec, updated));
            Ok((news, spec, st.floor(&ns, &name)?))
        })
        .await?;
        for c in news {
            s.head = c.seq;
            s.bytes += size(&c);
            s.ring.push_back(Arc::new(c));
        }
        while s.ring.len() > KEEP || (s.bytes > KEEP_BYTES && s.ring.len() > 1) {
            if let Some(old) = s.ring.pop_front() {
                s.base = old.seq;
                s.bytes = s.bytes.saturating_sub(size(&old));
            }
        }
        s.spec = spec;
        s.floor = floor;
        Ok(())
    }

    /// Whether each of `changes` may be delivered under `exprs` for `request`: tested once
    /// per change and rule (with the caller's values) for all subscribers.
    pub async fn verdicts(
        &self,
        store: &Arc<Store>,
        exprs: &[Expr],
        request: &crate::sql::Request,
        changes: &[Arc<Change>],
    ) -> Vec<bool> {
        if exprs.is_empty() {
            return vec![true; changes.len()];
        }
        let key = format!("{exprs:?}\u{1}{:?}\u{1}{}\u{1}{:?}", request.auth, request.now, request.today);
        let mut s = self.state.lock().await;
        if s.verdicts.len() + changes.len() > VERDICTS || s.rules.len() >= VERDICTS / 100 {
            s.verdicts.clear();
            s.rules.clear();
        }
        let n = s.rules.len() as u32;
        let rule = *s.rules.entry(key).or_insert(n);
        let missing: Vec<Arc<Change>> =
            changes.iter().filter(|c| !s.verdicts.contains_key(&(c.seq, rule))).cloned().collect();
        if !missing.is_empty() {
            let (st, exprs, request, batch) = (store.clone(), exprs.to_vec(), request.clone(), missing.clone());
            // A change the rules cannot be tested on in time is not delivered.
            let found = run(move || {
                let refs: Vec<&Expr> = exprs.iter().collect();
                Ok(batch.iter().map(|c| st.matches(&c.record, &refs, &request).unwrap_or(false)).collect::<Vec<_>>())
            })
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(service = crate::NAME, error = %e, "changes were not delivered: their rules could not be tested");
                vec![false; missing.len()]
            });
            for (c, ok) in missing.iter().zip(found) {
                s.verdicts.insert((c.seq, rule), ok);
            }
        }
        changes.iter().map(|c| s.verdicts.get(&(c.seq, rule)).copied().unwrap_or(false)).collect()
    }
}

/// About how many bytes a change holds.
fn size(c: &Change) -> usize {
    serde_json::to_vec(&c.record.data).map_or(0, |v| v.len()) + 256
}

/// Runs a blocking call on the records off the async threads.
async fn run<T: Send + 'static>(f: impl FnOnce() -> Result<T, DbError> + Send + 'static) -> Result<T, DbError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DbError::Storage(format!("a database call failed: {e}")))?
}
