//! Billing, a product of the platform: usage to money, correctly.
//!
//! - **Meters.** Service-hours come from the runtime, which records each run of a service
//!   (created or brought back → deleted or stopped) as one record keyed by its service and
//!   start ([`micro_core::meter`]); requests per service from the gateway's meter (the
//!   `usage` service); storage and build time from the same. A run recorded twice is the
//!   same record, and runs of one service that overlap count once.
//! - **Pricing.** One price book ([`price::PriceBook`]): Community free within its
//!   quotas, $20 per service per month prorated by the second, base prices of Personal
//!   and Team, optional request overage, tax per customer country. Money is integers in
//!   minor units.
//! - **Invoices.** At the end of each calendar month (UTC) every paying namespace gets an
//!   invoice ([`invoice::draft`]), numbered without gaps, immutable once issued, mailed
//!   through the email product, and charged through the payment provider.
//! - **Ledger.** Double entry ([`ledger`]): each transaction is one balanced record under
//!   an id derived from what it records, so replays and crashes neither lose nor double.
//!
//! Invoices are issued under a lock of the shared sync (one node at a time in a cluster),
//! and the number is claimed in one record that holds the whole invoice before anything
//! else is written: a node killed at any point leaves either nothing or a claim that the
//! next run finishes, so no number is skipped or used twice and no invoice is issued twice.
//!
//! Times are [`micro_core::time::clock`] seconds: `MICRO_CLOCK_FILE` lets a test move
//! through a month in seconds.

pub mod credit_note;
mod dunning;
pub mod invoice;
pub mod ledger;
mod pdf;
pub mod price;
pub mod provider;
pub mod service;
pub mod stripe;

pub use dunning::Suspender;
pub use service::service_with;

use invoice::{Draft, Inputs, Invoice};
use ledger::Tx;
use micro_core::meter::ServiceRun;
use micro_core::store::{Query, Record, Store, Table};
use micro_core::{Code, Status};
use price::PriceBook;
use provider::{Charge, Outcome, PaymentProvider};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The product's name: its table, its service, and the first segment of its paths.
pub const NAME: &str = "billing";

/// Where the product keeps namespace `ns`'s settings (which go with the namespace).
/// Invoices and the ledger are kept when a namespace is deleted: they are the books.
pub fn tenant_prefix(ns: &str) -> String {
    format!("ns/{ns}/")
}

/// How long after a period ends its invoices are issued (the meters' last records
/// arrive within it).
pub const SETTLE: u64 = 300;
/// The most one payment, credit or credit note may be (minor units): $10 billion, far
/// within the sums' range.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// The licence feature that issuing invoices and taking payments need.
pub const FEATURE: &str = "billing";
/// How long the lock of an issuing run lasts without a refresh.
const LOCK_TTL: Duration = Duration::from_secs(6);
/// The lock every issuing run and every payment takes.
const LOCK: &str = "billing";

fn bad(detail: impl Into<String>) -> Status {
    Status::new(Code::InvalidArgument, NAME, detail)
}

fn internal(detail: impl std::fmt::Display) -> Status {
    Status::internal(NAME, detail.to_string())
}

/// A namespace's billing settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Settings {
    /// Where invoices are mailed.
    #[serde(default)]
    pub email: String,
    /// The customer's country (ISO 3166 alpha-2): its tax rate applies.
    #[serde(default)]
    pub country: String,
    /// The payment provider's customer, once made.
    #[serde(default)]
    pub customer: String,
    /// Whether the customer gave a payment method.
    #[serde(default)]
    pub payment_method: bool,
}

/// The next invoice number, and an invoice claimed under it but not yet fully written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Seq {
    next: u64,
    #[serde(default)]
    pending: Option<Invoice>,
}

/// What a namespace used in a period, as metered so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// The namespace.
    pub namespace: String,
    /// The period, `YYYY-MM`.
    pub period: String,
    /// Seconds each service ran in it (up to now).
    pub services: BTreeMap<String, u64>,
    /// Requests to each of its services in it (none: the server meters no requests).
    #[serde(default)]
    pub requests: Option<BTreeMap<String, u64>>,
    /// What it keeps in the store and blobs now, in bytes.
    #[serde(default)]
    pub storage_bytes: Option<u64>,
    /// The time its builds took this month, in seconds.
    #[serde(default)]
    pub build_seconds: Option<u64>,
}

