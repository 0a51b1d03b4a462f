//! Fuzzing entry point: a slice of a binlog file through the same steps as `stream.rs`,
//! minus the network (see `tidemark_core::fuzzing` and `fuzz/`).
//!
//! The input is binlog events back to back, as in a binlog file after its 4-byte magic:
//! each event's 19-byte header gives its size. Every event goes through mysql_common's
//! framing (`EventStreamReader`, as `mysql_async` applies it to each replication packet),
//! then this crate's header/CRC checks, event decoders, column plans and row decoding,
//! and every decoded row is encoded into an envelope that must parse back.
//!
//! The CRC32 of each event is recomputed before framing while the stream has checksums on
//! (the last FORMAT_DESCRIPTION said so): otherwise nearly every mutation would stop at
//! the checksum and the decoders behind it would never see it. The checksum code itself
//! is still run on every event.

use crate::binlog::{
    self, gtid_flags, ty, Flavour, FormatDescription, Header, MariaGtidEvent, MysqlGtidEvent,
    Query, Rotate, Rows, RowsKind, TableMap,
};
use crate::charset::Collations;
use crate::convert::{plan_from_map, Plan, PlanOptions};
use crate::ddl;
use mysql_async::binlog::events::Event;
use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::EventStreamReader;
use std::collections::HashMap;
use std::sync::Arc;
use tidemark_core::envelope::{Change, Encoder, Naming, Op, Row, TxInfo};
use tidemark_core::position;

/// Runs one input (concatenated binlog events) as a MariaDB stream, then as a MySQL one.
/// Errors are expected; a panic or hang is a bug.
pub fn binlog_stream(data: &[u8]) {
    run(data, Flavour::Mariadb);
    run(data, Flavour::Mysql);
}

fn run(data: &[u8], flavour: Flavour) {
    let mut s = State::new(flavour);
    let mut rest = data;
    while !rest.is_empty() {
        let size = rest
            .get(9..13)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(rest.len());
        let size = size.clamp(19.min(rest.len()), rest.len());
        let mut event = rest[..size].to_vec();
        rest = &rest[size..];
        s.event(&mut event);
    }
}

struct State {
    flavour: Flavour,
    esr: EventStreamReader,
    checksums: bool,
    seen_fde: bool,
    fde: FormatDescription,
    collations: Collations,
    naming: Naming,
    encoder: Encoder,
    table_ids: HashMap<u64, (Vec<u8>, Option<Arc<Plan>>)>,
    tx: TxInfo,
    seq: u64,
}

impl State {
    fn new(flavour: Flavour) -> State {
        let pairs = [
            (8u16, "latin1"),
            (11, "ascii"),
            (28, "gbk"),
            (33, "utf8mb3"),
            (45, "utf8mb4"),
            (46, "utf8mb4"),
            (54, "utf16"),
            (60, "utf32"),
            (63, "binary"),
            (83, "utf8mb3"),
            (95, "cp932"),
            (224, "utf8mb4"),
            (255, "utf8mb4"),
            (2048, "utf8mb4"),
        ];
        State {
            flavour,
            esr: EventStreamReader::new(BinlogVersion::Version4),
            checksums: true,
            seen_fde: false,
            fde: FormatDescription::default(),
            collations: Collations::from_pairs(pairs.map(|(i, n)| (i, n.to_owned()))),
            naming: Naming {
                pipeline: "fuzz".into(),
                connector: "mysql",
                subject_prefix: "tidemark".into(),
            },
            encoder: Encoder::new(),
            table_ids: HashMap::new(),
            tx: TxInfo::default(),
            seq: 0,
        }
    }

