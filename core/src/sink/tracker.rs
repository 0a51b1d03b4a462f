//! Where the runtime stands in the stream: transaction boundaries, the position guard and
//! what the next commit will record. Pure bookkeeping (no I/O), so the rules are unit-tested.
//!
//! A message is at a *boundary* when no source transaction is half-received: every event
//! before it belongs to a transaction whose last event (`source.tx.last`) was seen. Only at a
//! boundary may the target transaction commit, and the recorded `stream_seq` is the sequence of
//! the message that closed the last complete transaction (or a skipped message received while
//! no transaction was open), so a restart at `stream_seq + 1` starts at a transaction start.

use super::Offset;
use crate::envelope::Op;
use crate::position::already_applied;

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Already processed in this session (a redelivery after `ack_wait`): ignore.
    Redelivery,
    /// Not a change event of this pipeline (dead letter, malformed and dead-lettered): skip.
    Neutral,
    /// A table this sink does not select: skip, but its transaction boundary counts.
    Unselected,
    /// At or below the position guard: skip and count.
    Duplicate,
    /// Apply it.
    Apply,
}

/// Transaction and position bookkeeping of one runtime session.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The offset committed in the target (read at start, then after each commit).
    pub committed: Option<Offset>,
    /// Highest stream sequence processed in this session.
    pub last_seq: u64,
    /// Sequence of the last message after which no source transaction was open.
    pub boundary_seq: u64,
    /// Id of the source transaction received in part, if any.
    pub in_tx: Option<String>,
    /// Highest position applied in the open target transaction.
    pub pending_pos: Option<String>,
    /// Whether a target transaction is open.
    pub open: bool,
    /// Events applied in the open target transaction.
    pub applied: usize,
    /// Applied events per op code (c, u, d, r, t) in the open target transaction.
    pub ops: [u64; 5],
    /// Source commit times (ms) of the streamed source transactions completed in the open
    /// target transaction, for the end-to-end latency histogram.
    pub source_ts: Vec<i64>,
}

pub(crate) fn op_index(op: Op) -> usize {
    match op {
        Op::Create => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Read => 3,
        Op::Truncate => 4,
    }
}

/// Op codes in the order of [`Tracker::ops`].
pub(crate) const OP_CODES: [&str; 5] = ["c", "u", "d", "r", "t"];

impl Tracker {
    /// A tracker starting after `committed`.
    pub fn new(committed: Option<Offset>) -> Tracker {
        let seq = committed.as_ref().map_or(0, |o| o.stream_seq);
        Tracker {
            committed,
            last_seq: seq,
            boundary_seq: seq,
            in_tx: None,
            pending_pos: None,
            open: false,
            applied: 0,
            ops: [0; 5],
            source_ts: Vec::new(),
        }
    }

    /// True when no source transaction is half-received.
    pub fn at_boundary(&self) -> bool {
        self.in_tx.is_none()
    }

