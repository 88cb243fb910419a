//! Consumer groups: which taken events are pending, ready, blocked behind an earlier
//! event with the same key, or out awaiting their ack; members pulling from them; and
//! acks, nacks and dead letters.
//!
//! A group's state sits behind a plain mutex that is only ever held for synchronous
//! work, never across an await (its guard is not `Send`, so the compiler refuses code
//! that would hold it across one in these `Send` futures). Reading events back from
//! SQLite, taking more from the log and opening the dead-letter topic happen with the
//! group released, and the state is looked at afresh afterwards. A member's stream may
//! be left pending in the middle of such a read for as long as its consumer likes (the
//! server does so while it answers an ack), so nothing of the group may wait on it:
//! acks, nacks, other members and [`Group::snapshot`] never do.

use super::sql::Op;
use super::{ID, Inner, Topic, lock, millis};
use futures::StreamExt;
use micro_core::events::{Acker, ConsumeOptions, DEFAULT_ACK_WAIT, Delivery, Event, GroupInfo, Message};
use micro_core::store::now_ms;
use micro_core::{BoxStream, Status};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Events a group holds at most (taken from the log but not done yet).
const WINDOW: usize = 1024;
/// Events taken from the log at a time.
const TAKE: usize = 256;
/// Events read back from SQLite for delivery at a time (after a restart, or when they
/// have left the topic's memory).
const LOAD: usize = 32;

pub(super) struct Group {
    topic: Arc<Topic>,
    /// The row id; `None` for a private group, which is not stored.
    id: Option<i64>,
    name: String,
    /// Held for synchronous work only: see the module's documentation.
    state: Mutex<GroupState>,
    /// Signalled when an entry is done or rescheduled.
    changed: Notify,
    /// Members consuming now (their streams are alive).
    members: AtomicU32,
}

impl Group {
    pub(super) fn new(topic: Arc<Topic>, id: Option<i64>, name: String, state: GroupState) -> Group {
        let state = Mutex::new(state);
        Group { topic, id, name, state, changed: Notify::new(), members: AtomicU32::new(0) }
    }

    /// The group's position as it stands in memory (ahead of what is stored).
    pub(super) fn snapshot(&self) -> Snapshot {
        let st = lock(&self.state);
        Snapshot {
            cursor: st.cursor,
            entries: st.entries.iter().map(|(seq, e)| (*seq, e.attempts)).collect(),
            members: self.members.load(Ordering::Relaxed),
        }
    }
}

/// A group's position: what [`progress`] reports on.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// The next sequence number to take from the log.
    pub(super) cursor: u64,
    /// Taken and not done: (sequence number, deliveries so far), in sequence order.
    pub(super) entries: Vec<(u64, u32)>,
    /// Members consuming now.
    pub(super) members: u32,
}

/// The progress of group `name` at `at`, in a topic whose last event is `last_seq` and
/// whose first retained one is `floor` (earlier ones are gone: passed).
pub(super) fn progress(name: String, at: &Snapshot, last_seq: u64, floor: u64) -> GroupInfo {
    let floor = floor.max(1);
    let entries: Vec<(u64, u32)> = at.entries.iter().copied().filter(|(seq, _)| *seq >= floor).collect();
    // The first event not taken from the log yet (purged ones are skipped when taking).
    let untaken = at.cursor.max(floor);
    // Entries all lie below the cursor, so the first of them is the first not done.
    let first_open = entries.first().map_or(untaken, |(seq, _)| *seq).min(untaken);
    // Done entries leave the table: the highest taken event that is not an entry is
    // done (so was delivered), or precedes the group's start.
    let mut below = untaken - 1;
    for (seq, _) in entries.iter().rev() {
        if *seq == below {
            below -= 1;
        } else if *seq < below {
            break;
        }
    }
    let handed = entries.iter().rev().find(|(_, attempts)| *attempts > 0).map_or(0, |(seq, _)| *seq);
    let pending = entries.iter().filter(|(_, attempts)| *attempts > 0).count() as u64;
    let not_taken = (last_seq + 1).saturating_sub(untaken);
    GroupInfo {
        name,
        delivered: below.max(handed).min(last_seq),
        acked: (first_open - 1).min(last_seq),
        pending,
        lag: not_taken + entries.len() as u64,
        members: Some(at.members),
    }
}

