//! Sync: distributed locks with a TTL and a wait timeout, and leader election on top.

use crate::{Code, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The lock's id.
    pub id: String,
    /// Proves ownership to refresh and release.
    pub token: String,
    /// How long the lock lasts unless refreshed.
    pub ttl: Duration,
}

/// Distributed locks, scoped by namespace.
#[async_trait::async_trait]
pub trait Sync: Send + std::marker::Sync + 'static {
    /// Takes lock `id` for `ttl`, waiting up to `wait` while someone else holds it;
    /// `DeadlineExceeded` (reason: held) when it stays taken.
    async fn lock(&self, namespace: &str, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status>;
    /// Extends a held lock by its TTL; `FailedPrecondition` when it is no longer held.
    async fn refresh(&self, namespace: &str, lock: &Lock) -> Result<(), Status>;
    /// Releases a held lock; `FailedPrecondition` when it is no longer held.
    async fn unlock(&self, namespace: &str, lock: &Lock) -> Result<(), Status>;
}

/// Takes lock `id` the way every backend does: checks the request, makes a token, then
/// calls `attempt(token)` (true when taken) until it succeeds or `wait` runs out, looking
/// again when `released` is notified or every `poll`.
pub async fn acquire<F, Fut>(
    namespace: &str,
    id: &str,
    ttl: Duration,
    wait: Duration,
    released: &tokio::sync::Notify,
    poll: Duration,
    mut attempt: F,
) -> Result<Lock, Status>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<bool, Status>>,
{
    crate::namespace::validate(namespace)?;
    validate_id(id)?;
    if ttl.is_zero() || ttl > Duration::from_secs(24 * 3600) {
        return Err(Status::bad_request("sync", "the lock TTL must be between 1 ms and 24 h"));
    }
    let token = uuid::Uuid::new_v4().to_string();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = released.notified();
        if attempt(token.clone()).await? {
            return Ok(Lock { id: id.to_string(), token, ttl });
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Status::deadline_exceeded("sync", format!("lock {id:?} is held by someone else")));
        }
        let _ = tokio::time::timeout(poll.min(deadline - now), notified).await;
    }
}

/// Checks a lock id: 1–256 characters of `a-z A-Z 0-9 . _ - /`.
pub fn validate_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if ok { Ok(()) } else { Err(Status::bad_request("sync", format!("invalid lock id {id:?}"))) }
}

/// Leadership held by this process: kept alive in the background until resigned or lost.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when leadership is lost (the lock could not be refreshed).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Whether leadership has been lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Gives leadership up at once.
    pub async fn resign(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Campaigns for leadership of `election` until elected: holds the lock
/// `leader/<election>` with `ttl`, refreshing it every `ttl / 3`.
pub async fn elect(sync: Arc<dyn Sync>, namespace: &str, election: &str, ttl: Duration) -> Result<Leadership, Status> {
    let id = format!("leader/{election}");
    validate_id(&id)?;
    let lock = loop {
        match sync.lock(namespace, &id, ttl, ttl).await {
            Ok(l) => break l,
            Err(e) if e.code() == Code::DeadlineExceeded => continue,
            Err(e) => return Err(e),
        }
    };
    let (lost_tx, lost) = watch::channel(false);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let ns = namespace.to_string();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 3);
        tick.tick().await;
        let mut held_until = tokio::time::Instant::now() + ttl;
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    let _ = sync.unlock(&ns, &lock).await;
                    return;
                }
                _ = tick.tick() => match sync.refresh(&ns, &lock).await {
                    Ok(()) => held_until = tokio::time::Instant::now() + ttl,
                    // The backend is unreachable, but the lock may still be ours: keep
                    // trying while it would not have expired.
                    Err(e) if e.code() != Code::FailedPrecondition
                        && tokio::time::Instant::now() + ttl / 3 < held_until =>
                    {
                        tracing::warn!(error = %e, lock = %lock.id, "refreshing leadership failed; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, lock = %lock.id, "leadership lost");
                        let _ = lost_tx.send(true);
                        return;
                    }
                },
            }
        }
    });
    Ok(Leadership { lost, stop: Some(stop), task })
}
