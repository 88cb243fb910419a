//! The Stripe adapter: [`Stripe`] is a [`PaymentProvider`] that makes customers, Checkout
//! setup sessions and off-session PaymentIntents through Stripe's API, and verifies and
//! reads Stripe's webhooks.
//!
//! Every request carries the secret key (`Authorization: Bearer sk_…`), a pinned
//! `Stripe-Version` ([`API_VERSION`], the version of the OpenAPI description the tests
//! check requests against) and, on every `POST`, an `Idempotency-Key` derived from what the
//! request is for, so a retry never makes a second customer or a second charge. Bodies are
//! form-encoded with Stripe's nested keys (`metadata[invoice]=…`).
//!
//! Webhooks are verified as Stripe documents it: the `Stripe-Signature` header holds
//! `t=<unix seconds>` and one or more `v1=<hex>`; a `v1` must be the HMAC-SHA256, keyed
//! with the endpoint's signing secret (`whsec_…`, the whole string), of `"{t}.{body}"`, and
//! `t` must be within the tolerance of now.

use crate::provider::{Charge, EventKind, Outcome, PaymentProvider, ProviderError, Setup, WebhookEvent};
use bytes::Bytes;
use http_body_util::Full;
use micro::outbound::{Answer, Outbound, OutboundError};
use ring::hmac;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Stripe's API, where [`StripeSettings::url`] points by default.
pub const DEFAULT_URL: &str = "https://api.stripe.com";

/// The API version every request pins (`Stripe-Version`): the version of the OpenAPI
/// description in `services/billing/stripe/openapi.json`.
pub const API_VERSION: &str = "2024-04-10";

/// How old (or how far ahead) a webhook's timestamp may be by default, as Stripe's own
/// libraries allow.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The currency of setup sessions: Checkout needs one in setup mode to offer the payment
/// methods that can pay in it (the platform bills in US dollars).
pub const SETUP_CURRENCY: &str = "usd";

/// How long one request to Stripe may take (Stripe's own libraries allow 80 s).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The largest answer read.
const MOST: usize = 1 << 20;

/// How Billing reaches Stripe.
#[derive(Clone, PartialEq, Eq)]
pub struct StripeSettings {
    /// The secret (or restricted) API key, `sk_…` or `rk_…`.
    pub key: String,
    /// The webhook endpoint's signing secret, `whsec_…`.
    pub webhook_secret: String,
    /// The API's base URL ([`DEFAULT_URL`]; another for a test server).
    pub url: String,
    /// How far a webhook's timestamp may be from now.
    pub tolerance: Duration,
}

impl fmt::Debug for StripeSettings {
    // The key and the secret are credentials: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeSettings")
            .field("key", &redacted(&self.key))
            .field("webhook_secret", &redacted(&self.webhook_secret))
            .field("url", &self.url)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// What of a credential may be shown: its kind (`sk_live_`, `whsec_`), never more.
fn redacted(secret: &str) -> String {
    let kinds = ["sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"];
    let kind = kinds.iter().find(|k| secret.starts_with(*k)).copied().unwrap_or("");
    format!("{kind}…")
}

impl StripeSettings {
    /// Settings with `key` and `webhook_secret`, Stripe's API and the default tolerance.
    pub fn new(key: impl Into<String>, webhook_secret: impl Into<String>) -> StripeSettings {
        StripeSettings {
            key: key.into(),
            webhook_secret: webhook_secret.into(),
            url: DEFAULT_URL.to_string(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Settings from the process environment (see [`from_vars`](Self::from_vars)).
    pub fn from_env() -> Option<StripeSettings> {
        StripeSettings::from_vars(|name| std::env::var(name).ok())
    }

    /// Settings from variables read by `var`: `MICRO_STRIPE_KEY`,
    /// `MICRO_STRIPE_WEBHOOK_SECRET` and `MICRO_STRIPE_URL` (optional). `None` when there
    /// is no key (Stripe is then not used); a missing secret is left empty, for
    /// [`Stripe::new`] to refuse.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<StripeSettings> {
        let present = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let key = present("MICRO_STRIPE_KEY")?;
        let mut settings = StripeSettings::new(key, present("MICRO_STRIPE_WEBHOOK_SECRET").unwrap_or_default());
        if let Some(url) = present("MICRO_STRIPE_URL") {
            settings.url = url;
        }
        Some(settings)
    }
}

/// Why settings cannot make a [`Stripe`].
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The key is not a secret or restricted key.
    #[error("MICRO_STRIPE_KEY is not a Stripe secret key (sk_…) or restricted key (rk_…)")]
    Key,
    /// The webhook signing secret is missing or not one.
    #[error("MICRO_STRIPE_WEBHOOK_SECRET is not a Stripe webhook signing secret (whsec_…)")]
    WebhookSecret,
    /// The URL cannot be used.
    #[error("MICRO_STRIPE_URL: {0}")]
    Url(String),
}

/// The Stripe payment provider. Cheap to clone.
#[derive(Clone)]
pub struct Stripe {
    key: String,
    url: String,
    webhook_key: hmac::Key,
    tolerance: Duration,
    outbound: Outbound,
}

impl fmt::Debug for Stripe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stripe").field("url", &self.url).field("tolerance", &self.tolerance).finish_non_exhaustive()
    }
}