    /// The position guard in effect: the highest of the committed and the pending positions.
    pub fn guard(&self) -> Option<&str> {
        let committed = self.committed.as_ref().and_then(|o| o.pos.as_deref());
        match (committed, self.pending_pos.as_deref()) {
            (Some(a), Some(b)) => Some(if a >= b { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// First step for every message: a sequence at or below the last one processed is a
    /// redelivery.
    pub fn see(&mut self, seq: u64) -> Option<Verdict> {
        if seq <= self.last_seq {
            return Some(Verdict::Redelivery);
        }
        self.last_seq = seq;
        None
    }

    /// A neutral message (dead letter, or a malformed one that was dead-lettered): it belongs
    /// to no source transaction; at a boundary it moves the boundary forward.
    pub fn neutral(&mut self, seq: u64) -> Verdict {
        if self.at_boundary() {
            self.boundary_seq = seq;
        }
        Verdict::Neutral
    }

    /// Whether a change event with transaction id `tx_id` starts a new source transaction while
    /// another one is still open (its `last` never came: a source that restarted mid-way and
    /// never completed it, or one that does not mark `last`). The caller then closes the old
    /// one at the previous message.
    pub fn tx_switch(&self, tx_id: &str) -> bool {
        matches!(&self.in_tx, Some(open) if open != tx_id)
    }

    /// Closes the open source transaction at the message before `seq` (see [`tx_switch`]).
    pub fn close_tx_before(&mut self, seq: u64) {
        self.in_tx = None;
        self.boundary_seq = seq.saturating_sub(1).max(self.boundary_seq);
    }

    /// Classifies a change event and records its transaction boundary.
    pub fn event(
        &mut self,
        seq: u64,
        selected: bool,
        pos: &str,
        tx_id: &str,
        last: bool,
    ) -> Verdict {
        let verdict = if !selected {
            Verdict::Unselected
        } else if already_applied(self.guard(), pos) {
            Verdict::Duplicate
        } else {
            Verdict::Apply
        };
        if last {
            self.in_tx = None;
            self.boundary_seq = seq;
        } else {
            self.in_tx = Some(tx_id.to_owned());
        }
        verdict
    }

    /// Records that an event at `pos` was applied in the open target transaction.
    pub fn applied(&mut self, pos: &str, op: Op, last: bool, snapshot: bool, source_ts_ms: i64) {
        self.applied += 1;
        self.ops[op_index(op)] += 1;
        let higher = self.pending_pos.as_deref().is_none_or(|p| pos > p);
        if higher {
            self.pending_pos = Some(pos.to_owned());
        }
        if last && !snapshot {
            self.source_ts.push(source_ts_ms);
        }
    }

    /// The offset the next commit records (only meaningful at a boundary).
    pub fn next_offset(&self) -> Offset {
        Offset {
            pos: self.guard().map(str::to_owned),
            stream_seq: self.boundary_seq,
        }
    }

    /// Whether the boundary moved past the committed offset (an offset-only commit would
    /// shorten the replay after a restart).
    pub fn uncommitted_span(&self) -> u64 {
        let committed = self.committed.as_ref().map_or(0, |o| o.stream_seq);
        self.boundary_seq.saturating_sub(committed)
    }

    /// After a successful commit of `offset`.
    pub fn committed(&mut self, offset: Offset) {
        self.committed = Some(offset);
        self.reset_txn();
    }

    /// After a rollback: the open transaction's effects are gone.
    pub fn reset_txn(&mut self) {
        self.open = false;
        self.pending_pos = None;
        self.applied = 0;
        self.ops = [0; 5];
        self.source_ts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(pos: &str, seq: u64) -> Option<Offset> {
        Some(Offset {
            pos: Some(pos.into()),
            stream_seq: seq,
        })
    }

    #[test]
    fn boundaries_follow_last_flags() {
        let mut t = Tracker::new(None);
        assert!(t.see(1).is_none());
        assert_eq!(t.event(1, true, "A:1", "tx1", false), Verdict::Apply);
        t.applied("A:1", Op::Create, false, false, 5);
        assert!(!t.at_boundary());
        assert!(t.see(2).is_none());
        // A dead letter in the middle of a transaction does not move the boundary.
        assert_eq!(t.neutral(2), Verdict::Neutral);
        assert_eq!(t.boundary_seq, 0);
        assert!(t.see(3).is_none());
        assert_eq!(t.event(3, false, "A:2", "tx1", true), Verdict::Unselected);
        assert!(t.at_boundary());
        assert_eq!(
            t.next_offset(),
            Offset {
                pos: Some("A:1".into()),
                stream_seq: 3
            }
        );
        // Redelivery of an already processed message.
        assert_eq!(t.see(2), Some(Verdict::Redelivery));
    }

    #[test]
    fn guard_uses_committed_and_pending() {
        let mut t = Tracker::new(off("B:1", 10));
        assert!(t.see(11).is_none());
        assert_eq!(t.event(11, true, "A:9", "x", true), Verdict::Duplicate);
        assert_eq!(t.event(12, true, "B:1", "y", true), Verdict::Duplicate);
        assert_eq!(t.event(13, true, "B:2", "z", false), Verdict::Apply);
        t.applied("B:2", Op::Update, false, false, 0);
        // Re-published duplicate inside the open transaction (source restarted mid-way).
        assert_eq!(t.event(14, true, "B:2", "z", false), Verdict::Duplicate);
        assert_eq!(t.event(15, true, "B:3", "z", true), Verdict::Apply);
        t.applied("B:3", Op::Update, true, false, 7);
        assert_eq!(t.next_offset().pos.as_deref(), Some("B:3"));
        assert_eq!(t.source_ts, vec![7]);
        t.committed(t.next_offset());
        assert_eq!(t.guard(), Some("B:3"));
        assert_eq!(t.uncommitted_span(), 0);
    }

    #[test]
    fn tx_switch_closes_an_unfinished_transaction() {
        let mut t = Tracker::new(None);
        t.see(1);
        t.event(1, true, "A:1", "t1", false);
        assert!(t.tx_switch("t2"));
        assert!(!t.tx_switch("t1"));
        t.close_tx_before(2);
        assert!(t.at_boundary());
        assert_eq!(t.boundary_seq, 1);
    }
}
