//! Positions of the NATS source, and the bookkeeping that makes resuming at one lossless.
//!
//! A position names the record's stream sequence `s` and a *floor* `f ≤ s`: once this record is
//! processed, every message of the stream with a sequence at or below `f` is processed too (it
//! was returned earlier, or acknowledged on the server). It is written as the decimal `s` when
//! `f = s` — the normal case — and as `s/f` otherwise. Resuming at it skips (and acknowledges)
//! redelivered messages at or below `f`, and `s` itself.
//!
//! Why not simply skip everything at or below `s`: a durable consumer redelivers unacknowledged
//! messages after its ack wait, *behind* newer ones. After a lost connection, a restarted server
//! or a restarted Sluice, message 10 can come back after 11 and 12 were returned; a checkpoint at
//! 12 would then skip 10 although it was never processed. So the floor only follows the
//! sequence while the `Tracker` can prove deliveries are in order and complete: every delivery
//! carries the consumer's delivery counter, a gap in it means a delivery was lost (and will come
//! back out of order), and the consumer's server-side state at open says whether earlier
//! deliveries are still pending. While it cannot prove it ("dirty"), the floor only rises to the
//! server's acknowledgement floor, and it becomes clean again once the server's count of pending
//! messages matches the messages the source itself holds unacknowledged.

use std::collections::HashMap;

use async_nats::Subject;
use sluice_sdk::Position;

use super::error::NatsError;

/// A decoded position (see the [module documentation](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatsPosition {
    /// The record's stream sequence.
    pub sequence: u64,
    /// Every message at or below this sequence is processed once the record is.
    pub floor: u64,
}

impl NatsPosition {
    /// The position's bytes: `s`, or `s/f` when the floor is below the sequence.
    pub fn encode(self) -> Position {
        if self.floor >= self.sequence {
            Position::from_u64(self.sequence)
        } else {
            Position::new(format!("{}/{}", self.sequence, self.floor).as_bytes())
        }
    }

    /// Reads a position written by [`NatsPosition::encode`].
    pub fn decode(position: &Position) -> Result<Self, NatsError> {
        let invalid = |reason: &str| NatsError::InvalidPosition {
            position: position.clone(),
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(position.as_bytes())
            .map_err(|_| invalid("not text written by the nats source"))?;
        let (seq, floor) = match text.split_once('/') {
            None => (text, None),
            Some((s, f)) => (s, Some(f)),
        };
        let sequence: u64 = seq
            .parse()
            .map_err(|_| invalid("not a stream sequence written by the nats source"))?;
        let floor = match floor {
            None => sequence,
            Some(f) => f
                .parse::<u64>()
                .ok()
                .filter(|f| *f <= sequence)
                .ok_or_else(|| invalid("its floor is not a sequence at or below its own"))?,
        };
        Ok(NatsPosition { sequence, floor })
    }
}

/// What to do with a delivered message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A message not returned before: return it as a record.
    New,
    /// A redelivery of a message returned and not yet acknowledged: keep the newest reply
    /// subject, return nothing.
    Duplicate,
    /// A message processed before (in this run, or before the resume position): acknowledge it
    /// again, return nothing.
    Processed,
}

/// The consumer's state as the server reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerView {
    /// Messages delivered and not yet acknowledged.
    pub ack_pending: usize,
    /// The consumer's delivery counter (the last delivery's number).
    pub delivered: u64,
    /// Every message at or below this stream sequence is acknowledged.
    pub ack_floor: u64,
}

/// Per-run bookkeeping: the floor, whether deliveries are provably in order, and the reply
/// subjects of records returned but not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Tracker {
    floor: u64,
    /// The resume position's own sequence (processed, whatever its floor).
    resumed_at: Option<u64>,
    clean: bool,
    next_delivery: Option<u64>,
    unacked: HashMap<u64, Subject>,
}

impl Tracker {
    /// Bookkeeping for a source opened at `resume` (or at no position), given the consumer's
    /// state on the server at that moment.
    pub fn new(resume: Option<NatsPosition>, server: ServerView) -> Self {
        let floor = resume.map_or(0, |p| p.floor).max(server.ack_floor);
        Tracker {
            floor,
            resumed_at: resume.map(|p| p.sequence),
            clean: server.ack_pending == 0,
            next_delivery: Some(server.delivered + 1),
            unacked: HashMap::new(),
        }
    }

    /// Classifies a delivered message by its stream sequence and delivery number.
    pub fn classify(&mut self, sequence: u64, delivery: u64) -> Verdict {
        if self.next_delivery.is_some_and(|n| n != delivery) {
            self.clean = false;
        }
        self.next_delivery = Some(delivery + 1);
        if self.unacked.contains_key(&sequence) {
            Verdict::Duplicate
        } else if sequence <= self.floor || self.resumed_at == Some(sequence) {
            Verdict::Processed
        } else {
            Verdict::New
        }
    }

    /// Replaces the reply subject of a returned, unacknowledged message (after a redelivery).
    pub fn refresh(&mut self, sequence: u64, reply: Subject) {
        if let Some(slot) = self.unacked.get_mut(&sequence) {
            *slot = reply;
        }
    }

