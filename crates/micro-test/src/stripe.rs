//! A Stripe-compatible contract server for tests, on `127.0.0.1:0`.
//!
//! Stripe's own `stripe-mock` is not to be had from the package registries this project's
//! machines reach, so this server checks requests against Stripe's published OpenAPI
//! description instead: a trimmed copy in `services/billing/stripe/openapi.json` (its
//! README says where it comes from). Every request must name an operation of the
//! description, carry `Authorization: Bearer <the server's key>`, pin `Stripe-Version`
//! to the description's version, and send only parameters the operation's schema knows,
//! with the right types and every required one; a `POST` must be form-encoded and carry
//! an `Idempotency-Key`. A request that fails any of this is answered `400` (or `401`,
//! `404`) in Stripe's error shape naming what was wrong, and recorded as a contract
//! violation ([`StripeServer::assert_no_violations`]). A few rules stated only in prose
//! (the description's, or Stripe's documentation) are checked too: `currency` in setup
//! mode, `off_session` only with `confirm`, a `return_url` (or `allow_redirects=never`)
//! when confirming with automatic payment methods, metadata limits.
//!
//! Idempotency is Stripe's: the same key with the same parameters answers the first
//! answer again (`Idempotent-Replayed: true`), with other parameters a `400`
//! `idempotency_error`. The server keeps customers, payment methods, Checkout Sessions
//! and PaymentIntents; a test makes a customer's next charges succeed, decline
//! (`card_declined`, `402`) or stay processing ([`Charges`]), makes the next requests to
//! a path fail with `500`, finishes a setup as a customer would, and sends webhooks signed
//! as Stripe signs them ([`StripeServer::send_event`], to a [`WebhookSink`] or any URL).
//! Its answers are made from `services/billing/stripe/fixtures.json` and checked against
//! the description's response schemas too (a mismatch is recorded as a violation: a bug
//! of this server).
//!
//! ```no_run
//! # async fn example() {
//! let server = micro_test::stripe::StripeServer::start().await;
//! // MICRO_STRIPE_URL=server.url(), MICRO_STRIPE_KEY=server.key(),
//! // MICRO_STRIPE_WEBHOOK_SECRET=server.webhook_secret(); then, after the test's requests:
//! server.assert_no_violations();
//! # }
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Stripe's OpenAPI description, trimmed to the operations billing uses.
pub const DESCRIPTION: &str = include_str!("../../../services/billing/stripe/openapi.json");

