//! GTID positions of both server families.
//!
//! * MariaDB: a GTID is `domain-server-seq`; the replication position is one
//!   GTID per domain. Resuming with `@slave_connect_state` must name *every*
//!   domain the binlog contains: a missing domain is replayed from the oldest
//!   binlog, silently. [`GtidState`] therefore only ever adds domains or moves
//!   a domain's sequence forward, and is seeded from the snapshot position
//!   (`BINLOG_GTID_POS`) and the GTID_LIST events of the stream.
//! * MySQL: a GTID is `uuid:gno`; the position is the set of executed
//!   transactions (`uuid:1-5:7,uuid2:1-3`), sent in `COM_BINLOG_DUMP_GTID` as
//!   a binary SID block ([`GtidSet::encode`]).

use std::collections::BTreeMap;
use std::fmt;

/// A malformed GTID text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed GTID {text:?}: {reason}")]
pub struct GtidParseError {
    /// The offending text.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

fn perr(text: &str, reason: &'static str) -> GtidParseError {
    GtidParseError {
        text: text.to_owned(),
        reason,
    }
}

/// One MariaDB GTID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MariaGtid {
    /// Replication domain.
    pub domain: u32,
    /// Originating server id.
    pub server: u32,
    /// Sequence number within the domain.
    pub seq: u64,
}

impl fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

impl std::str::FromStr for MariaGtid {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<MariaGtid, GtidParseError> {
        let mut it = s.trim().splitn(3, '-');
        let mut next = |what| {
            it.next()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(|| perr(s, what))
        };
        let domain = next("domain is not a number")?;
        let server = next("server id is not a number")?;
        let seq = next("sequence is not a number")?;
        Ok(MariaGtid {
            domain: u32::try_from(domain).map_err(|_| perr(s, "domain out of range"))?,
            server: u32::try_from(server).map_err(|_| perr(s, "server id out of range"))?,
            seq,
        })
    }
}

/// A MariaDB replication position: the last GTID of every domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState {
    domains: BTreeMap<u32, MariaGtid>,
}

impl GtidState {
    /// Parses `d-s-n,d-s-n,…` (empty text = empty state).
    pub fn parse(text: &str) -> Result<GtidState, GtidParseError> {
        let mut state = GtidState::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: MariaGtid = part.parse()?;
            if state.domains.insert(g.domain, g).is_some() {
                return Err(perr(text, "a domain appears twice"));
            }
        }
        Ok(state)
    }

    /// Records a transaction: its domain now stands at `g`.
    pub fn update(&mut self, g: MariaGtid) {
        self.domains.insert(g.domain, g);
    }

    /// Adds domains this state does not know yet (from a GTID_LIST); known domains are kept,
    /// since a GTID_LIST describes the start of a file, which is never ahead of us.
    pub fn add_missing(&mut self, list: &[MariaGtid]) {
        for g in list {
            self.domains.entry(g.domain).or_insert(*g);
        }
    }

    /// The last GTID of `domain`, if the state has that domain.
    pub fn get(&self, domain: u32) -> Option<MariaGtid> {
        self.domains.get(&domain).copied()
    }

    /// No domain at all.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.domains.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` of 16 bytes.
pub fn uuid_text(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A MySQL GTID set: per server uuid, half-open intervals `[start, end)` of transaction numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    sids: BTreeMap<[u8; 16], Vec<(u64, u64)>>,
}

