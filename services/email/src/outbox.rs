//! The outbox: each mail waiting to be sent has a queue entry
//! `_queue/<due, Unix ms, 13 digits>/<namespace>/<id>`, so entries sort by when they are
//! due. One worker in the cluster (the leader of election `email`) sends them in order.
//!
//! Every step is written before the next is taken, so a SIGKILL anywhere loses nothing:
//! an entry is written before its mail (an entry without a mail is dropped), a mail is
//! marked `sending` before it is handed over and `sent` before its entry goes, and a
//! retry's new entry is written before the old one is removed.

use crate::send::{Failure, Sender};
use crate::{Bounce, Mail, NAME, Shared, State, bare, bounce_key, decode, encode, mail_key, now, now_ms};
use micro::{Code, Status, Stopping};
use micro_core::store::Query;
use std::sync::Arc;
use std::time::Duration;

/// Where queue entries live: no namespace's name starts with `_`.
const QUEUE: &str = "_queue/";
/// How long leadership lasts without a refresh: a crashed leader's successor waits this.
const LEADER_TTL: Duration = Duration::from_secs(10);
/// How often the queue is looked at when nothing wakes the worker (mail sent through
/// another node of a cluster is seen within this).
const POLL: Duration = Duration::from_secs(1);
/// Entries read at a time.
const BATCH: u32 = 100;
/// Attempts before a mail fails.
pub(crate) const MAX_ATTEMPTS: u32 = 10;
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

fn queue_key(ns: &str, mail: &Mail) -> String {
    format!("{QUEUE}{:013}/{ns}/{}", mail.due, mail.id)
}

/// Parses a queue entry's key into (due, namespace, id).
fn parse(key: &str) -> Option<(u64, &str, &str)> {
    let mut parts = key.strip_prefix(QUEUE)?.splitn(3, '/');
    let due = parts.next()?.parse().ok()?;
    Some((due, parts.next()?, parts.next()?))
}

/// How long a mail is kept after its last change.
const KEEP: Duration = Duration::from_secs(30 * 86_400);

/// Writes `mail` of namespace `ns`, kept for 30 days from now.
async fn save(store: &micro::data::StoreHandle, ns: &str, mail: &Mail) -> Result<(), Status> {
    let record = micro_core::store::Record::new(mail_key(ns, &mail.id), encode(mail)?);
    store.write(&record, Some(KEEP)).await
}

/// Puts a new mail in namespace `ns`'s outbox: its queue entry first.
pub(crate) async fn enqueue(store: &micro::data::StoreHandle, ns: &str, mail: &Mail) -> Result<(), Status> {
    store.put(&queue_key(ns, mail), b"1".to_vec()).await?;
    save(store, ns, mail).await
}

/// Sends the outbox while this node leads, until the service stops.
pub(crate) async fn run(sh: Arc<Shared>, mut stopping: Stopping) {
    let Some(sender) = &sh.sender else { return };
    loop {
        let elected = tokio::select! {
            l = sh.sync.elect(NAME, LEADER_TTL) => l,
            _ = stopping.stopped() => return,
        };
        let mut leadership = match elected {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(service = NAME, error = %e, "cannot campaign to send the outbox; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stopping.stopped() => return,
                }
            }
        };
        tracing::info!(service = NAME, "this node sends the outbox");
        loop {
            let wait = match drain(&sh, sender, &stopping, &leadership).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(service = NAME, error = %e, "reading the outbox failed; retrying");
                    POLL
                }
            };
            if stopping.is_stopping() {
                leadership.resign().await;
                return;
            }
            if leadership.is_lost() {
                break;
            }
            let mut stop = false;
            tokio::select! {
                _ = sh.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = leadership.lost() => {}
                _ = stopping.stopped() => stop = true,
            }
            if stop {
                leadership.resign().await;
                return;
            }
        }
        tracing::warn!(service = NAME, "lost the lead of the outbox; campaigning again");
    }
}