/// What a customer's next charges do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charges {
    /// They succeed at once (`succeeded`).
    Succeed,
    /// The card is declined: `402`, `card_error` `card_declined`, and a PaymentIntent that
    /// `requires_payment_method`.
    Decline,
    /// They stay `processing` (as a bank debit does).
    Process,
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET` or `POST`.
    pub method: String,
    /// The path (without the query).
    pub path: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `Stripe-Version` header.
    pub stripe_version: Option<String>,
    /// The form parameters (of the body, or of the query of a `GET`), decoded, in order.
    pub params: Vec<(String, String)>,
    /// The status answered.
    pub status: u16,
    /// Whether the answer was a replay of an earlier one with the same idempotency key.
    pub replayed: bool,
}

impl Recorded {
    /// The value of parameter `name` (`metadata[invoice]`), if it was sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A webhook the server sent.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Value,
    /// The body as sent (what was signed).
    pub body: String,
    /// The `Stripe-Signature` header sent.
    pub signature: String,
    /// The status the endpoint answered.
    pub status: u16,
}

/// A running Stripe contract server. Stops when dropped.
pub struct StripeServer {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    key: String,
    webhook_secret: String,
    description: Value,
    version: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    customers: Vec<Value>,
    payment_methods: Vec<Value>,
    sessions: Vec<Value>,
    intents: Vec<Value>,
    charges: HashMap<String, Charges>,
    saved: HashMap<String, Saved>,
    requests: Vec<Recorded>,
    violations: Vec<String>,
    failures: HashMap<String, usize>,
}

/// The first answer to an idempotency key, and what it answered.
struct Saved {
    request: String,
    params: Vec<(String, String)>,
    status: u16,
    body: Value,
}

impl StripeServer {
    /// Starts one with a fresh secret key and webhook signing secret.
    pub async fn start() -> StripeServer {
        let description: Value = serde_json::from_str(DESCRIPTION).expect("the OpenAPI description is JSON");
        let version = description["info"]["version"].as_str().expect("the description's version").to_string();
        let shared = Arc::new(Shared {
            key: format!("sk_test_{}", random(24)),
            webhook_secret: format!("whsec_{}", random(32)),
            description,
            version,
            state: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(shared.handle(&parts, &body))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        StripeServer { url, shared, task }
    }

    /// Its base URL (`http://127.0.0.1:port`), what `MICRO_STRIPE_URL` is set to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The secret key it takes (`sk_test_…`).
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The signing secret of its webhooks (`whsec_…`).
    pub fn webhook_secret(&self) -> &str {
        &self.shared.webhook_secret
    }

    /// The API version of the description it checks against (`Stripe-Version`).
    pub fn version(&self) -> &str {
        &self.shared.version
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// The requests received so far as `method` to `path`.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method == method && r.path == path).collect()
    }

    /// The contract violations so far (each names the request and what was wrong).
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// The contract violations so far, forgotten (for a test that makes some on purpose).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.state().violations)
    }

    /// Fails (panics) if any request broke the contract.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "requests to the Stripe server broke the contract:\n  {}", v.join("\n  "));
    }

    /// The customers made.
    pub fn customers(&self) -> Vec<Value> {
        self.state().customers.clone()
    }

    /// The PaymentIntents made.
    pub fn payment_intents(&self) -> Vec<Value> {
        self.state().intents.clone()
    }

    /// PaymentIntent `id`, if it was made.
    pub fn payment_intent(&self, id: &str) -> Option<Value> {
        self.state().intents.iter().find(|p| p["id"] == id).cloned()
    }

    /// The Checkout Sessions made.
    pub fn sessions(&self) -> Vec<Value> {
        self.state().sessions.clone()
    }

    /// Makes the next charges of `customer` do `what` (they succeed at first).
    pub fn set_charges(&self, customer: &str, what: Charges) {
        self.state().charges.insert(customer.to_string(), what);
    }

    /// Makes the next `n` requests to `path` (`/v1/payment_intents`) fail with `500`
    /// (Stripe's `api_error`), after they are checked and before anything is done or saved
    /// under their idempotency key.
    pub fn fail_next(&self, path: &str, n: usize) {
        self.state().failures.insert(path.to_string(), n);
    }

    /// Attaches a new card to `customer`, as a finished setup does; returns its id.
    pub fn add_payment_method(&self, customer: &str) -> String {
        let mut st = self.state();
        assert!(st.customers.iter().any(|c| c["id"] == customer), "no customer {customer}");
        let pm = payment_method(customer);
        let id = pm["id"].as_str().unwrap_or_default().to_string();
        st.payment_methods.push(pm);
        id
    }

    /// Finishes Checkout Session `id` (setup mode) as its customer would: a card attached
    /// to the customer and the session `complete`. Returns the session, the object of a
    /// `checkout.session.completed` event.
    pub fn complete_setup(&self, id: &str) -> Value {
        let customer = {
            let st = self.state();
            let session = st.sessions.iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("no session {id}"));
            session["customer"].as_str().expect("the session's customer").to_string()
        };
        self.add_payment_method(&customer);
        let mut st = self.state();
        let session = st.sessions.iter_mut().find(|s| s["id"] == id).expect("the session");
        session["status"] = json!("complete");
        session.clone()
    }

    /// The `Stripe-Signature` header of `body` sent at `t`, computed here independently
    /// of the adapter (RustCrypto's HMAC where the adapter uses ring's).
    pub fn signature(&self, body: &[u8], t: u64) -> String {
        format!("t={t},v1={}", hmac_hex(self.shared.webhook_secret.as_bytes(), t, body))
    }

    /// Sends event `kind` about `object` to `url` (`http://…`) as Stripe does: a JSON body
    /// (pretty-printed, as Stripe's), signed with the webhook secret at the present time
    /// (`v1`, and a `v0` that is not, as test mode adds).
    pub async fn send_event(&self, url: &str, kind: &str, object: Value) -> Delivery {
        let event = json!({
            "id": format!("evt_{}", random(24)),
            "object": "event",
            "api_version": self.shared.version,
            "created": now(),
            "data": {"object": object},
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": kind,
        });
        // The envelope, and the object where the description has its schema.
        let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
        let mut checks = vec![(&event, schema("event"))];
        if let Some(o) = event["data"]["object"]["object"].as_str()
            && self.shared.description["components"]["schemas"].get(o).is_some()
        {
            checks.push((&event["data"]["object"], schema(o)));
        }
        for (v, s) in checks {
            if let Err(e) = self.shared.check_answer(v, &s, "event") {
                panic!("event {kind} does not match the description: {e}");
            }
        }
        let body = serde_json::to_string_pretty(&event).expect("an event");
        let t = now();
        let v0 = hmac_hex(b"whsec_test_mode_v0", t, body.as_bytes());
        let signature = format!("{},v0={v0}", self.signature(body.as_bytes(), t));
        let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("{url}: http:// only"));
        let (addr, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let headers = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Stripe-Signature", signature.as_str()),
            ("User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)"),
            ("Accept", "*/*; q=0.5, application/xml"),
            ("Cache-Control", "no-cache"),
        ];
        let r = crate::http(addr, "POST", &path, &headers, body.as_bytes()).await;
        Delivery { event, body, signature, status: r.status }
    }
}

