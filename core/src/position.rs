//! Sortable position strings (`source.pos`).
//!
//! Sinks compare positions as plain strings, so every number is fixed-width
//! upper-case hex and parts are joined by `:`. A streamed change is
//! `<commit>:<seq>` where `<commit>` is the connector's fixed-width commit
//! position (Postgres: 16-hex-digit commit LSN; MySQL: binlog file index and
//! offset). Snapshot rows use the position just *below* the stream's start
//! followed by `:S` and a table/row counter, so they sort before every
//! streamed change that follows the snapshot, and are recognisable.

/// Upper-case, zero-padded, 16-digit hex of a 64-bit number.
pub fn hex16(n: u64) -> String {
    format!("{n:016X}")
}

/// Upper-case, zero-padded, 8-digit hex of a 32-bit number.
pub fn hex8(n: u32) -> String {
    format!("{n:08X}")
}

/// A streamed change: `<commit>:<seq as 8 hex digits>`.
pub fn streamed(commit: &str, seq: u64) -> String {
    format!("{commit}:{:08X}", seq)
}

/// A snapshot row: `<below_start>:S<table as 4 hex>:<row as 12 hex>`, where `below_start` is a
/// commit-part that sorts strictly below every streamed change after the snapshot.
pub fn snapshot(below_start: &str, table_index: u32, row: u64) -> String {
    format!("{below_start}:S{table_index:04X}:{row:012X}")
}

/// True for positions produced by [`snapshot`].
pub fn is_snapshot(pos: &str) -> bool {
    pos.contains(":S")
}

/// The position guard shared by every sink: should an event at `pos` be skipped, given the
/// highest position already committed?
///
/// Streamed events at or below the stored position are duplicates. Snapshot rows of one snapshot
/// all sit below its stream start but arrive in no particular order among themselves (tables are
/// read in parallel), so a snapshot row is skipped only once a *streamed* change at a higher
/// position has been committed.
pub fn already_applied(stored: Option<&str>, pos: &str) -> bool {
    let Some(stored) = stored else { return false };
    if is_snapshot(pos) {
        !is_snapshot(stored) && stored > pos
    } else {
        stored >= pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_sort_in_change_order() {
        let snap = snapshot(&hex16(0x16B3747), 1, 5);
        let first = streamed(&hex16(0x16B3748), 1);
        let second = streamed(&hex16(0x16B3748), 2);
        let later = streamed(&hex16(0x1_0000_0000), 1);
        assert!(snap < first && first < second && second < later);
    }

    #[test]
    fn guard_skips_duplicates_but_not_unordered_snapshot_rows() {
        let a = streamed(&hex16(10), 1);
        let b = streamed(&hex16(10), 2);
        assert!(already_applied(Some(&b), &a));
        assert!(already_applied(Some(&b), &b));
        assert!(!already_applied(Some(&a), &b));
        assert!(!already_applied(None, &a));
        let s1 = snapshot(&hex16(9), 0, 1);
        let s2 = snapshot(&hex16(9), 0, 2);
        assert!(!already_applied(Some(&s2), &s1));
        assert!(already_applied(Some(&a), &s1));
    }
}