    fn event(&mut self, raw: &mut [u8]) {
        let is_fde = raw.get(4) == Some(&ty::FORMAT_DESCRIPTION);
        if is_fde && raw.len() >= 19 + 57 + 5 {
            // binlog_checksum of this stream: the algorithm byte before the CRC.
            self.checksums = raw[raw.len() - 5] == 1;
        }
        if self.checksums && raw.len() >= 23 {
            fix_crc(raw, is_fde);
        }
        // `stream.rs` runs mysql_async's stream under `catch_unwind`: mysql_common's framing
        // panics on some malformed packets (e.g. one shorter than its header's event size),
        // and the daemon turns that into a decode error. Same here.
        let esr = &mut self.esr;
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| esr.read(&*raw)));
        let Ok(Ok(Some(event))) = read else {
            if read.is_err() {
                // The reader may be half-updated after a panic; the daemon reconnects.
                self.esr = EventStreamReader::new(BinlogVersion::Version4);
            }
            return;
        };
        self.handle(&event);
    }

    /// `Streamer::body`: verifies the CRC and returns the body without it.
    fn body<'e>(&self, event: &'e Event, h: &Header) -> Option<&'e [u8]> {
        let data = event.data();
        match event.checksum() {
            Some(sum) => {
                let alg = if h.type_code == ty::FORMAT_DESCRIPTION {
                    match event.footer().get_checksum_alg() {
                        Ok(Some(a)) => Some(a as u8),
                        _ => None,
                    }
                } else {
                    None
                };
                binlog::verify_crc(h, data, alg, u32::from_le_bytes(sum)).ok()?;
                Some(data)
            }
            None if !self.seen_fde && h.type_code != ty::FORMAT_DESCRIPTION => {
                binlog::strip_trailing_crc(h, data).ok()
            }
            None => Some(data),
        }
    }

    /// `Streamer::handle` without the outbox and the checkpoint.
    fn handle(&mut self, event: &Event) {
        let eh = event.header();
        let h = Header {
            timestamp: eh.timestamp(),
            type_code: eh.event_type_raw(),
            server_id: eh.server_id(),
            event_size: eh.event_size(),
            log_pos: eh.log_pos(),
            flags: eh.flags_raw(),
        };
        let Some(data) = self.body(event, &h) else {
            return;
        };
        match h.type_code {
            ty::FORMAT_DESCRIPTION => {
                if let Ok(fde) = FormatDescription::parse(data) {
                    let _ = fde.table_id_len();
                    self.fde = fde;
                    self.seen_fde = true;
                }
            }
            ty::ROTATE => {
                if let Ok(r) = Rotate::parse(data) {
                    let _ = binlog::file_index(&r.file);
                    self.table_ids.clear();
                }
            }
            ty::MARIA_GTID => {
                if let Ok(g) = MariaGtidEvent::parse(data, h.server_id) {
                    let _ = g.flags & gtid_flags::STANDALONE;
                    self.begin(g.gtid.to_string());
                }
            }
            ty::MARIA_GTID_LIST => {
                if let Ok(list) = binlog::parse_gtid_list(data) {
                    let mut state = crate::gtid::GtidState::default();
                    state.add_missing(&list);
                    let _ = state.to_string();
                }
            }
            ty::MYSQL_GTID | ty::MYSQL_ANONYMOUS_GTID => {
                if let Ok(g) = MysqlGtidEvent::parse(data) {
                    self.begin(g.text());
                }
            }
            ty::QUERY => {
                if let Ok(q) = Query::parse(data) {
                    let sql = String::from_utf8_lossy(q.statement);
                    let _ = ddl::classify(&sql);
                    let _ = crate::stream::xa_statement_key(&sql);
                }
            }
            ty::XA_PREPARE => {
                let _ = crate::stream::xa_prepare_key(data);
            }
            ty::TABLE_MAP => {
                let id_len = self.fde.table_id_len();
                if let Ok(map) = TableMap::parse(data, id_len, self.flavour) {
                    let opts = PlanOptions {
                        flavour: self.flavour,
                        tinyint1_as_bool: true,
                    };
                    let plan = plan_from_map(&self.naming, &map, None, &self.collations, opts)
                        .ok()
                        .map(Arc::new);
                    let def = binlog::table_map_definition(data, id_len).to_vec();
                    self.table_ids.insert(map.table_id, (def, plan));
                }
            }
            t => {
                if let Some((kind, v2)) = binlog::rows_kind(t) {
                    self.rows(data, kind, v2);
                } else {
                    let _ = binlog::refused(t);
                }
            }
        }
    }

    fn begin(&mut self, id: String) {
        self.tx = TxInfo {
            id,
            seq: 0,
            commit_pos: String::new(),
            last: false,
        };
        self.seq = 0;
    }

    /// `Streamer::rows`: every row image decoded against the table's plan, then encoded.
    fn rows(&mut self, data: &[u8], kind: RowsKind, v2: bool) {
        let Ok(rows) = Rows::parse(data, kind, v2, self.fde.table_id_len()) else {
            return;
        };
        let Some((_, Some(plan))) = self.table_ids.get(&rows.table_id) else {
            return;
        };
        let plan = plan.clone();
        if rows.ncols != plan.kinds.len() {
            return;
        }
        let mut c = crate::bytes::Cursor::new(rows.rows);
        while !c.is_empty() {
            let decoded = match kind {
                RowsKind::Write => plan
                    .decode_row(rows.present, &mut c)
                    .map(|after| (Op::Create, None, Some(after))),
                RowsKind::Delete => plan
                    .decode_row(rows.present, &mut c)
                    .map(|before| (Op::Delete, Some(before), None)),
                RowsKind::Update => plan.decode_row(rows.present, &mut c).and_then(|before| {
                    plan.decode_row(rows.present_after, &mut c)
                        .map(|after| (Op::Update, Some(before), Some(after)))
                }),
            };
            let Ok((op, before, after)) = decoded else {
                return;
            };
            self.emit(&plan, op, before.as_ref(), after.as_ref());
        }
    }

    fn emit(&mut self, plan: &Plan, op: Op, before: Option<&Row>, after: Option<&Row>) {
        self.seq += 1;
        self.tx.seq = self.seq;
        let pos = position::streamed("0000000100000004", self.seq);
        let change = Change {
            op,
            table: &plan.meta,
            pos: &pos,
            tx: &self.tx,
            ts_ms: 0,
            snapshot: false,
            before,
            after,
        };
        let out = self.encoder.encode(&self.naming, &change, 0);
        tidemark_core::fuzzing::check_envelope(&out.payload);
    }
}

/// Rewrites the trailing CRC32 of a raw event (header ‖ body) to match its bytes; a
/// FORMAT_DESCRIPTION's checksum is computed with the "binlog in use" flag clear.
fn fix_crc(raw: &mut [u8], is_fde: bool) {
    let split = raw.len() - 4;
    let mut hasher = crc32fast::Hasher::new();
    if is_fde && split >= 19 {
        let mut head = [0u8; 19];
        head.copy_from_slice(&raw[..19]);
        head[17] &= !1;
        hasher.update(&head);
        hasher.update(&raw[19..split]);
    } else {
        hasher.update(&raw[..split]);
    }
    let crc = hasher.finalize().to_le_bytes();
    raw[split..].copy_from_slice(&crc);
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn binlog_corpus_and_mutations_never_panic_or_hang() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../fuzz/corpus/binlog");
        let stats = tidemark_core::fuzzing::replay(
            "binlog",
            &dir,
            3000,
            0x626e_6c67,
            Duration::from_secs(5),
            super::binlog_stream,
        );
        assert!(stats.corpus > 0, "empty binlog corpus");
    }
}
