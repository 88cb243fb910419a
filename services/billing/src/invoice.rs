//! Invoices: what a namespace owes for a billing period (a calendar month, UTC), computed
//! from its service-hours and requests by the price book. [`draft`] is pure: the same
//! runs, in any order, give the same invoice.

use crate::price::{PriceBook, apportion, format, prorated};
use micro_core::meter::ServiceRun;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Seconds each service ran within `[start, end)`; a run still going counts up to `now`.
/// Runs of one service that overlap count once.
pub fn service_seconds(runs: &[ServiceRun], start: u64, end: u64, now: u64) -> BTreeMap<String, u64> {
    let mut by_service: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for r in runs {
        let from = r.from.max(start);
        let to = r.to.unwrap_or(now).min(end);
        if to > from {
            by_service.entry(&r.service).or_default().push((from, to));
        }
    }
    by_service
        .into_iter()
        .map(|(service, mut spans)| {
            spans.sort_unstable();
            let (mut total, mut reach) = (0u64, 0u64);
            for (from, to) in spans {
                let from = from.max(reach);
                if to > from {
                    total += to - from;
                    reach = to;
                }
            }
            (service.to_string(), total)
        })
        .filter(|(_, secs)| *secs > 0)
        .collect()
}

/// What an invoice line is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The plan's base price.
    Plan,
    /// A service's hours.
    Service,
    /// Requests beyond those included.
    Overage,
}

/// One line of an invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Line {
    /// What it is for.
    pub kind: LineKind,
    /// What the customer reads.
    pub description: String,
    /// The service (for a service's line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How much: seconds for a service, requests for overage, 1 for the plan.
    pub quantity: u64,
    /// The price it is charged at: per month for a service or the plan, per million
    /// requests for overage (minor units).
    pub unit_price: i64,
    /// The line's amount before tax (minor units).
    pub amount: i64,
    /// The tax rate applied, in basis points.
    pub tax_rate: u32,
    /// The line's tax (minor units).
    pub tax: i64,
}

/// What an invoice is computed from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The price book.
    pub book: &'a PriceBook,
    /// The namespace's plan.
    pub plan: &'a str,
    /// The customer's country (for the tax rate).
    pub country: &'a str,
    /// The period, `[start, end)` in Unix seconds.
    pub start: u64,
    /// Its end.
    pub end: u64,
    /// Seconds each service ran in it.
    pub seconds: &'a BTreeMap<String, u64>,
    /// Requests to the namespace's services in it.
    pub requests: u64,
    /// Prepaid credit the namespace holds (minor units, ≥ 0).
    pub credit: i64,
}

/// An invoice's lines and sums.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Draft {
    /// ISO 4217, lower case.
    pub currency: String,
    /// The plan it was charged on.
    pub plan: String,
    /// The lines.
    pub lines: Vec<Line>,
    /// The lines' amounts.
    pub subtotal: i64,
    /// The lines' tax.
    pub tax: i64,
    /// Subtotal and tax.
    pub total: i64,
    /// Prepaid credit applied to it.
    pub credit_applied: i64,
    /// What remains to pay.
    pub amount_due: i64,
}

/// Service lines an invoice has at most (the last sums the rest).
pub const MAX_SERVICE_LINES: usize = 100;

fn hours(seconds: u64) -> String {
    format!("{}.{:02} h", seconds / 3600, seconds % 3600 * 100 / 3600)
}