/// Sends what is due; returns how long to wait before looking again.
async fn drain(
    sh: &Shared,
    sender: &Sender,
    stopping: &Stopping,
    leadership: &micro_core::sync::Leadership,
) -> Result<Duration, Status> {
    let q = Query { prefix: true, limit: BATCH, ..Default::default() };
    let keys = sh.store.list(QUEUE, &q).await?;
    let full = keys.len() == BATCH as usize;
    for key in keys {
        if stopping.is_stopping() || leadership.is_lost() {
            return Ok(Duration::ZERO);
        }
        let Some((due, ns, id)) = parse(&key) else {
            sh.store.delete(&key).await?;
            continue;
        };
        let t = now_ms();
        if due > t {
            return Ok(Duration::from_millis(due - t).min(POLL));
        }
        deliver(sh, sender, &key, ns, id).await?;
    }
    Ok(if full { Duration::ZERO } else { POLL })
}

/// The wait before attempt `attempts + 1`.
fn backoff(first: Duration, attempts: u32) -> Duration {
    first.saturating_mul(1 << attempts.saturating_sub(1).min(20)).min(MAX_BACKOFF)
}

/// One attempt at the mail of queue entry `key`.
async fn deliver(sh: &Shared, sender: &Sender, key: &str, ns: &str, id: &str) -> Result<(), Status> {
    let store = &sh.store;
    let mut mail: Mail = match store.get(&mail_key(ns, id)).await {
        Ok(r) => decode(&r.value)?,
        // Its namespace was deleted, or its Send never finished: nothing to send.
        Err(e) if e.code() == Code::NotFound => return store.delete(key).await,
        Err(e) => return Err(e),
    };
    if mail.state.done() {
        return store.delete(key).await;
    }
    mail.state = State::Sending;
    mail.attempts += 1;
    save(store, ns, &mail).await?;
    let outcome = sender.send(ns, &mail).await;
    match outcome {
        Ok(()) => {
            mail.state = State::Sent;
            mail.error = None;
            mail.done = Some(now());
            tracing::info!(service = NAME, namespace = ns, id, attempts = mail.attempts, "mail sent");
        }
        Err(Failure::Permanent(reason)) => {
            let address = bare(&mail.to);
            let bounce = Bounce { address: address.clone(), reason: reason.clone(), mail: mail.id.clone(), at: now() };
            store.put(&bounce_key(ns, &address), encode(&bounce)?).await?;
            mail.state = State::Bounced;
            mail.error = Some(reason);
            mail.done = Some(now());
            tracing::info!(service = NAME, namespace = ns, id, "mail bounced");
        }
        Err(Failure::Invalid(reason)) => {
            mail.state = State::Failed;
            mail.error = Some(reason);
            mail.done = Some(now());
        }
        Err(Failure::Transient(reason)) if mail.attempts >= MAX_ATTEMPTS => {
            mail.state = State::Failed;
            mail.error = Some(format!("gave up after {MAX_ATTEMPTS} attempts: {reason}"));
            mail.done = Some(now());
            tracing::warn!(service = NAME, namespace = ns, id, error = %reason, "mail failed");
        }
        Err(Failure::Transient(reason)) => {
            tracing::warn!(service = NAME, namespace = ns, id, error = %reason, attempts = mail.attempts, "sending failed; will retry");
            mail.state = State::Queued;
            mail.error = Some(reason);
            mail.due = now_ms() + backoff(sh.settings.retry, mail.attempts).as_millis() as u64;
            // The new entry before the mail and before the old entry goes.
            store.put(&queue_key(ns, &mail), b"1".to_vec()).await?;
        }
    }
    if mail.state.done() && mail.sensitive {
        // Its secret is nobody's business once it went (or never will).
        mail.text = crate::WITHHELD.into();
        mail.html = None;
    }
    save(store, ns, &mail).await?;
    store.delete(key).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_backoff() {
        assert_eq!(parse("_queue/0000000001234/shop/abc"), Some((1234, "shop", "abc")));
        assert_eq!(parse("_queue/x/shop/abc"), None);
        assert_eq!(parse("shop/mail/abc"), None);
        let s = Duration::from_secs(5);
        assert_eq!(backoff(s, 1), s);
        assert_eq!(backoff(s, 3), Duration::from_secs(20));
        assert_eq!(backoff(s, 40), MAX_BACKOFF);
    }
}