impl Drop for StripeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An endpoint that takes webhooks: answers each `200` and keeps its headers and body.
pub struct WebhookSink {
    url: String,
    received: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookSink {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> WebhookSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/webhook", listener.local_addr().expect("an address"));
        let received: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>> = Arc::default();
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            log.lock().unwrap_or_else(|e| e.into_inner()).push((parts.headers, body));
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        WebhookSink { url, received, task }
    }

    /// Its URL (`http://127.0.0.1:port/webhook`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The headers and body of every webhook received so far.
    pub fn received(&self) -> Vec<(http::HeaderMap, Bytes)> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a request was refused: Stripe's error, and whether it breaks the contract.
struct Problem {
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
    violation: bool,
    /// The whole `error` object, where it is more than the fields above.
    error: Option<Value>,
}

impl Problem {
    /// An error Stripe answers (`kind`: `invalid_request_error`, `api_error`, …).
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Problem {
        Problem { status, kind, code: None, message: message.into(), param: None, violation: false, error: None }
    }

    /// A request the description does not allow: `400` `invalid_request_error`, a
    /// violation.
    fn contract(code: Option<&'static str>, message: impl Into<String>, param: Option<&str>) -> Problem {
        let p = Problem::new(400, "invalid_request_error", message);
        Problem { code, param: param.map(str::to_string), violation: true, ..p }
    }

    /// A request the description allows that Stripe would still refuse (no such object).
    fn refused(status: u16, code: &'static str, message: impl Into<String>, param: &str) -> Problem {
        let p = Problem::new(status, "invalid_request_error", message);
        Problem { code: Some(code), param: Some(param.to_string()), ..p }
    }

    fn status(mut self, status: u16) -> Problem {
        self.status = status;
        self
    }

    fn body(&self) -> Value {
        if let Some(e) = &self.error {
            return json!({"error": e});
        }
        let mut e = json!({"type": self.kind, "message": self.message});
        if let Some(code) = self.code {
            e["code"] = json!(code);
            e["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")));
        }
        if let Some(p) = &self.param {
            e["param"] = json!(p);
        }
        json!({"error": e})
    }
}

/// A form parameter's value, nested by its brackets (`a[b][]=v`).
#[derive(Debug)]
enum Node {
    Leaf(String),
    Map(BTreeMap<String, Node>),
    List(Vec<Node>),
}

/// Nests form parameters: `a[b]=1` is `{a: {b: 1}}`, `a[]=1&a[]=2` is `{a: [1, 2]}`.
fn nest(pairs: &[(String, String)]) -> Result<BTreeMap<String, Node>, Problem> {
    let mut root = BTreeMap::new();
    for (k, v) in pairs {
        let bad = || Problem::contract(None, format!("Invalid parameter name: {k}"), Some(k));
        let (name, mut rest) = k.find('[').map_or((k.as_str(), ""), |i| (&k[..i], &k[i..]));
        let mut path = vec![name.to_string()];
        while !rest.is_empty() {
            let end = rest.find(']').ok_or_else(bad)?;
            let seg = rest.get(1..end).filter(|s| rest.starts_with('[') && !s.contains('[')).ok_or_else(bad)?;
            path.push(seg.to_string());
            rest = &rest[end + 1..];
        }
        // Only the last bracket may be empty (`a[]`, a push).
        if name.is_empty() || path.iter().skip(1).rev().skip(1).any(String::is_empty) {
            return Err(bad());
        }
        let mut map = &mut root;
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let next_is_push = path.get(i + 1).is_some_and(String::is_empty);
            if last {
                if map.insert(seg.clone(), Node::Leaf(v.clone())).is_some() {
                    return Err(Problem::contract(None, format!("{k} is given more than once"), Some(k)));
                }
                break;
            }
            let entry = map
                .entry(seg.clone())
                .or_insert_with(|| if next_is_push { Node::List(Vec::new()) } else { Node::Map(BTreeMap::new()) });
            match entry {
                Node::List(items) if next_is_push => {
                    items.push(Node::Leaf(v.clone()));
                    break;
                }
                Node::Map(m) if !next_is_push => map = m,
                _ => return Err(Problem::contract(None, format!("{k} mixes a value, a list and a hash"), Some(k))),
            }
        }
    }
    Ok(root)
}

fn child(name: &str, key: &str) -> String {
    if name.is_empty() { key.to_string() } else { format!("{name}[{key}]") }
}