/// Where a pending entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Behind an earlier pending entry with the same key.
    Blocked,
    /// In `ready`: may be delivered now.
    Ready,
    /// In `timers`: delivered and awaiting its ack, or nacked with a delay.
    Due(u64),
}

struct Entry {
    key: String,
    attempts: u32,
    at: At,
    /// The event, until it is first delivered.
    event: Option<Arc<Event>>,
}

/// The events a group has taken from the log and not finished.
#[derive(Default)]
pub(super) struct GroupState {
    /// The next sequence number to take from the log.
    cursor: u64,
    entries: BTreeMap<u64, Entry>,
    ready: BTreeSet<u64>,
    timers: BTreeSet<(u64, u64)>,
    /// Pending sequence numbers per non-empty key, in order; only the first may be out.
    keys: HashMap<String, VecDeque<u64>>,
}

impl GroupState {
    pub(super) fn new(cursor: u64) -> GroupState {
        GroupState { cursor: cursor.max(1), ..GroupState::default() }
    }

    /// Adds an entry (in sequence order).
    pub(super) fn add(
        &mut self,
        seq: u64,
        key: String,
        attempts: u32,
        not_before: u64,
        event: Option<Arc<Event>>,
        now: u64,
    ) {
        let head = key.is_empty() || {
            let queue = self.keys.entry(key.clone()).or_default();
            queue.push_back(seq);
            queue.len() == 1
        };
        let at = if !head {
            At::Blocked
        } else if not_before > now {
            self.timers.insert((not_before, seq));
            At::Due(not_before)
        } else {
            self.ready.insert(seq);
            At::Ready
        };
        self.entries.insert(seq, Entry { key, attempts, at, event });
    }

    /// Makes entries whose time has come ready.
    fn fire(&mut self, now: u64) {
        while let Some(&(due, seq)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            if let Some(e) = self.entries.get_mut(&seq) {
                e.at = At::Ready;
                self.ready.insert(seq);
            }
        }
    }

    /// Makes `seq` ready at `due`.
    fn schedule(&mut self, seq: u64, due: u64, now: u64) {
        let Some(e) = self.entries.get_mut(&seq) else { return };
        match e.at {
            At::Ready => {
                self.ready.remove(&seq);
            }
            At::Due(t) => {
                self.timers.remove(&(t, seq));
            }
            At::Blocked => {}
        }
        if due > now {
            e.at = At::Due(due);
            self.timers.insert((due, seq));
        } else {
            e.at = At::Ready;
            self.ready.insert(seq);
        }
    }

    /// Removes a finished entry, unblocking the next one with its key.
    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        match entry.at {
            At::Ready => {
                self.ready.remove(&seq);
            }
            At::Due(t) => {
                self.timers.remove(&(t, seq));
            }
            At::Blocked => {}
        }
        if !entry.key.is_empty()
            && let Some(queue) = self.keys.get_mut(&entry.key)
        {
            let was_head = queue.front() == Some(&seq);
            queue.retain(|s| *s != seq);
            match queue.front().copied() {
                None => {
                    self.keys.remove(&entry.key);
                }
                Some(next) if was_head => {
                    if let Some(e) = self.entries.get_mut(&next)
                        && e.at == At::Blocked
                    {
                        e.at = At::Ready;
                        self.ready.insert(next);
                    }
                }
                Some(_) => {}
            }
        }
        Some(entry)
    }
}

/// One consume() call: a member of a group.
pub(super) struct Member {
    acker: Arc<GroupAcker>,
    auto_ack: bool,
    /// Milliseconds.
    ack_wait: u64,
}

enum Step {
    Deliver(Box<Delivery>),
    /// Nothing to deliver; wait for a publish, a group change or this time.
    Wait(Option<u64>),
}

