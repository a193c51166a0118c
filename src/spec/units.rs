//! Durations (`"250ms"`, `"5s"`, `"2m"`) and sizes (`"64MB"`) as the spec
//! writes them.
//!
//! Sizes use Postgres's own units and meaning (`postgresql.conf`: `kB`, `MB`,
//! `GB`, `TB` are powers of 1024), so a limit copied from a server setting
//! means the same thing here. Case is not significant.

use std::time::Duration;

const DURATION_HINT: &str = r#"write a whole number and a unit, e.g. "250ms", "5s", "2m", "1h""#;
const SIZE_HINT: &str =
    r#"write a whole number and a unit, e.g. "512kB", "64MB", "2GB" (1MB = 1024kB)"#;

/// Parse a duration: a whole number followed by `ms`, `s`, `m`/`min` or `h`.
/// The error is the hint to show the operator.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text).ok_or_else(|| DURATION_HINT.to_string())?;
    let millis_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("the unit is missing; {DURATION_HINT}")),
        _ => return Err(format!("unknown unit {unit:?}; {DURATION_HINT}")),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("too large; {DURATION_HINT}"))
}

/// Parse a size in bytes: a whole number followed by `B`, `kB`, `MB`, `GB`
/// or `TB` (1024-based, as in `postgresql.conf`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text).ok_or_else(|| SIZE_HINT.to_string())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "b" => 0,
        "kb" => 10,
        "mb" => 20,
        "gb" => 30,
        "tb" => 40,
        "" => return Err(format!("the unit is missing; {SIZE_HINT}")),
        _ => return Err(format!("unknown unit {unit:?}; {SIZE_HINT}")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("too large; {SIZE_HINT}"))
}

/// Split `"64 MB"` into `(64, "MB")`. `None` when there is no leading number.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 5 s "), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(
            parse_duration("5")
                .unwrap_err()
                .starts_with("the unit is missing")
        );
        assert!(
            parse_duration("5 sec")
                .unwrap_err()
                .starts_with("unknown unit \"sec\"")
        );
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(
            parse_duration("18446744073709551615h")
                .unwrap_err()
                .starts_with("too large")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert_eq!(parse_size("1TB"), Ok(1 << 40));
        assert_eq!(parse_size("100B"), Ok(100));
        assert!(
            parse_size("64")
                .unwrap_err()
                .starts_with("the unit is missing")
        );
        assert!(parse_size("64MiB").is_err());
        assert!(parse_size("big").is_err());
        assert!(
            parse_size("99999999TB")
                .unwrap_err()
                .starts_with("too large")
        );
    }

    proptest! {
        #[test]
        fn durations_never_panic(s in "\\PC*") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn millis_round_trip(n in 0u64..1_000_000_000) {
            prop_assert_eq!(parse_duration(&format!("{n}ms")), Ok(Duration::from_millis(n)));
            prop_assert_eq!(parse_size(&format!("{n}kB")), Ok(n * 1024));
        }
    }
}
