//! Collecting: each open invoice is charged through the provider when it is issued; a
//! failed payment is tried again on a schedule (`retry_days` of the price book) with a
//! mail each time; once an invoice is `grace_days` past due, the namespace's services are
//! stopped (never deleted) and mailed about; when it is paid — by a retry, a webhook, an
//! operator marking a transfer, or credit — they run again.
//!
//! A charge attempt is numbered and its number kept *before* the provider is asked: a
//! node killed while asking asks again with the same number, so the same idempotency key,
//! and the provider charges once.

use crate::invoice::Invoice;
use crate::provider::{EventKind, Outcome};
use crate::{Billing, InvoiceState, NAME, bad, internal};
use micro_core::store::Query;
use micro_core::{Code, Status};
use serde::{Deserialize, Serialize};

/// Where an open invoice is in collection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Dunning {
    /// Attempts made (or under way).
    pub(crate) attempts: u32,
    /// The attempt asked of the provider and not yet answered.
    #[serde(default)]
    pub(crate) asking: Option<u32>,
    /// When the next attempt is due (clock seconds; 0: at once).
    #[serde(default)]
    pub(crate) next_at: u64,
    /// Whether the reminder that it is due was mailed.
    #[serde(default)]
    pub(crate) reminded: bool,
    /// The last failure, as the provider put it.
    #[serde(default)]
    pub(crate) failure: Option<String>,
    /// When the provider last said a payment was under way (a webhook will tell).
    #[serde(default)]
    pub(crate) pending_since: Option<u64>,
}

/// What the runtime is asked to do with a namespace's services.
#[async_trait::async_trait]
pub trait Suspender: Send + Sync + 'static {
    /// Stops (`on`) or brings back every service of `ns`.
    async fn suspend(&self, ns: &str, on: bool, reason: &str) -> Result<(), Status>;
}

/// Attempts at most, the one at issue included.
const MAX_ATTEMPTS: u32 = 4;

impl Billing {
    fn dun_key(id: &str) -> String {
        format!("dun/{id}")
    }

    /// Charges open invoice `id` now (an attempt of its own), unless one is under way.
    pub async fn collect(&self, id: &str, now: u64) -> Result<(InvoiceState, Option<Outcome>), Status> {
        self.licence.check(crate::FEATURE)?;
        let state = self.invoice(id).await?;
        if state.owed <= 0 {
            return Ok((state, None));
        }
        let mut d: Dunning = self.get(&Self::dun_key(id)).await?.unwrap_or_default();
        // A payment under way is not doubled by another attempt (for the day Stripe keeps
        // its idempotency keys; after that the charge is taken for lost).
        if d.pending_since.is_some_and(|t| now < t + 86_400) && d.asking.is_none() {
            return Err(Status::new(
                Code::FailedPrecondition,
                NAME,
                format!(
                    "a payment of invoice {} is under way: its result comes from the provider",
                    state.invoice.number
                ),
            ));
        }
        let attempt = match d.asking {
            Some(n) => n,
            None => {
                d.attempts += 1;
                d.asking = Some(d.attempts);
                self.put(&Self::dun_key(id), &d).await?;
                d.attempts
            }
        };
        let book = self.prices().await?;
        let (state, outcome) = match self.charge(id, attempt, now).await {
            Ok(answer) => answer,
            // Unreachable: the same attempt is asked again next round (the same key).
            Err(e) if e.code() == Code::Unavailable => return Err(e),
            // Refused for good (a bad address, an amount it takes not): a failed attempt,
            // so dunning goes on rather than asking the same forever.
            Err(e) => (state, Outcome::Failed { payment: None, reason: e.detail().to_string() }),
        };
        d.asking = None;
        d.pending_since = None;
        match &outcome {
            Outcome::Failed { reason, .. } => {
                let days = book.retry_days.get(attempt as usize - 1).copied();
                d.next_at = match days {
                    Some(days) if attempt < MAX_ATTEMPTS => now + u64::from(days) * 86_400,
                    _ => u64::MAX,
                };
                d.failure = Some(reason.clone());
                let next = (d.next_at != u64::MAX).then(|| micro_core::time::utc(d.next_at * 1000)[..10].to_string());
                let text = format!(
                    "The payment of invoice {} ({}) failed: {reason}.\n\n{}\nUpdate your payment method in the dashboard's billing page, or pay it there now.\n",
                    state.invoice.number,
                    crate::price::format(state.owed, &state.invoice.draft.currency),
                    match next {
                        Some(day) => format!("We will try again on {day}."),
                        None => "We will not try again by ourselves.".to_string(),
                    },
                );
                let subject = format!("Payment of invoice {} failed", state.invoice.number);
                self.mail_about(&state.invoice, &subject, &text, &format!("failed-{}-{attempt}", state.invoice.number))
                    .await;
            }
            Outcome::Pending { .. } => {
                d.next_at = u64::MAX;
                d.pending_since = Some(now);
            }
            Outcome::Succeeded { .. } => {}
        }
        self.put(&Self::dun_key(id), &d).await?;
        if state.owed <= 0 {
            self.settle(&state.invoice.namespace, now).await;
        }
        Ok((state, Some(outcome)))
    }