/// What [`Member::step`] needs done, with the group released, before it can go on.
enum Work {
    /// Done: this is the member's next step.
    Step(Step),
    /// Read these ready entries' events back (from SQLite).
    Load(Vec<u64>),
    /// Take up to `max` events of the log from `from` to `to` (from SQLite).
    Take { from: u64, to: u64, max: usize },
    /// Open the dead-letter topic.
    DeadLetterTopic,
}

impl Member {
    /// A member of `group` consuming with `options`; `dead_letter` is the resolved
    /// dead-letter topic.
    pub(super) fn new(inner: Arc<Inner>, group: Arc<Group>, options: &ConsumeOptions, dead_letter: String) -> Member {
        let ack_wait = if options.ack_wait.is_zero() { DEFAULT_ACK_WAIT } else { options.ack_wait };
        group.members.fetch_add(1, Ordering::Relaxed);
        let acker = Arc::new(GroupAcker {
            inner,
            group,
            max_deliver: options.max_deliver,
            dead_letter,
            dead_letter_topic: OnceLock::new(),
        });
        Member { acker, auto_ack: options.auto_ack, ack_wait: millis(ack_wait) }
    }

    pub(super) fn into_stream(self) -> BoxStream<Result<Delivery, Status>> {
        let published = self.acker.group.topic.published.subscribe();
        futures::stream::unfold((self, published), |(member, mut published)| async move {
            let group = member.acker.group.clone();
            loop {
                let changed = group.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                published.borrow_and_update();
                match member.next().await {
                    Ok(Step::Deliver(d)) => return Some((Ok(*d), (member, published))),
                    Err(e) => return Some((Err(e), (member, published))),
                    Ok(Step::Wait(due)) => {
                        let wait = due.map_or(Duration::from_secs(3600), |t| {
                            Duration::from_millis(t.saturating_sub(now_ms()).max(1))
                        });
                        tokio::select! {
                            _ = &mut changed => {}
                            r = published.changed() => if r.is_err() { return None },
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        })
        .boxed()
    }

    /// The next delivery for this member, if any. The group is held only inside
    /// [`Member::step`]; reads happen between steps, and each step looks afresh.
    async fn next(&self) -> Result<Step, Status> {
        let acker = &self.acker;
        let (inner, group) = (&acker.inner, &acker.group);
        let topic = &group.topic;
        loop {
            match self.step() {
                Work::Step(step) => return Ok(step),
                Work::Load(seqs) => {
                    let events = inner.load_many(topic, seqs).await?;
                    self.loaded(events);
                }
                Work::Take { from, to, max } => {
                    let events = inner.fetch(topic, from, to, max).await?;
                    let mut st = lock(&group.state);
                    // Another member took these meanwhile: look again.
                    if st.cursor == from {
                        self.take(&mut st, from, to, max, events, now_ms());
                    }
                }
                Work::DeadLetterTopic => {
                    acker.dead_letter_topic().await?;
                }
            }
        }
    }

    /// Delivers the first ready entry, dead-letters it or takes more from the log, as
    /// far as that can be done with what is in memory; otherwise says what to read.
    fn step(&self) -> Work {
        let acker = &self.acker;
        let (inner, group) = (&acker.inner, &acker.group);
        let topic = &group.topic;
        let mut st = lock(&group.state);
        loop {
            let now = now_ms();
            st.fire(now);
            if let Some(&seq) = st.ready.first() {
                let Some(entry) = st.entries.get(&seq) else {
                    st.ready.pop_first();
                    continue;
                };
                let attempts = entry.attempts;
                // Taken with the entry, or still in the topic's memory; else read back.
                let event = match entry.event.clone() {
                    Some(e) => e,
                    None => match topic.cached(seq, seq, 1).and_then(|mut e| e.pop()) {
                        Some(e) => e,
                        None => return Work::Load(st.unloaded()),
                    },
                };
                if acker.max_deliver > 0 && attempts >= acker.max_deliver {
                    let Some(target) = acker.dead_letter_topic.get() else { return Work::DeadLetterTopic };
                    let op = acker.dead_letter(seq, attempts, Some((event, target.clone())));
                    st.remove(seq);
                    group.changed.notify_waiters();
                    if let Some(op) = op {
                        inner.writer.send(op);
                    }
                    continue;
                }
                if !inner.retention().keeps(&event, topic.last_seq(), now) {
                    // Purged: nothing left to deliver.
                    st.remove(seq);
                    acker.persist(|group| Op::Done { group, seq, reply: None });
                    group.changed.notify_waiters();
                    continue;
                }
                let attempt = attempts + 1;
                if self.auto_ack {
                    st.remove(seq);
                    acker.persist(|group| Op::Done { group, seq, reply: None });
                    group.changed.notify_waiters();
                } else {
                    if let Some(e) = st.entries.get_mut(&seq) {
                        e.attempts = attempt;
                        // Redeliveries read it again (from memory while recent).
                        e.event = None;
                    }
                    let due = now.saturating_add(self.ack_wait);
                    st.schedule(seq, due, now);
                    if st.timers.first() == Some(&(due, seq)) {
                        // Idle members sleep until the earliest deadline: this is a new one.
                        group.changed.notify_waiters();
                    }
                    acker.persist(|group| Op::Attempt { group, seq, attempts: attempt, not_before: 0 });
                }
                return Work::Step(Step::Deliver(Box::new(Delivery {
                    event: Event::clone(&event),
                    group: group.name.clone(),
                    attempt,
                    token: format!("{seq}:{attempt}"),
                    acker: acker.clone(),
                })));
            }
            // Nothing ready: take more from the log.
            let last = topic.last_seq();
            if st.cursor <= last && st.entries.len() < WINDOW {
                let (from, max) = (st.cursor, TAKE.min(WINDOW - st.entries.len()));
                match topic.cached(from, last, max) {
                    Some(events) => self.take(&mut st, from, last, max, events, now),
                    None => return Work::Take { from, to: last, max },
                }
                continue;
            }
            return Work::Step(Step::Wait(st.timers.first().map(|t| t.0)));
        }
    }

    /// Adds `events`, read from `from` to `to` (at most `max`), to the group, whose
    /// cursor is still at `from`.
    fn take(&self, st: &mut GroupState, from: u64, to: u64, max: usize, events: Vec<Arc<Event>>, now: u64) {
        debug_assert_eq!(st.cursor, from);
        st.cursor = match events.last() {
            Some(e) if events.len() == max => e.seq + 1,
            _ => to + 1,
        };
        let retention = self.acker.inner.retention();
        let mut seqs = Vec::with_capacity(events.len());
        for event in events {
            if retention.keeps(&event, to, now) {
                seqs.push(event.seq);
                st.add(event.seq, event.key.clone(), 0, 0, Some(event), now);
            }
        }
        let cursor = st.cursor;
        self.acker.persist(|group| Op::Take { group, cursor, seqs });
    }

    /// Keeps events read back for ready entries until they are delivered; an entry
    /// whose event is no longer stored (purged) is done.
    fn loaded(&self, events: Vec<(u64, Option<Arc<Event>>)>) {
        let group = &self.acker.group;
        let mut st = lock(&group.state);
        let mut gone = false;
        for (seq, event) in events {
            let Some(entry) = st.entries.get_mut(&seq) else { continue };
            if entry.at != At::Ready || entry.event.is_some() {
                continue;
            }
            match event {
                Some(event) => entry.event = Some(event),
                None => {
                    st.remove(seq);
                    self.acker.persist(|group| Op::Done { group, seq, reply: None });
                    gone = true;
                }
            }
        }
        if gone {
            group.changed.notify_waiters();
        }
    }
}

impl GroupState {
    /// The first ready entries whose events are not in memory.
    fn unloaded(&self) -> Vec<u64> {
        let unloaded = self.ready.iter().filter(|seq| self.entries.get(seq).is_some_and(|e| e.event.is_none()));
        unloaded.take(LOAD).copied().collect()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.acker.group.members.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Acknowledges the deliveries of one member.
pub(super) struct GroupAcker {
    inner: Arc<Inner>,
    group: Arc<Group>,
    max_deliver: u32,
    dead_letter: String,
    /// The dead-letter topic, once opened.
    dead_letter_topic: OnceLock<Arc<Topic>>,
}

fn parse_token(token: &str) -> Result<(u64, u32), Status> {
    token
        .split_once(':')
        .and_then(|(seq, attempt)| Some((seq.parse().ok()?, attempt.parse().ok()?)))
        .ok_or_else(|| Status::bad_request(ID, format!("invalid delivery token {token:?}")))
}

impl GroupAcker {
    /// Queues a write for a stored group (private groups are not stored).
    fn persist(&self, op: impl FnOnce(i64) -> Op) {
        if let Some(id) = self.group.id {
            self.inner.writer.send(op(id));
        }
    }

    /// Completes entry `seq` of a stored group and waits for the commit.
    async fn persist_now(&self, seq: u64) -> Result<(), Status> {
        match self.group.id {
            Some(group) => self.inner.writer.call(|reply| Op::Done { group, seq, reply: Some(reply) }).await,
            None => Ok(()),
        }
    }

    /// The dead-letter topic, opened (and created) the first time.
    async fn dead_letter_topic(&self) -> Result<Arc<Topic>, Status> {
        if let Some(topic) = self.dead_letter_topic.get() {
            return Ok(topic.clone());
        }
        let topic = self.inner.topic(&self.group.topic.ns, &self.dead_letter).await?;
        // Racing callers got the same topic.
        Ok(self.dead_letter_topic.get_or_init(|| topic).clone())
    }

    /// The write that moves entry `seq` to the dead-letter topic and completes it in the
    /// same transaction, given its event and the dead-letter topic; just completes it
    /// when its event was purged (`None`).
    fn dead_letter(&self, seq: u64, attempts: u32, letter: Option<(Arc<Event>, Arc<Topic>)>) -> Option<Op> {
        let topic = &self.group.topic;
        let done = self.group.id.map(|g| (g, seq));
        let Some((event, target)) = letter else {
            return done.map(|(group, seq)| Op::Done { group, seq, reply: None });
        };
        let mut metadata = event.metadata.clone();
        metadata.insert("dead-letter-topic".into(), topic.name.clone());
        metadata.insert("dead-letter-seq".into(), seq.to_string());
        metadata.insert("dead-letter-group".into(), self.group.name.clone());
        metadata.insert("attempts".into(), attempts.to_string());
        let message = Message { key: event.key.clone(), metadata, payload: event.payload.clone() };
        tracing::debug!(topic = %topic.name, seq, dead_letter = %self.dead_letter, "events: dead letter");
        Some(Op::Publish { topic: target, message, done, reply: None })
    }
}

#[async_trait::async_trait]
impl Acker for GroupAcker {
    async fn ack(&self, delivery: &Delivery) -> Result<(), Status> {
        let (seq, _) = parse_token(&delivery.token)?;
        let removed = lock(&self.group.state).remove(seq).is_some();
        if !removed {
            return Ok(());
        }
        self.group.changed.notify_waiters();
        self.persist_now(seq).await
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), Status> {
        let (seq, attempt) = parse_token(&delivery.token)?;
        // What a dead letter needs is read before the group is taken.
        let dead = if self.max_deliver > 0 && attempt >= self.max_deliver {
            match self.inner.load(&self.group.topic, seq).await? {
                Some(event) => Some(Some((event, self.dead_letter_topic().await?))),
                None => Some(None),
            }
        } else {
            None
        };
        let now = now_ms();
        let op = {
            let mut st = lock(&self.group.state);
            // Only the latest delivery of a pending entry may be nacked.
            let current = st.entries.get(&seq).is_some_and(|e| e.attempts == attempt && e.at != At::Blocked);
            if !current {
                return Ok(());
            }
            match dead {
                Some(letter) => {
                    st.remove(seq);
                    self.dead_letter(seq, attempt, letter)
                }
                None => {
                    let due = now.saturating_add(millis(delay));
                    st.schedule(seq, due, now);
                    let not_before = if due > now { due } else { 0 };
                    // Queued under the group, so a redelivery's write comes after it.
                    self.persist(|group| Op::Attempt { group, seq, attempts: attempt, not_before });
                    None
                }
            }
        };
        self.group.changed.notify_waiters();
        match op {
            Some(Op::Publish { topic, message, done, .. }) => {
                let publish = |reply| Op::Publish { topic, message, done, reply: Some(reply) };
                self.inner.writer.call(publish).await.map(drop)
            }
            Some(Op::Done { seq, .. }) => self.persist_now(seq).await,
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_block_and_timers_fire() {
        let mut st = GroupState::new(1);
        st.add(1, "a".into(), 0, 0, None, 0);
        st.add(2, "b".into(), 0, 0, None, 0);
        st.add(3, "a".into(), 0, 0, None, 0);
        st.add(4, String::new(), 0, 0, None, 0);
        assert_eq!(st.ready.iter().copied().collect::<Vec<_>>(), vec![1, 2, 4], "3 waits behind 1");
        st.remove(1);
        assert_eq!(st.ready.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4], "3 is unblocked");
        st.ready.pop_first();
        st.schedule(2, 100, 10);
        st.fire(50);
        assert!(!st.ready.contains(&2));
        st.fire(100);
        assert!(st.ready.contains(&2));
        // Restored after a restart: attempts kept, a nack delay honoured.
        let mut st = GroupState::new(1);
        st.add(7, "k".into(), 2, 500, None, 100);
        st.add(8, "k".into(), 0, 0, None, 100);
        assert!(st.ready.is_empty() && st.timers.contains(&(500, 7)));
    }

    fn at(cursor: u64, entries: &[(u64, u32)]) -> Snapshot {
        Snapshot { cursor, entries: entries.to_vec(), members: 1 }
    }

    fn numbers(info: &GroupInfo) -> (u64, u64, u64, u64) {
        (info.delivered, info.acked, info.pending, info.lag)
    }

    #[test]
    fn progress_from_cursor_and_entries() {
        // Nothing taken yet, from the start: nothing delivered or acked, all to do.
        assert_eq!(numbers(&progress("g".into(), &at(1, &[]), 10, 1)), (0, 0, 0, 10));
        // Started at 6 (offset New after 5 events): 1-5 are passed.
        assert_eq!(numbers(&progress("g".into(), &at(6, &[]), 8, 1)), (5, 5, 0, 3));
        // 1-10 taken; 1-3 acked, 4-5 delivered, 6-10 waiting.
        let entries = [(4, 1), (5, 1), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0)];
        assert_eq!(numbers(&progress("g".into(), &at(11, &entries), 10, 1)), (5, 3, 2, 7));
        // 5 acked out of order while 4 is still out: the floor stays, the lag shrinks.
        let entries = [(4, 1), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0)];
        assert_eq!(numbers(&progress("g".into(), &at(11, &entries), 10, 1)), (5, 3, 1, 6));
        // Everything taken was acked; 11-12 are not taken yet.
        assert_eq!(numbers(&progress("g".into(), &at(11, &[]), 12, 1)), (10, 10, 0, 2));
        // A nacked entry (attempts kept) still counts as pending; a key-blocked later one
        // was never delivered, but one past it was.
        let entries = [(2, 2), (3, 0), (4, 1)];
        assert_eq!(numbers(&progress("g".into(), &at(5, &entries), 4, 1)), (4, 1, 2, 3));
        // Retention removed 1-6: entries below the floor are gone, the cursor jumps.
        let entries = [(2, 1), (3, 0)];
        assert_eq!(numbers(&progress("g".into(), &at(4, &entries), 10, 7)), (6, 6, 0, 4));
        // A start past the end of the topic reports the end.
        assert_eq!(numbers(&progress("g".into(), &at(50, &[]), 10, 1)), (10, 10, 0, 0));
    }
}
