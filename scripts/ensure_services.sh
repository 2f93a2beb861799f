#!/usr/bin/env bash
# Make sure the servers the tests talk to are answering:
#   PostgreSQL on 127.0.0.1:5432 (trust auth for 127.0.0.1, user postgres, database `test`)
#   Redis      on 127.0.0.1:6379
# Idempotent: a server that already answers is left alone. One that doesn't is installed from Debian's
# packages if missing, configured and started, then waited for (bounded). Exits non-zero with a message
# naming what is wrong otherwise.
#
# Environment:
#   LETHE_TEST_POSTGRES_URL  if set, only check that this server answers (no install, no start)
#   LETHE_TEST_REDIS_URL     same for Redis
#   ENSURE_SERVICES_TIMEOUT  seconds to wait for a started server (default 60)
#   ENSURE_PG_PORT, ENSURE_PG_CLUSTER, ENSURE_REDIS_PORT
#                            defaults 5432, main, 6379: only for exercising this script against a
#                            throwaway cluster/server without touching the machine's own
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT="${ENSURE_PG_PORT:-5432}"
PG_CLUSTER="${ENSURE_PG_CLUSTER:-main}"
PG_DB="test"
REDIS_HOST=127.0.0.1
REDIS_PORT="${ENSURE_REDIS_PORT:-6379}"
TIMEOUT="${ENSURE_SERVICES_TIMEOUT:-60}"
PYTHON="${PYTHON:-python3}"

