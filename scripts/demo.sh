#!/usr/bin/env bash
# The demo: services ready for CDC, tidemark built, a small shop schema seeded in
# Postgres, and the `demo` pipeline of pipelines.toml replicating it through JetStream
# into another Postgres database and into MariaDB while a writer keeps changing rows.
#
#   scripts/demo.sh          run until Ctrl-C (metrics on http://127.0.0.1:9187/metrics)
#   scripts/demo.sh --once   stop after showing that the replicas caught up (exit 1 if not)
set -euo pipefail
cd "$(dirname "$0")/.."
once=false
[ "${1:-}" = "--once" ] && once=true

# The servers: the instances scripts/services.sh owns (their addresses come from its --env
# output, so port overrides such as TIDEMARK_SERVICES_PG_PORT apply here too).
services_env=$(bash scripts/services.sh --env)
eval "$services_env"
host_port() { local rest=${1#*://}; rest=${rest##*@}; printf '%s' "${rest%%/*}"; }
export TIDEMARK_DEMO_NATS=$TIDEMARK_TEST_NATS
TIDEMARK_DEMO_PG=$(host_port "$TIDEMARK_TEST_PG")
TIDEMARK_DEMO_MYSQL=$(host_port "$TIDEMARK_TEST_MYSQL")
export TIDEMARK_DEMO_PG TIDEMARK_DEMO_MYSQL
echo "building tidemark (release)…"
cargo build --release --locked --bin tidemark
bin=./target/release/tidemark

export TIDEMARK_PG_PASSWORD=tidemark TIDEMARK_MYSQL_PASSWORD=tidemark
export PGPASSWORD=tidemark
pg() { psql -X -q -v ON_ERROR_STOP=1 -h "${TIDEMARK_DEMO_PG%:*}" -p "${TIDEMARK_DEMO_PG##*:}" -U tidemark -d "$1" "${@:2}"; }
my() { mariadb --no-defaults --skip-ssl -h"${TIDEMARK_DEMO_MYSQL%:*}" -P"${TIDEMARK_DEMO_MYSQL##*:}" -utidemark -ptidemark "$@"; }

schema_pg='
CREATE TABLE IF NOT EXISTS customers (id bigint PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL, total numeric(12,2) NOT NULL, items jsonb, updated_at timestamptz NOT NULL DEFAULT now());'
pg tidemark_demo -c "$schema_pg"
pg tidemark_demo_replica -c "$schema_pg"
my tidemark_demo_replica -e '
CREATE TABLE IF NOT EXISTS customers (id bigint PRIMARY KEY, name text NOT NULL, email text, created_at datetime(6) NOT NULL);
CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status varchar(20) NOT NULL, total decimal(12,2) NOT NULL, items json, updated_at datetime(6) NOT NULL);'

# Existing rows: these reach the replicas through the initial snapshot.
pg tidemark_demo -c "
INSERT INTO customers (id, name, email)
  SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 1000) g
  ON CONFLICT DO NOTHING;
INSERT INTO orders (id, customer_id, status, total, items)
  SELECT g, 1 + g % 1000, 'new', (g % 500) + 0.99, jsonb_build_array(jsonb_build_object('sku', g % 97, 'qty', 1 + g % 3))
  FROM generate_series(1, 5000) g
  ON CONFLICT DO NOTHING;"

"$bin" check -c pipelines.toml || { echo "tidemark check failed: see above"; exit 1; }

log=$(mktemp -t tidemark-demo.XXXXXX.log)
"$bin" run -c pipelines.toml >"$log" 2>&1 &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
echo "tidemark running (pid $daemon, log $log)"

# A writer: new orders, payments (updates), cancellations (deletes).
writer() {
  local i=0
  while :; do
    i=$((i + 1))
    pg tidemark_demo -c "
BEGIN;
INSERT INTO orders (id, customer_id, status, total)
  SELECT coalesce(max(id), 0) + 1, 1 + (random() * 999)::int, 'new', round((random() * 300)::numeric, 2) FROM orders;
UPDATE orders SET status = 'paid', updated_at = now() WHERE id = (SELECT min(id) FROM orders WHERE status = 'new');
DELETE FROM orders WHERE id = (SELECT min(id) FROM orders WHERE status = 'paid') AND $((i % 5)) = 0;
COMMIT;" >/dev/null
    if $once && [ $i -ge 50 ]; then return; fi
    sleep 0.2
  done
}

counts() {
  local src rep my_rep
  src=$(pg tidemark_demo -Atc "SELECT count(*) || '/' || coalesce(sum(total),0) FROM orders")
  rep=$(pg tidemark_demo_replica -Atc "SELECT count(*) || '/' || coalesce(sum(total),0) FROM orders")
  my_rep=$(my -N -B tidemark_demo_replica -e "SELECT concat(count(*), '/', coalesce(sum(total),0)) FROM orders")
  echo "$src $rep $my_rep"
}

if $once; then
  writer
  for _ in $(seq 1 120); do
    read -r src rep my_rep <<<"$(counts)"
    if [ "$src" = "$rep" ] && [ "$src" = "$my_rep" ]; then
      echo "orders (count/sum): source $src = postgres replica $rep = mariadb replica $my_rep"
      "$bin" status -c pipelines.toml
      exit 0
    fi
    sleep 1
  done
  echo "replicas did not catch up: source $src, postgres replica $rep, mariadb replica $my_rep"
  tail -n 50 "$log"
  exit 1
fi

writer &
writer_pid=$!
trap 'kill $writer_pid 2>/dev/null; kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
echo "writing orders; Ctrl-C to stop. Every 5 s: orders count/sum in source, postgres replica, mariadb replica"
while kill -0 $daemon 2>/dev/null; do
  sleep 5
  echo "$(date +%T)  $(counts)"
done
