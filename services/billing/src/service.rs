//! The billing service: what a namespace's team sees and does (its usage, the upcoming
//! invoice, its invoices, paying them, its billing address), and what the platform's
//! operators do (close a period, record usage kept elsewhere, mark a transfer paid, add
//! credit, set prices, read the ledger and the revenue).

use crate::invoice::{Draft, Invoice};
use crate::ledger::{self, Tx};
use crate::price::PriceBook;
use crate::{Billing, InvoiceState, Mailer, Meters, NAME, Settings, Usage, bad};
use micro::{Code, Context, Service, Status};
use micro_core::auth::AccountType;
use micro_core::meter::ServiceRun;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A request naming a namespace (none: the caller's; another: operators only).
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRequest {
    /// The namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `Billing.Usage` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    /// The namespace (none: the caller's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The period, `YYYY-MM` (none: the current one).
    #[serde(default)]
    pub period: Option<String>,
}

/// `Billing.Preview` reply: the upcoming invoice.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PreviewReply {
    /// The current period, `YYYY-MM`.
    pub period: String,
    /// What is owed for it so far.
    pub to_date: Draft,
    /// What will be owed at its end, were nothing to change.
    pub projected: Draft,
}

/// `Billing.Account` reply: a namespace's billing at a glance.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AccountReply {
    /// The namespace.
    pub namespace: String,
    /// Its plan.
    pub plan: String,
    /// Its billing settings.
    pub settings: Settings,
    /// The payment provider (`manual`, `stripe`).
    pub provider: String,
    /// Prepaid credit held (minor units).
    pub credit: i64,
    /// Usage this period.
    pub usage: Usage,
    /// The upcoming invoice.
    pub upcoming: PreviewReply,
    /// Its invoices, newest first.
    pub invoices: Vec<InvoiceState>,
    /// What its open invoices owe.
    pub owed: i64,
}

/// `Billing.Invoices` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoicesRequest {
    /// The namespace (none: the caller's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Every namespace's (operators only).
    #[serde(default)]
    pub all: bool,
}

/// `Billing.Invoices` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct InvoicesReply {
    /// Newest first.
    pub invoices: Vec<InvoiceState>,
}

/// A request naming an invoice.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRequest {
    /// The invoice's id (`YYYY-MM-<namespace>`) or number (`INV-000001`).
    pub id: String,
}

/// `Billing.Invoice` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceReply {
    /// The invoice and what it owes.
    #[serde(flatten)]
    pub state: InvoiceState,
    /// The invoice as a page.
    pub html: String,
}

/// `Billing.Settings` request: given fields change.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsRequest {
    /// The namespace (none: the caller's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Where invoices are mailed.
    #[serde(default)]
    pub email: Option<String>,
    /// The country (ISO 3166 alpha-2) whose tax applies.
    #[serde(default)]
    pub country: Option<String>,
}

/// `Billing.Pay` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PayReply {
    /// The invoice after the attempt.
    pub invoice: InvoiceState,
    /// What the provider said (none: nothing was owed).
    pub outcome: Option<crate::provider::Outcome>,
}

/// `Billing.SetupPayment` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The namespace (none: the caller's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The page to come back to once the payment method is given.
    pub return_url: String,
}

/// `Billing.Close` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// The period, `YYYY-MM` (none: the one before the current).
    #[serde(default)]
    pub period: Option<String>,
}

/// `Billing.Close` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CloseReply {
    /// The period.
    pub period: String,
    /// The invoices this call issued (none when they all were already).
    pub issued: Vec<Invoice>,
}

/// `Billing.Record` request (and reply): a run of a service kept elsewhere.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    /// The namespace.
    pub namespace: String,
    /// The service.
    pub service: String,
    /// When it started (Unix seconds).
    pub from: u64,
    /// When it ended (none: it runs).
    #[serde(default)]
    pub to: Option<u64>,
}

/// `Billing.MarkPaid` request: money received outside a provider (a bank transfer).
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkPaidRequest {
    /// The invoice's id or number.
    pub id: String,
    /// The transfer's reference: the same reference again applies nothing more.
    pub reference: String,
    /// What was received, in minor units (none: what the invoice owes).
    #[serde(default)]
    pub amount: Option<i64>,
}

