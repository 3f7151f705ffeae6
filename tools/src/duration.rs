//! Durations on the command line and in output: every duration flag takes
//! a number with a unit (`500ms`, `30s`, `5m`, `1h30m`, `2d`) or `forever`
//! where that means something; output shows them the same way (JSON keeps
//! the raw nanoseconds).

use ckpt_proto::TIME_END;

const NS_PER_S: i64 = 1_000_000_000;

/// The units a duration may use, longest suffix first where one is a
/// suffix of another (`ms` before `s`).
const UNITS: &[(&str, i64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", NS_PER_S),
    ("m", 60 * NS_PER_S),
    ("h", 3_600 * NS_PER_S),
    ("d", 86_400 * NS_PER_S),
];

/// What a duration flag accepts, for error messages and help.
pub const SYNTAX: &str =
    "a number with a unit (ns, us, ms, s, m, h, d; e.g. 500ms, 30s, 5m, 1h30m; a bare number is seconds)";

/// Parses a duration into nanoseconds: one or more `NUMBER UNIT` parts
/// (`1h30m`, `1.5s`), a bare number (seconds), or `forever` when
/// `forever_allowed` ([`TIME_END`]).
///
/// # Errors
/// A message naming what is accepted.
pub fn parse_ns(text: &str, forever_allowed: bool) -> Result<i64, String> {
    let trimmed = text.trim();
    if forever_allowed && trimmed.eq_ignore_ascii_case("forever") {
        return Ok(TIME_END);
    }
    let bad = || {
        format!(
            "`{text}` is not a duration: expected {SYNTAX}{}",
            if forever_allowed {
                ", or `forever`"
            } else {
                ""
            }
        )
    };
    if trimmed.is_empty() {
        return Err(bad());
    }
    // A bare number: seconds.
    if let Ok(seconds) = trimmed.parse::<f64>() {
        return from_float(seconds, NS_PER_S).ok_or_else(bad);
    }
    let mut rest = trimmed;
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?;
        total = total
            .checked_add(from_float(value, scale).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        rest = tail;
    }
    if total == TIME_END {
        return Err(bad());
    }
    Ok(total)
}

fn from_float(value: f64, scale: i64) -> Option<i64> {
    let ns = value * scale as f64;
    (value.is_finite() && value >= 0.0 && ns < i64::MAX as f64).then(|| ns.round() as i64)
}

/// Parses a duration flag into seconds (no `forever`), between `min`
/// (exclusive when `min_exclusive`) and `max` seconds.
///
/// # Errors
/// A message naming what is accepted.
pub fn parse_seconds(text: &str, min: f64, min_exclusive: bool, max: f64) -> Result<f64, String> {
    let ns = parse_ns(text, false)?;
    let seconds = ns as f64 / NS_PER_S as f64;
    let low_ok = if min_exclusive {
        seconds > min
    } else {
        seconds >= min
    };
    if !low_ok || seconds > max {
        return Err(format!(
            "`{text}` is out of range: {} {} to {}",
            if min_exclusive { "more than" } else { "from" },
            format_ns(from_float(min, NS_PER_S).unwrap_or(0)),
            format_ns(from_float(max, NS_PER_S).unwrap_or(i64::MAX - 1)),
        ));
    }
    Ok(seconds)
}

/// A duration for humans: `forever`, `0s`, `1h30m`, `1.5s`, `250ms`.
pub fn format_ns(ns: i64) -> String {
    if ns == TIME_END {
        return "forever".to_string();
    }
    if ns < 0 {
        return format!("-{}", format_ns(ns.saturating_neg()));
    }
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < NS_PER_S {
        for (unit, scale) in [("ms", 1_000_000), ("us", 1_000)] {
            if ns % scale == 0 {
                return format!("{}{unit}", ns / scale);
            }
        }
        return format!("{ns}ns");
    }
    let (whole, fraction) = (ns / NS_PER_S, ns % NS_PER_S);
    if fraction != 0 {
        if whole < 60 {
            let text = format!("{whole}.{fraction:09}");
            return format!("{}s", text.trim_end_matches('0'));
        }
        // Long durations with a fraction of a second: the fraction is noise.
        return format_ns(whole * NS_PER_S);
    }
    let mut text = String::new();
    let mut rest = whole;
    for (unit, seconds) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= seconds {
            text.push_str(&format!("{}{unit}", rest / seconds));
            rest %= seconds;
        }
    }
    text
}

