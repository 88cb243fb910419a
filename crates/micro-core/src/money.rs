//! Money as the platform keeps it: integers in minor units (cents), never floats.

/// Formats minor units of `currency` (ISO 4217, lower case) for people: `$20.00`,
/// `-€1.50`, `12.05 CHF`.
///
/// ```
/// assert_eq!(micro_core::money::format(2000, "usd"), "$20.00");
/// assert_eq!(micro_core::money::format(-150, "eur"), "-€1.50");
/// assert_eq!(micro_core::money::format(1205, "chf"), "12.05 CHF");
/// ```
pub fn format(amount: i64, currency: &str) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.unsigned_abs();
    let number = format!("{}.{:02}", a / 100, a % 100);
    match currency {
        "usd" => format!("{sign}${number}"),
        "eur" => format!("{sign}€{number}"),
        "gbp" => format!("{sign}£{number}"),
        other => format!("{sign}{number} {}", other.to_ascii_uppercase()),
    }
}
