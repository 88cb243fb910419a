//! Credit notes: how an issued invoice is corrected (the invoice itself never changes).
//! A note credits part or all of an invoice's total, split into net and tax in the
//! invoice's proportion; what the invoice still owed is reduced, and what was already
//! paid becomes the namespace's credit. Notes are numbered without gaps (`CN-000001`), in
//! a sequence of their own, claimed the way invoices are (the whole note in one record
//! first), and the operator's reference makes a note asked for twice one note.

use crate::ledger::{self, Leg, Tx};
use crate::{Billing, NAME, bad};
use micro_core::{Code, Status};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A credit note.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreditNote {
    /// Its number, without gaps: `CN-000001`.
    pub number: String,
    /// The number as a count.
    pub seq: u64,
    /// The invoice it corrects (its id).
    pub invoice: String,
    /// The invoice's number.
    pub invoice_number: String,
    /// The invoice's namespace.
    pub namespace: String,
    /// What it credits, tax included (minor units).
    pub amount: i64,
    /// Of which net of tax.
    pub net: i64,
    /// Of which tax.
    pub tax: i64,
    /// Why, as the customer reads it.
    pub reason: String,
    /// The operator's reference.
    pub reference: String,
    /// When it was issued (clock seconds).
    pub issued: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct NoteSeq {
    next: u64,
    #[serde(default)]
    pending: Option<(CreditNote, Tx)>,
}

impl Billing {
    /// The credit notes of invoice `id`.
    pub async fn credit_notes(&self, id: &str) -> Result<Vec<CreditNote>, Status> {
        self.all(&format!("cn/{id}/")).await
    }

    /// Issues a credit note of `amount` (tax included) against invoice `id`.
    pub async fn credit_note(
        &self,
        id: &str,
        amount: i64,
        reason: &str,
        reference: &str,
        now: u64,
    ) -> Result<CreditNote, Status> {
        self.licence.check(crate::FEATURE)?;
        if amount <= 0 || amount > crate::MAX_AMOUNT {
            return Err(bad("a credit note's amount must be positive (minor units)"));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(bad("give the reason the customer reads (at most 500 characters)"));
        }
        if reference.is_empty() || reference.len() > 200 || reference.contains('/') {
            return Err(bad("give the credit note's reference (no /, at most 200 bytes)"));
        }
        let lock = self.lock().await?;
        let result = self.credit_note_locked(id, amount, reason, reference, now).await;
        self.unlock(&lock).await;
        let note = result?;
        self.settle(&note.namespace, now).await;
        Ok(note)
    }

    async fn credit_note_locked(
        &self,
        id: &str,
        amount: i64,
        reason: &str,
        reference: &str,
        now: u64,
    ) -> Result<CreditNote, Status> {
        self.finish_note().await?;
        if let Some(number) = self.get::<String>(&format!("cnref/{reference}")).await? {
            let notes = self.credit_notes(id).await?;
            return notes.into_iter().find(|n| n.number == number).ok_or_else(|| {
                Status::new(
                    Code::AlreadyExists,
                    NAME,
                    format!("reference {reference} is credit note {number} of another invoice"),
                )
            });
        }
        let state = self.invoice(id).await?;
        let inv = &state.invoice;
        let credited: i64 = self.credit_notes(id).await?.iter().map(|n| n.amount).sum();
        let room = inv.draft.total - credited;
        if amount > room {
            return Err(bad(format!(
                "invoice {} can be credited at most {} more",
                inv.number,
                crate::price::format(room.max(0), &inv.draft.currency)
            )));
        }
        // Net and tax in the invoice's proportion (rounded half up on the tax).
        let tax = if inv.draft.total > 0 {
            let t = i128::from(amount) * i128::from(inv.draft.tax);
            i64::try_from((t + i128::from(inv.draft.total) / 2) / i128::from(inv.draft.total)).unwrap_or(0)
        } else {
            0
        };
        let net = amount - tax;
        let ns = inv.namespace.clone();
        let to_invoice = amount.min(state.owed.max(0));
        let mut legs = vec![Leg { account: ledger::REVENUE.into(), amount: net }];
        if tax != 0 {
            legs.push(Leg { account: ledger::TAX.into(), amount: tax });
        }
        if to_invoice != 0 {
            legs.push(Leg { account: ledger::receivable(&ns), amount: -to_invoice });
        }
        if amount > to_invoice {
            legs.push(Leg { account: ledger::credit(&ns), amount: -(amount - to_invoice) });
        }
        let mut seq: NoteSeq = self.get("_cnseq").await?.unwrap_or_default();
        let n = seq.next.max(1);
        let note = CreditNote {
            number: format!("CN-{n:06}"),
            seq: n,
            invoice: inv.id.clone(),
            invoice_number: inv.number.clone(),
            namespace: ns.clone(),
            amount,
            net,
            tax,
            reason: reason.to_string(),
            reference: reference.to_string(),
            issued: now,
        };
        let tx = Tx {
            id: format!("creditnote-{}", note.number),
            at: now,
            kind: ledger::Kind::CreditNote,
            namespace: ns,
            invoice: Some(inv.id.clone()),
            memo: format!("credit note {} for invoice {}: {reason}", note.number, inv.number),
            legs,
        };
        seq.next = n;
        seq.pending = Some((note.clone(), tx));
        self.put("_cnseq", &seq).await?;
        self.finish_note().await?;
        tracing::info!(note = %note.number, invoice = %inv.number, amount, "credit note issued");
        Ok(note)
    }

    /// Writes what a claimed credit note needs (each write the same when repeated).
    async fn finish_note(&self) -> Result<(), Status> {
        let Some(seq) = self.get::<NoteSeq>("_cnseq").await? else { return Ok(()) };
        let Some((note, tx)) = seq.pending else { return Ok(()) };
        self.put(&format!("cn/{}/{}", note.invoice, note.number), &note).await?;
        self.put(&format!("cnref/{}", note.reference), &note.number).await?;
        self.put(&tx.key(), &tx).await?;
        self.put("_cnseq", &NoteSeq { next: note.seq + 1, pending: None }).await
    }
}
