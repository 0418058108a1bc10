//! RFC 3339 UTC times with a `Z` suffix, as the contract writes them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch (for leases and heartbeats stored in KV).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`None` if it
/// does not parse or is before 1970).
pub fn parse_unix_ms(rfc3339: &str) -> Option<u64> {
    let at = OffsetDateTime::parse(rfc3339, &Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

pub fn format_rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A duration like `500ms`, `5s`, `1.5m` (a bare number is seconds), as
/// the command lines take it.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 1m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_with_z() {
        let s = super::now_rfc3339();
        assert!(s.ends_with('Z'), "{s}");
        assert!(
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).is_ok()
        );
        let ms = super::parse_unix_ms(&s).unwrap();
        assert!(super::now_unix_ms().abs_diff(ms) < 60_000);
        assert_eq!(super::parse_unix_ms("1970-01-01T00:00:01.5Z"), Some(1_500));
        assert_eq!(super::parse_unix_ms("yesterday"), None);
    }
}
