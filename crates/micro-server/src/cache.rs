//! The gateway's response cache: per-route rules a namespace keeps in its config under
//! `edge.cache.rules.<name>` (`micro cache set …`), answers kept in memory (least
//! recently used out first, the whole bounded by `MICRO_CACHE_SIZE`).
//!
//! What is kept: a `GET` or `HEAD` answered `200` with a known length up to 1 MiB, no
//! `Set-Cookie`, and no `Cache-Control: no-store`, `private` or `no-cache`; for the rule's
//! TTL, or the answer's `s-maxage`/`max-age` when shorter. An answer is kept per caller
//! (anonymous callers share theirs; an account never gets another's), per query string,
//! and per value of the rule's `vary` headers. A request with a `Cookie` is never answered
//! from the cache (a service's own cookies may change the answer), and one with
//! `Cache-Control: no-cache` or `no-store` skips it. `micro cache purge` drops a
//! namespace's answers on every node within a second.
//!
//! With Redis among the backends, answers are also kept there (`micro:cache:<namespace>:
//! <hash of the key>`, expiring with their TTL), so an answer kept through one node is
//! served by every node; each node still keeps what it served in its own memory.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::body::Body;

/// Where a namespace keeps its cache settings, in its config: `rules.<name>` and
/// `purged` (Unix milliseconds).
pub const CONFIG_PATH: &str = "edge.cache";

/// The longest TTL a rule may give.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The largest answer kept.
pub const MAX_ENTRY: usize = 1 << 20;

/// A cache rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// How long an answer is kept.
    pub ttl: Duration,
    /// Request headers whose values make different answers (lowercase).
    pub vary: Vec<String>,
    /// Only requests to this service.
    pub service: Option<String>,
    /// Only paths under this prefix.
    pub route: Option<String>,
}

/// Parses a rule as kept in the config: `{"ttl": "30s", "route": "/shop/items",
/// "service": "shop", "vary": ["accept-language"]}` (a route or a service is required);
/// the error says what is wrong.
pub fn parse_rule(v: &Value) -> Result<Rule, String> {
    let o = v.as_object().ok_or("a rule is an object with a ttl, like {\"ttl\": \"30s\", \"route\": \"/shop\"}")?;
    for k in o.keys() {
        if !["ttl", "vary", "service", "route"].contains(&k.as_str()) {
            return Err(format!("unknown field {k:?} (ttl, vary, service, route)"));
        }
    }
    let ttl = o.get("ttl").and_then(Value::as_str).ok_or("ttl is required, like \"30s\", \"5m\" or \"1h\"")?;
    let (n, unit) = ttl.trim().split_at(ttl.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(ttl.trim().len()));
    let n: u64 = n.parse().map_err(|_| format!("ttl {ttl:?}: a whole number and a unit, like 30s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        u => return Err(format!("ttl {ttl:?}: unknown unit {u:?} (s, m or h)")),
    };
    let ttl = Duration::from_secs(secs);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!("ttl {:?}: from 1s to 24h", o["ttl"]));
    }
    let vary = match o.get("vary") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|h| {
                let name = h.as_str().ok_or_else(|| format!("vary {h}: header names"))?;
                header::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(|n| n.as_str().to_string())
                    .map_err(|_| format!("vary {name:?}: not a header name"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("vary {other}: a list of header names")),
    };
    let (service, route) = crate::settings::scope(o)?;
    if service.is_none() && route.is_none() {
        return Err("a rule needs a route (like /shop/items, or / for everything) or a service".into());
    }
    Ok(Rule { ttl, vary, service, route })
}

/// A namespace's cache settings.
#[derive(Default)]
pub(crate) struct Settings {
    /// Its rules, with the normalized path prefix each applies to.
    rules: Vec<(Rule, String)>,
    /// Answers kept before this time (Unix ms) are gone.
    purged: u64,
}

