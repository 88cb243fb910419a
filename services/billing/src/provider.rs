//! Payment providers: what takes a customer's money. Billing issues invoices and keeps the
//! ledger; a provider only charges, and tells (by answer or by a signed webhook) what
//! became of a charge. Two are built in: [`Manual`] (prepaid credit and bank transfers an
//! operator marks paid, for self-hosted platforms) and Stripe ([`crate::stripe`]).
//!
//! Every write a provider makes carries an idempotency key derived from what it is for
//! (the invoice and the attempt), so a retry after a crash never charges twice.

use serde::{Deserialize, Serialize};

/// Why a provider could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or answered in a way we do not understand; the
    /// same request may be retried (with the same idempotency key).
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the request itself (a bad key, an unknown customer).
    #[error("the payment provider refused the request: {0}")]
    Refused(String),
    /// A webhook whose signature does not hold (or is too old): it is ignored.
    #[error("the webhook's signature does not hold: {0}")]
    Signature(String),
    /// A webhook that cannot be read.
    #[error("the webhook cannot be read: {0}")]
    Malformed(String),
}

/// A charge of one invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// The invoice's id (it is in the charge's metadata, so webhooks name it).
    pub invoice: String,
    /// The invoice's number, for the customer's statement.
    pub number: String,
    /// The provider's customer.
    pub customer: String,
    /// What to take, in minor units of `currency`.
    pub amount: i64,
    /// ISO 4217, lower case (`usd`).
    pub currency: String,
    /// Which attempt this is (1, 2, …): with the invoice, the idempotency key.
    pub attempt: u32,
}

impl Charge {
    /// The idempotency key of this attempt: the same attempt retried is the same charge.
    pub fn idempotency_key(&self) -> String {
        format!("charge-{}-{}", self.invoice, self.attempt)
    }
}

/// What became of a charge, as far as the provider knows at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Taken: the money is ours.
    Succeeded {
        /// The provider's id of the payment.
        payment: String,
    },
    /// Under way: a webhook (or an operator) will tell.
    Pending {
        /// The provider's id of the payment, if it made one.
        payment: Option<String>,
    },
    /// Refused (declined card, no payment method).
    Failed {
        /// The provider's id of the payment, if it made one.
        payment: Option<String>,
        /// Why, as the provider puts it.
        reason: String,
    },
}

/// Where a customer goes to give a payment method.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Setup {
    /// The page to send the customer to.
    pub url: String,
    /// The provider's id of the setup session.
    pub id: String,
}

/// What a verified webhook tells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The provider's id of the event: an event seen before is not applied again.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
}

/// What happened, as a webhook tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A payment of an invoice succeeded.
    PaymentSucceeded {
        /// The provider's id of the payment.
        payment: String,
        /// Our invoice's id (from the payment's metadata).
        invoice: String,
        /// What was taken, in minor units.
        amount: i64,
    },
    /// A payment of an invoice failed.
    PaymentFailed {
        /// The provider's id of the payment.
        payment: String,
        /// Our invoice's id (from the payment's metadata).
        invoice: String,
        /// Why.
        reason: String,
    },
    /// A customer gave a payment method (a setup finished).
    PaymentMethodSet {
        /// The provider's customer.
        customer: String,
        /// The payment method's id.
        method: String,
    },
    /// Anything else: acknowledged and ignored.
    Other {
        /// The provider's name of the event type.
        kind: String,
    },
}

/// A payment provider.
#[async_trait::async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    /// Its name (`manual`, `stripe`): payment ids and ledger accounts carry it.
    fn name(&self) -> &'static str;

    /// The provider's customer for namespace `namespace`, made when it has none yet
    /// (idempotent: the same namespace gets the same customer).
    async fn customer(&self, namespace: &str, email: &str) -> Result<String, ProviderError>;

    /// Where `customer` gives a payment method, coming back to `return_url`.
    async fn setup(&self, customer: &str, return_url: &str) -> Result<Setup, ProviderError>;

    /// Charges an invoice (with [`Charge::idempotency_key`]).
    async fn charge(&self, charge: &Charge) -> Result<Outcome, ProviderError>;

    /// Verifies a webhook's signature (`headers`, the raw `body`, at `now` in Unix
    /// seconds) and reads what it tells.
    fn webhook(&self, headers: &http::HeaderMap, body: &[u8], now: u64) -> Result<WebhookEvent, ProviderError>;
}

/// The built-in provider of self-hosted platforms: no card is charged. An invoice is paid
/// from the namespace's prepaid credit (which billing applies itself) or by a bank
/// transfer an operator marks paid; a charge therefore stays pending.
#[derive(Debug, Default, Clone)]
pub struct Manual;

#[async_trait::async_trait]
impl PaymentProvider for Manual {
    fn name(&self) -> &'static str {
        "manual"
    }

    async fn customer(&self, namespace: &str, _email: &str) -> Result<String, ProviderError> {
        Ok(format!("manual-{namespace}"))
    }

    async fn setup(&self, _customer: &str, _return_url: &str) -> Result<Setup, ProviderError> {
        Err(ProviderError::Refused(
            "payments are made by bank transfer or prepaid credit here: ask the platform's operators".into(),
        ))
    }

    async fn charge(&self, _charge: &Charge) -> Result<Outcome, ProviderError> {
        Ok(Outcome::Pending { payment: None })
    }

    fn webhook(&self, _headers: &http::HeaderMap, _body: &[u8], _now: u64) -> Result<WebhookEvent, ProviderError> {
        Err(ProviderError::Refused("the manual provider takes no webhooks".into()))
    }
}
