//! The ledger: double entry. Every charge, payment, refund and credit is a transaction of
//! legs that sum to zero (debits positive, credits negative), written as **one record**
//! (so it is all there or not at all) under an id derived from what it records (so
//! writing it again — a replayed webhook, a retry after a crash — is the same record).
//! Balances, what an invoice still owes and the revenue are sums of legs.
//!
//! Accounts:
//! - `receivable:<ns>` — what namespace `ns` owes (an asset);
//! - `credit:<ns>` — prepaid credit held for `ns` (a liability: negative is credit held);
//! - `revenue` — what was earned (negative is income);
//! - `tax` — tax collected for the authorities (a liability);
//! - `cash:<provider>` — money received through a provider (an asset).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One leg of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Leg {
    /// The account.
    pub account: String,
    /// Minor units: a debit is positive, a credit negative.
    pub amount: i64,
}

/// What a transaction records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An invoice issued (and the credit applied to it).
    Invoice,
    /// Money received for an invoice.
    Payment,
    /// Prepaid credit bought.
    TopUp,
    /// A correction of an issued invoice.
    CreditNote,
    /// Money given back.
    Refund,
}

/// A balanced transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tx {
    /// Its id, from what it records (`invoice-INV-000001`, `payment-stripe-pi_…`).
    pub id: String,
    /// When (Unix seconds).
    pub at: u64,
    /// What it records.
    pub kind: Kind,
    /// The namespace it concerns.
    pub namespace: String,
    /// The invoice it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// What people read.
    pub memo: String,
    /// The legs, summing to zero.
    pub legs: Vec<Leg>,
}

impl Tx {
    /// Whether its legs sum to zero.
    pub fn balanced(&self) -> bool {
        self.legs.iter().map(|l| i128::from(l.amount)).sum::<i128>() == 0
    }

    /// Where it is kept in billing's table: under its namespace and invoice, so an
    /// invoice's or a namespace's transactions are one prefix read.
    pub fn key(&self) -> String {
        key(&self.namespace, self.invoice.as_deref(), &self.id)
    }
}

/// The key of transaction `id` of namespace `ns` (and invoice `invoice`).
pub fn key(ns: &str, invoice: Option<&str>, id: &str) -> String {
    format!("tx/{ns}/{}/{id}", invoice.unwrap_or("-"))
}

/// The account of what `ns` owes.
pub fn receivable(ns: &str) -> String {
    format!("receivable:{ns}")
}

/// The account of `ns`'s prepaid credit.
pub fn credit(ns: &str) -> String {
    format!("credit:{ns}")
}

/// The account of money received through `provider`.
pub fn cash(provider: &str) -> String {
    format!("cash:{provider}")
}

/// The revenue account.
pub const REVENUE: &str = "revenue";
/// The tax account.
pub const TAX: &str = "tax";

/// Each account's balance over `txs`.
pub fn balances<'a>(txs: impl IntoIterator<Item = &'a Tx>) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for tx in txs {
        for leg in &tx.legs {
            let balance = out.entry(leg.account.clone()).or_default();
            *balance = balance.saturating_add(leg.amount);
        }
    }
    out
}

/// What an invoice still owes: its transactions' legs on the namespace's receivable.
pub fn owed<'a>(ns: &str, txs: impl IntoIterator<Item = &'a Tx>) -> i64 {
    let account = receivable(ns);
    txs.into_iter().flat_map(|t| &t.legs).filter(|l| l.account == account).map(|l| l.amount).sum()
}

/// The transaction issuing an invoice of `total` (`subtotal` + `tax`) with `credit_applied`
/// of the namespace's credit.
pub fn invoice_tx(inv: &crate::invoice::Invoice) -> Tx {
    let ns = &inv.namespace;
    let d = &inv.draft;
    let mut legs =
        vec![Leg { account: receivable(ns), amount: d.total }, Leg { account: REVENUE.into(), amount: -d.subtotal }];
    if d.tax != 0 {
        legs.push(Leg { account: TAX.into(), amount: -d.tax });
    }
    if d.credit_applied != 0 {
        legs.push(Leg { account: credit(ns), amount: d.credit_applied });
        legs.push(Leg { account: receivable(ns), amount: -d.credit_applied });
    }
    Tx {
        id: format!("invoice-{}", inv.number),
        at: inv.issued,
        kind: Kind::Invoice,
        namespace: ns.clone(),
        invoice: Some(inv.id.clone()),
        memo: format!("invoice {} for {}", inv.number, inv.period),
        legs,
    }
}

/// The transaction of a payment of `amount` through `provider` (its id `payment`) for an
/// invoice that owed `owed`: what exceeds it becomes the namespace's credit.
pub fn payment_tx(ns: &str, invoice: &str, provider: &str, payment: &str, amount: i64, owed: i64, at: u64) -> Tx {
    let to_invoice = amount.min(owed.max(0));
    let mut legs = vec![Leg { account: cash(provider), amount }, Leg { account: receivable(ns), amount: -to_invoice }];
    if amount > to_invoice {
        legs.push(Leg { account: credit(ns), amount: -(amount - to_invoice) });
    }
    Tx {
        id: format!("payment-{provider}-{payment}"),
        at,
        kind: Kind::Payment,
        namespace: ns.to_string(),
        invoice: Some(invoice.to_string()),
        memo: format!("payment {payment} through {provider}"),
        legs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overpayment_becomes_credit() {
        let tx = payment_tx("acme", "2027-01-acme", "manual", "wire-1", 5000, 3355, 0);
        assert!(tx.balanced());
        let b = balances([&tx]);
        assert_eq!((b["receivable:acme"], b["credit:acme"], b["cash:manual"]), (-3355, -1645, 5000));
        assert_eq!(tx.key(), "tx/acme/2027-01-acme/payment-manual-wire-1");
    }
}
