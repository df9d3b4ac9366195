//! The source's positions: where a record sits in the snapshot, the replication stream or a
//! polling cursor, as text that can be resumed from.
//!
//! - `snapshot:{"t":TABLE,"k":[KEY TEXT...]}` — the snapshot of TABLE, at the row with this key
//!   (`"n":ROW` instead of `"k"` for a table without key: its snapshot restarts on resume).
//! - `cdc:COMMIT_LSN:INDEX` — the INDEXth change (from 0) of the transaction whose commit record is
//!   at COMMIT_LSN. Transactions arrive in commit order, so positions are ordered; resuming at one
//!   asks the server for transactions committed at or after COMMIT_LSN and skips that
//!   transaction's changes up to INDEX.
//! - `poll:{TABLE: LAST VALUE TEXT, ...}` — polling mode: the last ordering value read per table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_sdk::Position;

use super::error::{PgError, Side};
use super::lsn::Lsn;

/// A decoded source position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourcePosition {
    /// A row of the initial snapshot.
    Snapshot(SnapshotCursor),
    /// A change from logical replication.
    Cdc {
        /// The LSN of the transaction's commit record.
        commit: Lsn,
        /// The change's index within its transaction.
        index: u32,
    },
    /// Polling mode: the last value of the ordering column per table (by collection name).
    Poll(BTreeMap<String, String>),
}

/// Where the snapshot is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCursor {
    /// The table's collection name.
    #[serde(rename = "t")]
    pub table: String,
    /// The row's key values as text (tables with a key).
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<Option<String>>>,
    /// The row's number (tables without a key).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
}

impl SourcePosition {
    /// The position as record bytes.
    pub fn encode(&self) -> Position {
        match self {
            SourcePosition::Snapshot(c) => Position::new(
                format!("snapshot:{}", serde_json::to_string(c).unwrap_or_default()).as_bytes(),
            ),
            SourcePosition::Cdc { commit, index } => {
                Position::new(format!("cdc:{commit}:{index}").as_bytes())
            }
            SourcePosition::Poll(values) => Position::new(
                format!("poll:{}", serde_json::to_string(values).unwrap_or_default()).as_bytes(),
            ),
        }
    }

    /// Reads a position written by [`encode`](Self::encode).
    pub fn decode(p: &Position) -> Result<Self, PgError> {
        let bad = |reason: &str| PgError::Position {
            side: Side::Source,
            position: p.clone(),
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(p.as_bytes())
            .map_err(|_| bad("not a position of the postgres source (not text)"))?;
        if let Some(rest) = text.strip_prefix("cdc:") {
            let (lsn, index) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected cdc:LSN:INDEX"))?;
            let commit = lsn.parse::<Lsn>().map_err(|e| bad(&e))?;
            let index = index
                .parse::<u32>()
                .map_err(|_| bad("expected cdc:LSN:INDEX"))?;
            return Ok(SourcePosition::Cdc { commit, index });
        }
        if let Some(rest) = text.strip_prefix("snapshot:") {
            let cursor: SnapshotCursor = serde_json::from_str(rest)
                .map_err(|e| bad(&format!("bad snapshot cursor: {e}")))?;
            return Ok(SourcePosition::Snapshot(cursor));
        }
        if let Some(rest) = text.strip_prefix("poll:") {
            let values: BTreeMap<String, String> =
                serde_json::from_str(rest).map_err(|e| bad(&format!("bad polling cursor: {e}")))?;
            return Ok(SourcePosition::Poll(values));
        }
        Err(bad(
            "not a position of the postgres source (expected snapshot:, cdc: or poll:)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let all = [
            SourcePosition::Cdc {
                commit: Lsn(0x1_0000_00A0),
                index: 7,
            },
            SourcePosition::Snapshot(SnapshotCursor {
                table: "app.users".into(),
                key: Some(vec![Some("1".into()), None]),
                row: None,
            }),
            SourcePosition::Snapshot(SnapshotCursor {
                table: "logs".into(),
                key: None,
                row: Some(12),
            }),
            SourcePosition::Poll(BTreeMap::from([("t".to_string(), "42".to_string())])),
        ];
        for p in all {
            let encoded = p.encode();
            assert_eq!(SourcePosition::decode(&encoded).expect("decodes"), p);
        }
        assert_eq!(
            SourcePosition::Cdc {
                commit: Lsn(0x16B3748),
                index: 3
            }
            .encode()
            .to_string(),
            "cdc:0/16B3748:3"
        );
        for bad in ["", "cdc:1/2", "cdc:x/y:1", "snapshot:{", "other"] {
            assert!(SourcePosition::decode(&Position::new(bad.as_bytes())).is_err());
        }
    }
}
