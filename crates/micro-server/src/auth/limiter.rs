//! The limit on failed logins (and on `ChangeSecret` with a wrong old secret, which is a
//! login by another name).
//!
//! Attempts count per (account, client address) and, with a higher ceiling, per client
//! address across accounts. So a guesser holds back only itself: the account's rightful
//! user, from another address, signs in as usual, and nobody can lock an account by
//! failing at it. A key over its limit is blocked for a minute, twice as long each time
//! it is blocked again (up to 15 minutes).
//!
//! An attempt is counted when it starts, and a successful one takes its count back: many
//! concurrent guesses cannot all pass the check before the first failure is recorded.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempts allowed within [`WINDOW`] per account and client address.
const PER_ACCOUNT_AND_ADDRESS: usize = 10;
/// Attempts allowed within [`WINDOW`] per client address, across accounts.
const PER_ADDRESS: usize = 50;
const WINDOW: Duration = Duration::from_secs(60);
/// The first block; each later one of the same key is twice as long, up to [`MAX_BLOCK`].
const FIRST_BLOCK: Duration = Duration::from_secs(60);
const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A key that was blocked and has had no attempt for this long (nor is blocked) starts
/// over, its backoff too.
const FORGET: Duration = Duration::from_secs(60 * 60);
/// Keys kept before the forgotten ones are dropped.
const PRUNE_AT: usize = 100_000;

/// What is known about one key.
struct Entry {
    /// Attempts within the window (failed or still running).
    attempts: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    /// How many times the key was blocked (the next block doubles per time).
    blocks: u32,
    last: Instant,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry { attempts: VecDeque::new(), blocked_until: None, blocks: 0, last: now }
    }

    /// Whether nothing about the key matters any more (then it is dropped, or starts over).
    fn forgotten(&self, now: Instant) -> bool {
        let memory = if self.blocks == 0 { WINDOW } else { FORGET };
        self.blocked_until.is_none_or(|t| t <= now) && now.saturating_duration_since(self.last) >= memory
    }
}

/// The keys of one login attempt: the account with the client address, and the address.
pub(crate) struct Keys {
    account: String,
    address: String,
}

impl Keys {
    /// The keys of an attempt at account `id` of namespace `ns` from `client` (the address
    /// the edge stamped). IPv6 addresses count per /64, which one client can fill at will.
    pub(crate) fn new(ns: &str, id: &str, client: Option<&str>) -> Keys {
        let address = match client {
            None => "unknown".to_string(),
            Some(c) => match c.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => {
                        let s = v6.segments();
                        format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                    }
                },
                Ok(ip) => ip.to_string(),
                Err(_) => c.chars().take(64).collect(),
            },
        };
        // The account id is hashed: it is whatever the caller sent, of any length.
        let account = crate::sha256_hex(format!("{ns}/{id}").as_bytes());
        Keys { account: format!("a/{account}/{address}"), address: format!("c/{address}") }
    }

    fn with_limits(&self) -> [(&str, usize); 2] {
        [(&self.account, PER_ACCOUNT_AND_ADDRESS), (&self.address, PER_ADDRESS)]
    }
}

/// An attempt under way; [`Limiter::succeeded`] takes its count back.
pub(crate) struct Attempt {
    at: Instant,
}

/// The failed-login counts of this node.
#[derive(Default)]
pub(crate) struct Limiter {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Limiter {
    /// Starts an attempt at `keys`, counting it; when a key is over its limit, how long
    /// until it may try again.
    pub(crate) fn begin(&self, keys: &Keys) -> Result<Attempt, Duration> {
        self.begin_at(keys, Instant::now())
    }

    fn begin_at(&self, keys: &Keys, now: Instant) -> Result<Attempt, Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, e| !e.forgotten(now));
        }
        // Only counted attempts make keys: refused ones cost nothing to remember.
        let mut wait = Duration::ZERO;
        for (key, max) in keys.with_limits() {
            let Some(entry) = entries.get_mut(key) else { continue };
            if entry.forgotten(now) {
                *entry = Entry::new(now);
            }
            while entry.attempts.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
                entry.attempts.pop_front();
            }
            if entry.blocked_until.is_none_or(|t| t <= now) && entry.attempts.len() >= max {
                let block = FIRST_BLOCK.saturating_mul(1 << entry.blocks.min(16)).min(MAX_BLOCK);
                entry.blocked_until = Some(now + block);
                entry.blocks = entry.blocks.saturating_add(1);
                entry.attempts.clear();
            }
            if let Some(until) = entry.blocked_until.filter(|t| *t > now) {
                wait = wait.max(until - now);
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (key, _) in keys.with_limits() {
            let entry = entries.entry(key.to_string()).or_insert_with(|| Entry::new(now));
            entry.attempts.push_back(now);
            entry.last = now;
        }
        Ok(Attempt { at: now })
    }

    /// The attempt succeeded: the account forgets this address's failures (the right
    /// secret came from it), and the address gets this attempt back.
    pub(crate) fn succeeded(&self, keys: &Keys, attempt: Attempt) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&keys.account);
        if let Some(entry) = entries.get_mut(&keys.address)
            && let Some(i) = entry.attempts.iter().position(|t| *t == attempt.at)
        {
            entry.attempts.remove(i);
        }
    }
}