impl Stripe {
    /// The provider for `settings`.
    ///
    /// Requests go through [`Outbound`], which reaches only public HTTPS addresses. That
    /// holds for Stripe's API; a URL other than [`DEFAULT_URL`] (a test server on
    /// `127.0.0.1`, or an operator's egress proxy on a private network) lifts the rule, as
    /// such a URL comes from the operator's own environment, never from a tenant.
    pub fn new(settings: StripeSettings) -> Result<Stripe, StripeError> {
        let key_ok = ["sk_", "rk_"].iter().any(|p| settings.key.starts_with(p)) && printable(&settings.key);
        if !key_ok {
            return Err(StripeError::Key);
        }
        if !settings.webhook_secret.starts_with("whsec_") {
            return Err(StripeError::WebhookSecret);
        }
        let url = settings.url.trim_end_matches('/').to_string();
        let private = url != DEFAULT_URL;
        let outbound = Outbound::new(private, TIMEOUT);
        let parsed = outbound.check("MICRO_STRIPE_URL", &url).map_err(StripeError::Url)?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(StripeError::Url(format!("{url:?}: a base URL without query or fragment")));
        }
        Ok(Stripe {
            key: settings.key,
            url,
            webhook_key: hmac::Key::new(hmac::HMAC_SHA256, settings.webhook_secret.as_bytes()),
            tolerance: settings.tolerance,
            outbound,
        })
    }

    /// Sends one request: `form` is the body of a `POST` (with `idempotency`), or the
    /// query of a `GET`.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        form: &[(&str, &str)],
        idempotency: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        let encoded = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let get = method == http::Method::GET;
        let uri = if get && !encoded.is_empty() {
            format!("{}{path}?{encoded}", self.url)
        } else {
            format!("{}{path}", self.url)
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("micro-billing/", env!("CARGO_PKG_VERSION")))
            .header("stripe-version", API_VERSION);
        if !get {
            req = req.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        if let Some(key) = idempotency {
            req = req.header("idempotency-key", key);
        }
        let body = if get { Bytes::new() } else { Bytes::from(encoded) };
        let req = req.body(Full::new(body)).map_err(|e| ProviderError::Refused(format!("{path}: {e}")))?;
        self.outbound.send(req, MOST).await.map_err(|e| match e {
            OutboundError::Refused(m) => ProviderError::Refused(m),
            other => ProviderError::Unavailable(other.to_string()),
        })
    }

    /// A `POST` whose success is a JSON object.
    async fn post(&self, path: &str, form: &[(&str, &str)], idempotency: &str) -> Result<Value, ProviderError> {
        let answer = self.send(http::Method::POST, path, form, Some(idempotency)).await?;
        read(path, answer).map_err(Failure::into_error)
    }

    /// A `GET` whose success is a JSON object.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ProviderError> {
        let answer = self.send(http::Method::GET, path, query, None).await?;
        read(path, answer).map_err(Failure::into_error)
    }

    /// The payment method charges of `customer` use: its invoices' default, else the one
    /// it gave last (Checkout attaches what a setup collects to the customer; Stripe lists
    /// the newest first).
    async fn payment_method(&self, customer: &str) -> Result<Option<String>, ProviderError> {
        let found = self.get(&format!("/v1/customers/{customer}"), &[]).await?;
        if found["deleted"].as_bool() == Some(true) {
            return Err(ProviderError::Refused(format!("the Stripe customer {customer} is deleted")));
        }
        if let Some(id) = id_of(&found["invoice_settings"]["default_payment_method"]) {
            return Ok(Some(id));
        }
        let list = self.get(&format!("/v1/customers/{customer}/payment_methods"), &[("limit", "1")]).await?;
        Ok(list["data"].as_array().and_then(|d| d.first()).and_then(id_of))
    }
}