impl Shared {
    fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        while let Some(r) = schema["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap_or_default();
            schema = &self.description["components"]["schemas"][name];
        }
        schema
    }

    /// Checks a form parameter against its schema in the description.
    fn check(&self, node: &Node, schema: &Value, name: &str) -> Result<(), Problem> {
        let schema = self.resolve(schema);
        if schema.get("x-trimmed").is_some() {
            return Ok(());
        }
        if let Some(alternatives) = schema["anyOf"].as_array() {
            let mut errors = Vec::new();
            for a in alternatives {
                match self.check(node, a, name) {
                    Ok(()) => return Ok(()),
                    Err(e) => errors.push(e),
                }
            }
            // The error of the alternative of the same shape says most.
            let shaped = errors.iter().position(|e| !e.message.starts_with("Invalid value"));
            return Err(errors.swap_remove(shaped.unwrap_or(0)));
        }
        let invalid = |what: &str| Problem::contract(None, format!("Invalid value for {name}: {what}"), Some(name));
        match (schema["type"].as_str(), node) {
            (Some("object"), Node::Map(m)) => {
                let props = &schema["properties"];
                for (k, v) in m {
                    let n = child(name, k);
                    match (props.get(k), schema.get("additionalProperties")) {
                        (Some(s), _) => self.check(v, s, &n)?,
                        (None, Some(extra)) if extra.is_object() => self.check(v, extra, &n)?,
                        _ => {
                            let m = format!("Received unknown parameter: {n}");
                            return Err(Problem::contract(Some("parameter_unknown"), m, Some(&n)));
                        }
                    }
                }
                for r in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        let n = child(name, r);
                        return Err(Problem::contract(
                            Some("parameter_missing"),
                            format!("Missing required param: {n}."),
                            Some(&n),
                        ));
                    }
                }
                if name == "metadata" || name.ends_with("[metadata]") {
                    metadata_limits(m)?;
                }
                Ok(())
            }
            // An empty value unsets a hash or a list.
            (Some("object" | "array"), Node::Leaf(v)) if v.is_empty() => Ok(()),
            (Some("array"), Node::List(items)) => items.iter().try_for_each(|i| self.check(i, &schema["items"], name)),
            (Some("array"), Node::Map(m)) if m.keys().all(|k| k.parse::<usize>().is_ok()) => {
                m.iter().try_for_each(|(k, i)| self.check(i, &schema["items"], &child(name, k)))
            }
            (Some("integer"), Node::Leaf(v)) if v.parse::<i64>().is_err() => {
                Err(Problem::contract(Some("parameter_invalid_integer"), format!("Invalid integer: {v}"), Some(name)))
            }
            (Some("number"), Node::Leaf(v)) if v.parse::<f64>().is_err() => {
                Err(Problem::contract(None, format!("Invalid decimal: {v}"), Some(name)))
            }
            (Some("boolean"), Node::Leaf(v)) if v != "true" && v != "false" => {
                Err(Problem::contract(None, format!("Invalid boolean: {v}"), Some(name)))
            }
            (Some("string") | None, Node::Leaf(v)) => {
                if let Some(allowed) = schema["enum"].as_array()
                    && !allowed.iter().any(|a| a == v.as_str())
                {
                    let list: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                    return Err(Problem::contract(
                        None,
                        format!("Invalid {name}: must be one of {}", list.join(", ")),
                        Some(name),
                    ));
                }
                match schema["maxLength"].as_u64() {
                    Some(most) if v.chars().count() as u64 > most => Err(Problem::contract(
                        None,
                        format!("Invalid string: {v}; must be at most {most} characters"),
                        Some(name),
                    )),
                    _ => Ok(()),
                }
            }
            (Some("integer" | "number" | "boolean"), Node::Leaf(_)) => Ok(()),
            (Some(t), _) => Err(invalid(&format!("expected {t}, got {}", shape(node)))),
            (None, _) => Err(invalid(&format!("expected a value, got {}", shape(node)))),
        }
    }

    /// Checks an answer of this server against the description's schema.
    fn check_answer(&self, v: &Value, schema: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if schema.get("x-trimmed").is_some() || (v.is_null() && schema["nullable"] == true) {
            return Ok(());
        }
        if let Some(alternatives) = schema["anyOf"].as_array() {
            let errors: Vec<String> = alternatives.iter().filter_map(|a| self.check_answer(v, a, at).err()).collect();
            return if errors.len() < alternatives.len() { Ok(()) } else { Err(errors.join("; or ")) };
        }
        let wrong = |t: &str| Err(format!("{at}: {v} is not {t}"));
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(v)
        {
            return wrong(&format!("one of {}", Value::Array(allowed.clone())));
        }
        match schema["type"].as_str() {
            Some("object") => {
                let Some(o) = v.as_object() else { return wrong("an object") };
                for r in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    if !o.contains_key(r) {
                        return Err(format!("{at}: no {r}, which is required"));
                    }
                }
                for (k, field) in o {
                    match (schema["properties"].get(k), schema.get("additionalProperties")) {
                        (Some(s), _) => self.check_answer(field, s, &format!("{at}.{k}"))?,
                        (None, Some(extra)) if extra.is_object() => {
                            self.check_answer(field, extra, &format!("{at}.{k}"))?
                        }
                        // An object the description leaves open (an event's `data.object`).
                        _ if schema.get("properties").is_none() => {}
                        _ => return Err(format!("{at}.{k} is not in the description")),
                    }
                }
                Ok(())
            }
            Some("array") => {
                let Some(items) = v.as_array() else { return wrong("an array") };
                items
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, x)| self.check_answer(x, &schema["items"], &format!("{at}[{i}]")))
            }
            Some("string") if !v.is_string() => wrong("a string"),
            Some("integer") if !(v.is_i64() || v.is_u64()) => wrong("an integer"),
            Some("number") if !v.is_number() => wrong("a number"),
            Some("boolean") if !v.is_boolean() => wrong("a boolean"),
            _ => Ok(()),
        }
    }

    /// Answers one request.
    fn handle(&self, parts: &http::request::Parts, body: &[u8]) -> http::Response<Full<Bytes>> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let method = parts.method.as_str().to_string();
        let path = parts.uri.path().to_string();
        let raw = if parts.method == http::Method::GET { parts.uri.query().unwrap_or("").as_bytes() } else { body };
        let params: Vec<(String, String)> = url::form_urlencoded::parse(raw).into_owned().collect();
        let idempotency_key = header("idempotency-key");
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (status, answer, replayed) = match self.answer(&mut st, parts, &params) {
            Ok((status, body, replayed)) => (status, body, replayed),
            Err(p) => {
                if p.violation {
                    st.violations.push(format!("{method} {path}: {}", p.message));
                }
                (p.status, p.body(), false)
            }
        };
        st.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            idempotency_key: idempotency_key.clone(),
            stripe_version: header("stripe-version"),
            params,
            status,
            replayed,
        });
        drop(st);
        let mut res = http::Response::new(Full::new(Bytes::from(answer.to_string())));
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let h = res.headers_mut();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let extra = [
            ("request-id", Some(format!("req_{}", random(14)))),
            ("stripe-version", Some(self.version.clone())),
            ("idempotency-key", idempotency_key),
            ("idempotent-replayed", replayed.then(|| "true".to_string())),
        ];
        for (k, v) in extra {
            if let Some(v) = v.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                h.insert(k, v);
            }
        }
        res
    }

    /// The status and body answering a request, and whether it is a replay.
    fn answer(
        &self,
        st: &mut State,
        parts: &http::request::Parts,
        params: &[(String, String)],
    ) -> Result<(u16, Value, bool), Problem> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let (method, path) = (parts.method.as_str(), parts.uri.path());
        match header("authorization").map(|a| a.strip_prefix("Bearer ")) {
            None => {
                return Err(Problem::contract(
                    None,
                    "You did not provide an API key. You need to provide your API key in the Authorization header, \
                     using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
                    None,
                )
                .status(401));
            }
            Some(None) => {
                return Err(Problem::contract(None, "an Authorization header that is not Bearer", None).status(401));
            }
            Some(Some(key)) if key != self.key => {
                let shown = key.get(key.len().saturating_sub(4)..).unwrap_or_default();
                let message = format!("Invalid API Key provided: sk_test_****{shown}");
                return Err(Problem::new(401, "invalid_request_error", message));
            }
            Some(Some(_)) => {}
        }
        match header("stripe-version") {
            Some(v) if v == self.version => {}
            v => {
                let m =
                    format!("Stripe-Version {v:?}: requests are checked against the description of {}", self.version);
                return Err(Problem::contract(None, m, None));
            }
        }
        let unknown = || {
            let m = format!("Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs.");
            Problem::contract(None, m, None).status(404)
        };
        let (template, ids) = self.route(path).ok_or_else(unknown)?;
        let op = &self.description["paths"][&template][method.to_ascii_lowercase()];
        if !op.is_object() {
            return Err(unknown());
        }
        let tree = nest(params)?;
        if parts.method == http::Method::POST {
            if header("content-type").is_none_or(|c| !c.starts_with("application/x-www-form-urlencoded")) {
                return Err(Problem::contract(None, "a POST body that is not application/x-www-form-urlencoded", None));
            }
            match header("idempotency-key") {
                None => return Err(Problem::contract(None, "a POST without an Idempotency-Key", None)),
                Some(k) if k.len() > 255 => {
                    return Err(Problem::contract(None, "an Idempotency-Key longer than 255 characters", None));
                }
                Some(_) => {}
            }
            let schema = &op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
            self.check(&Node::Map(tree), schema, "")?;
        } else {
            self.check_parameters(op, &ids, &tree)?;
        }
        if let Some(n) = st.failures.get_mut(path).filter(|n| **n > 0) {
            *n -= 1;
            return Err(Problem::new(500, "api_error", "An unknown error occurred"));
        }
        let key = header("idempotency-key").filter(|_| parts.method == http::Method::POST);
        let request = format!("{method} {path}");
        let mut sorted = params.to_vec();
        sorted.sort();
        if let Some(saved) = key.and_then(|k| st.saved.get(k)) {
            if saved.request == request && saved.params == sorted {
                return Ok((saved.status, saved.body.clone(), true));
            }
            let k = key.unwrap_or_default();
            let m = format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. \
                 Try using a key other than '{k}' if you meant to execute a different request."
            );
            return Err(Problem { kind: "idempotency_error", ..Problem::contract(None, m, None) });
        }
        let (status, body) = match self.execute(st, &template, method, &ids, params) {
            Ok(v) => (200, v),
            Err(p) if p.violation => return Err(p),
            Err(p) => (p.status, p.body()),
        };
        let responses = &op["responses"];
        let schema = &responses[status.to_string()]["content"]["application/json"]["schema"];
        let schema =
            if schema.is_null() { &responses["default"]["content"]["application/json"]["schema"] } else { schema };
        if let Err(e) = self.check_answer(&body, schema, "answer") {
            st.violations.push(format!("{request}: this server's answer does not match the description: {e}"));
        }
        if let Some(k) = key {
            st.saved.insert(k.to_string(), Saved { request, params: sorted, status, body: body.clone() });
        }
        Ok((status, body, false))
    }

    /// The description's path that `path` is, and the values of its `{parameters}`.
    fn route(&self, path: &str) -> Option<(String, BTreeMap<String, String>)> {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.description["paths"].as_object()?;
        paths.keys().find_map(|template| {
            let t: Vec<&str> = template.split('/').collect();
            if t.len() != segments.len() {
                return None;
            }
            let mut ids = BTreeMap::new();
            for (t, s) in t.iter().zip(&segments) {
                match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    Some(name) if !s.is_empty() => {
                        ids.insert(name.to_string(), s.to_string());
                    }
                    _ if t == s => {}
                    _ => return None,
                }
            }
            Some((template.clone(), ids))
        })
    }

    /// Checks the path and query parameters of a `GET`.
    fn check_parameters(
        &self,
        op: &Value,
        ids: &BTreeMap<String, String>,
        query: &BTreeMap<String, Node>,
    ) -> Result<(), Problem> {
        let declared = op["parameters"].as_array().cloned().unwrap_or_default();
        let find = |name: &str, place: &str| declared.iter().find(|p| p["name"] == name && p["in"] == place);
        for (name, value) in ids {
            let p =
                find(name, "path").ok_or_else(|| Problem::contract(None, format!("no path parameter {name}"), None))?;
            self.check(&Node::Leaf(value.clone()), &p["schema"], name)?;
        }
        for (name, value) in query {
            let p = find(name, "query").ok_or_else(|| {
                Problem::contract(Some("parameter_unknown"), format!("Received unknown parameter: {name}"), Some(name))
            })?;
            self.check(value, &p["schema"], name)?;
        }
        for p in declared.iter().filter(|p| p["in"] == "query" && p["required"] == true) {
            let name = p["name"].as_str().unwrap_or_default();
            if !query.contains_key(name) {
                let m = format!("Missing required param: {name}.");
                return Err(Problem::contract(Some("parameter_missing"), m, Some(name)));
            }
        }
        Ok(())
    }

    /// Does what a checked request asks.
    fn execute(
        &self,
        st: &mut State,
        template: &str,
        method: &str,
        ids: &BTreeMap<String, String>,
        params: &[(String, String)],
    ) -> Result<Value, Problem> {
        let param = |name: &str| params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let metadata: serde_json::Map<String, Value> = params
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_string(), json!(v))))
            .collect();
        let no_customer = |id: &str| {
            Problem::refused(
                if method == "GET" { 404 } else { 400 },
                "resource_missing",
                format!("No such customer: '{id}'"),
                "customer",
            )
        };
        let customer_of = |st: &State, id: &str| st.customers.iter().find(|c| c["id"] == id).cloned();
        match (method, template) {
            ("POST", "/v1/customers") => {
                let c = customer(param("email"), metadata);
                st.customers.push(c.clone());
                Ok(c)
            }
            ("GET", "/v1/customers/{customer}") => {
                let id = ids.get("customer").map(String::as_str).unwrap_or_default();
                customer_of(st, id).ok_or_else(|| no_customer(id).status(404))
            }
            ("GET", "/v1/customers/{customer}/payment_methods") => {
                let id = ids.get("customer").map(String::as_str).unwrap_or_default();
                customer_of(st, id).ok_or_else(|| no_customer(id).status(404))?;
                let limit = param("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(10);
                if !(1..=100).contains(&limit) {
                    return Err(Problem::refused(
                        400,
                        "parameter_invalid_integer",
                        "Invalid limit: must be between 1 and 100",
                        "limit",
                    ));
                }
                let mine: Vec<Value> = st
                    .payment_methods
                    .iter()
                    .rev()
                    .filter(|p| p["customer"] == id && param("type").is_none_or(|t| p["type"] == t))
                    .cloned()
                    .collect();
                Ok(json!({
                    "object": "list",
                    "data": mine.iter().take(limit).collect::<Vec<_>>(),
                    "has_more": mine.len() > limit,
                    "url": format!("/v1/customers/{id}/payment_methods"),
                }))
            }
            ("POST", "/v1/checkout/sessions") => {
                let mode = param("mode").unwrap_or_default();
                if mode == "setup"
                    && param("currency").is_none()
                    && !params.iter().any(|(k, _)| k.starts_with("payment_method_types"))
                {
                    return Err(Problem::contract(
                        Some("parameter_missing"),
                        "Missing required param: currency. (the description's prose: required in setup mode when payment_method_types is not set)",
                        Some("currency"),
                    ));
                }
                if param("ui_mode") != Some("embedded") && param("success_url").is_none() {
                    return Err(Problem::contract(
                        Some("parameter_missing"),
                        "Missing required param: success_url.",
                        Some("success_url"),
                    ));
                }
                if let Some(id) = param("customer") {
                    customer_of(st, id).ok_or_else(|| no_customer(id))?;
                }
                let s = session(mode, &|k| param(k).map(str::to_string), metadata);
                st.sessions.push(s.clone());
                Ok(s)
            }
            ("POST", "/v1/payment_intents") => create_intent(st, params, metadata),
            _ => Err(Problem::contract(None, format!("this server does not do {method} {template}"), None).status(404)),
        }
    }
}