/// The invoice of a period: a line for the plan (when it has a base price), one per
/// service (its seconds × the monthly price ÷ the period's seconds), one for overage;
/// amounts rounded so that they sum to the rounded exact total, each within one minor
/// unit of its exact value; tax per line at the customer's country's rate, apportioned
/// the same way.
pub fn draft(i: &Inputs<'_>) -> Draft {
    let price = i.book.plan(i.plan);
    let period = i.end.saturating_sub(i.start).max(1);
    let rate = i.book.tax_rate(i.country);
    // Exact amounts over a common denominator (the period's seconds).
    let mut lines: Vec<(Line, u128)> = Vec::new();
    if price.base > 0 {
        let line = Line {
            kind: LineKind::Plan,
            description: format!("The {} plan", i.plan),
            service: None,
            quantity: 1,
            unit_price: price.base,
            amount: 0,
            tax_rate: rate,
            tax: 0,
        };
        lines.push((line, prorated(price.base, period, period)));
    }
    if price.per_service > 0 {
        // The services that ran longest get a line each; the rest (a namespace that made
        // hundreds) share one, so an invoice stays a readable, bounded size.
        let mut services: Vec<(&String, u64)> = i.seconds.iter().map(|(s, t)| (s, *t)).collect();
        let rest = if services.len() > MAX_SERVICE_LINES {
            services.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let rest = services.split_off(MAX_SERVICE_LINES - 1);
            services.sort_by(|a, b| a.0.cmp(b.0));
            rest
        } else {
            Vec::new()
        };
        for (service, secs) in services {
            let line = Line {
                kind: LineKind::Service,
                description: format!(
                    "Service {service}: {} of {} at {} a month",
                    hours(secs),
                    hours(period),
                    format(price.per_service, &i.book.currency)
                ),
                service: Some(service.clone()),
                quantity: secs,
                unit_price: price.per_service,
                amount: 0,
                tax_rate: rate,
                tax: 0,
            };
            lines.push((line, prorated(price.per_service, secs, period)));
        }
        if !rest.is_empty() {
            let secs: u64 = rest.iter().map(|(_, t)| *t).sum();
            let line = Line {
                kind: LineKind::Service,
                description: format!(
                    "{} other services: {} in all at {} a month each",
                    rest.len(),
                    hours(secs),
                    format(price.per_service, &i.book.currency)
                ),
                service: None,
                quantity: secs,
                unit_price: price.per_service,
                amount: 0,
                tax_rate: rate,
                tax: 0,
            };
            let num = u128::from(price.per_service.unsigned_abs()) * u128::from(secs);
            lines.push((line, num));
        }
    }
    let over = i.requests.saturating_sub(price.included_requests);
    if price.per_million_requests > 0 && over > 0 {
        let line = Line {
            kind: LineKind::Overage,
            description: format!(
                "{over} requests beyond the {} included, at {} per million",
                price.included_requests,
                format(price.per_million_requests, &i.book.currency)
            ),
            service: None,
            quantity: over,
            unit_price: price.per_million_requests,
            amount: 0,
            tax_rate: rate,
            tax: 0,
        };
        // price × over / 1e6, over the period's seconds: × period / 1e6 … kept exact by
        // scaling the numerator to the common denominator.
        let num =
            u128::from(price.per_million_requests.unsigned_abs()) * u128::from(over) * u128::from(period) / 1_000_000;
        lines.push((line, num));
    }
    let nums: Vec<u128> = lines.iter().map(|(_, n)| *n).collect();
    let amounts = apportion(&nums, u128::from(period));
    let taxes =
        apportion(&amounts.iter().map(|a| u128::from(a.unsigned_abs()) * u128::from(rate)).collect::<Vec<_>>(), 10_000);
    let lines: Vec<Line> = lines
        .into_iter()
        .zip(amounts.iter().zip(&taxes))
        .map(|((mut l, _), (a, t))| {
            l.amount = *a;
            l.tax = *t;
            l
        })
        .collect();
    let subtotal: i64 = lines.iter().map(|l| l.amount).sum();
    let tax: i64 = lines.iter().map(|l| l.tax).sum();
    let total = subtotal + tax;
    let credit_applied = i.credit.clamp(0, total);
    Draft {
        currency: i.book.currency.clone(),
        plan: i.plan.to_string(),
        lines,
        subtotal,
        tax,
        total,
        credit_applied,
        amount_due: total - credit_applied,
    }
}

/// An issued invoice: immutable (a correction is a credit note).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Invoice {
    /// Its id: `<period>-<namespace>`.
    pub id: String,
    /// Its number, without gaps: `INV-000001`.
    pub number: String,
    /// The number as a count.
    pub seq: u64,
    /// The namespace billed.
    pub namespace: String,
    /// The period, `YYYY-MM`.
    pub period: String,
    /// The period's first second.
    pub start: u64,
    /// The first second after it.
    pub end: u64,
    /// When it was issued (Unix seconds).
    pub issued: u64,
    /// When it is due.
    pub due: u64,
    /// Who it is addressed to.
    #[serde(default)]
    pub email: String,
    /// The customer's country (its tax rate is on each line).
    #[serde(default)]
    pub country: String,
    /// Requests counted in the period.
    #[serde(default)]
    pub requests: u64,
    /// Lines and sums.
    #[serde(flatten)]
    pub draft: Draft,
}

impl Invoice {
    /// The invoice id of namespace `ns` for `period`.
    pub fn id_of(period: &str, ns: &str) -> String {
        format!("{period}-{ns}")
    }