/// Whether `s` is plain printable ASCII (so it can go in a header or a path).
fn printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `id` looks like a Stripe id (`cus_…`): it goes into a path.
fn stripe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The id of an expandable field: a string, or an object with an `id`.
fn id_of(v: &Value) -> Option<String> {
    v.as_str().or_else(|| v["id"].as_str()).map(str::to_string)
}

/// An answer that is not a success.
#[derive(Debug)]
struct Failure {
    status: http::StatusCode,
    /// Stripe's `error` object (`Value::Null` when the answer had none).
    error: Value,
    what: String,
}

impl Failure {
    /// The words of the error: Stripe's message, else its type and code, else the status.
    fn reason(&self) -> String {
        if let Some(m) = self.error["message"].as_str() {
            return m.to_string();
        }
        match (self.error["type"].as_str(), self.error["code"].as_str()) {
            (Some(t), Some(c)) => format!("{t}: {c}"),
            (Some(t), None) => t.to_string(),
            _ => format!("{} answered {}", self.what, self.status),
        }
    }

    /// A failure whose request may be retried is [`ProviderError::Unavailable`]: a server
    /// error, rate limiting (429) and a concurrent use of the same idempotency key (409);
    /// any other refusal is [`ProviderError::Refused`].
    fn into_error(self) -> ProviderError {
        let s = self.status;
        let reason = format!("{} ({})", self.reason(), s.as_u16());
        if s.is_server_error() || s == http::StatusCode::TOO_MANY_REQUESTS || s == http::StatusCode::CONFLICT {
            ProviderError::Unavailable(reason)
        } else if s.is_success() {
            ProviderError::Unavailable(format!("{}: {}", self.what, self.reason()))
        } else {
            ProviderError::Refused(reason)
        }
    }
}

/// Reads an answer: the JSON object of a success, or a [`Failure`].
fn read(path: &str, answer: Answer) -> Result<Value, Failure> {
    let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok().filter(Value::is_object);
    let what = format!("Stripe's {path}");
    match parsed {
        Some(v) if answer.status.is_success() => Ok(v),
        None if answer.status.is_success() => Err(Failure {
            status: answer.status,
            error: serde_json::json!({"message": "an answer that is not a JSON object"}),
            what,
        }),
        v => Err(Failure { status: answer.status, error: v.map(|mut v| v["error"].take()).unwrap_or_default(), what }),
    }
}