fn settings(ns: &str, v: Option<&Value>, _previous: Option<&Arc<Settings>>) -> Settings {
    let mut s = Settings::default();
    let Some(v) = v else { return s };
    s.purged = v.get("purged").and_then(Value::as_u64).unwrap_or(0);
    if let Some(Value::Object(rules)) = v.get("rules") {
        for (name, spec) in rules {
            match parse_rule(spec) {
                Ok(rule) => {
                    let prefix = match (&rule.route, &rule.service) {
                        (Some(r), _) => crate::ratelimit::normalize(r),
                        (None, Some(svc)) => crate::ratelimit::normalize(&svc.replace('.', "/")),
                        (None, None) => "/".into(),
                    };
                    s.rules.push((rule, prefix));
                }
                Err(e) => tracing::warn!(namespace = ns, rule = %name, error = %e, "ignoring a malformed cache rule"),
            }
        }
    }
    s
}

/// A kept answer.
struct Entry {
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    stored_ms: u64,
    ttl: Duration,
    /// What it is metered under.
    service: String,
    endpoint: String,
}

impl Entry {
    fn size(&self, key: &str) -> usize {
        key.len() + self.body.len() + self.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>()
    }
}

struct Store {
    entries: hashlink::LruCache<String, Arc<Entry>>,
    bytes: usize,
}

/// The cache of every namespace on this node. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Cache {
    settings: crate::settings::NamespaceSettings<Settings>,
    store: Arc<Mutex<Store>>,
    max_bytes: usize,
    /// The cluster's shared answers, when it has Redis.
    shared: Option<SharedAnswers>,
}

/// Answers shared through Redis: each carries an HMAC under a key every node derives from
/// the server key (`MICRO_CONFIG_KEY` in a cluster), so whoever can write to Redis but
/// has not that key cannot plant an answer; at most a few writes are under way at once.
#[derive(Clone)]
struct SharedAnswers {
    edge: micro_redis::RedisEdge,
    key: ring::hmac::Key,
    writes: Arc<tokio::sync::Semaphore>,
}

/// How many answers a node shares at once, at most (more are kept in its memory only).
const SHARED_WRITES: usize = 16;

/// The clock skew tolerated in a shared answer's time.
const SKEW_MS: u64 = 60_000;

/// The shared key of a kept answer: its namespace and its key's hash.
fn shared_key(ns: &str, key: &str) -> String {
    format!("{ns}:{}", crate::sha256_hex(key.as_bytes()))
}

/// What a kept answer is besides its body, as shared.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedMeta {
    headers: Vec<(String, String)>,
    stored_ms: u64,
    ttl_ms: u64,
    service: String,
    endpoint: String,
}

impl Entry {
    /// The entry as shared under `shared_key`: its HMAC (over the shared key and what
    /// follows), the length of its description, the description (JSON), then the body.
    /// `None` when a header is not text.
    fn encode(&self, hmac: &ring::hmac::Key, shared_key: &str) -> Option<Vec<u8>> {
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string())))
            .collect::<Option<Vec<_>>>()?;
        let meta = SharedMeta {
            headers,
            stored_ms: self.stored_ms,
            ttl_ms: self.ttl.as_millis() as u64,
            service: self.service.clone(),
            endpoint: self.endpoint.clone(),
        };
        let meta = serde_json::to_vec(&meta).ok()?;
        let mut signed = Vec::with_capacity(4 + meta.len() + self.body.len());
        signed.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        signed.extend_from_slice(&meta);
        signed.extend_from_slice(&self.body);
        let tag = ring::hmac::sign(hmac, &[shared_key.as_bytes(), b"\0", &signed].concat());
        Some([tag.as_ref(), &signed].concat())
    }

    /// A shared entry kept under `shared_key`, if its HMAC holds and its time is not in
    /// the future.
    fn decode(bytes: &[u8], hmac: &ring::hmac::Key, shared_key: &str) -> Option<Entry> {
        let (tag, bytes) = (bytes.get(..32)?, bytes.get(32..)?);
        ring::hmac::verify(hmac, &[shared_key.as_bytes(), b"\0", bytes].concat(), tag).ok()?;
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let meta: SharedMeta = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
        if meta.stored_ms > micro_core::store::now_ms() + SKEW_MS {
            return None;
        }
        let mut headers = HeaderMap::new();
        for (k, v) in meta.headers {
            headers.append(header::HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(&v).ok()?);
        }
        let age = Duration::from_millis(micro_core::store::now_ms().saturating_sub(meta.stored_ms));
        Some(Entry {
            headers,
            body: Bytes::copy_from_slice(&bytes[4 + len..]),
            stored: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            stored_ms: meta.stored_ms,
            ttl: Duration::from_millis(meta.ttl_ms),
            service: meta.service,
            endpoint: meta.endpoint,
        })
    }
}