    /// The invoice as a page of its own (also what is mailed).
    pub fn html(&self) -> String {
        let money = |a: i64| esc(&format(a, &self.draft.currency));
        let mut rows = String::new();
        for l in &self.draft.lines {
            rows.push_str(&format!(
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{}.{:02}%</td><td class=n>{}</td></tr>\n",
                esc(&l.description),
                money(l.amount),
                l.tax_rate / 100,
                l.tax_rate % 100,
                money(l.tax)
            ));
        }
        let date = |s: u64| micro_core::time::utc(s * 1000)[..10].to_string();
        format!(
            "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>Invoice {number}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;color:#222}}\
table{{width:100%;border-collapse:collapse}}td,th{{padding:.4rem;border-bottom:1px solid #ddd;text-align:left}}\
.n{{text-align:right}}tfoot td{{font-weight:600}}</style></head><body>\n\
<h1>Invoice {number}</h1>\n<p>Namespace <b>{ns}</b> · period {period} · issued {issued} · due {due}</p>\n\
<p>Billed to {email}{country}</p>\n\
<table><thead><tr><th>Item</th><th class=n>Amount</th><th class=n>Tax rate</th><th class=n>Tax</th></tr></thead>\n\
<tbody>\n{rows}</tbody>\n<tfoot>\n<tr><td>Subtotal</td><td class=n>{subtotal}</td><td></td><td class=n>{tax}</td></tr>\n\
<tr><td>Total</td><td class=n colspan=3>{total}</td></tr>\n<tr><td>Credit applied</td><td class=n colspan=3>-{credit}</td></tr>\n\
<tr><td>Amount due</td><td class=n colspan=3>{due_amount}</td></tr>\n</tfoot></table>\n</body></html>\n",
            number = esc(&self.number),
            ns = esc(&self.namespace),
            period = esc(&self.period),
            issued = date(self.issued),
            due = date(self.due),
            email = if self.email.is_empty() { "the namespace's owners".to_string() } else { esc(&self.email) },
            country = if self.country.is_empty() { String::new() } else { format!(" ({})", esc(&self.country)) },
            subtotal = money(self.draft.subtotal),
            tax = money(self.draft.tax),
            total = money(self.draft.total),
            credit = money(self.draft.credit_applied),
            due_amount = money(self.draft.amount_due),
        )
    }

    /// The invoice as plain text (the mail's text part).
    pub fn text(&self) -> String {
        let money = |a: i64| format(a, &self.draft.currency);
        let mut out = format!("Invoice {} for namespace {}, period {}.\n\n", self.number, self.namespace, self.period);
        for l in &self.draft.lines {
            out.push_str(&format!("  {}  {}  (tax {})\n", l.description, money(l.amount), money(l.tax)));
        }
        out.push_str(&format!(
            "\nSubtotal {}\nTax {}\nTotal {}\nCredit applied {}\nAmount due {}\n",
            money(self.draft.subtotal),
            money(self.draft.tax),
            money(self.draft.total),
            money(self.draft.credit_applied),
            money(self.draft.amount_due)
        ));
        out
    }
}