/// What billing reads the meters of requests, storage and build time through (the
/// `usage` service, as an operator).
#[async_trait::async_trait]
pub trait Meters: Send + Sync + 'static {
    /// Requests to each service of `ns` in `[start, end)`; none when nothing is metered.
    async fn requests(&self, ns: &str, start: u64, end: u64) -> Option<BTreeMap<String, u64>>;
    /// `(storage bytes now, build seconds this month)` of `ns`.
    async fn month(&self, ns: &str) -> (Option<u64>, Option<u64>);
}

/// No meters (a server that meters no requests).
pub struct NoMeters;

#[async_trait::async_trait]
impl Meters for NoMeters {
    async fn requests(&self, _ns: &str, _start: u64, _end: u64) -> Option<BTreeMap<String, u64>> {
        None
    }
    async fn month(&self, _ns: &str) -> (Option<u64>, Option<u64>) {
        (None, None)
    }
}

/// The billing product.
pub struct Billing {
    store: Arc<dyn Store>,
    table: Table,
    runs: Arc<dyn Store>,
    sync: Arc<dyn micro_core::sync::Sync>,
    provider: Arc<dyn PaymentProvider>,
    meters: std::sync::OnceLock<Arc<dyn Meters>>,
    /// Sends mail (set when the service starts): `(to, subject, text, html, key)`.
    mailer: std::sync::OnceLock<Arc<dyn Mailer>>,
    /// What the licence allows: issuing invoices and taking payments need `billing`.
    licence: micro_core::licence::Gate,
    /// Stops and brings back a namespace's services (set when the service starts).
    suspender: std::sync::OnceLock<Arc<dyn Suspender>>,
}

/// What billing mails through (the email product).
#[async_trait::async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Mails `to`; `key` makes a repeat send nothing.
    async fn send(&self, to: &str, subject: &str, text: &str, html: &str, key: &str) -> Result<(), Status>;
}

/// An invoice with what it still owes.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceState {
    /// The invoice.
    #[serde(flatten)]
    pub invoice: Invoice,
    /// What remains to pay (minor units).
    pub owed: i64,
    /// `open` or `paid`.
    pub status: String,
    /// The credit notes correcting it.
    #[serde(default)]
    pub credit_notes: Vec<credit_note::CreditNote>,
}

impl Billing {
    /// Billing over the server's `store` (its table `micro/billing`, and the platform's
    /// plans), the runtime's database `runs` (service-hours), the shared `sync` (its
    /// lock) and a payment `provider`; issuing invoices and taking payments are the paid
    /// feature `billing` of `licence`.
    pub fn new(
        store: Arc<dyn Store>,
        runs: Arc<dyn Store>,
        sync: Arc<dyn micro_core::sync::Sync>,
        provider: Arc<dyn PaymentProvider>,
        licence: micro_core::licence::Gate,
    ) -> Billing {
        Billing {
            store,
            table: Table::new(micro_core::namespace::DEFAULT, NAME),
            runs,
            sync,
            provider,
            meters: std::sync::OnceLock::new(),
            mailer: std::sync::OnceLock::new(),
            licence,
            suspender: std::sync::OnceLock::new(),
        }
    }

