//! Conformance of `sync` backends.

use micro_core::sync::{Lock, Sync, elect};
use micro_core::{Code, Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static RUN: AtomicU64 = AtomicU64::new(0);

fn namespace() -> String {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("conformance-sync-{}-{n}", t % 1_000_000_000_000)
}

/// Runs every sync check against `sync`.
pub async fn sync(sync: Arc<dyn Sync>) {
    let ns = namespace();
    let long = Duration::from_secs(30);

    // Of two contenders exactly one holds the lock.
    let a = sync.lock(&ns, "job", long, Duration::ZERO).await.expect("first lock");
    let b = sync.lock(&ns, "job", long, Duration::from_millis(100)).await.expect_err("second must wait");
    assert_eq!(b.code(), Code::DeadlineExceeded, "a held lock times out the waiter");
    // Many at once: exactly one wins.
    let winners = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, ns, w) = (sync.clone(), ns.clone(), winners.clone());
        tasks.push(tokio::spawn(async move {
            if s.lock(&ns, "race", long, Duration::ZERO).await.is_ok() {
                w.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(winners.load(Ordering::SeqCst), 1, "exactly one of eight contenders wins");

    // A waiter gets the lock soon after it is released.
    let (s, ns2) = (sync.clone(), ns.clone());
    let waiter = tokio::spawn(async move { s.lock(&ns2, "job", long, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    sync.unlock(&ns, &a).await.expect("unlock");
    let c = waiter.await.expect("task").expect("the waiter gets the lock");
    assert!(released.elapsed() < Duration::from_secs(2), "the waiter got it promptly");
    assert_eq!(sync.unlock(&ns, &a).await.expect_err("stale").code(), Code::FailedPrecondition, "old token is stale");
    assert_eq!(
        sync.refresh(&ns, &a).await.expect_err("stale").code(),
        Code::FailedPrecondition,
        "old token can't refresh"
    );
    sync.refresh(&ns, &c).await.expect("the holder refreshes");
    sync.unlock(&ns, &c).await.expect("the holder unlocks");

    // The TTL releases a lock whose holder died (never unlocked).
    let ttl = Duration::from_millis(300);
    let dead = sync.lock(&ns, "ttl", ttl, Duration::ZERO).await.expect("lock");
    let started = Instant::now();
    let next = sync.lock(&ns, "ttl", ttl, Duration::from_secs(5)).await.expect("the TTL frees the lock");
    assert!(started.elapsed() >= Duration::from_millis(200), "not before the TTL ran out");
    assert_eq!(sync.refresh(&ns, &dead).await.expect_err("expired").code(), Code::FailedPrecondition);
    sync.unlock(&ns, &next).await.expect("unlock");
    // Refreshing keeps a lock past its TTL (margins of 400 ms either way, so a loaded
    // machine's slow call does not decide the outcome).
    let second = Duration::from_secs(1);
    let kept = sync.lock(&ns, "refreshed", second, Duration::ZERO).await.expect("lock");
    tokio::time::sleep(Duration::from_millis(600)).await;
    sync.refresh(&ns, &kept).await.expect("refresh");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let err = sync.lock(&ns, "refreshed", second, Duration::ZERO).await.expect_err("refreshed lock still held");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    sync.unlock(&ns, &kept).await.expect("unlock");

    // Namespaces are isolated.
    let other = format!("{ns}-other");
    let o = sync.lock(&other, "ttl", long, Duration::ZERO).await.expect("same id, other namespace");
    sync.unlock(&other, &o).await.expect("unlock");

    // Leader election: one leader; when it stops refreshing, another takes over.
    let first = elect(sync.clone(), &ns, "scheduler", Duration::from_millis(300)).await.expect("elected");
    let (s, ns2) = (sync.clone(), ns.clone());
    let second = tokio::spawn(async move { elect(s, &ns2, "scheduler", Duration::from_millis(300)).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!second.is_finished(), "no second leader while the first keeps its lease");
    assert!(!first.is_lost(), "the leader keeps leadership while refreshing");
    first.resign().await;
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the other candidate is elected after the leader resigns")
        .expect("task")
        .expect("elected");
    drop(sync.lock(&ns, "leader/scheduler", long, Duration::ZERO).await.expect_err("held by the leader"));

    // A leader whose refreshes stop (its process hung or died) loses leadership, and
    // after its lease runs out another candidate is elected.
    let flaky = Arc::new(Flaky { inner: sync.clone(), broken: AtomicBool::new(false) });
    second.resign().await;
    let mut third = elect(flaky.clone(), &ns, "scheduler", Duration::from_millis(300)).await.expect("elected");
    flaky.broken.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(3), third.lost()).await.expect("the lost-leadership signal fires");
    let fourth =
        tokio::time::timeout(Duration::from_secs(3), elect(sync.clone(), &ns, "scheduler", Duration::from_millis(300)))
            .await
            .expect("a new leader after the lease ran out")
            .expect("elected");
    fourth.resign().await;

    // Bad input.
    for bad in ["", "has space", &"x".repeat(300)] {
        let err = sync.lock(&ns, bad, long, Duration::ZERO).await.expect_err("bad id");
        assert_eq!(err.code(), Code::InvalidArgument, "lock id {bad:?}");
    }
    let err = sync.lock(&ns, "zero", Duration::ZERO, Duration::ZERO).await.expect_err("zero ttl");
    assert_eq!(err.code(), Code::InvalidArgument, "zero TTL");
}

/// A backend whose refreshes fail once `broken` is set, like a leader that stopped.
struct Flaky {
    inner: Arc<dyn Sync>,
    broken: AtomicBool,
}

#[async_trait::async_trait]
impl Sync for Flaky {
    async fn lock(&self, ns: &str, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status> {
        self.inner.lock(ns, id, ttl, wait).await
    }
    async fn refresh(&self, ns: &str, lock: &Lock) -> Result<(), Status> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(Status::unavailable("sync", "refresh failed (test)"));
        }
        self.inner.refresh(ns, lock).await
    }
    async fn unlock(&self, ns: &str, lock: &Lock) -> Result<(), Status> {
        self.inner.unlock(ns, lock).await
    }
}