    /// Notes that the message at `sequence` is returned now, and gives its position.
    pub fn returned(&mut self, sequence: u64, reply: Subject) -> Position {
        if self.clean {
            self.floor = self.floor.max(sequence);
        }
        self.unacked.insert(sequence, reply);
        NatsPosition {
            sequence,
            floor: self.floor.min(sequence),
        }
        .encode()
    }

    /// Takes the reply subject of an acknowledged record, if it was returned and not yet acked.
    pub fn acked(&mut self, sequence: u64) -> Option<Subject> {
        self.unacked.remove(&sequence)
    }

    /// Takes every reply subject still unacknowledged (at teardown, to hand them back).
    pub fn drain_unacked(&mut self) -> Vec<Subject> {
        self.unacked.drain().map(|(_, reply)| reply).collect()
    }

    /// True while deliveries are provably in order and complete.
    pub fn is_clean(&self) -> bool {
        self.clean
    }

    /// Folds in the consumer's state read from the server while dirty: the floor rises to the
    /// server's ack floor, and the tracker is clean again if every pending message on the server
    /// is one this source holds and every delivery was seen.
    pub fn server_view(&mut self, server: ServerView) {
        self.floor = self.floor.max(server.ack_floor);
        let seen_every_delivery = self.next_delivery == Some(server.delivered + 1);
        if seen_every_delivery && server.ack_pending == self.unacked.len() {
            self.clean = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: u64) -> Subject {
        Subject::from(format!("$JS.ACK.s.c.1.{n}.{n}.0.0"))
    }

    fn view(ack_pending: usize, delivered: u64, ack_floor: u64) -> ServerView {
        ServerView {
            ack_pending,
            delivered,
            ack_floor,
        }
    }

    #[test]
    fn positions_round_trip_and_reject_foreign_bytes() {
        for p in [
            NatsPosition {
                sequence: 12,
                floor: 12,
            },
            NatsPosition {
                sequence: 12,
                floor: 9,
            },
        ] {
            assert_eq!(NatsPosition::decode(&p.encode()).expect("decode"), p);
        }
        assert_eq!(
            NatsPosition::decode(&Position::from_u64(5))
                .expect("5")
                .floor,
            5
        );
        for bad in ["x", "5/9", "5/", "", "1/2/3"] {
            assert!(
                NatsPosition::decode(&Position::new(bad.as_bytes())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn in_order_deliveries_move_the_floor_with_the_sequence() {
        let mut t = Tracker::new(None, view(0, 0, 0));
        for (seq, delivery) in [(3, 1), (4, 2), (9, 3)] {
            assert_eq!(t.classify(seq, delivery), Verdict::New);
            assert_eq!(t.returned(seq, reply(seq)), Position::from_u64(seq));
        }
        // A redelivery of an unacknowledged record is a duplicate; once acked, it is processed.
        assert_eq!(t.classify(4, 4), Verdict::Duplicate);
        assert!(t.acked(4).is_some());
        assert_eq!(t.classify(4, 5), Verdict::Processed);
        assert!(t.is_clean());
    }

    #[test]
    fn a_lost_delivery_freezes_the_floor_so_a_late_message_is_not_skipped() {
        let mut t = Tracker::new(None, view(0, 0, 0));
        assert_eq!(t.classify(10, 1), Verdict::New);
        t.returned(10, reply(10));
        // Delivery 2 (message 11) was lost with the connection; 12 arrives as delivery 3.
        assert_eq!(t.classify(12, 3), Verdict::New);
        let p12 = t.returned(12, reply(12));
        assert_eq!(p12, Position::new(b"12/10"));
        // Resuming at 12 must still read 11.
        let mut resumed = Tracker::new(
            Some(NatsPosition::decode(&p12).expect("decode")),
            view(1, 3, 10),
        );
        assert_eq!(resumed.classify(11, 4), Verdict::New);
        assert_eq!(resumed.classify(12, 5), Verdict::Processed);
        assert_eq!(resumed.classify(9, 6), Verdict::Processed);
    }

    #[test]
    fn pending_messages_at_open_make_it_dirty_until_the_server_agrees() {
        let mut t = Tracker::new(
            Some(NatsPosition {
                sequence: 5,
                floor: 5,
            }),
            view(2, 7, 4),
        );
        assert!(!t.is_clean());
        assert_eq!(t.classify(5, 8), Verdict::Processed);
        assert_eq!(t.classify(8, 9), Verdict::New);
        assert_eq!(t.returned(8, reply(8)), Position::new(b"8/5"));
        // The server still counts message 6 as pending: not clean.
        t.server_view(view(2, 9, 5));
        assert!(!t.is_clean());
        assert_eq!(t.classify(6, 10), Verdict::New);
        assert_eq!(t.returned(6, reply(6)), Position::new(b"6/5"));
        t.acked(8);
        t.acked(6);
        t.server_view(view(0, 10, 8));
        assert!(t.is_clean());
        assert_eq!(t.classify(11, 11), Verdict::New);
        assert_eq!(t.returned(11, reply(11)), Position::from_u64(11));
    }
}