/// `Billing.CreditNote` request: a correction of an issued invoice.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteRequest {
    /// The invoice's id or number.
    pub id: String,
    /// What to credit, tax included, in minor units.
    pub amount: i64,
    /// Why, as the customer reads it.
    pub reason: String,
    /// Its reference: the same reference again issues nothing more.
    pub reference: String,
}

/// `Billing.AddCredit` request.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// The namespace.
    pub namespace: String,
    /// Minor units.
    pub amount: i64,
    /// Its reference: the same reference again adds nothing more.
    pub reference: String,
}

/// `Billing.AddCredit` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CreditReply {
    /// The namespace.
    pub namespace: String,
    /// The credit it holds now.
    pub credit: i64,
}

/// `Billing.Prices` request: given, the book replaces the current one.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PricesRequest {
    /// The new price book.
    #[serde(default)]
    pub prices: Option<PriceBook>,
}

/// `Billing.Ledger` reply.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct LedgerReply {
    /// The transactions.
    pub transactions: Vec<Tx>,
    /// Each account's balance.
    pub balances: BTreeMap<String, i64>,
    /// Whether every transaction balances and the books sum to zero.
    pub balanced: bool,
}

/// `Billing.Revenue` reply: the platform's books at a glance.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RevenueReply {
    /// Revenue earned (minor units).
    pub revenue: i64,
    /// Tax collected.
    pub tax: i64,
    /// Money received, per provider.
    pub received: BTreeMap<String, i64>,
    /// Prepaid credit held for customers.
    pub credit_held: i64,
    /// What customers owe.
    pub receivable: i64,
    /// The invoices still open, oldest first.
    pub unpaid: Vec<InvoiceState>,
}

/// Who calls: a person of the namespace (reading), its admin (changing), or an operator.
struct Who<'a> {
    caller: &'a micro::auth::Caller,
}

impl Who<'_> {
    fn operator(&self) -> Result<(), Status> {
        if self.caller.is_operator() {
            return Ok(());
        }
        Err(match self.caller.account {
            None => Status::new(Code::Unauthenticated, NAME, "sign in first"),
            Some(_) => {
                Status::new(Code::PermissionDenied, NAME, "this is for the platform's operators (admins of micro)")
            }
        })
    }

    /// The namespace `asked` (none: the caller's) if the caller may see its billing
    /// (`admin`: and change it).
    fn namespace(&self, asked: Option<&str>, admin: bool) -> Result<String, Status> {
        let ns = asked.filter(|s| !s.is_empty()).unwrap_or(&self.caller.namespace).to_string();
        micro_core::namespace::validate(&ns)?;
        if self.caller.is_operator() {
            return Ok(ns);
        }
        let Some(account) = &self.caller.account else {
            return Err(Status::new(Code::Unauthenticated, NAME, "sign in to see your billing"));
        };
        let member = account.kind == AccountType::User && account.namespace == ns && ns == self.caller.namespace;
        if !member || (admin && !self.caller.is_admin()) {
            return Err(Status::new(
                Code::PermissionDenied,
                NAME,
                if admin {
                    format!("the billing of namespace {ns} is changed by its admins")
                } else {
                    format!("the billing of namespace {ns} is seen by its people")
                },
            ));
        }
        Ok(ns)
    }
}

/// `local@domain.tld`: one `@`, printable ASCII without spaces, a domain of dotted labels.
fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    e.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && e.bytes().all(|b| b.is_ascii_graphic())
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn who(ctx: &Context) -> Result<Who<'_>, Status> {
    Ok(Who { caller: ctx.caller().ok_or_else(|| Status::internal(NAME, "the service runs without an authorizer"))? })
}

fn now() -> u64 {
    micro_core::time::clock()
}

impl Billing {
    /// An invoice by id or number.
    async fn find(&self, id: &str) -> Result<InvoiceState, Status> {
        if let Some(n) = id.strip_prefix("INV-") {
            let n: u64 = n.parse().map_err(|_| bad(format!("invoice number {id:?}: like INV-000001")))?;
            let id: String = self
                .get(&format!("num/{n:012}"))
                .await?
                .ok_or_else(|| Status::new(Code::NotFound, NAME, format!("no invoice {id}")))?;
            return self.invoice(&id).await;
        }
        if id.is_empty() || id.len() > 80 || id.contains('/') {
            return Err(bad("give the invoice's id (YYYY-MM-<namespace>) or number (INV-000001)"));
        }
        self.invoice(id).await
    }

