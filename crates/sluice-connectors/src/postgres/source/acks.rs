//! How far the replication slot may advance: the transactions handed out, and which of their
//! changes are acknowledged.
//!
//! The server resends every transaction whose commit record is at or after the slot's confirmed
//! position. So the slot may be confirmed up to the end of the last transaction whose changes
//! were all acknowledged, or up to the commit LSN of the oldest transaction still partly
//! unacknowledged (which keeps that one). Nothing later is ever confirmed.

use std::collections::VecDeque;

use crate::postgres::lsn::Lsn;

#[derive(Debug)]
struct Tx {
    commit: Lsn,
    end: Option<Lsn>,
    last_read: Option<u32>,
    acked: Option<u32>,
}

impl Tx {
    fn settled(&self) -> bool {
        self.end.is_some() && self.acked >= self.last_read
    }
}

/// The acknowledgement state of the transactions read from the stream.
#[derive(Debug, Default)]
pub struct AckTracker {
    txs: VecDeque<Tx>,
    confirmed: Lsn,
}

impl AckTracker {
    /// A tracker with nothing read.
    pub fn new() -> Self {
        Self::default()
    }

    /// A change of the transaction committed at `commit` was read.
    pub fn read(&mut self, commit: Lsn, index: u32) {
        match self.txs.back_mut() {
            Some(tx) if tx.commit == commit => tx.last_read = Some(index),
            _ => self.txs.push_back(Tx {
                commit,
                end: None,
                last_read: Some(index),
                acked: None,
            }),
        }
    }

    /// The transaction committed at `commit` ended at `end`: all its changes were read.
    pub fn committed(&mut self, commit: Lsn, end: Lsn) -> Lsn {
        match self.txs.back_mut() {
            Some(tx) if tx.commit == commit => tx.end = Some(end),
            _ => self.txs.push_back(Tx {
                commit,
                end: Some(end),
                last_read: None,
                acked: None,
            }),
        }
        self.settle()
    }

    /// The change at (`commit`, `index`) and everything before it were acknowledged. Returns the
    /// LSN the slot may now be confirmed to.
    pub fn acked(&mut self, commit: Lsn, index: u32) -> Lsn {
        while let Some(front) = self.txs.front() {
            if front.commit >= commit {
                break;
            }
            // An older transaction: every change of it was acknowledged before this one.
            let done = self.txs.pop_front();
            if let Some(end) = done.and_then(|t| t.end) {
                self.confirmed = self.confirmed.max(end);
            }
        }
        if let Some(front) = self.txs.front_mut() {
            if front.commit == commit {
                front.acked = front.acked.max(Some(index));
            }
        }
        self.settle()
    }

    /// The LSN the slot may be confirmed to.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// How many transactions are read but not fully acknowledged.
    pub fn open_transactions(&self) -> usize {
        self.txs.len()
    }

    fn settle(&mut self) -> Lsn {
        while let Some(front) = self.txs.front() {
            if !front.settled() {
                break;
            }
            if let Some(end) = front.end {
                self.confirmed = self.confirmed.max(end);
            }
            self.txs.pop_front();
        }
        if let Some(front) = self.txs.front() {
            self.confirmed = self.confirmed.max(front.commit);
        }
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_acknowledged_transactions() {
        let mut t = AckTracker::new();
        t.read(Lsn(100), 0);
        t.read(Lsn(100), 1);
        // Nothing acknowledged: the oldest open transaction is kept.
        assert_eq!(t.committed(Lsn(100), Lsn(120)), Lsn(100));
        t.read(Lsn(200), 0);
        assert_eq!(t.acked(Lsn(100), 0), Lsn(100));
        // The whole first transaction: confirmed past its end, up to the next one's commit.
        assert_eq!(t.acked(Lsn(100), 1), Lsn(200));
        // The last change acknowledged before its commit was read: its commit LSN only.
        assert_eq!(t.acked(Lsn(200), 0), Lsn(200));
        assert_eq!(t.committed(Lsn(200), Lsn(230)), Lsn(230));
        assert_eq!(t.open_transactions(), 0);
    }

    #[test]
    fn acknowledging_a_later_transaction_settles_earlier_ones() {
        let mut t = AckTracker::new();
        t.read(Lsn(100), 0);
        t.committed(Lsn(100), Lsn(110));
        t.read(Lsn(300), 0);
        t.read(Lsn(300), 1);
        t.committed(Lsn(300), Lsn(310));
        assert_eq!(t.acked(Lsn(300), 0), Lsn(300));
        assert_eq!(t.acked(Lsn(300), 1), Lsn(310));
    }

    #[test]
    fn transactions_without_read_changes_settle_in_order() {
        let mut t = AckTracker::new();
        t.read(Lsn(100), 0);
        t.committed(Lsn(100), Lsn(110));
        // A transaction whose changes were all skipped (already delivered before a restart).
        assert_eq!(t.committed(Lsn(150), Lsn(160)), Lsn(100));
        assert_eq!(t.acked(Lsn(100), 0), Lsn(160));
        assert_eq!(t.confirmed(), Lsn(160));
    }
}
