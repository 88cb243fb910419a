//! Dates of Unix times, in UTC: what logs, pages and monthly quotas show and count by.

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
///
/// ```
/// assert_eq!(micro_core::time::utc(1_700_000_000_123), "2023-11-14 22:13:20.123");
/// ```
pub fn utc(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The calendar month (UTC) of Unix milliseconds, as `YYYY-MM`.
///
/// ```
/// assert_eq!(micro_core::time::month(951_782_400_000), "2000-02");
/// ```
pub fn month(ms: u64) -> String {
    let (y, m, _) = civil((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}")
}

/// The first millisecond (UTC) of the calendar month after the one of `ms`.
///
/// ```
/// // 2000-02-29 → 2000-03-01
/// assert_eq!(micro_core::time::next_month(951_782_400_000), 951_868_800_000);
/// ```
pub fn next_month(ms: u64) -> u64 {
    let (y, m, _) = civil((ms / 86_400_000) as i64);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1).max(0) as u64 * 86_400_000
}

/// The environment variable naming a file that holds the time billing counts by.
pub const CLOCK_FILE: &str = "MICRO_CLOCK_FILE";

/// Now, in Unix seconds, as billing counts it (service-hours, billing periods, dunning):
/// the system's clock, or, when `MICRO_CLOCK_FILE` names a file, the Unix seconds written
/// in it (read at each call). That file is a clock tests and drills move by hand (a month
/// in a minute); a production server never sets it. An unreadable file is the system's
/// clock.
pub fn clock() -> u64 {
    let system = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match std::env::var_os(CLOCK_FILE) {
        Some(path) if !path.is_empty() => {
            std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or_else(system)
        }
        _ => system(),
    }
}

/// The calendar month (UTC) of Unix seconds `secs`: its first second and the first of the
/// next, and its name `YYYY-MM`.
///
/// ```
/// // 2000-02-10 → February 2000, 29 days.
/// assert_eq!(micro_core::time::month_span(950_140_800), (949_363_200, 951_868_800, "2000-02".to_string()));
/// ```
pub fn month_span(secs: u64) -> (u64, u64, String) {
    let start_days = {
        let (y, m, _) = civil((secs / 86_400) as i64);
        days_from_civil(y, m, 1).max(0) as u64
    };
    let start = start_days * 86_400;
    (start, next_month(start * 1000) / 1000, month(start * 1000))
}

/// The month `YYYY-MM` as its first second and the first of the next; none when it is
/// not a month.
///
/// ```
/// assert_eq!(micro_core::time::parse_month("2000-02"), Some((949_363_200, 951_868_800)));
/// assert_eq!(micro_core::time::parse_month("2000-13"), None);
/// ```
pub fn parse_month(name: &str) -> Option<(u64, u64)> {
    let (y, m) = name.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i64, u32) = (y.parse().ok()?, m.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let start = days_from_civil(y, m, 1) as u64 * 86_400;
    Some((start, next_month(start * 1000) / 1000))
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The days from 1970-01-01 to a date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let (m, d) = (i64::from(m), i64::from(d));
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        for days in [-1000, 0, 59, 60, 10_957, 20_000, 30_000] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(month(0), "1970-01");
        let dec = days_from_civil(2026, 12, 31) as u64 * 86_400_000 + 5;
        assert_eq!(utc(next_month(dec)), "2027-01-01 00:00:00.000");
    }
}