    async fn preview_reply(&self, ns: &str) -> Result<PreviewReply, Status> {
        let (period, to_date, projected) = self.preview(ns, now()).await?;
        Ok(PreviewReply { period, to_date, projected })
    }

    async fn account(&self, ns: &str) -> Result<AccountReply, Status> {
        let invoices = self.invoices(Some(ns)).await?;
        Ok(AccountReply {
            namespace: ns.to_string(),
            plan: self.plan_of(ns).await?,
            settings: self.settings(ns).await?,
            provider: self.provider().to_string(),
            credit: self.credit(ns).await?,
            usage: self.usage(ns, now(), now()).await?,
            upcoming: self.preview_reply(ns).await?,
            owed: invoices.iter().map(|i| i.owed.max(0)).sum(),
            invoices,
        })
    }

    async fn update_settings(&self, ns: &str, req: SettingsRequest) -> Result<Settings, Status> {
        let mut s = self.settings(ns).await?;
        if let Some(email) = req.email {
            let email = email.trim().to_string();
            if !email.is_empty() && !plausible_email(&email) {
                return Err(bad(format!("{email:?} is not an email address")));
            }
            s.email = email;
        }
        if let Some(country) = req.country {
            let country = country.trim().to_ascii_uppercase();
            if !country.is_empty() && (country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase())) {
                return Err(bad(format!("country {country:?}: give an ISO 3166 code, like DE")));
            }
            s.country = country;
        }
        self.set_settings(ns, &s).await?;
        Ok(s)
    }

    async fn revenue(&self) -> Result<RevenueReply, Status> {
        let txs = self.ledger(None).await?;
        let b = ledger::balances(&txs);
        let sum = |prefix: &str| b.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| *v).sum::<i64>();
        let mut unpaid: Vec<InvoiceState> = Vec::new();
        for key in self
            .store
            .list(&self.table, "due/", &micro_core::store::Query { prefix: true, ..Default::default() })
            .await?
        {
            if let Some(id) = key.strip_prefix("due/") {
                let state = self.invoice(id).await?;
                if state.owed > 0 {
                    unpaid.push(state);
                }
            }
        }
        unpaid.sort_by_key(|s| s.invoice.seq);
        Ok(RevenueReply {
            revenue: -b.get(ledger::REVENUE).copied().unwrap_or(0),
            tax: -b.get(ledger::TAX).copied().unwrap_or(0),
            received: b.iter().filter_map(|(k, v)| Some((k.strip_prefix("cash:")?.to_string(), *v))).collect(),
            credit_held: -sum("credit:"),
            receivable: sum("receivable:"),
            unpaid,
        })
    }

    /// Closes the period before the current one when it is due, and mails what waits.
    async fn tick(&self) {
        let now = now();
        let (start, _, _) = micro_core::time::month_span(now);
        let (_, prev_end, prev) = micro_core::time::month_span(start.saturating_sub(1));
        // Without a licence for billing, usage is metered and shown, and nothing issued.
        if now >= prev_end + crate::SETTLE && self.licence.check(crate::FEATURE).is_ok() {
            match self.get::<u64>(&format!("closed/{prev}")).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    if let Err(e) = self.close(&prev, now).await {
                        tracing::warn!(period = %prev, error = %e, "closing the billing period failed; tried again");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the billing periods failed"),
            }
        }
        self.send_mail().await;
        self.dun(now).await;
    }
}