pub use micro::web::escape_html as esc;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JAN: (u64, u64) = (1_798_761_600, 1_801_440_000); // 2027-01, 744 h

    fn run(service: &str, from: u64, to: Option<u64>) -> ServiceRun {
        ServiceRun { service: service.into(), from, to }
    }

    #[test]
    fn two_services_at_twenty_dollars_prorated() {
        let (start, end) = JAN;
        let runs = vec![run("a", start - 100, None), run("b", start + 10 * 86_400, Some(end + 50))];
        let seconds = service_seconds(&runs, start, end, end + 60);
        assert_eq!(seconds["a"], 744 * 3600);
        assert_eq!(seconds["b"], 504 * 3600);
        let book = PriceBook::default();
        let d = draft(&Inputs {
            book: &book,
            plan: "personal",
            country: "",
            start,
            end,
            seconds: &seconds,
            requests: 0,
            credit: 0,
        });
        let amounts: Vec<i64> = d.lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, vec![2000, 1355]);
        assert_eq!((d.total, d.amount_due), (3355, 3355));
        let community = draft(&Inputs {
            book: &book,
            plan: "community",
            country: "",
            start,
            end,
            seconds: &seconds,
            requests: 0,
            credit: 0,
        });
        assert_eq!(community.total, 0, "community is free");
    }

    #[test]
    fn tax_and_credit() {
        let (start, end) = JAN;
        let mut book = PriceBook::default();
        book.tax.insert("DE".into(), 1900);
        let seconds: BTreeMap<String, u64> = [("a".to_string(), 744 * 3600)].into();
        let d = draft(&Inputs {
            book: &book,
            plan: "team",
            country: "de",
            start,
            end,
            seconds: &seconds,
            requests: 0,
            credit: 1000,
        });
        assert_eq!(d.subtotal, 7000);
        assert_eq!(d.tax, 1330);
        assert!(d.lines.iter().all(|l| l.tax_rate == 1900));
        assert_eq!((d.total, d.credit_applied, d.amount_due), (8330, 1000, 7330));
    }

    #[test]
    fn overage_per_million() {
        let (start, end) = JAN;
        let mut book = PriceBook::default();
        book.plans.get_mut("personal").unwrap().per_million_requests = 100;
        let seconds = BTreeMap::new();
        let d = draft(&Inputs {
            book: &book,
            plan: "personal",
            country: "",
            start,
            end,
            seconds: &seconds,
            requests: 3_500_000,
            credit: 0,
        });
        assert_eq!(d.lines.len(), 1);
        assert_eq!((d.lines[0].quantity, d.lines[0].amount), (2_500_000, 250));
    }

    #[test]
    fn hundreds_of_services_share_a_line_and_the_total_holds() {
        let (start, end) = JAN;
        let book = PriceBook::default();
        let seconds: BTreeMap<String, u64> = (0..2500).map(|n| (format!("svc-{n:04}"), 3600 + n as u64)).collect();
        let d = draft(&Inputs {
            book: &book,
            plan: "personal",
            country: "",
            start,
            end,
            seconds: &seconds,
            requests: 0,
            credit: 0,
        });
        assert_eq!(d.lines.len(), MAX_SERVICE_LINES);
        assert!(
            d.lines.last().unwrap().description.starts_with("2401 other services"),
            "{}",
            d.lines.last().unwrap().description
        );
        let total: u128 = seconds.values().map(|s| 2000 * u128::from(*s)).sum();
        let exact = total as f64 / (end - start) as f64;
        assert!((d.subtotal as f64 - exact).abs() <= 1.0, "{} vs {exact}", d.subtotal);
        assert!(serde_json::to_vec(&d).unwrap().len() < 100_000);
    }

    #[test]
    fn html_is_escaped() {
        let d = Draft {
            currency: "usd".into(),
            plan: "personal".into(),
            lines: vec![Line {
                kind: LineKind::Service,
                description: "<script>".into(),
                service: Some("x".into()),
                quantity: 1,
                unit_price: 1,
                amount: 1,
                tax_rate: 0,
                tax: 0,
            }],
            subtotal: 1,
            tax: 0,
            total: 1,
            credit_applied: 0,
            amount_due: 1,
        };
        let inv = Invoice {
            id: "2027-01-a".into(),
            number: "INV-000001".into(),
            seq: 1,
            namespace: "a".into(),
            period: "2027-01".into(),
            start: 0,
            end: 1,
            issued: 0,
            due: 0,
            email: "\"x\"@y".into(),
            country: String::new(),
            requests: 0,
            draft: d,
        };
        let html = inv.html();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("&quot;x&quot;@y"));
    }

    /// A random history of one service: runs that start and stop (some still running),
    /// possibly overlapping, around the period.
    fn histories() -> impl Strategy<Value = Vec<ServiceRun>> {
        let (start, end) = JAN;
        let span = end - start;
        prop::collection::vec((0usize..4, 0..span + 200_000, 0..span, any::<bool>()), 0..24).prop_map(move |v| {
            v.into_iter()
                .map(|(svc, from, len, open)| {
                    let from = start - 100_000 + from;
                    run(&format!("s{svc}"), from, if open { None } else { Some(from + len) })
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// The sum of the lines is hours × rate within one minor unit, no line is
        /// negative, and the order the runs arrive in changes nothing.
        #[test]
        fn lines_sum_to_hours_times_rate(runs in histories(), seed in any::<u64>(), price in 1i64..100_000, tax in 0u32..3000) {
            let (start, end) = JAN;
            let mut book = PriceBook::default();
            book.plans.get_mut("personal").unwrap().per_service = price;
            book.tax.insert("FR".into(), tax);
            let now = end + 1;
            let seconds = service_seconds(&runs, start, end, now);
            let input = |s| Inputs { book: &book, plan: "personal", country: "FR", start, end, seconds: s, requests: 0, credit: 0 };
            let d = draft(&input(&seconds));
            let total_secs: u64 = seconds.values().sum();
            let exact = price as f64 * total_secs as f64 / (end - start) as f64;
            prop_assert!((d.subtotal as f64 - exact).abs() <= 1.0, "subtotal {} vs exact {exact}", d.subtotal);
            for l in &d.lines {
                let exact = price as f64 * l.quantity as f64 / (end - start) as f64;
                prop_assert!(l.amount >= 0 && l.tax >= 0);
                prop_assert!((l.amount as f64 - exact).abs() < 1.0);
                prop_assert!(l.quantity <= end - start, "a service cannot run longer than the period");
            }
            let exact_tax = d.subtotal as f64 * f64::from(tax) / 10_000.0;
            prop_assert!((d.tax as f64 - exact_tax).abs() <= 1.0);
            // Any order of arrival: the same invoice.
            let mut shuffled = runs.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let again = draft(&input(&service_seconds(&shuffled, start, end, now)));
            prop_assert_eq!(d, again);
        }
    }
}