/// What became of a PaymentIntent Stripe answered with.
fn outcome(intent: &Value) -> Result<Outcome, ProviderError> {
    let payment = intent["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ProviderError::Unavailable("Stripe answered a PaymentIntent without an id".into()))?;
    let last_error = intent["last_payment_error"]["message"].as_str().map(str::to_string);
    Ok(match intent["status"].as_str().unwrap_or_default() {
        "succeeded" => Outcome::Succeeded { payment },
        "requires_payment_method" => Outcome::Failed {
            payment: Some(payment),
            reason: last_error.unwrap_or_else(|| "the payment method was refused".into()),
        },
        "canceled" => Outcome::Failed {
            payment: Some(payment),
            reason: last_error.unwrap_or_else(|| "the payment was canceled".into()),
        },
        // processing, requires_action, requires_confirmation, requires_capture, and any
        // status newer than this adapter: a webhook tells the end.
        _ => Outcome::Pending { payment: Some(payment) },
    })
}

#[async_trait::async_trait]
impl PaymentProvider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn customer(&self, namespace: &str, email: &str) -> Result<String, ProviderError> {
        let form = [("email", email), ("metadata[namespace]", namespace)];
        let made = self.post("/v1/customers", &form, &format!("customer-{namespace}")).await?;
        id_of(&made).ok_or_else(|| ProviderError::Unavailable("Stripe answered a customer without an id".into()))
    }

    async fn setup(&self, customer: &str, return_url: &str) -> Result<Setup, ProviderError> {
        if !stripe_id(customer) {
            return Err(ProviderError::Refused(format!("{customer:?} is not a Stripe customer")));
        }
        // The same customer coming back to the same place reuses the session (for Stripe's
        // idempotency window, 24 hours) instead of opening another.
        let digest = ring::digest::digest(&ring::digest::SHA256, return_url.as_bytes());
        let key = format!("setup-{customer}-{}", hex(&digest.as_ref()[..16]));
        let form = [
            ("mode", "setup"),
            ("customer", customer),
            ("currency", SETUP_CURRENCY),
            ("success_url", return_url),
            ("cancel_url", return_url),
        ];
        let session = self.post("/v1/checkout/sessions", &form, &key).await?;
        match (session["url"].as_str(), session["id"].as_str()) {
            (Some(url), Some(id)) => Ok(Setup { url: url.to_string(), id: id.to_string() }),
            _ => Err(ProviderError::Unavailable("Stripe answered a Checkout Session without a URL".into())),
        }
    }

    async fn charge(&self, charge: &Charge) -> Result<Outcome, ProviderError> {
        if !stripe_id(&charge.customer) {
            return Err(ProviderError::Refused(format!("{:?} is not a Stripe customer", charge.customer)));
        }
        if charge.amount <= 0 {
            return Err(ProviderError::Refused(format!("nothing to charge ({} {})", charge.amount, charge.currency)));
        }
        let Some(method) = self.payment_method(&charge.customer).await? else {
            return Ok(Outcome::Failed { payment: None, reason: "the customer has not given a payment method".into() });
        };
        let amount = charge.amount.to_string();
        let description = format!("Invoice {}", charge.number);
        let form = [
            ("amount", amount.as_str()),
            ("currency", charge.currency.as_str()),
            ("customer", charge.customer.as_str()),
            ("payment_method", method.as_str()),
            ("confirm", "true"),
            ("off_session", "true"),
            // Off-session: no page to come back to, so no method that redirects.
            ("automatic_payment_methods[enabled]", "true"),
            ("automatic_payment_methods[allow_redirects]", "never"),
            ("description", description.as_str()),
            ("metadata[invoice]", charge.invoice.as_str()),
            ("metadata[number]", charge.number.as_str()),
        ];
        let answer =
            self.send(http::Method::POST, "/v1/payment_intents", &form, Some(&charge.idempotency_key())).await?;
        match read("/v1/payment_intents", answer) {
            Ok(intent) => outcome(&intent),
            // A decline (or a card needing its holder, who is not there): Stripe made the
            // PaymentIntent and says why it failed.
            Err(f) if f.status == http::StatusCode::PAYMENT_REQUIRED || f.error["type"] == "card_error" => {
                Ok(Outcome::Failed { payment: id_of(&f.error["payment_intent"]), reason: f.reason() })
            }
            Err(f) => Err(f.into_error()),
        }
    }

    fn webhook(&self, headers: &http::HeaderMap, body: &[u8], now: u64) -> Result<WebhookEvent, ProviderError> {
        let header = headers
            .get("stripe-signature")
            .ok_or_else(|| ProviderError::Signature("no Stripe-Signature header".into()))?
            .to_str()
            .map_err(|_| ProviderError::Signature("a Stripe-Signature header that is not text".into()))?;
        verify(&self.webhook_key, header, body, now, self.tolerance)?;
        parse_event(body)
    }
}

/// The `Stripe-Signature` header Stripe would send with `body` at `t` (Unix seconds), for
/// an endpoint whose signing secret is `secret`: `t=<t>,v1=<hex HMAC-SHA256>`.
pub fn sign_webhook(secret: &str, body: &[u8], t: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, &signed_payload(t, body));
    format!("t={t},v1={}", hex(tag.as_ref()))
}

/// What is signed: `"{t}.{body}"`.
fn signed_payload(t: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = format!("{t}.").into_bytes();
    payload.extend_from_slice(body);
    payload
}