impl Billing {
    /// Serves an invoice as a document to `caller`: `GET /billing/v1/invoices/<id>.pdf`
    /// (or `.html`; `<id>` an id or a number), to the namespace's people and operators.
    pub async fn serve_document(&self, caller: &micro::auth::Caller, rest: &str) -> http::Response<micro::web::Body> {
        let w = Who { caller };
        let (id, kind) = match rest.rsplit_once('.') {
            Some((id, kind @ ("pdf" | "html"))) => (id, kind),
            _ => return micro::json_error(&bad("ask for /billing/v1/invoices/<id>.pdf or .html")),
        };
        let missing = || micro::json_error(&Status::new(Code::NotFound, NAME, format!("no invoice {id}")));
        if caller.account.is_none() {
            return micro::json_error(&Status::new(Code::Unauthenticated, NAME, "sign in to see invoices"));
        }
        let state = match self.find(id).await {
            Ok(s) if caller.is_operator() || w.namespace(Some(&s.invoice.namespace), false).is_ok() => s,
            Err(e) if caller.is_operator() => return micro::json_error(&e),
            _ => return missing(),
        };
        let (body, content_type) = match kind {
            "pdf" => (state.invoice.pdf(), "application/pdf"),
            _ => (state.invoice.html().into_bytes(), "text/html; charset=utf-8"),
        };
        let mut res = http::Response::new(micro::web::Body::new(http_body_util::Full::new(bytes::Bytes::from(body))));
        let headers = res.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        // A document of its own: no script runs in it, nothing else frames it.
        headers.insert(
            http::header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"),
        );
        headers.insert(http::header::X_CONTENT_TYPE_OPTIONS, http::HeaderValue::from_static("nosniff"));
        headers.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("private, no-store"));
        if let Ok(v) = http::HeaderValue::from_str(&format!("inline; filename=\"{}.{kind}\"", state.invoice.number)) {
            headers.insert(http::header::CONTENT_DISPOSITION, v);
        }
        res
    }
}

/// Mail through the email product, as the billing product's account.
struct EmailProduct(micro::Client);

#[async_trait::async_trait]
impl Mailer for EmailProduct {
    async fn send(&self, to: &str, subject: &str, text: &str, html: &str, key: &str) -> Result<(), Status> {
        let req = json!({"to": [to], "subject": subject, "text": text, "html": html, "key": key});
        self.0.call_json("email", "Email.Send", &req).await.map(drop)
    }
}

/// The meters, through the `usage` service (as an operator of each namespace).
struct UsageService(micro::Channel);

impl UsageService {
    fn request<T>(ns: &str, msg: T) -> Option<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(micro_core::metadata::NAMESPACE, ns.parse().ok()?);
        req.set_timeout(Duration::from_secs(10));
        Some(req)
    }
}

#[async_trait::async_trait]
impl Meters for UsageService {
    async fn requests(&self, ns: &str, start: u64, end: u64) -> Option<BTreeMap<String, u64>> {
        use micro::proto::usage as pb;
        let mut client = pb::usage_client::UsageClient::new(self.0.clone());
        let req = Self::request(
            ns,
            pb::QueryRequest {
                since: i64::try_from(start).ok()?,
                until: i64::try_from(end.max(start + 1)).ok()?,
                group_by: vec!["service".into()],
                ..Default::default()
            },
        )?;
        let rows = client
            .query(req)
            .await
            .inspect_err(|e| tracing::debug!(namespace = ns, error = %e, "no requests metered"))
            .ok()?;
        Some(rows.into_inner().rows.into_iter().map(|r| (r.service, r.requests)).collect())
    }

    async fn month(&self, ns: &str) -> (Option<u64>, Option<u64>) {
        use micro::proto::usage as pb;
        let mut client = pb::usage_client::UsageClient::new(self.0.clone());
        let Some(req) = Self::request(ns, pb::MonthRequest {}) else { return (None, None) };
        match client.month(req).await {
            Ok(m) => {
                let m = m.into_inner();
                (Some(m.storage_bytes), Some(m.build_seconds))
            }
            Err(_) => (None, None),
        }
    }
}

/// The runtime, as an operator of each namespace.
struct RuntimeService(micro::Channel);

#[async_trait::async_trait]
impl crate::Suspender for RuntimeService {
    async fn suspend(&self, ns: &str, on: bool, reason: &str) -> Result<(), Status> {
        use micro::proto::runtime as pb;
        let mut client = pb::runtime_client::RuntimeClient::new(self.0.clone());
        let req = UsageService::request(ns, pb::SuspendRequest { suspended: on, reason: reason.to_string() })
            .ok_or_else(|| bad(format!("invalid namespace {ns:?}")))?;
        client.suspend(req).await.map(drop).map_err(|e| micro::status::from_tonic(&e))
    }
}

