//! Log sequence numbers: PostgreSQL's positions in its write-ahead log, written `X/Y` in hex.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log. Ordered like the log; `0/0` is "the beginning".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN (expected X/Y in hex)"))?;
        let part = |p: &str| {
            u32::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not an LSN (bad hex {p:?})"))
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as Unix nanoseconds.
pub fn pg_micros_to_unix_nanos(micros: i64) -> i128 {
    (i128::from(micros) + i128::from(PG_EPOCH_OFFSET_MICROS)) * 1000
}

/// Now as a PostgreSQL timestamp (microseconds since 2000-01-01 UTC), for status messages.
pub fn pg_micros_now() -> i64 {
    let unix_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix_micros - PG_EPOCH_OFFSET_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_text() {
        for text in ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().expect("valid");
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>(), Ok(Lsn(1 << 32)));
        assert!("12".parse::<Lsn>().is_err());
        assert!("0/xyz".parse::<Lsn>().is_err());
        assert!(Lsn(5) < Lsn(1 << 32));
    }

    #[test]
    fn converts_the_postgres_epoch() {
        assert_eq!(pg_micros_to_unix_nanos(0), 946_684_800_000_000_000);
        assert!(pg_micros_now() > 0);
    }
}