impl GtidSet {
    /// Parses `uuid:1-5:7,uuid2:1-3` (whitespace and newlines allowed, as `@@gtid_executed`
    /// prints them). Tagged GTIDs (MySQL 8.4) are rejected.
    pub fn parse(text: &str) -> Result<GtidSet, GtidParseError> {
        let mut set = GtidSet::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut pieces = part.split(':');
            let uuid = pieces
                .next()
                .and_then(|u| parse_uuid(u.trim()))
                .ok_or_else(|| perr(part, "bad server uuid"))?;
            let mut any = false;
            for iv in pieces {
                any = true;
                let iv = iv.trim();
                let (a, b) = match iv.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (iv, iv),
                };
                let start: u64 = a.parse().map_err(|_| {
                    perr(
                        part,
                        "interval start is not a number (tagged GTIDs are not supported)",
                    )
                })?;
                let last: u64 = b
                    .parse()
                    .map_err(|_| perr(part, "interval end is not a number"))?;
                if start == 0 || last < start || last == u64::MAX {
                    return Err(perr(part, "interval out of range"));
                }
                set.add_interval(uuid, start, last + 1);
            }
            if !any {
                return Err(perr(part, "server uuid without intervals"));
            }
        }
        Ok(set)
    }

    fn add_interval(&mut self, uuid: [u8; 16], start: u64, end: u64) {
        let ivs = self.sids.entry(uuid).or_default();
        ivs.push((start, end));
        ivs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ivs.len());
        for &(s, e) in ivs.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ivs = merged;
    }

    /// Adds one executed transaction.
    pub fn add(&mut self, uuid: [u8; 16], gno: u64) {
        if gno > 0 && gno < u64::MAX {
            self.add_interval(uuid, gno, gno + 1);
        }
    }

    /// The binary SID block of `COM_BINLOG_DUMP_GTID` (a reference for the tests: the request
    /// itself is serialised by mysql_common from [`GtidSet::to_sids`]): `n_sids: u64`, then per sid the uuid,
    /// `n_intervals: u64` and `(start, end)` pairs (end exclusive), all little-endian.
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.sids.len() as u64).to_le_bytes());
        for (uuid, ivs) in &self.sids {
            out.extend_from_slice(uuid);
            out.extend_from_slice(&(ivs.len() as u64).to_le_bytes());
            for (s, e) in ivs {
                out.extend_from_slice(&s.to_le_bytes());
                out.extend_from_slice(&e.to_le_bytes());
            }
        }
        out
    }

    /// The same set as mysql_async SIDs for `BinlogStreamRequest::with_gtid_set`.
    pub fn to_sids(&self) -> Vec<mysql_async::Sid<'static>> {
        self.sids
            .iter()
            .map(|(uuid, ivs)| {
                mysql_async::Sid::new(*uuid).with_intervals(
                    ivs.iter()
                        .map(|(s, e)| mysql_async::GnoInterval::new(*s, *e))
                        .collect(),
                )
            })
            .collect()
    }

    /// Empty set.
    pub fn is_empty(&self) -> bool {
        self.sids.is_empty()
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (uuid, ivs)) in self.sids.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&uuid_text(uuid))?;
            for (s, e) in ivs {
                if e - 1 == *s {
                    write!(f, ":{s}")?;
                } else {
                    write!(f, ":{s}-{}", e - 1)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_state_round_trips_and_only_adds_domains() {
        let mut s = GtidState::parse("0-1-10, 2-5-7").unwrap();
        assert_eq!(s.to_string(), "0-1-10,2-5-7");
        s.update("0-1-11".parse().unwrap());
        s.add_missing(&["0-1-3".parse().unwrap(), "9-1-1".parse().unwrap()]);
        assert_eq!(s.to_string(), "0-1-11,2-5-7,9-1-1");
        assert!(GtidState::parse("").unwrap().is_empty());
        assert!(GtidState::parse("0-1").is_err());
        assert!(GtidState::parse("0-1-x").is_err());
        assert!(GtidState::parse("0-1-1,0-2-2").is_err());
        assert!(GtidState::parse("99999999999-1-1").is_err());
    }

    #[test]
    fn mysql_gtid_set_encoding() {
        let text =
            "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,\n3e11fa47-71ca-11e1-9e33-c80aa9429563:3";
        let set = GtidSet::parse(text).unwrap();
        assert_eq!(
            set.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,3e11fa47-71ca-11e1-9e33-c80aa9429563:3"
        );
        let bytes = set.encode();
        let mut expected = 2u64.to_le_bytes().to_vec();
        expected.extend_from_slice(&[
            0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42,
            0x95, 0x62,
        ]);
        expected.extend_from_slice(&2u64.to_le_bytes());
        for v in [1u64, 6, 7, 8] {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        expected.extend_from_slice(&[
            0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42,
            0x95, 0x63,
        ]);
        expected.extend_from_slice(&1u64.to_le_bytes());
        for v in [3u64, 4] {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(bytes, expected);
        // mysql_common serialises the same bytes from the SIDs sent in the request.
        use mysql_common::proto::MySerialize as _;
        let sids = set.to_sids();
        let mut wire = (sids.len() as u64).to_le_bytes().to_vec();
        for sid in &sids {
            sid.serialize(&mut wire);
        }
        assert_eq!(wire, bytes);
    }

    #[test]
    fn mysql_gtid_set_merges_and_rejects_garbage() {
        let mut set = GtidSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-3").unwrap();
        let uuid = parse_uuid("3e11fa47-71ca-11e1-9e33-c80aa9429562").unwrap();
        set.add(uuid, 4);
        set.add(uuid, 6);
        assert_eq!(
            set.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-4:6"
        );
        assert!(GtidSet::parse("nope:1").is_err());
        assert!(GtidSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562").is_err());
        assert!(GtidSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:5-2").is_err());
        assert!(GtidSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:tag:1").is_err());
        assert!(GtidSet::parse("").unwrap().is_empty());
    }
}