/// Checks a `Stripe-Signature` header: its timestamp within `tolerance` of `now`, and one
/// of its `v1` signatures (others, such as test mode's `v0`, are ignored) the HMAC of
/// `"{t}.{body}"` (compared in constant time).
fn verify(key: &hmac::Key, header: &str, body: &[u8], now: u64, tolerance: Duration) -> Result<(), ProviderError> {
    let mut t = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((k, v)) = item.trim().split_once('=') else { continue };
        match k {
            "t" => t = v.parse::<u64>().ok(),
            "v1" => signatures.push(v),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| ProviderError::Signature("no timestamp in Stripe-Signature".into()))?;
    if signatures.is_empty() {
        return Err(ProviderError::Signature("no v1 signature in Stripe-Signature".into()));
    }
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(ProviderError::Signature(format!("signed at {t}, {}s from now", now.abs_diff(t))));
    }
    let payload = signed_payload(t, body);
    let holds = signatures.iter().filter_map(|s| unhex(s)).any(|tag| hmac::verify(key, &payload, &tag).is_ok());
    if holds { Ok(()) } else { Err(ProviderError::Signature("no v1 signature matches the body".into())) }
}

/// Reads a verified event.
fn parse_event(body: &[u8]) -> Result<WebhookEvent, ProviderError> {
    let event: Value = serde_json::from_slice(body).map_err(|e| ProviderError::Malformed(e.to_string()))?;
    let malformed = |what: &str| ProviderError::Malformed(format!("an event without {what}"));
    let id = event["id"].as_str().ok_or_else(|| malformed("an id"))?.to_string();
    let kind = event["type"].as_str().ok_or_else(|| malformed("a type"))?.to_string();
    let object = &event["data"]["object"];
    if !object.is_object() {
        return Err(malformed("data.object"));
    }
    let other = EventKind::Other { kind: kind.clone() };
    // A PaymentIntent without our invoice in its metadata is not one of ours (made in
    // Stripe's dashboard, say): acknowledged and ignored.
    let intent = || Some((object["id"].as_str()?.to_string(), object["metadata"]["invoice"].as_str()?.to_string()));
    let kind = match kind.as_str() {
        "payment_intent.succeeded" => match intent() {
            Some((payment, invoice)) => {
                let amount = object["amount_received"].as_i64().ok_or_else(|| malformed("amount_received"))?;
                EventKind::PaymentSucceeded { payment, invoice, amount }
            }
            None => other,
        },
        "payment_intent.payment_failed" => match intent() {
            Some((payment, invoice)) => {
                let reason = object["last_payment_error"]["message"].as_str().unwrap_or("the payment failed");
                EventKind::PaymentFailed { payment, invoice, reason: reason.to_string() }
            }
            None => other,
        },
        "checkout.session.completed" if object["mode"] == "setup" => {
            let customer = id_of(&object["customer"]).ok_or_else(|| malformed("the session's customer"))?;
            let method = id_of(&object["setup_intent"]).ok_or_else(|| malformed("the session's setup_intent"))?;
            EventKind::PaymentMethodSet { customer, method }
        }
        _ => other,
    };
    Ok(WebhookEvent { id, kind })
}

/// Lower-case hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of hexadecimal text, if it is.
fn unhex(s: &str) -> Option<Vec<u8>> {
    // from_str_radix alone would take a sign (`+1`).
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(unhex("0001abff"), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("+1"), None);
    }

    #[test]
    fn settings_come_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(StripeSettings::from_vars(vars(&[("MICRO_STRIPE_WEBHOOK_SECRET", "whsec_x")])).is_none());
        let s = StripeSettings::from_vars(vars(&[
            ("MICRO_STRIPE_KEY", "sk_test_1"),
            ("MICRO_STRIPE_WEBHOOK_SECRET", "whsec_x"),
        ]))
        .expect("settings");
        assert_eq!((s.url.as_str(), s.tolerance), (DEFAULT_URL, DEFAULT_TOLERANCE));
        assert!(!format!("{s:?}").contains("sk_test_1"), "the key is redacted");
        assert!(Stripe::new(s).is_ok());
        let s = StripeSettings::from_vars(vars(&[("MICRO_STRIPE_KEY", "sk_test_1")])).expect("settings");
        assert!(matches!(Stripe::new(s), Err(StripeError::WebhookSecret)));
        assert!(matches!(Stripe::new(StripeSettings::new("pk_test_1", "whsec_x")), Err(StripeError::Key)));
        for url in ["not a URL", "https://user:pw@stripe.example", "https://stripe.example/?q=1"] {
            let mut s = StripeSettings::new("sk_test_1", "whsec_x");
            s.url = url.into();
            assert!(matches!(Stripe::new(s), Err(StripeError::Url(_))), "{url}");
        }
        assert_eq!(redacted("sk_live_abc"), "sk_live_…");
        assert_eq!(redacted("secret"), "…");
    }
}