    /// Mails the billing address of an invoice's namespace (nothing when it has none).
    async fn mail_about(&self, inv: &Invoice, subject: &str, text: &str, key: &str) {
        let Some(mailer) = self.mailer.get().cloned() else { return };
        let to = match self.settings(&inv.namespace).await {
            Ok(s) if !s.email.is_empty() => s.email,
            _ if !inv.email.is_empty() => inv.email.clone(),
            _ => return,
        };
        let html = format!("<p>{}</p>", crate::invoice::esc(text).replace("\n\n", "</p><p>"));
        if let Err(e) = mailer.send(&to, subject, text, &html, key).await {
            tracing::warn!(invoice = %inv.number, error = %e, "mailing about an invoice failed");
        }
    }

    /// Goes through the open invoices: charges those due an attempt, reminds, stops the
    /// services of namespaces past their grace, brings back those that paid.
    pub async fn dun(&self, now: u64) {
        if self.licence.check(crate::FEATURE).is_err() {
            return;
        }
        let Ok(keys) = self.store.list(&self.table, "due/", &Query { prefix: true, ..Query::default() }).await else {
            return;
        };
        let book = match self.prices().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the price book failed");
                return;
            }
        };
        let charges = self.provider() != "manual";
        for key in keys {
            let Some(id) = key.strip_prefix("due/") else { continue };
            let state = match self.invoice(id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(invoice = id, error = %e, "reading an open invoice failed");
                    continue;
                }
            };
            let ns = state.invoice.namespace.clone();
            if state.owed <= 0 {
                let _ = self.store.delete(&self.table, &key).await;
                self.settle(&ns, now).await;
                continue;
            }
            let d: Dunning = self.get(&Self::dun_key(id)).await.ok().flatten().unwrap_or_default();
            let pending = d.pending_since.is_some_and(|t| now < t + 86_400);
            if charges && !pending && (d.asking.is_some() || (d.attempts < MAX_ATTEMPTS && now >= d.next_at)) {
                match self.collect(id, now).await {
                    Ok((paid, _)) if paid.owed <= 0 => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(invoice = %state.invoice.number, error = %e, "charging an invoice failed; tried again")
                    }
                }
            }
            // Whatever became of the charges, the due date and the grace hold.
            let d: Dunning = self.get(&Self::dun_key(id)).await.ok().flatten().unwrap_or_default();
            if now >= state.invoice.due && !d.reminded {
                let text = format!(
                    "Invoice {} ({}) was due on {}. Please pay it: services stop {} days after the due date.\n",
                    state.invoice.number,
                    crate::price::format(state.owed, &state.invoice.draft.currency),
                    &micro_core::time::utc(state.invoice.due * 1000)[..10],
                    book.grace_days
                );
                let subject = format!("Invoice {} is due", state.invoice.number);
                self.mail_about(&state.invoice, &subject, &text, &format!("due-{}", state.invoice.number)).await;
                let _ = self.put(&Self::dun_key(id), &Dunning { reminded: true, ..d }).await;
            }
            if now >= state.invoice.due + u64::from(book.grace_days) * 86_400 {
                self.stop(&ns, &state.invoice, now).await;
            }
        }
    }

    /// Stops the services of `ns` over unpaid invoice `inv` (once).
    async fn stop(&self, ns: &str, inv: &Invoice, now: u64) {
        let key = format!("ns/{ns}/stopped");
        if matches!(self.get::<String>(&key).await, Ok(Some(_))) {
            return;
        }
        let Some(runtime) = self.suspender.get().cloned() else { return };
        let reason = format!("invoice {} is unpaid", inv.number);
        // Kept first: a node killed in between stops them on the next round.
        if self.put(&key, &inv.id).await.is_err() {
            return;
        }
        if let Err(e) = runtime.suspend(ns, true, &reason).await {
            tracing::warn!(namespace = ns, error = %e, "stopping the services of an unpaid namespace failed");
            let _ = self.store.delete(&self.table, &key).await;
            return;
        }
        tracing::warn!(namespace = ns, invoice = %inv.number, at = now, "services stopped: unpaid invoice");
        let text = format!(
            "Invoice {} is still unpaid, so the services of namespace {ns} were stopped. Nothing was deleted: they run again as soon as it is paid.\n",
            inv.number
        );
        self.mail_about(
            inv,
            &format!("Services of {ns} stopped: invoice {} unpaid", inv.number),
            &text,
            &format!("stopped-{}", inv.number),
        )
        .await;
    }

    /// Brings back the services of `ns` if they were stopped and nothing is overdue now.
    pub(crate) async fn settle(&self, ns: &str, now: u64) {
        let key = format!("ns/{ns}/stopped");
        let Ok(Some(inv_id)) = self.get::<String>(&key).await else { return };
        let grace = self.prices().await.map(|b| u64::from(b.grace_days) * 86_400).unwrap_or(0);
        let Ok(open) = self.invoices(Some(ns)).await else { return };
        if open.iter().any(|i| i.owed > 0 && now >= i.invoice.due + grace) {
            return;
        }
        let Some(runtime) = self.suspender.get().cloned() else { return };
        if let Err(e) = runtime.suspend(ns, false, "").await {
            tracing::warn!(namespace = ns, error = %e, "bringing back the services of a namespace failed; tried again");
            return;
        }
        let _ = self.store.delete(&self.table, &key).await;
        tracing::info!(namespace = ns, "services back: paid");
        if let Ok(inv) = self.invoice(&inv_id).await {
            let text = format!("Invoice {} is paid: the services of {ns} run again. Thank you.\n", inv.invoice.number);
            self.mail_about(
                &inv.invoice,
                &format!("Services of {ns} running again"),
                &text,
                &format!("back-{}", inv.invoice.number),
            )
            .await;
        }
    }

    /// A provider's webhook: its signature verified, what it tells applied once.
    pub async fn webhook(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<(), Status> {
        let event = self
            .provider
            .webhook(headers, body, micro_core::licence::now())
            .map_err(|e| Status::new(Code::InvalidArgument, NAME, e.to_string()))?;
        if event.id.is_empty() || event.id.len() > 200 || event.id.contains('/') {
            return Err(bad("the event has no usable id"));
        }
        let seen = format!("seen/{}", event.id);
        if self.get::<u64>(&seen).await?.is_some() {
            return Ok(());
        }
        let now = micro_core::time::clock();
        match &event.kind {
            EventKind::PaymentSucceeded { payment, invoice, amount } => {
                match self.apply_payment(invoice, self.provider.name(), payment, *amount, now).await {
                    Ok(state) => {
                        let _ = self
                            .put(&Self::dun_key(invoice), &Dunning { next_at: u64::MAX, ..Dunning::default() })
                            .await;
                        self.settle(&state.invoice.namespace, now).await;
                    }
                    Err(e) if e.code() == Code::NotFound => {
                        tracing::warn!(invoice, payment, "a payment for an invoice we do not know: ignored");
                    }
                    Err(e) => return Err(e),
                }
            }
            EventKind::PaymentFailed { invoice, reason, .. } => {
                if let Ok(state) = self.invoice(invoice).await {
                    let mut d: Dunning = self.get(&Self::dun_key(invoice)).await?.unwrap_or_default();
                    d.failure = Some(reason.clone());
                    d.pending_since = None;
                    if d.next_at == u64::MAX {
                        d.next_at = now + 3 * 86_400;
                    }
                    self.put(&Self::dun_key(invoice), &d).await?;
                    let text = format!("The payment of invoice {} failed: {reason}.\n", state.invoice.number);
                    let subject = format!("Payment of invoice {} failed", state.invoice.number);
                    self.mail_about(&state.invoice, &subject, &text, &format!("failed-{}", event.id)).await;
                }
            }
            EventKind::PaymentMethodSet { customer, .. } => {
                if let Some(ns) = self.get::<String>(&format!("customer/{customer}")).await? {
                    let mut s = self.settings(&ns).await?;
                    s.payment_method = true;
                    self.set_settings(&ns, &s).await?;
                    // Its open invoices are tried again at once.
                    for inv in self.invoices(Some(&ns)).await? {
                        if inv.owed > 0 {
                            let mut d: Dunning = self.get(&Self::dun_key(&inv.invoice.id)).await?.unwrap_or_default();
                            if d.pending_since.is_none() {
                                d.next_at = 0;
                                d.attempts = d.attempts.min(MAX_ATTEMPTS - 1);
                            }
                            self.put(&Self::dun_key(&inv.invoice.id), &d).await?;
                        }
                    }
                }
            }
            EventKind::Other { .. } => {}
        }
        self.put(&seen, &now).await.map_err(|e| internal(e.detail()))
    }
}