/// What a caller over the limit is told.
pub(crate) fn too_many(wait: Duration) -> micro_core::Status {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    micro_core::Status::new(
        micro_core::Code::ResourceExhausted,
        "auth",
        format!("too many attempts, try again in {} s", secs.max(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(l: &Limiter, keys: &Keys, now: Instant, n: usize) {
        for i in 0..n {
            assert!(l.begin_at(keys, now).is_ok(), "attempt {i}");
        }
    }

    #[test]
    fn blocks_per_account_and_address_with_backoff() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let guesser = Keys::new("micro", "alice", Some("192.0.2.1"));
        fail(&l, &guesser, t0, 10);
        assert_eq!(l.begin_at(&guesser, t0).err(), Some(FIRST_BLOCK));
        // The rightful user elsewhere, and another account from the guesser's address.
        assert!(l.begin_at(&Keys::new("micro", "alice", Some("198.51.100.7")), t0).is_ok());
        assert!(l.begin_at(&Keys::new("micro", "bob", Some("192.0.2.1")), t0).is_ok());
        assert!(l.begin_at(&Keys::new("other", "alice", Some("192.0.2.1")), t0).is_ok());
        // Still blocked a second before the end; ten more tries after it, then twice as
        // long, and so on up to the longest block.
        assert_eq!(l.begin_at(&guesser, t0 + Duration::from_secs(59)).err(), Some(Duration::from_secs(1)));
        let mut t = t0 + FIRST_BLOCK;
        for block in [120, 240, 480, 900, 900] {
            fail(&l, &guesser, t, 10);
            assert_eq!(l.begin_at(&guesser, t).err(), Some(Duration::from_secs(block)));
            t += Duration::from_secs(block);
        }
        // Forgotten after an hour without attempts: a minute's block again.
        t += FORGET;
        fail(&l, &guesser, t, 10);
        assert_eq!(l.begin_at(&guesser, t).err(), Some(FIRST_BLOCK));
    }

    #[test]
    fn attempts_leave_the_window() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let keys = Keys::new("micro", "alice", Some("192.0.2.1"));
        fail(&l, &keys, t0, 9);
        fail(&l, &keys, t0 + Duration::from_secs(60), 10);
        assert!(l.begin_at(&keys, t0 + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn an_address_has_a_ceiling_across_accounts() {
        let l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..50 {
            assert!(l.begin_at(&Keys::new("micro", &format!("u{i}"), Some("192.0.2.1")), t0).is_ok());
        }
        assert_eq!(l.begin_at(&Keys::new("micro", "alice", Some("192.0.2.1")), t0).err(), Some(FIRST_BLOCK));
        assert!(l.begin_at(&Keys::new("micro", "alice", Some("192.0.2.2")), t0).is_ok());
    }

    #[test]
    fn success_takes_its_count_back() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let keys = Keys::new("micro", "alice", Some("192.0.2.1"));
        fail(&l, &keys, t0, 9);
        let ok = l.begin_at(&keys, t0).unwrap();
        l.succeeded(&keys, ok);
        // The account's failures from there are forgotten; signing in often from one
        // address never reaches its ceiling.
        fail(&l, &keys, t0, 9);
        for _ in 0..100 {
            let other = Keys::new("micro", "bob", Some("192.0.2.1"));
            let a = l.begin_at(&other, t0).unwrap();
            l.succeeded(&other, a);
        }
        assert!(l.begin_at(&keys, t0).is_ok());
    }

    #[test]
    fn refused_attempts_make_no_keys_and_idle_ones_go() {
        let l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..50 {
            assert!(l.begin_at(&Keys::new("micro", &format!("u{i}"), Some("192.0.2.1")), t0).is_ok());
        }
        let keys = || l.entries.lock().unwrap().len();
        assert_eq!(keys(), 51);
        for i in 0..1000 {
            assert!(l.begin_at(&Keys::new("micro", &format!("v{i}"), Some("192.0.2.1")), t0).is_err());
        }
        assert_eq!(keys(), 51, "refused attempts are not remembered");
        // Never blocked, idle for a window: forgotten at the next prune. The address that
        // was blocked is kept, with its backoff.
        let later = t0 + WINDOW;
        l.entries.lock().unwrap().retain(|_, e| !e.forgotten(later));
        assert_eq!(keys(), 1);
        for i in 0..50 {
            assert!(l.begin_at(&Keys::new("micro", &format!("w{i}"), Some("192.0.2.1")), later).is_ok());
        }
        let next = l.begin_at(&Keys::new("micro", "x", Some("192.0.2.1")), later).err();
        assert_eq!(next, Some(2 * FIRST_BLOCK));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = Keys::new("micro", "alice", Some("2001:db8:1:2:aaaa::1"));
        let b = Keys::new("micro", "alice", Some("2001:db8:1:2:bbbb::2"));
        assert_eq!((a.account.as_str(), a.address.as_str()), (b.account.as_str(), b.address.as_str()));
        assert_eq!(a.address, "c/2001:db8:1:2::/64");
        assert_eq!(Keys::new("m", "a", Some("::ffff:192.0.2.1")).address, "c/192.0.2.1");
        assert_eq!(Keys::new("m", "a", None).address, "c/unknown");
    }

    #[test]
    fn the_wait_is_in_whole_seconds_rounded_up() {
        assert!(too_many(Duration::from_millis(59_001)).detail().ends_with("try again in 60 s"));
        assert!(too_many(Duration::from_millis(10)).detail().ends_with("try again in 1 s"));
    }
}