/// How often billing looks whether a period is due (`MICRO_BILLING_INTERVAL`, seconds;
/// default 60).
fn interval() -> Duration {
    let secs = std::env::var("MICRO_BILLING_INTERVAL").ok().and_then(|v| v.parse().ok()).unwrap_or(60u64);
    Duration::from_secs(secs.clamp(1, 3600))
}

/// The billing product's service over `billing`; it closes each period when it is due.
pub fn service_with(service: Service, billing: Arc<Billing>) -> Service {
    let service = service.platform().version(env!("CARGO_PKG_VERSION"));
    if let Some(file) = std::env::var_os(micro_core::time::CLOCK_FILE).filter(|f| !f.is_empty()) {
        tracing::warn!(
            file = %std::path::Path::new(&file).display(),
            "MICRO_CLOCK_FILE is set: billing counts time by that file, not the system clock (for tests and drills only)"
        );
    }
    if let Ok(client) = service.client() {
        let _ = billing.mailer.set(Arc::new(EmailProduct(client)));
    }
    if let Ok(channel) = service.channel() {
        let _ = billing.meters.set(Arc::new(UsageService(channel.clone())));
        let _ = billing.suspender.set(Arc::new(RuntimeService(channel)));
    }
    {
        let b = Arc::downgrade(&billing);
        let every = interval();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(b) = b.upgrade() else { return };
                b.tick().await;
            }
        });
    }
    let s = || billing.clone();
    let (usage, preview, account, invoices, invoice, settings, pay) = (s(), s(), s(), s(), s(), s(), s());
    let (close, record, paid, credit, prices, ledger, revenue, setup) = (s(), s(), s(), s(), s(), s(), s(), s());
    let note = s();
    service
        .handle("Billing.Usage", move |ctx: Context, req: UsageRequest| {
            let b = usage.clone();
            async move {
                let ns = who(&ctx)?.namespace(req.namespace.as_deref(), false)?;
                let at = match req.period.as_deref() {
                    Some(p) => {
                        micro_core::time::parse_month(p).ok_or_else(|| bad(format!("period {p:?}: give YYYY-MM")))?.0
                    }
                    None => now(),
                };
                b.usage(&ns, at, now()).await
            }
        })
        .handle("Billing.Preview", move |ctx: Context, req: NamespaceRequest| {
            let b = preview.clone();
            async move {
                let ns = who(&ctx)?.namespace(req.namespace.as_deref(), false)?;
                b.preview_reply(&ns).await
            }
        })
        .handle("Billing.Account", move |ctx: Context, req: NamespaceRequest| {
            let b = account.clone();
            async move {
                let ns = who(&ctx)?.namespace(req.namespace.as_deref(), false)?;
                b.account(&ns).await
            }
        })
        .handle("Billing.Invoices", move |ctx: Context, req: InvoicesRequest| {
            let b = invoices.clone();
            async move {
                let w = who(&ctx)?;
                let invoices = if req.all {
                    w.operator()?;
                    b.invoices(None).await?
                } else {
                    b.invoices(Some(&w.namespace(req.namespace.as_deref(), false)?)).await?
                };
                Ok::<_, Status>(InvoicesReply { invoices })
            }
        })
        .handle("Billing.Invoice", move |ctx: Context, req: InvoiceRequest| {
            let b = invoice.clone();
            async move {
                let w = who(&ctx)?;
                // Another namespace's invoice is as missing as one that does not exist.
                let state = match b.find(&req.id).await {
                    Ok(s) if w.caller.is_operator() || w.namespace(Some(&s.invoice.namespace), false).is_ok() => s,
                    Err(e) if w.caller.is_operator() => return Err(e),
                    _ => return Err(Status::new(Code::NotFound, NAME, format!("no invoice {}", req.id))),
                };
                let html = state.invoice.html();
                Ok::<_, Status>(InvoiceReply { state, html })
            }
        })
        .handle("Billing.Settings", move |ctx: Context, req: SettingsRequest| {
            let b = settings.clone();
            async move {
                let w = who(&ctx)?;
                let change = req.email.is_some() || req.country.is_some();
                let ns = w.namespace(req.namespace.as_deref(), change)?;
                b.update_settings(&ns, req).await
            }
        })
        .handle("Billing.Pay", move |ctx: Context, req: InvoiceRequest| {
            let b = pay.clone();
            async move {
                let w = who(&ctx)?;
                let state = b
                    .find(&req.id)
                    .await
                    .map_err(|_| Status::new(Code::NotFound, NAME, format!("no invoice {}", req.id)))?;
                w.namespace(Some(&state.invoice.namespace), true)
                    .map_err(|_| Status::new(Code::NotFound, NAME, format!("no invoice {}", req.id)))?;
                let (invoice, outcome) = b.collect(&state.invoice.id, now()).await?;
                Ok::<_, Status>(PayReply { invoice, outcome })
            }
        })
        .handle("Billing.SetupPayment", move |ctx: Context, req: SetupRequest| {
            let b = setup.clone();
            async move {
                let ns = who(&ctx)?.namespace(req.namespace.as_deref(), true)?;
                let url = req.return_url.trim();
                if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2000 {
                    return Err(bad("return_url: give the http(s):// page to come back to"));
                }
                b.setup_payment(&ns, url).await
            }
        })
        .handle("Billing.Close", move |ctx: Context, req: CloseRequest| {
            let b = close.clone();
            async move {
                who(&ctx)?.operator()?;
                let now = now();
                let period = match req.period {
                    Some(p) => p,
                    None => micro_core::time::month_span(micro_core::time::month_span(now).0.saturating_sub(1)).2,
                };
                let issued = b.close(&period, now).await?;
                Ok::<_, Status>(CloseReply { period, issued })
            }
        })
        .handle("Billing.Record", move |ctx: Context, req: RecordRequest| {
            let b = record.clone();
            async move {
                who(&ctx)?.operator()?;
                let run = ServiceRun { service: req.service.clone(), from: req.from, to: req.to };
                b.record_run(&req.namespace, &run).await?;
                Ok::<_, Status>(req)
            }
        })
        .handle("Billing.MarkPaid", move |ctx: Context, req: MarkPaidRequest| {
            let b = paid.clone();
            async move {
                who(&ctx)?.operator()?;
                let state = b.find(&req.id).await?;
                let amount = req.amount.unwrap_or(state.owed);
                b.apply_payment(&state.invoice.id, "manual", &req.reference, amount, now()).await
            }
        })
        .handle("Billing.CreditNote", move |ctx: Context, req: CreditNoteRequest| {
            let b = note.clone();
            async move {
                who(&ctx)?.operator()?;
                let state = b.find(&req.id).await?;
                b.credit_note(&state.invoice.id, req.amount, &req.reason, &req.reference, now()).await
            }
        })
        .handle("Billing.AddCredit", move |ctx: Context, req: CreditRequest| {
            let b = credit.clone();
            async move {
                who(&ctx)?.operator()?;
                let credit = b.top_up(&req.namespace, req.amount, &req.reference, now()).await?;
                Ok::<_, Status>(CreditReply { namespace: req.namespace, credit })
            }
        })
        .handle("Billing.Prices", move |ctx: Context, req: PricesRequest| {
            let b = prices.clone();
            async move {
                if let Some(book) = req.prices {
                    who(&ctx)?.operator()?;
                    b.set_prices(&book).await?;
                }
                b.prices().await
            }
        })
        .handle("Billing.Ledger", move |ctx: Context, req: NamespaceRequest| {
            let b = ledger.clone();
            async move {
                who(&ctx)?.operator()?;
                let transactions = b.ledger(req.namespace.as_deref()).await?;
                let balances = ledger::balances(&transactions);
                let balanced = transactions.iter().all(Tx::balanced) && balances.values().sum::<i64>() == 0;
                Ok::<_, Status>(LedgerReply { transactions, balances, balanced })
            }
        })
        .handle("Billing.Revenue", move |ctx: Context, _: NamespaceRequest| {
            let b = revenue.clone();
            async move {
                who(&ctx)?.operator()?;
                b.revenue().await
            }
        })
}