/// An absolute time for humans: `2026-11-30T08:25:00Z (in 59m59s)`, or
/// `forever` for [`TIME_END`].
pub fn format_deadline(at_ns: i64, now_ns: i64) -> String {
    if at_ns == TIME_END {
        return "forever".to_string();
    }
    let when = rfc3339_seconds(at_ns);
    let seconds = |ns: i64| (ns / NS_PER_S) * NS_PER_S;
    if at_ns >= now_ns {
        format!("{when} (in {})", format_ns(seconds(at_ns - now_ns)))
    } else {
        format!("{when} ({} ago)", format_ns(seconds(now_ns - at_ns)))
    }
}

/// `2026-11-24T21:15:53Z` for ns since the Unix epoch (whole seconds).
pub fn rfc3339_seconds(ns: i64) -> String {
    let (y, m, d, hour, minute, second) = civil_utc(ns.div_euclid(NS_PER_S));
    format!("{y:04}-{m:02}-{d:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// (year, month, day, hour, minute, second) in UTC of `secs` seconds since
/// the Unix epoch (Howard Hinnant's civil_from_days).
pub fn civil_utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d, rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_forever() {
        assert_eq!(parse_ns("30s", false), Ok(30 * NS_PER_S));
        assert_eq!(parse_ns("5m", false), Ok(300 * NS_PER_S));
        assert_eq!(parse_ns("1h30m", false), Ok(5_400 * NS_PER_S));
        assert_eq!(parse_ns("2d", false), Ok(172_800 * NS_PER_S));
        assert_eq!(parse_ns("1.5s", false), Ok(1_500_000_000));
        assert_eq!(parse_ns("250ms", false), Ok(250_000_000));
        assert_eq!(parse_ns("7us", false), Ok(7_000));
        assert_eq!(parse_ns("9ns", false), Ok(9));
        assert_eq!(parse_ns("10", false), Ok(10 * NS_PER_S));
        assert_eq!(parse_ns("0", false), Ok(0));
        assert_eq!(parse_ns("0.5", false), Ok(500_000_000));
        assert_eq!(parse_ns("forever", true), Ok(TIME_END));
        assert_eq!(parse_ns("FOREVER", true), Ok(TIME_END));
        for bad in [
            "",
            "forever",
            "-1s",
            "1y",
            "s",
            "5 parsecs",
            "1..5s",
            "nan",
            "inf",
            "1e400s",
        ] {
            assert!(parse_ns(bad, false).is_err(), "{bad:?}");
        }
        assert!(parse_ns("999999999999d", false).is_err());
    }

    #[test]
    fn seconds_with_bounds() {
        assert_eq!(parse_seconds("10", 0.0, true, 1e9), Ok(10.0));
        assert_eq!(parse_seconds("300ms", 0.0, true, 1e9), Ok(0.3));
        assert!(parse_seconds("0", 0.0, true, 1e9).is_err());
        assert_eq!(parse_seconds("0", 0.0, false, 86_400.0), Ok(0.0));
        assert!(parse_seconds("2d", 0.0, false, 86_400.0).is_err());
    }

    #[test]
    fn formats_for_humans() {
        assert_eq!(format_ns(TIME_END), "forever");
        assert_eq!(format_ns(0), "0s");
        assert_eq!(format_ns(300 * NS_PER_S), "5m");
        assert_eq!(format_ns(90 * NS_PER_S), "1m30s");
        assert_eq!(format_ns(5_400 * NS_PER_S), "1h30m");
        assert_eq!(format_ns(86_401 * NS_PER_S), "1d1s");
        assert_eq!(format_ns(1_500_000_000), "1.5s");
        assert_eq!(format_ns(250_000_000), "250ms");
        assert_eq!(format_ns(5), "5ns");
        for text in ["30s", "5m", "1h30m", "1.5s", "250ms", "2d3h"] {
            assert_eq!(format_ns(parse_ns(text, false).unwrap()), text);
        }
        assert_eq!(
            format_deadline(1_764_490_000 * NS_PER_S, 1_764_489_700 * NS_PER_S + 5),
            "2025-11-30T08:06:40Z (in 4m59s)"
        );
        assert_eq!(format_deadline(TIME_END, 0), "forever");
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
    }
}
