#!/usr/bin/env bash
# Records raw pgoutput messages from the real Postgres into fuzz/corpus/pgoutput/.
# Each corpus file: the custom types ('Z' rows), then one or more transactions, every
# message framed as a 4-byte big-endian length + bytes (see connectors/postgres/source/src/fuzzing.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
PG="${TIDEMARK_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
DB="fuzzcap_$$"
psql "$PG/postgres" -qc "CREATE DATABASE $DB"
trap 'psql "$PG/$DB" -qc "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '"'"$DB"'"'" >/dev/null 2>&1 || true; psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" ' EXIT
psql "$PG/$DB" -q <<'SQL'
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE t (id bigserial PRIMARY KEY, b bool, i2 int2, i4 int4, f4 float4, f8 float8,
  n numeric, n2 numeric(10,2), tx text, vc varchar(20), ch char(3), by bytea, d date, ts timestamp,
  tz timestamptz, tm time, ttz timetz, iv interval, u uuid, j json, jb jsonb, ia int[], ta text[],
  m mood, ma mood[], p posint, pr pair, ip inet, ci cidr, mc macaddr, bi bit(4), vb varbit,
  pt point, bx box, r int4range, x xml, money money, o oid);
CREATE TABLE full_t (k int, v text);
ALTER TABLE full_t REPLICA IDENTITY FULL;
CREATE TABLE nokey (a int, b text);
CREATE PUBLICATION fuzzpub FOR ALL TABLES;
SQL
psql "$PG/$DB" -qAtc "SELECT pg_create_logical_replication_slot('$DB', 'pgoutput')" >/dev/null
psql "$PG/$DB" -q <<'SQL'
INSERT INTO t (b,i2,i4,f4,f8,n,n2,tx,vc,ch,by,d,ts,tz,tm,ttz,iv,u,j,jb,ia,ta,m,ma,p,pr,ip,ci,mc,bi,vb,pt,bx,r,x,money,o)
VALUES (true,-32768,2147483647,1.5,'NaN',123456789.000001,-12.30,'héllo "q" \ x','vc','ab',
 '\x00ff10','2024-02-29','2024-01-01 12:00:00.123456','infinity','23:59:59.999999','10:00+05:30',
 '1 year 2 mons -3 days 04:05:06.7','a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11','{"a":[1,2,{"b":null}]}',
 '{"k": 1e30, "s": "\u00e9"}','{1,NULL,3}','{"a,b","c\"d",NULL,""}','happy','{sad,ok}',7,'(1,"x y")',
 '192.168.0.1/24','10.0.0.0/8','08:00:2b:01:02:03',B'1010',B'101','(1.5,-2)','((0,0),(1,1))','[1,10)',
 '<a>x</a>',12.34,42);
INSERT INTO t (b, tx, ia, d, ts) VALUES (NULL, repeat('z', 3000), '{{1,2},{3,4}}', '-infinity', '0001-01-01 00:00:00 BC');
INSERT INTO t (tx) VALUES (repeat('toast', 3000));
UPDATE t SET i4 = i4 - 1, jb = '[]' WHERE id = 1;
UPDATE t SET id = 100 WHERE id = 2;
UPDATE t SET b = false WHERE id = 3;
DELETE FROM t WHERE id = 100;
INSERT INTO full_t VALUES (1, 'a'), (2, NULL);
UPDATE full_t SET v = 'b' WHERE k = 1;
DELETE FROM full_t WHERE k = 2;
INSERT INTO nokey VALUES (1, 'x');
BEGIN; INSERT INTO t (i4) SELECT g FROM generate_series(1, 200) g; SELECT pg_logical_emit_message(true, 'fuzz', 'hello'); COMMIT;
SELECT pg_logical_emit_message(false, 'fuzz', '\x00ff'::bytea);
TRUNCATE full_t, nokey RESTART IDENTITY CASCADE;
ALTER TABLE t ADD COLUMN extra text DEFAULT 'd';
INSERT INTO t (i4, extra) VALUES (5, 'e');
SQL
python3 - "$PG/$DB" "$DB" <<'PY'
import os, struct, subprocess, sys
url, slot = sys.argv[1], sys.argv[2]
def q(sql):
    return subprocess.run(["psql", url, "-qAtF", "\t", "-c", sql], check=True,
                          capture_output=True, text=True).stdout.splitlines()
cat = [l for l in q("SELECT t.oid, format_type(t.oid, NULL), t.typcategory, t.typelem, t.typbasetype, "
    "t.typtype, t.typdelim FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
    "WHERE n.nspname = 'public'")]
msgs = [bytes.fromhex(l) for l in q(f"SELECT encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes("
    f"'{slot}', NULL, NULL, 'proto_version', '1', 'publication_names', 'fuzzpub', 'messages', 'true')")]
frame = lambda b: struct.pack(">I", len(b)) + b
head = b"".join(frame(b"Z" + l.encode()) for l in cat)
out = "fuzz/corpus/pgoutput"
os.makedirs(out, exist_ok=True)
# Transactions: Begin .. Commit; Relation/Type messages stay with the transaction they came in.
txs, cur = [], []
for m in msgs:
    cur.append(m)
    if m[:1] == b"C":
        txs.append(cur); cur = []
if cur: txs.append(cur)
rels = [m for m in msgs if m[:1] in (b"R", b"Y")]
n = 0
def write(name, parts):
    global n
    data = head + b"".join(frame(p) for p in parts)
    with open(f"{out}/{name}", "wb") as f: f.write(data)
    n += 1
for i, tx in enumerate(txs):
    tx = tx[:12] + ([tx[-1]] if len(tx) > 12 else [])  # keep the big transaction small
    write(f"tx-{i:02}", [m for m in rels if m not in tx] + tx)
write("all-small", [m for tx in txs for m in tx[:6]])
for i, m in enumerate(msgs[:80]):
    write(f"msg-{i:03}-{chr(m[0])}", rels + [m] if m[:1] not in (b"R", b"Y") else [m])
# CopyData-wrapped ('w' XLogData) versions of a few messages.
for i, m in enumerate(msgs[:10]):
    w = b"w" + struct.pack(">QQq", 0x16B3748, 0x16B3800, 0) + m
    write(f"xlog-{i:02}", rels + [w])
write("keepalive", [b"k" + struct.pack(">QqB", 0x16B3800, 0, 1)])
print(f"{len(msgs)} messages, {len(txs)} transactions, {n} files")
PY