/// `POST /v1/payment_intents`: a PaymentIntent, confirmed (and charged as the customer's
/// [`Charges`] say) when asked.
fn create_intent(
    st: &mut State,
    params: &[(String, String)],
    metadata: serde_json::Map<String, Value>,
) -> Result<Value, Problem> {
    let param = |name: &str| params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let confirm = param("confirm") == Some("true");
    if param("off_session").is_some_and(|o| o != "false") && !confirm {
        return Err(Problem::contract(
            None,
            "off_session can only be used with confirm=true (the description's prose)",
            Some("off_session"),
        ));
    }
    let automatic = param("automatic_payment_methods[enabled]") != Some("false")
        && !params.iter().any(|(k, _)| k.starts_with("payment_method_types"));
    if confirm
        && automatic
        && param("return_url").is_none()
        && param("automatic_payment_methods[allow_redirects]") != Some("never")
    {
        return Err(Problem::contract(
            None,
            "confirming with automatic payment methods needs a return_url, or automatic_payment_methods[allow_redirects]=never",
            Some("return_url"),
        ));
    }
    let customer = param("customer");
    if let Some(id) = customer
        && !st.customers.iter().any(|c| c["id"] == id)
    {
        return Err(Problem::refused(400, "resource_missing", format!("No such customer: '{id}'"), "customer"));
    }
    let method = match param("payment_method") {
        Some(pm) => {
            let found = st.payment_methods.iter().find(|p| p["id"] == pm).cloned();
            let found = found.ok_or_else(|| {
                Problem::refused(400, "resource_missing", format!("No such PaymentMethod: '{pm}'"), "payment_method")
            })?;
            if customer.is_some_and(|c| found["customer"] != c) {
                return Err(Problem::refused(
                    400,
                    "payment_method_unexpected_state",
                    format!("The provided PaymentMethod {pm} does not belong to the customer."),
                    "payment_method",
                ));
            }
            Some(found)
        }
        None if confirm => {
            return Err(Problem::refused(
                400,
                "payment_intent_unexpected_state",
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                "payment_method",
            ));
        }
        None => None,
    };
    let amount: i64 = param("amount").and_then(|a| a.parse().ok()).unwrap_or_default();
    if amount < 50 {
        return Err(Problem::refused(400, "amount_too_small", "Amount must be at least $0.50 usd", "amount"));
    }
    let what = if !confirm {
        None
    } else {
        Some(customer.and_then(|c| st.charges.get(c).copied()).unwrap_or(Charges::Succeed))
    };
    let mut pi = payment_intent(amount, &|k| param(k).map(str::to_string), metadata);
    pi["automatic_payment_methods"] = if automatic {
        json!({"enabled": true, "allow_redirects": param("automatic_payment_methods[allow_redirects]").unwrap_or("always")})
    } else {
        Value::Null
    };
    pi["payment_method"] = method.as_ref().map_or(Value::Null, |m| m["id"].clone());
    let charge = format!("ch_{}", random(24));
    match what {
        None => {
            pi["status"] = json!(if method.is_some() { "requires_confirmation" } else { "requires_payment_method" })
        }
        Some(Charges::Succeed) => {
            pi["status"] = json!("succeeded");
            pi["amount_received"] = json!(amount);
            pi["latest_charge"] = json!(charge);
        }
        Some(Charges::Process) => {
            pi["status"] = json!("processing");
            pi["latest_charge"] = json!(charge);
        }
        Some(Charges::Decline) => {
            let error = json!({
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "charge": charge,
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                "message": "Your card was declined.",
                "payment_method": method.clone().unwrap_or_default(),
            });
            pi["status"] = json!("requires_payment_method");
            pi["payment_method"] = Value::Null;
            pi["latest_charge"] = json!(charge);
            pi["last_payment_error"] = error.clone();
            st.intents.push(pi.clone());
            let mut e = error;
            e["payment_intent"] = pi;
            let message = "Your card was declined.";
            return Err(Problem { error: Some(e), ..Problem::new(402, "card_error", message) });
        }
    }
    st.intents.push(pi.clone());
    Ok(pi)
}

