//! Sortable position strings (`source.pos`).
//!
//! Sinks compare positions as plain strings, so every number is fixed-width
//! upper-case hex and parts are joined by `:`. A streamed change is
//! `<commit>:<seq>` where `<commit>` is the connector's fixed-width commit
//! position (Postgres: 16-hex-digit commit LSN; MySQL: binlog file index and
//! offset). Snapshot rows use the position just *below* the stream's start
//! followed by `:S` and a table/row counter, so they sort before every
//! streamed change that follows the snapshot, and are recognisable.

/// Appends the low `width` hex digits of `n`, upper-case and zero-padded. Positions are built
/// for every event: this is the hot path that `format!` made show up in profiles.
pub fn push_hex(out: &mut String, n: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let width = width.clamp(1, 16);
    let mut buf = [0u8; 16];
    for (i, b) in buf[..width].iter_mut().rev().enumerate() {
        *b = DIGITS[((n >> (4 * i)) & 0xF) as usize];
    }
    // Every byte is an ASCII hex digit.
    out.extend(buf[..width].iter().map(|&b| b as char));
    // A number wider than `width` keeps its high digits, like `{:0width$X}`.
    if width < 16 && n >> (4 * width) != 0 {
        let full = format!("{n:X}");
        out.truncate(out.len() - width);
        out.push_str(&full);
    }
}

/// Upper-case, zero-padded, 16-digit hex of a 64-bit number.
pub fn hex16(n: u64) -> String {
    let mut s = String::with_capacity(16);
    push_hex(&mut s, n, 16);
    s
}

/// Upper-case, zero-padded, 8-digit hex of a 32-bit number.
pub fn hex8(n: u32) -> String {
    let mut s = String::with_capacity(8);
    push_hex(&mut s, u64::from(n), 8);
    s
}

/// A streamed change: `<commit>:<seq as 8 hex digits>`.
pub fn streamed(commit: &str, seq: u64) -> String {
    let mut s = String::with_capacity(commit.len() + 9);
    s.push_str(commit);
    s.push(':');
    push_hex(&mut s, seq, 8);
    s
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
    fn hex_matches_format() {
        for n in [
            0u64,
            1,
            0xA,
            0xFF,
            0x1234_5678,
            0xFFFF_FFFF,
            0x1_0000_0000,
            u64::MAX,
        ] {
            for width in [8usize, 16] {
                let mut s = String::new();
                push_hex(&mut s, n, width);
                assert_eq!(s, format!("{n:0width$X}"), "{n:#x} width {width}");
            }
        }
        assert_eq!(hex8(0xBEEF), "0000BEEF");
        assert_eq!(streamed("00000001", 0x1_0000_0001), "00000001:100000001");
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
