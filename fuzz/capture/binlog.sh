#!/usr/bin/env bash
# Records raw binlog events from the real MariaDB into fuzz/corpus/binlog/ (run as a user
# that can read the server's binlog files). Each corpus file: the file's FORMAT_DESCRIPTION,
# then the events of one or more event groups, back to back as in the binlog file.
set -euo pipefail
cd "$(dirname "$0")/../.."
MY=(mysql -h127.0.0.1 -u"${MYSQL_USER:-tidemark}" -p"${MYSQL_PASSWORD:-tidemark}" -N -B)
DB="fuzzcap_$$"
"${MY[@]}" -e "CREATE DATABASE $DB"
trap '"${MY[@]}" -e "DROP DATABASE IF EXISTS $DB"' EXIT
read -r FILE START _ < <("${MY[@]}" -e "SHOW MASTER STATUS")
DIR=$("${MY[@]}" -e "SELECT @@datadir")
"${MY[@]}" "$DB" <<'SQL'
CREATE TABLE t (id int unsigned PRIMARY KEY AUTO_INCREMENT, ti tinyint, tb tinyint(1), si smallint unsigned,
  mi mediumint, bi bigint unsigned, f float, d double, de decimal(20,6), de2 decimal(5,0), c char(5),
  vc varchar(300), bn binary(4), vb varbinary(10), tt tinytext, tx text, mt mediumtext, bl blob,
  j longtext CHECK (json_valid(j)), e enum('a','b','c'), s set('x','y','z'), bt bit(10), y year,
  dt date, tm time(3), dtm datetime(6), ts timestamp(2) NULL, l1 varchar(10) CHARACTER SET latin1,
  u2 varchar(10) CHARACTER SET utf16, g geometry NULL, nu int NULL);
CREATE TABLE nopk (a int, b varchar(5)) ;
INSERT INTO t VALUES (NULL, -128, 1, 65535, -8388608, 18446744073709551615, 1.5, -2.25e300,
  '-12345678901234.123456', 99999, 'ab', repeat('v', 300), x'00ff', x'0102', 'tt', 'text', 'mt', x'deadbeef',
  '{"a":[1,2.5,null]}', 'b', 'x,z', b'1010101010', 2024, '2024-02-29', '-838:59:59.999', '9999-12-31 23:59:59.999999',
  '2038-01-19 03:14:07.99', 'é', 'ü', ST_GeomFromText('POINT(1 2)'), NULL);
INSERT INTO t (id, dt, dtm, tm) VALUES (NULL, '0000-00-00', '0000-00-00 00:00:00', '00:00:00');
INSERT INTO t (id, dt) VALUES (NULL, '2024-00-15');
UPDATE t SET vc = 'changed', nu = 5 WHERE id = 1;
DELETE FROM t WHERE id = 2;
INSERT INTO nopk VALUES (1, 'a'), (2, NULL);
UPDATE nopk SET b = 'z';
BEGIN; INSERT INTO t (ti) VALUES (1),(2),(3),(4),(5),(6),(7),(8); UPDATE t SET ti = ti + 1; DELETE FROM t WHERE ti > 5; COMMIT;
TRUNCATE nopk;
ALTER TABLE nopk ADD COLUMN c int;
INSERT INTO nopk VALUES (3, 'c', 3);
XA START 'x1'; INSERT INTO nopk VALUES (4, 'd', 4); XA END 'x1'; XA PREPARE 'x1'; XA COMMIT 'x1';
SQL
read -r FILE2 END _ < <("${MY[@]}" -e "SHOW MASTER STATUS")
[ "$FILE" = "$FILE2" ] || { echo "binlog rotated during the capture; run again" >&2; exit 1; }
python3 - "$DIR/$FILE" "$START" "$END" <<'PY'
import os, struct, sys
path, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
raw = open(path, "rb").read()
def events(lo, hi):
    out, p = [], lo
    while p < hi:
        size = struct.unpack_from("<I", raw, p + 9)[0]
        out.append(raw[p:p + size]); p += size
    return out
fde = events(4, 4 + struct.unpack_from("<I", raw, 4 + 9)[0])[0]
evs = events(start, end)
out = "fuzz/corpus/binlog"
os.makedirs(out, exist_ok=True)
groups, cur = [], []
for e in evs:
    if e[4] in (0xa2, 33, 34) and cur:   # a GTID starts the next group
        groups.append(cur); cur = []
    cur.append(e)
if cur: groups.append(cur)
n = 0
def write(name, parts):
    global n
    open(f"{out}/{name}", "wb").write(b"".join(parts)); n += 1
for i, g in enumerate(groups):
    write(f"group-{i:02}", [fde] + g)
# Every rows event with its table map alone, and each event type once on its own.
maps = {}
for i, e in enumerate(evs):
    if e[4] == 19:
        maps[e[19:25]] = e
    elif e[4] in (23, 24, 25, 30, 31, 32) and e[19:25] in maps:
        write(f"rows-{i:03}-{e[4]}", [fde, maps[e[19:25]], e])
seen = set()
for i, e in enumerate(evs):
    if e[4] not in seen:
        seen.add(e[4]); write(f"type-{e[4]:03}", [fde, e])
write("all", [fde] + evs[:60])
print(f"{len(evs)} events, {len(groups)} groups, {n} files")
PY
