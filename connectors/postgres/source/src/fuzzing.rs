//! Fuzzing entry point: a stream of pgoutput messages through the same steps as
//! `stream.rs`, minus the network (see `tidemark_core::fuzzing` and `fuzz/`).
//!
//! The input is a sequence of frames, each a 4-byte big-endian length and that many bytes
//! (a short last frame takes what is left). A frame is one CopyData payload or one bare
//! pgoutput message, as the server sends them; both decoders see every frame. Decoded
//! messages drive a [`RelCache`] and the row conversion, and every converted change is
//! encoded into an envelope that must parse back, because a change the sink cannot read
//! would stop the pipeline as surely as a panic.
//!
//! Two frame tags exist only here, so a corpus can carry what the daemon reads by SQL:
//! `'Z'` + a tab-separated `TYPE_CATALOG_QUERY` row (the type catalog) and `'z'` + a
//! relation OID and its primary-key column names, tab-separated.

use crate::convert;
use crate::pgoutput::{self, PgMessage, ReplicationMessage};
use crate::relcache::{RelCache, TypeCatalog, TypeInfo};
use std::sync::Arc;
use tidemark_core::envelope::{Change, Encoder, Naming, Op, Row, TableMeta, TxInfo};
use tidemark_core::position;

/// Runs one input (a framed message stream) through decode, relation cache, conversion
/// and envelope encoding. Errors are expected; a panic or hang is a bug.
pub fn pgoutput_stream(data: &[u8]) {
    let naming = Naming {
        pipeline: "fuzz".into(),
        connector: "postgres",
        subject_prefix: "tidemark".into(),
    };
    let mut state = State {
        relcache: RelCache::new(naming.clone(), "fuzzdb"),
        catalog: TypeCatalog::new(),
        encoder: Encoder::new(),
        naming,
        tx: TxInfo::default(),
        commit_hex: position::hex16(0),
        seq: 0,
    };
    let mut rest = data;
    while !rest.is_empty() {
        let (frame, next) = split_frame(rest);
        rest = next;
        state.frame(frame);
    }
}

/// Decodes one bare pgoutput message (no stream state): the decoder alone.
pub fn pgoutput_message(data: &[u8]) {
    let _ = pgoutput::decode_copy_data(data);
    if let Ok(m) = pgoutput::decode(data) {
        let _ = m.name();
    }
}

fn split_frame(buf: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, body)) = buf.split_first_chunk::<4>() else {
        return (buf, &[]);
    };
    let len = u32::from_be_bytes(*len) as usize;
    body.split_at(len.min(body.len()))
}

struct State {
    relcache: RelCache,
    catalog: TypeCatalog,
    encoder: Encoder,
    naming: Naming,
    tx: TxInfo,
    commit_hex: String,
    seq: u64,
}

impl State {
    fn frame(&mut self, frame: &[u8]) {
        match frame.split_first() {
            Some((b'Z', row)) => return self.catalog_row(row),
            Some((b'z', row)) => return self.primary_key(row),
            _ => {}
        }
        if let Ok(ReplicationMessage::XLogData(x)) = pgoutput::decode_copy_data(frame) {
            if let Ok(m) = pgoutput::decode(x.data) {
                self.message(m);
            }
        }
        if let Ok(m) = pgoutput::decode(frame) {
            self.message(m);
        }
    }

    fn catalog_row(&mut self, row: &[u8]) {
        let text = String::from_utf8_lossy(row);
        let cells: Vec<Option<&str>> = text.split('\t').map(Some).collect();
        if let Ok(info) = TypeInfo::from_text_row(&cells) {
            self.catalog.insert(info);
            self.relcache.set_catalog(self.catalog.clone());
        }
    }

    fn primary_key(&mut self, row: &[u8]) {
        let text = String::from_utf8_lossy(row);
        let mut cells = text.split('\t');
        if let Some(Ok(oid)) = cells.next().map(str::parse::<u32>) {
            self.relcache
                .set_primary_key(oid, cells.map(str::to_owned).collect());
        }
    }

    fn message(&mut self, msg: PgMessage<'_>) {
        let _ = msg.name();
        match msg {
            PgMessage::Begin(b) => {
                self.commit_hex = position::hex16(b.final_lsn);
                self.tx = TxInfo {
                    id: b.xid.to_string(),
                    seq: 0,
                    commit_pos: pgoutput::format_lsn(b.final_lsn),
                    last: false,
                };
                self.seq = 0;
                let _ = pgoutput::pg_micros_to_unix_ms(b.commit_ts);
            }
            PgMessage::Commit(c) => {
                let _ = pgoutput::pg_micros_to_unix_ms(c.commit_ts);
                let _ = pgoutput::format_lsn(c.end_lsn);
            }
            PgMessage::Relation(r) => {
                let _ = self.relcache.missing_types(&r);
                let table = self.relcache.apply_relation(&r);
                let _ = table.qualified_name();
            }
            PgMessage::Type(t) => {
                self.relcache.apply_type(&t);
            }
            PgMessage::Insert(ins) => {
                let Some(entry) = self.relcache.relation(ins.rel_oid) else {
                    return;
                };
                if let Ok(after) = convert::tuple_to_row(entry, &ins.new) {
                    let table = entry.table.clone();
                    self.emit(Op::Create, &table, None, Some(&after));
                }
            }
            PgMessage::Update(upd) => {
                let Some(entry) = self.relcache.relation(upd.rel_oid) else {
                    return;
                };
                let before = match &upd.old {
                    Some(old) => match convert::old_tuple_to_row(entry, old) {
                        Ok(row) => Some(row),
                        Err(_) => return,
                    },
                    None => None,
                };
                if let Ok(after) = convert::tuple_to_row(entry, &upd.new) {
                    let table = entry.table.clone();
                    self.emit(Op::Update, &table, before.as_ref(), Some(&after));
                }
            }
            PgMessage::Delete(del) => {
                let Some(entry) = self.relcache.relation(del.rel_oid) else {
                    return;
                };
                if let Ok(before) = convert::old_tuple_to_row(entry, &del.old) {
                    let table = entry.table.clone();
                    self.emit(Op::Delete, &table, Some(&before), None);
                }
            }
            PgMessage::Truncate(t) => {
                let _ = (t.cascade(), t.restart_identity());
                for oid in t.rel_oids {
                    if let Some(table) = self.relcache.table(oid) {
                        self.emit(Op::Truncate, &table, None, None);
                    }
                }
            }
            PgMessage::Message(m) => {
                let _ = m.transactional();
            }
            PgMessage::Origin(_) => {}
        }
    }

    fn emit(&mut self, op: Op, table: &Arc<TableMeta>, before: Option<&Row>, after: Option<&Row>) {
        self.seq += 1;
        self.tx.seq = self.seq;
        let pos = position::streamed(&self.commit_hex, self.seq);
        let change = Change {
            op,
            table,
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    fn corpus(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../fuzz/corpus")
            .join(name)
    }

    #[test]
    fn pgoutput_corpus_and_mutations_never_panic_or_hang() {
        let stats = tidemark_core::fuzzing::replay(
            "pgoutput",
            &corpus("pgoutput"),
            3000,
            0x7067_6f75,
            Duration::from_secs(5),
            super::pgoutput_stream,
        );
        assert!(stats.corpus > 0, "empty pgoutput corpus");
    }
}