    /// The payment provider's name.
    pub fn provider(&self) -> &'static str {
        self.provider.name()
    }

    fn meters(&self) -> Arc<dyn Meters> {
        self.meters.get().cloned().unwrap_or_else(|| Arc::new(NoMeters))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Status> {
        match self.store.read(&self.table, key, &Query::default()).await {
            Ok(r) => match r.first() {
                Some(r) => serde_json::from_slice(&r.value).map(Some).map_err(internal),
                None => Ok(None),
            },
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put<T: Serialize>(&self, key: &str, v: &T) -> Result<(), Status> {
        let value = serde_json::to_vec(v).map_err(internal)?;
        self.store.write(&self.table, &Record::new(key, value), None).await
    }

    async fn all<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, Status> {
        let records = self.store.read(&self.table, prefix, &Query { prefix: true, ..Query::default() }).await?;
        records.iter().map(|r| serde_json::from_slice(&r.value).map_err(internal)).collect()
    }

    /// The price book.
    pub async fn prices(&self) -> Result<PriceBook, Status> {
        Ok(self.get("_prices").await?.unwrap_or_default())
    }

    /// Replaces the price book (it holds from the next invoice on).
    pub async fn set_prices(&self, book: &PriceBook) -> Result<(), Status> {
        book.check().map_err(bad)?;
        self.put("_prices", book).await
    }

    /// A namespace's billing settings.
    pub async fn settings(&self, ns: &str) -> Result<Settings, Status> {
        Ok(self.get(&format!("ns/{ns}/settings")).await?.unwrap_or_default())
    }

    /// Saves a namespace's billing settings.
    pub async fn set_settings(&self, ns: &str, s: &Settings) -> Result<(), Status> {
        self.put(&format!("ns/{ns}/settings"), s).await
    }

    /// A namespace's plan, as the platform keeps it (Community when it has none).
    pub async fn plan_of(&self, ns: &str) -> Result<String, Status> {
        let table = Table::new(micro_core::namespace::DEFAULT, "platform");
        match self.store.read(&table, &format!("{ns}/plan"), &Query::default()).await {
            Ok(r) => {
                Ok(r.first().and_then(|r| serde_json::from_slice(&r.value).ok()).unwrap_or_else(|| "community".into()))
            }
            Err(e) if e.code() == Code::NotFound => Ok("community".into()),
            Err(e) => Err(e),
        }
    }

    /// The plan namespace `ns` is billed on for `[start, end)`: the dearest of those it
    /// held in it (the one in force at its start, and each it was put on during it), so
    /// that a plan dropped just before the bill saves nothing.
    pub async fn plan_for(&self, ns: &str, start: u64, end: u64, book: &PriceBook) -> Result<String, Status> {
        let table = Table::new(micro_core::namespace::DEFAULT, "platform");
        let prefix = micro_platform::plans::plan_history_prefix(ns);
        let records = self.store.read(&table, &prefix, &Query { prefix: true, ..Query::default() }).await?;
        let mut held: Vec<String> = Vec::new();
        let mut before: Option<String> = None;
        for r in &records {
            let (Some(at), Ok(plan)) = (
                r.key.strip_prefix(&prefix).and_then(|t| t.parse::<u64>().ok()),
                serde_json::from_slice::<String>(&r.value),
            ) else {
                continue;
            };
            if at < start {
                before = Some(plan);
            } else if at < end {
                held.push(plan);
            }
        }
        match before {
            Some(p) => held.push(p),
            // Nothing before the period: community then (or, with no history at all, the
            // plan it is on now).
            None if records.is_empty() => held.push(self.plan_of(ns).await?),
            None => held.push("community".into()),
        }
        let dearness = |p: &String| {
            let price = book.plan(p);
            (price.per_service.max(0), price.base.max(0))
        };
        Ok(held.into_iter().max_by_key(dearness).unwrap_or_else(|| "community".into()))
    }

    /// Every run of namespace `ns`'s services.
    pub async fn runs(&self, ns: &str) -> Result<Vec<ServiceRun>, Status> {
        let prefix = micro_core::meter::runs_prefix(ns, None);
        let records = self
            .runs
            .read(&micro_core::meter::runs_table(), &prefix, &Query { prefix: true, ..Query::default() })
            .await?;
        Ok(records.iter().filter_map(|r| serde_json::from_slice(&r.value).ok()).collect())
    }

    /// Records a run of a service kept elsewhere (another runtime, a migration): the
    /// same run given again is the same record.
    pub async fn record_run(&self, ns: &str, run: &ServiceRun) -> Result<(), Status> {
        micro_core::namespace::validate(ns)?;
        if run.service.is_empty() || run.service.contains('/') || run.service.len() > 200 {
            return Err(bad("give the service's name (no /, at most 200 bytes)"));
        }
        if run.to.is_some_and(|to| to < run.from) {
            return Err(bad("a run cannot end before it starts"));
        }
        let value = serde_json::to_vec(run).map_err(internal)?;
        let key = micro_core::meter::run_key(ns, &run.service, run.from);
        self.runs.write(&micro_core::meter::runs_table(), &Record::new(key, value), None).await
    }

    /// What namespace `ns` used in the period holding `at`, up to `now`.
    pub async fn usage(&self, ns: &str, at: u64, now: u64) -> Result<Usage, Status> {
        let (start, end, period) = micro_core::time::month_span(at);
        let services = invoice::service_seconds(&self.runs(ns).await?, start, end, now);
        let meters = self.meters();
        let requests = meters.requests(ns, start, end.min(now.max(start))).await;
        let (storage_bytes, build_seconds) = meters.month(ns).await;
        Ok(Usage { namespace: ns.into(), period, services, requests, storage_bytes, build_seconds })
    }

    /// The credit namespace `ns` holds (minor units).
    pub async fn credit(&self, ns: &str) -> Result<i64, Status> {
        let txs: Vec<Tx> = self.all(&format!("tx/{ns}/")).await?;
        Ok(-ledger::balances(&txs).get(&ledger::credit(ns)).copied().unwrap_or(0))
    }

    async fn draft_for(&self, ns: &str, start: u64, end: u64, now: u64) -> Result<(Draft, Settings, u64), Status> {
        let book = self.prices().await?;
        let plan = self.plan_for(ns, start, end.min(now.max(start + 1)), &book).await?;
        let settings = self.settings(ns).await?;
        let seconds = invoice::service_seconds(&self.runs(ns).await?, start, end, now);
        let requests: u64 = self.meters().requests(ns, start, end.min(now)).await.map_or(0, |r| r.values().sum());
        let credit = self.credit(ns).await?;
        let d = invoice::draft(&Inputs {
            book: &book,
            plan: &plan,
            country: &settings.country,
            start,
            end,
            seconds: &seconds,
            requests,
            credit,
        });
        Ok((d, settings, requests))
    }

    /// The invoice namespace `ns` would get for the current period: what it used so far
    /// (`to_date`) and, were nothing to change, at the period's end (`projected`).
    pub async fn preview(&self, ns: &str, now: u64) -> Result<(String, Draft, Draft), Status> {
        let (start, end, period) = micro_core::time::month_span(now);
        let (to_date, _, _) = self.draft_for(ns, start, end, now).await?;
        let (projected, _, _) = self.draft_for(ns, start, end, end).await?;
        Ok((period, to_date, projected))
    }

    /// Every namespace that may owe something: those with runs or a paid plan.
    async fn billable(&self) -> Result<BTreeSet<String>, Status> {
        let mut out = BTreeSet::new();
        let keys = self.runs.list(&micro_core::meter::runs_table(), "", &Query::default()).await?;
        out.extend(keys.iter().filter_map(|k| k.split('/').next()).map(str::to_string));
        let platform = Table::new(micro_core::namespace::DEFAULT, "platform");
        let plans = self.store.list(&platform, "/plan", &Query { suffix: true, ..Query::default() }).await?;
        out.extend(plans.iter().filter_map(|k| k.strip_suffix("/plan")).map(str::to_string));
        Ok(out)
    }

    /// Billing's lock, waiting a little for it: a node killed while holding it holds it
    /// until its TTL runs out, and callers are told to try again meanwhile.
    async fn lock(&self) -> Result<micro_core::sync::Lock, Status> {
        match self.sync.lock(micro_core::namespace::DEFAULT, LOCK, LOCK_TTL, Duration::from_secs(3)).await {
            Err(e) if e.code() == Code::DeadlineExceeded => Err(Status::new(
                Code::Unavailable,
                NAME,
                "billing is busy issuing invoices or applying a payment (or a node died doing so): try again in a few seconds",
            )),
            other => other,
        }
    }

    /// Keeps `lock` held (refreshed every third of its TTL) until the task is aborted or
    /// the lock is lost.
    fn heartbeat(&self, lock: &micro_core::sync::Lock) -> tokio::task::JoinHandle<()> {
        let (sync, lock) = (self.sync.clone(), lock.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_TTL / 3).await;
                if sync.refresh(micro_core::namespace::DEFAULT, &lock).await.is_err() {
                    return;
                }
            }
        })
    }

    async fn unlock(&self, lock: &micro_core::sync::Lock) {
        if let Err(e) = self.sync.unlock(micro_core::namespace::DEFAULT, lock).await {
            tracing::warn!(error = %e, "billing's lock was lost before its run ended");
        }
    }

    /// Issues every invoice of `period` (`YYYY-MM`, ended at least [`SETTLE`] seconds
    /// before `now`) not yet issued. Safe to run on every node at once, and again.
    pub async fn close(&self, period: &str, now: u64) -> Result<Vec<Invoice>, Status> {
        let (start, end) =
            micro_core::time::parse_month(period).ok_or_else(|| bad(format!("period {period:?}: give YYYY-MM")))?;
        self.licence.check(FEATURE)?;
        if now < end + SETTLE {
            return Err(Status::new(
                Code::FailedPrecondition,
                NAME,
                format!("period {period} is not over yet (its invoices are issued {SETTLE} s after it ends)"),
            ));
        }
        let lock = self.lock().await?;
        let beat = self.heartbeat(&lock);
        let result = self.close_locked(period, start, end, now, &lock).await;
        beat.abort();
        self.unlock(&lock).await;
        let issued = result?;
        self.send_mail().await;
        Ok(issued)
    }

    async fn close_locked(
        &self,
        period: &str,
        start: u64,
        end: u64,
        now: u64,
        lock: &micro_core::sync::Lock,
    ) -> Result<Vec<Invoice>, Status> {
        self.finish_pending().await?;
        if self.get::<u64>(&format!("closed/{period}")).await?.is_some() {
            return Ok(Vec::new());
        }
        let book = self.prices().await?;
        let mut issued = Vec::new();
        let mut failed = 0;
        for ns in self.billable().await? {
            match self.issue(period, start, end, now, &ns, &book, lock).await {
                Ok(Some(inv)) => issued.push(inv),
                Ok(None) => {}
                // The lock is gone: another node goes on; this one stops here.
                Err(e) if e.code() == Code::Aborted => return Err(e),
                Err(e) => {
                    // One namespace's trouble holds up no other's invoice: it is tried
                    // again on the next round, and the period stays open until it passes.
                    failed += 1;
                    tracing::error!(namespace = %ns, period, error = %e, "issuing an invoice failed");
                }
            }
        }
        if failed == 0 {
            self.put(&format!("closed/{period}"), &now).await?;
        }
        Ok(issued)
    }

    /// Issues namespace `ns`'s invoice of `period` unless it has one or owes nothing.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        period: &str,
        start: u64,
        end: u64,
        now: u64,
        ns: &str,
        book: &PriceBook,
        lock: &micro_core::sync::Lock,
    ) -> Result<Option<Invoice>, Status> {
        let id = Invoice::id_of(period, ns);
        if self.get::<Invoice>(&format!("inv/{id}")).await?.is_some() {
            return Ok(None);
        }
        let (draft, settings, requests) = self.draft_for(ns, start, end, end).await?;
        if draft.total <= 0 {
            return Ok(None);
        }
        // Still ours, and still not issued (by a node that held the lock while this one
        // drafted): only then is a number claimed.
        self.sync
            .refresh(micro_core::namespace::DEFAULT, lock)
            .await
            .map_err(|e| Status::new(Code::Aborted, NAME, format!("billing's lock was lost: {}", e.detail())))?;
        if self.get::<Invoice>(&format!("inv/{id}")).await?.is_some() {
            return Ok(None);
        }
        self.finish_pending().await?;
        let mut seq: Seq = self.get("_seq").await?.unwrap_or_default();
        let n = seq.next.max(1);
        let inv = Invoice {
            id,
            number: format!("INV-{n:06}"),
            seq: n,
            namespace: ns.to_string(),
            period: period.to_string(),
            start,
            end,
            issued: now,
            due: now + u64::from(book.terms_days) * 86_400,
            email: settings.email.clone(),
            country: settings.country.to_ascii_uppercase(),
            requests,
            draft,
        };
        // The claim: the number and the whole invoice, in one record.
        seq.next = n;
        seq.pending = Some(inv.clone());
        self.put("_seq", &seq).await?;
        self.finish_pending().await?;
        tracing::info!(invoice = %inv.number, namespace = %ns, total = inv.draft.total, "invoice issued");
        Ok(Some(inv))
    }

    /// Writes what a claimed invoice needs (each write the same when repeated), then
    /// frees its number's successor.
    async fn finish_pending(&self) -> Result<(), Status> {
        let Some(seq) = self.get::<Seq>("_seq").await? else { return Ok(()) };
        let Some(inv) = seq.pending else { return Ok(()) };
        self.put(&format!("inv/{}", inv.id), &inv).await?;
        self.put(&format!("num/{:012}", inv.seq), &inv.id).await?;
        self.put(&format!("nsinv/{}/{:012}", inv.namespace, inv.seq), &inv.id).await?;
        let tx = ledger::invoice_tx(&inv);
        self.put(&tx.key(), &tx).await?;
        self.put(&format!("outbox/{}", inv.id), &inv.id).await?;
        self.put(&format!("due/{}", inv.id), &inv.id).await?;
        self.put("_seq", &Seq { next: inv.seq + 1, pending: None }).await
    }

    /// Mails the invoices issued but not yet mailed (the email product remembers each
    /// mail's key, so one mailed twice after a crash is sent once).
    pub async fn send_mail(&self) {
        let Some(mailer) = self.mailer.get().cloned() else { return };
        let Ok(keys) = self.store.list(&self.table, "outbox/", &Query { prefix: true, ..Query::default() }).await
        else {
            return;
        };
        for key in keys {
            let Some(id) = key.strip_prefix("outbox/") else { continue };
            let Ok(Some(inv)) = self.get::<Invoice>(&format!("inv/{id}")).await else { continue };
            if !inv.email.is_empty() {
                let subject = format!("Invoice {} for {} ({})", inv.number, inv.namespace, inv.period);
                if let Err(e) = mailer
                    .send(&inv.email, &subject, &inv.text(), &inv.html(), &format!("invoice-{}", inv.number))
                    .await
                {
                    tracing::warn!(invoice = %inv.number, error = %e, "mailing an invoice failed; it is tried again");
                    continue;
                }
            }
            // Another node may have mailed it at the same time (the key sent it once).
            match self.store.delete(&self.table, &key).await {
                Err(e) if e.code() != Code::NotFound => {
                    tracing::warn!(invoice = %inv.number, error = %e, "clearing a mailed invoice failed");
                }
                _ => {}
            }
        }
    }

    /// An invoice with what it still owes.
    pub async fn invoice(&self, id: &str) -> Result<InvoiceState, Status> {
        let inv: Invoice = self
            .get(&format!("inv/{id}"))
            .await?
            .ok_or_else(|| Status::new(Code::NotFound, NAME, format!("no invoice {id}")))?;
        let txs: Vec<Tx> = self.all(&format!("tx/{}/{}/", inv.namespace, inv.id)).await?;
        let owed = ledger::owed(&inv.namespace, &txs);
        let credit_notes = self.credit_notes(&inv.id).await?;
        Ok(InvoiceState { status: if owed <= 0 { "paid" } else { "open" }.into(), invoice: inv, owed, credit_notes })
    }

    /// The invoices of namespace `ns` (every namespace's with none), newest first.
    pub async fn invoices(&self, ns: Option<&str>) -> Result<Vec<InvoiceState>, Status> {
        let ids: Vec<String> = match ns {
            Some(ns) => self.all(&format!("nsinv/{ns}/")).await?,
            None => self.all("num/").await?,
        };
        let mut out = Vec::new();
        for id in ids.iter().rev() {
            out.push(self.invoice(id).await?);
        }
        Ok(out)
    }

    /// Whether billing keeps books (invoices, transactions) or service-hours of namespace
    /// `ns`: a namespace of that name, once deleted, is not made again.
    pub async fn holds_namespace(&self, ns: &str) -> Result<bool, Status> {
        let one = Query { prefix: true, limit: 1, ..Query::default() };
        Ok(!self.store.list(&self.table, &format!("tx/{ns}/"), &one).await?.is_empty()
            || !self
                .runs
                .list(&micro_core::meter::runs_table(), &micro_core::meter::runs_prefix(ns, None), &one)
                .await?
                .is_empty())
    }

    /// Every transaction of namespace `ns` (every namespace's with none).
    pub async fn ledger(&self, ns: Option<&str>) -> Result<Vec<Tx>, Status> {
        self.all(&match ns {
            Some(ns) => format!("tx/{ns}/"),
            None => "tx/".into(),
        })
        .await
    }

    /// Applies a payment of `amount` through `provider` (its id `payment`) to invoice `id`:
    /// once, however often it is told.
    pub async fn apply_payment(
        &self,
        id: &str,
        provider: &str,
        payment: &str,
        amount: i64,
        now: u64,
    ) -> Result<InvoiceState, Status> {
        if payment.is_empty() || payment.len() > 200 || payment.contains('/') {
            return Err(bad("give the payment's reference (no /, at most 200 bytes)"));
        }
        let lock = self.lock().await?;
        let result = async {
            let state = self.invoice(id).await?;
            let ns = state.invoice.namespace.clone();
            let tx_id = format!("payment-{provider}-{payment}");
            // A payment told again is the one applied before, whatever it says now.
            if self.get::<Tx>(&ledger::key(&ns, Some(id), &tx_id)).await?.is_none() {
                if amount > MAX_AMOUNT {
                    return Err(bad(format!("a payment is at most {MAX_AMOUNT} minor units")));
                }
                if amount <= 0 {
                    return Err(bad(if state.owed <= 0 {
                        "the invoice is paid: nothing to apply".to_string()
                    } else {
                        "a payment's amount must be positive (minor units)".to_string()
                    }));
                }
                let tx = ledger::payment_tx(&ns, id, provider, payment, amount, state.owed, now);
                self.put(&tx.key(), &tx).await?;
                tracing::info!(invoice = %state.invoice.number, payment, amount, "payment applied");
            }
            let state = self.invoice(id).await?;
            if state.owed <= 0 {
                let _ = self.store.delete(&self.table, &format!("due/{id}")).await;
            }
            Ok(state)
        }
        .await;
        self.unlock(&lock).await;
        let state = result?;
        // Paid: services stopped over it run again (whoever told us: a webhook, a
        // transfer marked paid, a charge).
        if state.owed <= 0 {
            self.settle(&state.invoice.namespace, now).await;
        }
        Ok(state)
    }

    /// Adds prepaid credit to namespace `ns` (a bank transfer, a voucher; `reference`
    /// names it: the same reference given again adds nothing).
    pub async fn top_up(&self, ns: &str, amount: i64, reference: &str, now: u64) -> Result<i64, Status> {
        micro_core::namespace::validate(ns)?;
        if amount <= 0 || amount > MAX_AMOUNT {
            return Err(bad(format!("credit must be positive (minor units), at most {MAX_AMOUNT}")));
        }
        if reference.is_empty() || reference.len() > 200 || reference.contains('/') {
            return Err(bad("give the credit's reference (no /, at most 200 bytes)"));
        }
        let tx = Tx {
            id: format!("topup-{reference}"),
            at: now,
            kind: ledger::Kind::TopUp,
            namespace: ns.into(),
            invoice: None,
            memo: format!("prepaid credit {reference}"),
            legs: vec![
                ledger::Leg { account: ledger::cash("manual"), amount },
                ledger::Leg { account: ledger::credit(ns), amount: -amount },
            ],
        };
        if self.get::<Tx>(&tx.key()).await?.is_none() {
            self.put(&tx.key(), &tx).await?;
        }
        self.credit(ns).await
    }

    /// Where namespace `ns`'s people give a payment method (the provider's page), coming
    /// back to `return_url`.
    pub async fn setup_payment(&self, ns: &str, return_url: &str) -> Result<provider::Setup, Status> {
        self.licence.check(FEATURE)?;
        let mut settings = self.settings(ns).await?;
        if settings.customer.is_empty() {
            settings.customer = self.provider.customer(ns, &settings.email).await.map_err(provider_status)?;
            self.put(&format!("customer/{}", settings.customer), &ns).await?;
            self.set_settings(ns, &settings).await?;
        }
        self.provider.setup(&settings.customer, return_url).await.map_err(provider_status)
    }

    /// Charges an open invoice through the payment provider (attempt `attempt`).
    pub(crate) async fn charge(&self, id: &str, attempt: u32, now: u64) -> Result<(InvoiceState, Outcome), Status> {
        self.licence.check(FEATURE)?;
        let state = self.invoice(id).await?;
        if state.owed <= 0 {
            return Ok((state, Outcome::Succeeded { payment: String::new() }));
        }
        let ns = state.invoice.namespace.clone();
        let mut settings = self.settings(&ns).await?;
        if settings.customer.is_empty() {
            settings.customer = self.provider.customer(&ns, &settings.email).await.map_err(provider_status)?;
            self.put(&format!("customer/{}", settings.customer), &ns).await?;
            self.set_settings(&ns, &settings).await?;
        }
        let charge = Charge {
            invoice: id.to_string(),
            number: state.invoice.number.clone(),
            customer: settings.customer.clone(),
            amount: state.owed,
            currency: state.invoice.draft.currency.clone(),
            attempt,
        };
        let outcome = self.provider.charge(&charge).await.map_err(provider_status)?;
        let state = match &outcome {
            Outcome::Succeeded { payment } => {
                self.apply_payment(id, self.provider.name(), payment, state.owed, now).await?
            }
            _ => state,
        };
        Ok((state, outcome))
    }
}

fn provider_status(e: provider::ProviderError) -> Status {
    match e {
        provider::ProviderError::Unavailable(_) => Status::new(Code::Unavailable, NAME, e.to_string()),
        _ => Status::new(Code::FailedPrecondition, NAME, e.to_string()),
    }
}
