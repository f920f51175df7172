//! Parsing of the human-friendly sizes and durations that the CLI accepts (`64MiB`, `1.5G`, `500ms`, `2m`).

use std::time::Duration;

/// Parses a byte size: a plain number of bytes, or a number with a suffix `K`, `M`, `G` (powers of 1024, with or
/// without `iB`/`B`) such as `512KiB`, `64M`, `1.5GiB`.
/// Parses a fuel budget: a number (`_` separators allowed) or `unlimited`; the same in every subcommand.
pub fn parse_fuel(text: &str) -> Result<u64, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    text.replace('_', "").parse().map_err(|_| format!("invalid fuel `{text}`: expected a number or `unlimited`"))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() {
        return Err(format!("invalid size `{text}`: expected a number such as 64MiB"));
    }
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!("invalid size `{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB)"));
        }
    };
    let value: f64 = number.parse().map_err(|_| format!("invalid size `{text}`"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size `{text}`: out of range"));
    }
    Ok(bytes as u64)
}

/// The instant `after` from now, or about thirty years from now for a duration too long to add (an "unlimited"
/// timeout must not overflow the clock and panic).
pub fn deadline_after(after: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(after).unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// Parses a duration such as `500ms`, `30s`, `2m`, `1h 30m`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration `{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("2k").unwrap(), 2048);
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-5").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }
}
