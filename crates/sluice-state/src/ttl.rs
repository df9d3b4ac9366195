//! Time to live: Dapr's `ttlInSeconds` metadata, expiry deadlines, and the RFC 3339 form of
//! `ttlExpireTime`.
//!
//! Deadlines are kept to the millisecond (what the redb backend stores) and capped at the end of
//! year 9999, so that any TTL, however large, gives a time every backend can store and format.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::StateError;

/// The largest `ttlInSeconds` accepted (that of a signed 32-bit number, as in Dapr: about 68
/// years).
pub const MAX_TTL_SECONDS: i64 = i32::MAX as i64;

/// The latest expiry time in milliseconds since the Unix epoch: 9999-12-31T23:59:59.999Z.
pub const MAX_EXPIRY_MILLIS: u64 = 253_402_300_799_999;

/// Parses Dapr's `ttlInSeconds` metadata: a whole number of seconds from 0 to
/// [`MAX_TTL_SECONDS`] gives that TTL, `-1` gives `None` (no TTL: the write clears an earlier
/// one); anything else (not a number, a fraction, another negative, too large) is
/// [`StateError::InvalidTtl`].
pub fn parse_ttl_seconds(text: &str) -> Result<Option<Duration>, StateError> {
    let invalid = || StateError::InvalidTtl {
        value: text.to_string(),
    };
    let seconds: i64 = text.parse().map_err(|_| invalid())?;
    match seconds {
        -1 => Ok(None),
        0..=MAX_TTL_SECONDS => Ok(Some(Duration::from_secs(seconds.unsigned_abs()))),
        _ => Err(invalid()),
    }
}

/// Milliseconds since the Unix epoch of `t` (0 for times before it, capped at
/// [`MAX_EXPIRY_MILLIS`]).
pub fn to_unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .min(MAX_EXPIRY_MILLIS)
}

/// The time `millis` milliseconds after the Unix epoch (capped at [`MAX_EXPIRY_MILLIS`]).
pub fn from_unix_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis.min(MAX_EXPIRY_MILLIS))
}

/// When an item written at `now` with `ttl` expires, in milliseconds since the Unix epoch
/// (rounded up to the next millisecond, capped at [`MAX_EXPIRY_MILLIS`]).
pub fn expiry_millis(now: SystemTime, ttl: Duration) -> u64 {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let at = now.saturating_add(ttl.as_nanos());
    let millis = at.div_ceil(1_000_000);
    u64::try_from(millis)
        .unwrap_or(u64::MAX)
        .min(MAX_EXPIRY_MILLIS)
}

/// When an item written at `now` with `ttl` expires (see [`expiry_millis`]).
pub fn expiry(now: SystemTime, ttl: Duration) -> SystemTime {
    from_unix_millis(expiry_millis(now, ttl))
}

/// True if an item with deadline `expires_at` is expired at `now` (it is invisible from its
/// deadline on).
pub fn is_expired(expires_at: Option<SystemTime>, now: SystemTime) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// `t` in RFC 3339 form, UTC, to the second (`2024-02-29T13:05:09Z`), as Dapr reports
/// `ttlExpireTime`. Times before the Unix epoch are shown as the epoch.
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian (year, month, day) of `days` days after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of each year, then count
    // 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_are_a_ttl_and_minus_one_clears() {
        assert_eq!(parse_ttl_seconds("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(
            parse_ttl_seconds("1").unwrap(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_ttl_seconds("3600").unwrap(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_ttl_seconds("2147483647").unwrap(),
            Some(Duration::from_secs(2_147_483_647))
        );
        assert_eq!(parse_ttl_seconds("-1").unwrap(), None);
    }

    #[test]
    fn anything_else_is_an_invalid_ttl_naming_the_value() {
        for bad in [
            "",
            " 1",
            "1 ",
            "abc",
            "1.5",
            "1e3",
            "-2",
            "-100",
            "2147483648",
            "0x10",
            "١",
            "99999999999999999999",
        ] {
            match parse_ttl_seconds(bad) {
                Err(StateError::InvalidTtl { value }) => assert_eq!(value, bad),
                other => panic!("{bad:?}: want InvalidTtl, got {other:?}"),
            }
        }
    }

    #[test]
    fn formats_rfc3339_in_utc_to_the_second() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(format_rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(at(1_709_211_909)), "2024-02-29T13:05:09Z");
        assert_eq!(format_rfc3339(at(4_102_444_799)), "2099-12-31T23:59:59Z");
        assert_eq!(
            format_rfc3339(at(1_709_211_909) + Duration::from_millis(999)),
            "2024-02-29T13:05:09Z"
        );
        assert_eq!(
            format_rfc3339(from_unix_millis(MAX_EXPIRY_MILLIS)),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_secs(10)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn formatting_agrees_with_a_day_by_day_count() {
        // Walk every day of 1970..2101 with a naive calendar and compare.
        let mut days = 0u64;
        for year in 1970..2101u64 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let lengths = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (m, len) in lengths.into_iter().enumerate() {
                for d in 1..=len {
                    assert_eq!(civil_from_days(days), (year, m as u64 + 1, d));
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn expiry_rounds_up_to_the_millisecond_and_is_capped() {
        let now = UNIX_EPOCH + Duration::from_nanos(1_000_000_001);
        assert_eq!(expiry_millis(now, Duration::from_secs(1)), 2_001);
        assert_eq!(expiry_millis(now, Duration::ZERO), 1_001);
        assert_eq!(expiry_millis(now, Duration::MAX), MAX_EXPIRY_MILLIS);
        assert_eq!(to_unix_millis(expiry(now, Duration::from_secs(1))), 2_001);
    }

    #[test]
    fn an_item_is_expired_from_its_deadline_on() {
        let at = UNIX_EPOCH + Duration::from_secs(100);
        assert!(!is_expired(None, at));
        assert!(!is_expired(Some(at), at - Duration::from_millis(1)));
        assert!(is_expired(Some(at), at));
        assert!(is_expired(Some(at), at + Duration::from_secs(1)));
    }

    #[test]
    fn millis_round_trip_and_clamp() {
        assert_eq!(to_unix_millis(from_unix_millis(1_234_567)), 1_234_567);
        assert_eq!(to_unix_millis(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert_eq!(
            to_unix_millis(from_unix_millis(u64::MAX)),
            MAX_EXPIRY_MILLIS
        );
    }
}
