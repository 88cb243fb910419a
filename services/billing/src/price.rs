//! The price book, in one place, and the arithmetic of money: amounts are integers in
//! minor units (cents), never floats; a price per month is prorated by the second; where
//! amounts are rounded, they are apportioned so that lines sum to the rounded total.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a plan costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPrice {
    /// The plan's base price per month, in minor units (charged in full for a month the
    /// namespace ends on the plan).
    pub base: i64,
    /// The price of one service running a whole month, in minor units, prorated by the
    /// second it ran.
    pub per_service: i64,
    /// Requests included each month (across the namespace's services).
    pub included_requests: u64,
    /// The price of each million requests beyond them, in minor units (0: no overage is
    /// charged; the plan's quota holds them instead).
    #[serde(default)]
    pub per_million_requests: i64,
}

/// The price book: each plan's prices, the currency, and the tax rate of each country.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceBook {
    /// ISO 4217, lower case (`usd`).
    pub currency: String,
    /// Each plan's prices (a plan missing here is free).
    pub plans: BTreeMap<String, PlanPrice>,
    /// The tax (VAT, sales tax) rate of each customer country (ISO 3166 alpha-2, upper
    /// case), in basis points (1900 = 19%); a country missing here is taxed at 0.
    #[serde(default)]
    pub tax: BTreeMap<String, u32>,
    /// Days a customer has to pay an invoice.
    #[serde(default = "default_terms")]
    pub terms_days: u32,
    /// Days past the due date after which an unpaid namespace's services are stopped.
    #[serde(default = "default_grace")]
    pub grace_days: u32,
    /// Days after each failed charge when the next is tried (at most three retries).
    #[serde(default = "default_retries")]
    pub retry_days: Vec<u32>,
}

fn default_terms() -> u32 {
    14
}

fn default_grace() -> u32 {
    7
}

fn default_retries() -> Vec<u32> {
    vec![3, 5, 7]
}

impl Default for PriceBook {
    /// Community free within its quotas; Personal $20 per service per month; Team $50 a
    /// month and $20 per service; no overage (the plans' quotas hold requests).
    fn default() -> Self {
        let plan = |base, per_service, included_requests| PlanPrice {
            base,
            per_service,
            included_requests,
            per_million_requests: 0,
        };
        PriceBook {
            currency: "usd".into(),
            plans: [
                ("community".to_string(), plan(0, 0, 100_000)),
                ("personal".to_string(), plan(0, 2000, 1_000_000)),
                ("team".to_string(), plan(5000, 2000, 10_000_000)),
            ]
            .into(),
            tax: BTreeMap::new(),
            terms_days: default_terms(),
            grace_days: default_grace(),
            retry_days: default_retries(),
        }
    }
}

impl PriceBook {
    /// Checks a price book an operator gives: no negative price, a currency, rates ≤ 100%.
    pub fn check(&self) -> Result<(), String> {
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(format!("currency {:?}: give an ISO 4217 code in lower case, like usd", self.currency));
        }
        for (name, p) in &self.plans {
            if p.base < 0 || p.per_service < 0 || p.per_million_requests < 0 {
                return Err(format!("plan {name}: prices may not be negative"));
            }
            if p.base > MAX_PRICE || p.per_service > MAX_PRICE || p.per_million_requests > MAX_PRICE {
                return Err(format!("plan {name}: a price may be at most {MAX_PRICE} minor units"));
            }
        }
        for (country, bp) in &self.tax {
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("tax country {country:?}: give an ISO 3166 code in upper case, like DE"));
            }
            if *bp > 10_000 {
                return Err(format!("tax of {country}: a rate is in basis points, at most 10000 (100%)"));
            }
        }
        if self.terms_days > 365 || self.grace_days > 365 {
            return Err("terms_days, grace_days: at most 365".into());
        }
        if self.retry_days.len() > 3 || self.retry_days.iter().any(|d| *d == 0 || *d > 60) {
            return Err("retry_days: at most three, each 1 to 60 days".into());
        }
        Ok(())
    }

    /// A plan's prices (a plan missing from the book is free).
    pub fn plan(&self, plan: &str) -> PlanPrice {
        self.plans.get(plan).cloned().unwrap_or(PlanPrice {
            base: 0,
            per_service: 0,
            included_requests: u64::MAX,
            per_million_requests: 0,
        })
    }

    /// The tax rate of `country`, in basis points.
    pub fn tax_rate(&self, country: &str) -> u32 {
        self.tax.get(&country.to_ascii_uppercase()).copied().unwrap_or(0)
    }
}

/// The largest price the book takes ($10M in cents): products of prices and seconds stay
/// far within `u128`.
pub const MAX_PRICE: i64 = 1_000_000_000;

/// Splits exact amounts `nums[i] / den` into whole minor units that sum to their total
/// rounded half up, each within one unit of its exact value (the largest remainders get
/// the units rounding leaves; ties go to the earlier part, so the result depends only on
/// the order of `nums`).
pub fn apportion(nums: &[u128], den: u128) -> Vec<i64> {
    if den == 0 {
        return vec![0; nums.len()];
    }
    let sum: u128 = nums.iter().sum();
    let target = (sum + den / 2) / den;
    let mut out: Vec<u128> = nums.iter().map(|n| n / den).collect();
    let floors: u128 = out.iter().sum();
    let mut extra = target.saturating_sub(floors);
    let mut order: Vec<usize> = (0..nums.len()).collect();
    // Largest remainder first; the earlier index on a tie.
    order.sort_by(|&a, &b| (nums[b] % den).cmp(&(nums[a] % den)).then(a.cmp(&b)));
    for i in order {
        if extra == 0 {
            break;
        }
        if !nums[i].is_multiple_of(den) {
            out[i] += 1;
            extra -= 1;
        }
    }
    out.into_iter().map(|v| i64::try_from(v).unwrap_or(i64::MAX)).collect()
}

/// The exact price of `seconds` of something priced `monthly` for a period of
/// `period_seconds`, as a numerator over `period_seconds` (for [`apportion`]).
pub fn prorated(monthly: i64, seconds: u64, period_seconds: u64) -> u128 {
    u128::from(monthly.max(0).unsigned_abs()) * u128::from(seconds.min(period_seconds))
}

pub use micro_core::money::format;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportioning_keeps_the_total() {
        // Three thirds of a cent: 0.333… each, 1 in all.
        assert_eq!(apportion(&[1, 1, 1], 3), vec![1, 0, 0]);
        // 2000 × 504 h / 744 h = 1354.83…; 2000 × 744/744 = 2000.
        let month = 744 * 3600;
        let lines = apportion(&[prorated(2000, month, month), prorated(2000, 504 * 3600, month)], month.into());
        assert_eq!(lines, vec![2000, 1355]);
        assert_eq!(apportion(&[], 7), Vec::<i64>::new());
        assert_eq!(apportion(&[5], 0), vec![0]);
    }

    #[test]
    fn a_bad_price_book_is_refused() {
        let mut book = PriceBook::default();
        assert!(book.check().is_ok());
        book.tax.insert("de".into(), 1900);
        assert!(book.check().unwrap_err().contains("upper case"));
        book.tax.clear();
        book.tax.insert("DE".into(), 10_001);
        assert!(book.check().unwrap_err().contains("basis points"));
        book.tax.clear();
        book.plans.get_mut("personal").unwrap().per_service = -1;
        assert!(book.check().unwrap_err().contains("negative"));
        book = PriceBook { currency: "USD".into(), ..PriceBook::default() };
        assert!(book.check().unwrap_err().contains("currency"));
    }
}