log() { printf 'ensure_services: %s\n' "$*" >&2; }
die() { printf 'ensure_services: ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------------------
# Probes. Each returns 0 when the server answers. The CLI clients are preferred; without them a small
# Python probe speaks just enough of the protocol to tell a real server from any open port.

# Postgres answers an SSLRequest with a single byte, 'S' or 'N'.
py_pg_probe() { # host port
    "$PYTHON" - "$1" "$2" <<'PY'
import socket, struct, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.sendall(struct.pack("!ii", 8, 80877103))
        sys.exit(0 if s.recv(1) in (b"S", b"N") else 1)
except OSError:
    sys.exit(1)
PY
}

# Redis answers PING with +PONG (or -NOAUTH when a password is required: it is answering all the same).
py_redis_probe() { # host port
    "$PYTHON" - "$1" "$2" <<'PY'
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.sendall(b"PING\r\n")
        reply = s.recv(64)
        sys.exit(0 if reply.startswith((b"+PONG", b"-NOAUTH")) else 1)
except OSError:
    sys.exit(1)
PY
}

# host and port of a URL (postgresql+psycopg://u:p@h:p/db, redis://h:p/0), one per line.
url_host_port() { # url default_port
    "$PYTHON" - "$1" "$2" <<'PY'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1")
print(u.port or int(sys.argv[2]))
PY
}

pg_answers() { # host port
    if have pg_isready; then
        pg_isready -q -h "$1" -p "$2" -t 3
    else
        py_pg_probe "$1" "$2"
    fi
}

# The server answers AND user postgres gets into database `test` without a password.
pg_test_db_ok() {
    if have psql; then
        PGCONNECT_TIMEOUT=3 psql -X -q -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d "$PG_DB" \
            -c 'select 1' >/dev/null 2>&1
    else
        # Without psql the database can't be checked here; the server answering is all we can say.
        pg_answers "$PG_HOST" "$PG_PORT"
    fi
}

redis_answers() { # host port
    if have redis-cli; then
        [ "$(redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = PONG ]
    else
        py_redis_probe "$1" "$2"
    fi
}

# wait_for DESCRIPTION COMMAND...: retry once a second for at most $TIMEOUT seconds.
wait_for() {
    local what="$1"; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
    log "$what is answering"
}

# ---------------------------------------------------------------------------------------------------------
# Installing (Debian packages, as root).

APT_UPDATED=0
apt_install() {
    if ! have apt-get; then
        die "$* not installed and apt-get is not available: install it by hand"
    fi
    if [ "$(id -u)" -ne 0 ]; then
        die "$* not installed: run this script as root (it uses apt-get), or install it by hand"
    fi
    # apt's chatter goes to a log that is shown only when a step fails.
    local apt_log
    apt_log="$(mktemp)"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -q >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
        apt-get install -y -q --no-install-recommends "$@" >"$apt_log" 2>&1 \
        || { cat "$apt_log" >&2; die "apt-get install $* failed"; }
    rm -f "$apt_log"
}

# ---------------------------------------------------------------------------------------------------------
# PostgreSQL

pg_version() {
    # The newest installed major version that has our cluster (normally exactly one: Debian 12 has 15).
    local dir
    for dir in /etc/postgresql/*/"$PG_CLUSTER"; do
        [ -d "$dir" ] && basename "$(dirname "$dir")"
    done | sort -n -r | head -n 1 | grep .
}

# Trust for loopback TCP, ahead of the packaged rules (pg_hba.conf is read top-down, first match wins).
# A marker makes this a one-time edit. Only ever run on a cluster this script had to start.
pg_configure_trust() { # version
    local hba="/etc/postgresql/$1/$PG_CLUSTER/pg_hba.conf"
    [ -f "$hba" ] || die "PostgreSQL cluster $1/$PG_CLUSTER has no $hba"
    if ! grep -q 'lethe-ensure-services' "$hba"; then
        log "configuring trust auth for 127.0.0.1 and ::1 in $hba"
        local tmp
        tmp="$(mktemp)"
        {
            echo '# lethe-ensure-services: test servers on loopback, no passwords'
            echo 'host    all             all             127.0.0.1/32            trust'
            echo 'host    all             all             ::1/128                 trust'
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba" # keeps the file's owner and mode
        rm -f "$tmp"
    fi
}

pg_create_test_db() {
    local exists
    exists="$(psql -X -q -w -tA -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -c "select 1 from pg_database where datname = '$PG_DB'" 2>/dev/null)" \
        || die "PostgreSQL answers on $PG_HOST:$PG_PORT but user postgres can't log in without a password (trust auth for 127.0.0.1 is not configured)"
    if [ "$exists" != 1 ]; then
        log "creating database $PG_DB"
        psql -X -q -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -c "create database $PG_DB" >/dev/null \
            || die "could not create database $PG_DB"
    fi
}

# An overriding URL is only checked, never installed or started.
check_override() { # variable default_port answers_function server_name
    local variable="$1" url="${!1}" host port
    { read -r host; read -r port; } < <(url_host_port "$url" "$2")
    "$3" "$host" "$port" \
        || die "$variable is set but no $4 answers at $host:$port (only checked, not started)"
    log "$4 at $host:$port ($variable) is answering"
}

ensure_postgres() {
    if [ -n "${LETHE_TEST_POSTGRES_URL:-}" ]; then
        check_override LETHE_TEST_POSTGRES_URL 5432 pg_answers PostgreSQL
        return 0
    fi

    if pg_answers "$PG_HOST" "$PG_PORT"; then
        if pg_test_db_ok; then
            log "PostgreSQL on $PG_HOST:$PG_PORT is answering, database $PG_DB reachable: nothing to do"
            return 0
        fi
        # Answering, but no database `test` (or no trust): the one thing that can be fixed without a restart.
        pg_create_test_db
        pg_test_db_ok || die "PostgreSQL on $PG_HOST:$PG_PORT answers but database $PG_DB is not reachable as user postgres"
        log "PostgreSQL on $PG_HOST:$PG_PORT ready"
        return 0
    fi

    log "PostgreSQL is not answering on $PG_HOST:$PG_PORT"
    have pg_ctlcluster || apt_install postgresql
    local version
    version="$(pg_version)" \
        || die "PostgreSQL is installed but has no cluster '$PG_CLUSTER' under /etc/postgresql (create one with pg_createcluster)"
    pg_configure_trust "$version"
    log "starting PostgreSQL $version/$PG_CLUSTER"
    # Already running (e.g. only on a socket after a config change) is fine: reload picks up pg_hba.conf.
    if pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" status >/dev/null 2>&1; then
        pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" reload \
            || die "could not reload PostgreSQL $version/$PG_CLUSTER"
    else
        pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start \
            || die "could not start PostgreSQL $version/$PG_CLUSTER (see /var/log/postgresql/postgresql-$version-$PG_CLUSTER.log)"
    fi
    wait_for "PostgreSQL on $PG_HOST:$PG_PORT" pg_answers "$PG_HOST" "$PG_PORT" \
        || die "PostgreSQL $version/$PG_CLUSTER started but did not answer on $PG_HOST:$PG_PORT within ${TIMEOUT}s (see /var/log/postgresql/postgresql-$version-$PG_CLUSTER.log; is its port $PG_PORT?)"
    pg_create_test_db
    pg_test_db_ok || die "PostgreSQL on $PG_HOST:$PG_PORT answers but database $PG_DB is not reachable as user postgres"
    log "PostgreSQL on $PG_HOST:$PG_PORT ready"
}

# ---------------------------------------------------------------------------------------------------------
# Redis

ensure_redis() {
    if [ -n "${LETHE_TEST_REDIS_URL:-}" ]; then
        check_override LETHE_TEST_REDIS_URL 6379 redis_answers Redis
        return 0
    fi

    if redis_answers "$REDIS_HOST" "$REDIS_PORT"; then
        log "Redis on $REDIS_HOST:$REDIS_PORT is answering: nothing to do"
        return 0
    fi

    log "Redis is not answering on $REDIS_HOST:$REDIS_PORT"
    if ! have redis-server; then
        apt_install redis-server
        # The package may have started its own server on the default port.
        if redis_answers "$REDIS_HOST" "$REDIS_PORT"; then
            log "Redis on $REDIS_HOST:$REDIS_PORT is answering (started by the package)"
            return 0
        fi
    fi
    local logfile=/var/log/redis/lethe-tests.log
    [ -d /var/log/redis ] && [ -w /var/log/redis ] || logfile="${TMPDIR:-/tmp}/lethe-redis-$REDIS_PORT.log"
    log "starting redis-server on port $REDIS_PORT (log: $logfile)"
    # No persistence: test data only. --dir for the (unused) dump file, so the cwd doesn't matter.
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "${TMPDIR:-/tmp}" --logfile "$logfile" \
        || die "redis-server failed to start (see $logfile)"
    wait_for "Redis on $REDIS_HOST:$REDIS_PORT" redis_answers "$REDIS_HOST" "$REDIS_PORT" \
        || die "redis-server started but did not answer on $REDIS_HOST:$REDIS_PORT within ${TIMEOUT}s (see $logfile)"
}

ensure_postgres
ensure_redis