/// A request the cache may answer: its key and the longest the answer may be kept.
pub(crate) struct Miss {
    ns: String,
    key: String,
    ttl: Duration,
    /// The request headers the key holds (beyond the host).
    vary: Vec<String>,
}

/// What the cache says of a request.
pub(crate) enum Lookup {
    /// No rule applies (or the request is not for the cache).
    Pass,
    /// A kept answer, and the service and endpoint it is metered under.
    Hit(Response<Body>, String, String),
    /// Not kept (or skipped): the answer may be kept.
    Miss(Miss),
}

fn directives(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect()
}

impl Cache {
    /// A cache of `max_bytes` on this node; with `shared`, answers are also kept in
    /// Redis, signed with a key derived from `server_key` (the same on every node).
    pub(crate) fn new(
        config: Arc<dyn micro_core::config::Config>,
        max_bytes: usize,
        shared: Option<(micro_redis::RedisEdge, [u8; 32])>,
    ) -> Cache {
        let shared = shared.map(|(edge, server_key)| {
            let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &server_key);
            let key = ring::hmac::sign(&derive, b"micro: the gateway's shared cache, v1");
            SharedAnswers {
                edge,
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_ref()),
                writes: Arc::new(tokio::sync::Semaphore::new(SHARED_WRITES)),
            }
        });
        Cache {
            settings: crate::settings::NamespaceSettings::new(config, CONFIG_PATH, settings),
            store: Arc::new(Mutex::new(Store { entries: hashlink::LruCache::new_unbounded(), bytes: 0 })),
            max_bytes,
            shared,
        }
    }

    /// How many answers this node keeps in memory, and their bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        (store.entries.len(), store.bytes)
    }

    /// Keeps `entry` in this node's memory, the least recently used out past the bound.
    fn keep(&self, key: &str, entry: Arc<Entry>) {
        let size = entry.size(key);
        if size > self.max_bytes {
            return;
        }
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = store.entries.insert(key.to_string(), entry) {
            store.bytes = store.bytes.saturating_sub(old.size(key));
        }
        store.bytes += size;
        while store.bytes > self.max_bytes {
            let Some((k, gone)) = store.entries.remove_lru() else { break };
            store.bytes = store.bytes.saturating_sub(gone.size(&k));
        }
    }

    /// The answer `e` as served from the cache.
    fn hit(e: &Entry) -> Lookup {
        let mut res = Response::new(Body::new(http_body_util::Full::new(e.body.clone())));
        *res.headers_mut() = e.headers.clone();
        res.headers_mut().insert("x-cache", HeaderValue::from_static("HIT"));
        if let Ok(age) = HeaderValue::from_str(&e.stored.elapsed().as_secs().to_string()) {
            res.headers_mut().insert(header::AGE, age);
        }
        Lookup::Hit(res, e.service.clone(), e.endpoint.clone())
    }

    /// Looks `req` of `account` (its label, "" when anonymous) in namespace `ns` up.
    pub(crate) async fn lookup<B>(&self, ns: &str, account: &str, req: &Request<B>) -> Lookup {
        if self.max_bytes == 0 || !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Lookup::Pass;
        }
        // Cookies may change the answer; so may a body (the gateway reads a GET's body
        // into the call): neither is in the key, so neither is answered or kept.
        let body = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
        if req.headers().contains_key(header::COOKIE) || body {
            return Lookup::Pass;
        }
        // A caller asking for a fresh answer gets one, and it is not kept (else anyone
        // could replace a kept answer at will).
        let asked = directives(req.headers());
        if asked.iter().any(|d| d == "no-cache" || d == "no-store") {
            return Lookup::Pass;
        }
        let settings = self.settings.get(ns).await;
        if settings.rules.is_empty() {
            return Lookup::Pass;
        }
        let path = crate::ratelimit::normalize(req.uri().path());
        // The core's answers (tokens, join replies, …) are never kept, whatever a rule says.
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if crate::CORE_SERVICES.contains(&first) {
            return Lookup::Pass;
        }
        let under = |prefix: &str| {
            prefix == "/" || path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        // The most specific rule (the longest prefix) decides.
        let Some((rule, _)) = settings.rules.iter().filter(|(_, p)| under(p)).max_by_key(|(_, p)| p.len()) else {
            return Lookup::Pass;
        };
        let mut key =
            format!("{ns}\0{account}\0{}\0{}", req.method(), req.uri().path_and_query().map_or("/", |p| p.as_str()));
        // What the gateway or a service may build the answer from besides the path: the
        // host (and what a proxy in front says of it), and the rule's headers.
        for h in [header::HOST.as_str(), "x-forwarded-host", "x-forwarded-proto"]
            .into_iter()
            .chain(rule.vary.iter().map(String::as_str))
        {
            key.push('\0');
            key.push_str(req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or(""));
        }
        let fresh = |e: &Entry| e.stored.elapsed() < e.ttl && e.stored_ms > settings.purged;
        {
            let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let found = store.entries.get(&key).cloned();
            if let Some(e) = found {
                if fresh(&e) {
                    return Cache::hit(&e);
                }
                if let Some(gone) = store.entries.remove(&key) {
                    store.bytes = store.bytes.saturating_sub(gone.size(&key));
                }
            }
        }
        // Kept through another node? (For no longer than this rule keeps answers now.)
        if let Some(shared) = &self.shared {
            let skey = shared_key(ns, &key);
            match shared.edge.get(&skey).await {
                Ok(Some(bytes)) => match Entry::decode(&bytes, &shared.key, &skey) {
                    Some(e) if fresh(&e) && e.ttl <= rule.ttl => {
                        let e = Arc::new(e);
                        self.keep(&key, e.clone());
                        return Cache::hit(&e);
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(namespace = ns, "an unreadable or unsigned answer in the shared cache; ignored")
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "the shared cache is unreachable"),
            }
        }
        Lookup::Miss(Miss { ns: ns.to_string(), key, ttl: rule.ttl, vary: rule.vary.clone() })
    }

    /// Keeps `res` (metered under `service` and `endpoint`) for the request that missed,
    /// when it may be kept; returns it either way.
    pub(crate) async fn store(&self, miss: Miss, res: Response<Body>, service: &str, endpoint: &str) -> Response<Body> {
        let said = directives(res.headers());
        // An answer that varies by a header the key does not hold, or that is already
        // encoded (the gateway compresses after the cache), is not kept.
        let unkeyed_vary = res
            .headers()
            .get_all(header::VARY)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("*").split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .any(|h| !h.is_empty() && !miss.vary.contains(&h));
        let encoded = res.headers().get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() != b"identity");
        let size = http_body::Body::size_hint(res.body()).exact();
        let keep = res.status() == StatusCode::OK
            && !res.headers().contains_key(header::SET_COOKIE)
            && !unkeyed_vary
            && !encoded
            && !said.iter().any(|d| d == "no-store" || d == "private" || d == "no-cache")
            && size.is_some_and(|n| n as usize <= MAX_ENTRY);
        let max_age = said
            .iter()
            .filter_map(|d| d.strip_prefix("s-maxage=").or_else(|| d.strip_prefix("max-age=")))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .min();
        let ttl = max_age.map_or(miss.ttl, |s| miss.ttl.min(Duration::from_secs(s)));
        let mut res = res;
        res.headers_mut().insert("x-cache", HeaderValue::from_static("MISS"));
        if !keep || ttl.is_zero() {
            return res;
        }
        let (parts, body) = res.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let st = micro::Status::unavailable("api", format!("reading the answer: {e}")).with_http_status(502);
                return micro::json_error(&st);
            }
        };
        let mut headers = parts.headers.clone();
        headers.remove("x-cache");
        let entry = Arc::new(Entry {
            headers,
            body: body.clone(),
            stored: Instant::now(),
            stored_ms: micro_core::store::now_ms(),
            ttl,
            service: service.to_string(),
            endpoint: endpoint.to_string(),
        });
        if let Some(shared) = &self.shared
            && let Ok(permit) = shared.writes.clone().try_acquire_owned()
        {
            // Shared without holding the answer back, within the namespace's budget in
            // Redis (as much a day as a node keeps in memory).
            let skey = shared_key(&miss.ns, &miss.key);
            if let Some(bytes) = entry.encode(&shared.key, &skey) {
                let (edge, ns, budget) = (shared.edge.clone(), miss.ns.clone(), self.max_bytes as u64);
                tokio::spawn(async move {
                    let _permit = permit;
                    match edge.put(&skey, &bytes, ttl, &ns, budget).await {
                        Ok(true) => {}
                        Ok(false) => tracing::debug!(namespace = %ns, "the namespace's shared cache budget is spent"),
                        Err(e) => tracing::debug!(error = %e, "the shared cache is unreachable"),
                    }
                });
            }
        }
        self.keep(&miss.key, entry);
        Response::from_parts(parts, Body::new(http_body_util::Full::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_answers_are_signed_and_bound_to_their_key() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let entry = |stored_ms| Entry {
            headers: headers.clone(),
            body: Bytes::from_static(b"{\"n\":1}"),
            stored: Instant::now(),
            stored_ms,
            ttl: Duration::from_secs(30),
            service: "shop".into(),
            endpoint: "Shop.Items".into(),
        };
        let now = micro_core::store::now_ms();
        let bytes = entry(now).encode(&key, "shop:abc").unwrap();
        let back = Entry::decode(&bytes, &key, "shop:abc").unwrap();
        assert_eq!(
            (back.body.as_ref(), back.ttl, back.service.as_str()),
            (&b"{\"n\":1}"[..], Duration::from_secs(30), "shop")
        );
        assert_eq!(back.headers.get(header::CONTENT_TYPE).unwrap(), "application/json");
        // Moved under another namespace's key, signed with another key, altered, cut or
        // dated in the future: refused.
        assert!(Entry::decode(&bytes, &key, "blog:abc").is_none());
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[8; 32]);
        assert!(Entry::decode(&bytes, &other, "shop:abc").is_none());
        let mut altered = bytes.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(Entry::decode(&altered, &key, "shop:abc").is_none());
        assert!(Entry::decode(&bytes[..20], &key, "shop:abc").is_none());
        let future = entry(now + 3_600_000).encode(&key, "shop:abc").unwrap();
        assert!(Entry::decode(&future, &key, "shop:abc").is_none());
    }

    #[test]
    fn rules_parse_and_bad_ones_say_why() {
        let r = parse_rule(&json!({"ttl": "5m", "route": "/shop/items", "vary": ["Accept-Language"]})).unwrap();
        assert_eq!(
            (r.ttl, r.vary.clone(), r.route.as_deref()),
            (Duration::from_secs(300), vec!["accept-language".to_string()], Some("/shop/items"))
        );
        assert_eq!(parse_rule(&json!({"ttl": "1h", "service": "shop"})).unwrap().ttl, Duration::from_secs(3600));
        for (bad, why) in [
            (json!("30s"), "object"),
            (json!({"route": "/"}), "ttl is required"),
            (json!({"ttl": "soon", "route": "/"}), "whole number"),
            (json!({"ttl": "10d", "route": "/"}), "unknown unit"),
            (json!({"ttl": "0s", "route": "/"}), "1s to 24h"),
            (json!({"ttl": "25h", "route": "/"}), "1s to 24h"),
            (json!({"ttl": "30s"}), "needs a route"),
            (json!({"ttl": "30s", "route": "shop"}), "starting with /"),
            (json!({"ttl": "30s", "route": "/", "vary": "accept"}), "list of header names"),
            (json!({"ttl": "30s", "route": "/", "vary": ["bad header"]}), "not a header name"),
            (json!({"ttl": "30s", "service": "bad name"}), "service"),
            (json!({"ttl": "30s", "route": "/", "colour": "red"}), "unknown field"),
        ] {
            let e = parse_rule(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
