//! The on-disk record of one item: a format tag, the version (little-endian `u64`), for items
//! with a TTL the deadline (little-endian `u64`, milliseconds since the Unix epoch), then the
//! value.
//!
//! Items without a TTL keep the first format, so files written before TTLs existed read as they
//! are and such items cost no extra bytes.

/// Tag, version, value.
const V1: u8 = 1;
/// Tag, version, deadline, value.
const V2: u8 = 2;
/// Bytes before the value in a [`V1`] record.
const V1_HEADER: usize = 1 + 8;
/// Bytes before the value in a [`V2`] record.
const V2_HEADER: usize = 1 + 8 + 8;

/// Why a record does not decode.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    /// Shorter than its header.
    #[error("record of {0} bytes is shorter than its header")]
    Truncated(usize),
    /// An unknown format tag (written by a newer sluice, or corruption).
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
}

/// A decoded record, borrowing the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Record<'a> {
    /// The item's version (its ETag).
    pub(super) version: u64,
    /// The deadline in milliseconds since the Unix epoch, if the item has a TTL.
    pub(super) expires_ms: Option<u64>,
    /// The value.
    pub(super) value: &'a [u8],
}

impl Record<'_> {
    /// True if the item is still visible at `now_ms` (it is invisible from its deadline on).
    pub(super) fn live(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|at| at > now_ms)
    }
}

/// The record [`encode_into`] appends, in a buffer of its own.
#[cfg(test)]
pub(super) fn encode(version: u64, expires_ms: Option<u64>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(version, expires_ms, value, &mut out);
    out
}

/// Appends the record of `value` at `version`, with a deadline if the item has a TTL, to `out`.
pub(super) fn encode_into(version: u64, expires_ms: Option<u64>, value: &[u8], out: &mut Vec<u8>) {
    let header = if expires_ms.is_some() {
        V2_HEADER
    } else {
        V1_HEADER
    };
    out.reserve(header + value.len());
    match expires_ms {
        None => {
            out.push(V1);
            out.extend_from_slice(&version.to_le_bytes());
        }
        Some(at) => {
            out.push(V2);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&at.to_le_bytes());
        }
    }
    out.extend_from_slice(value);
}

/// Decodes a record.
pub(super) fn decode(raw: &[u8]) -> Result<Record<'_>, DecodeError> {
    let (&tag, rest) = raw.split_first().ok_or(DecodeError::Truncated(0))?;
    let truncated = || DecodeError::Truncated(raw.len());
    let (version, rest) = match tag {
        V1 | V2 => rest.split_first_chunk::<8>().ok_or_else(truncated)?,
        other => return Err(DecodeError::UnknownFormat(other)),
    };
    let (expires_ms, value) = if tag == V2 {
        let (at, value) = rest.split_first_chunk::<8>().ok_or_else(truncated)?;
        (Some(u64::from_le_bytes(*at)), value)
    } else {
        (None, rest)
    };
    Ok(Record {
        version: u64::from_le_bytes(*version),
        expires_ms,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_version_and_value() {
        let raw = encode(42, None, b"\x00\xffvalue");
        let r = decode(&raw).unwrap();
        assert_eq!(
            (r.version, r.expires_ms, r.value),
            (42, None, &b"\x00\xffvalue"[..])
        );
        assert_eq!(raw.len(), V1_HEADER + 7);
    }

    #[test]
    fn round_trips_a_deadline() {
        let raw = encode(7, Some(1_700_000_000_123), b"v");
        let r = decode(&raw).unwrap();
        assert_eq!(
            (r.version, r.expires_ms, r.value),
            (7, Some(1_700_000_000_123), &b"v"[..])
        );
        assert!(r.live(1_700_000_000_122));
        assert!(!r.live(1_700_000_000_123));
    }

    #[test]
    fn round_trips_an_empty_value() {
        for at in [None, Some(u64::MAX)] {
            let raw = encode(u64::MAX, at, b"");
            let r = decode(&raw).unwrap();
            assert_eq!((r.version, r.expires_ms, r.value), (u64::MAX, at, &b""[..]));
            assert!(at.is_some() || r.live(u64::MAX));
        }
    }

    #[test]
    fn reads_records_of_the_first_format() {
        // Exactly what the backend wrote before TTLs existed.
        let mut raw = vec![1u8];
        raw.extend_from_slice(&9u64.to_le_bytes());
        raw.extend_from_slice(b"old");
        let r = decode(&raw).unwrap();
        assert_eq!((r.version, r.expires_ms, r.value), (9, None, &b"old"[..]));
    }

    #[test]
    fn rejects_truncated_and_unknown_records() {
        assert!(matches!(decode(b""), Err(DecodeError::Truncated(0))));
        assert!(matches!(
            decode(&[V1, 1, 2, 3]),
            Err(DecodeError::Truncated(4))
        ));
        assert!(matches!(
            decode(&[V2, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Err(DecodeError::Truncated(10))
        ));
        assert!(matches!(
            decode(&[9; 12]),
            Err(DecodeError::UnknownFormat(9))
        ));
    }
}