/// Stripe's limits of metadata (its documentation's, not the schema's): 50 keys, keys of
/// at most 40 characters, values of at most 500.
fn metadata_limits(m: &BTreeMap<String, Node>) -> Result<(), Problem> {
    let limit = |what: String| {
        Problem::contract(None, format!("{what} (Stripe's documented metadata limits)"), Some("metadata"))
    };
    if m.len() > 50 {
        return Err(limit(format!("metadata has {} keys, more than 50", m.len())));
    }
    for (k, v) in m {
        if k.chars().count() > 40 {
            return Err(limit(format!("metadata key {k:?} is longer than 40 characters")));
        }
        if let Node::Leaf(v) = v
            && v.chars().count() > 500
        {
            return Err(limit(format!("metadata[{k}] is longer than 500 characters")));
        }
    }
    Ok(())
}

fn shape(node: &Node) -> &'static str {
    match node {
        Node::Leaf(_) => "a value",
        Node::Map(_) => "a hash",
        Node::List(_) => "a list",
    }
}

/// `n` random characters of an id.
fn random(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

/// Unix seconds.
fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The hex HMAC-SHA256 of `"{t}.{body}"` keyed with `secret`.
fn hmac_hex(secret: &[u8], t: u64, body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The objects the server answers with, after Stripe's examples (ids, times and the
/// request's values are filled in).
const FIXTURES: &str = include_str!("../../../services/billing/stripe/fixtures.json");

/// A fresh copy of fixture `kind`, with a new id of `prefix` and created now.
fn fixture(kind: &str, prefix: &str, id_length: usize) -> Value {
    let fixtures: Value = serde_json::from_str(FIXTURES).expect("the fixtures are JSON");
    let mut v = fixtures[kind].clone();
    assert!(v.is_object(), "no fixture {kind}");
    v["id"] = json!(format!("{prefix}_{}", random(id_length)));
    v["created"] = json!(now());
    v
}

/// A customer as Stripe answers one.
fn customer(email: Option<&str>, metadata: serde_json::Map<String, Value>) -> Value {
    let mut c = fixture("customer", "cus", 14);
    c["email"] = json!(email);
    c["metadata"] = Value::Object(metadata);
    c["invoice_prefix"] = json!(random(8).to_uppercase());
    c
}

/// A card attached to `customer`.
fn payment_method(customer: &str) -> Value {
    let mut pm = fixture("payment_method", "pm", 24);
    pm["customer"] = json!(customer);
    pm["card"]["fingerprint"] = json!(random(16));
    pm
}

/// A Checkout Session as Stripe answers one.
fn session(mode: &str, params: &dyn Fn(&str) -> Option<String>, metadata: serde_json::Map<String, Value>) -> Value {
    let mut s = fixture("checkout.session", "cs_test", 58);
    for k in ["customer", "currency", "success_url", "cancel_url"] {
        s[k] = json!(params(k));
    }
    s["mode"] = json!(mode);
    s["metadata"] = Value::Object(metadata);
    s["expires_at"] = json!(now() + 24 * 3600);
    s["payment_status"] = json!(if mode == "setup" { "no_payment_required" } else { "unpaid" });
    s["setup_intent"] = json!((mode == "setup").then(|| format!("seti_{}", random(24))));
    s["url"] = json!(format!("https://checkout.stripe.com/c/pay/{}", s["id"].as_str().unwrap_or_default()));
    s
}

/// A PaymentIntent as Stripe answers one (its status and payment set by the caller).
fn payment_intent(
    amount: i64,
    params: &dyn Fn(&str) -> Option<String>,
    metadata: serde_json::Map<String, Value>,
) -> Value {
    let mut pi = fixture("payment_intent", "pi", 24);
    pi["amount"] = json!(amount);
    for k in ["currency", "customer", "description"] {
        pi[k] = json!(params(k));
    }
    pi["metadata"] = Value::Object(metadata);
    pi["client_secret"] = json!(format!("{}_secret_{}", pi["id"].as_str().unwrap_or_default(), random(25)));
    pi
}
