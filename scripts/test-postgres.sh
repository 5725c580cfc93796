#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the store's tests, on 127.0.0.1 only, trust auth.
#
#   scripts/test-postgres.sh start   # init if needed, start if not running, create tern_test;
#                                    # prints the URL (and nothing else) on stdout
#   scripts/test-postgres.sh url     # prints the URL
#   scripts/test-postgres.sh ca      # prints the path of the CA certificate of its TLS
#   scripts/test-postgres.sh status  # exit 0 when running
#   scripts/test-postgres.sh stop    # stops it (keeps the data directory)
#   scripts/test-postgres.sh clean   # stops it and removes the data directory
#
# Typical use:  export TERN_TEST_POSTGRES_URL="$(scripts/test-postgres.sh start)"
#
# Settings (environment): TERN_TEST_PG_PORT (55432), TERN_TEST_PG_DIR (/tmp/tern-test-pg),
# TERN_TEST_PG_BIN (the PostgreSQL 15 bin directory, found automatically).
# As root, the server runs as the `postgres` user (initdb refuses root). Durability is
# switched off (fsync=off): the data is disposable, the tests are faster.
# TLS is on (optional for clients): a throwaway CA signs a server certificate for
# localhost and 127.0.0.1, so tests can connect with sslmode=verify-full.
set -euo pipefail

PORT="${TERN_TEST_PG_PORT:-55432}"
DATA="${TERN_TEST_PG_DIR:-/tmp/tern-test-pg}"
DB=tern_test
URL="postgres://postgres@127.0.0.1:${PORT}/${DB}"
CA="$DATA.ca.crt"

log() { echo "test-postgres: $*" >&2; }
die() { log "$*"; exit 1; }

find_bin() {
    if [[ -n "${TERN_TEST_PG_BIN:-}" ]]; then
        echo "$TERN_TEST_PG_BIN"
        return
    fi
    local d
    for d in /usr/lib/postgresql/15/bin /usr/local/pgsql/bin; do
        if [[ -x "$d/initdb" ]]; then
            echo "$d"
            return
        fi
    done
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        pg_config --bindir
        return
    fi
    die "PostgreSQL 15 server binaries not found (looked in /usr/lib/postgresql/15/bin); install Debian's postgresql-15 package or set TERN_TEST_PG_BIN"
}

BIN="$(find_bin)"

# Runs a command as the user that owns the cluster: `postgres` when we are root.
as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user (Debian's postgresql package creates it)"
        # The owner may not be allowed into the caller's working directory.
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# A CA and a server certificate it signs (localhost, 127.0.0.1), made once per data directory.
make_certs() {
    [[ -f "$DATA/server.crt" && -f "$CA" ]] && return
    command -v openssl >/dev/null 2>&1 || die "openssl is needed for the test server's TLS certificates"
    local tmp
    tmp="$(mktemp -d)"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tern test CA" \
        -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$tmp/ext"
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tmp/ext" -out "$tmp/server.crt" 2>/dev/null
    install -m 600 "$tmp/server.key" "$DATA/server.key"
    install -m 644 "$tmp/server.crt" "$DATA/server.crt"
    if [[ "$(id -u)" -eq 0 ]]; then chown postgres: "$DATA/server.key" "$DATA/server.crt"; fi
    install -m 644 "$tmp/ca.crt" "$CA"
    rm -rf "$tmp"
}

running() {
    [[ -f "$DATA/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

psql_admin() {
    "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@"
}

start() {
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        mkdir -p "$DATA"
        if [[ "$(id -u)" -eq 0 ]]; then
            id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user (Debian's postgresql package creates it)"
            chown postgres: "$DATA"
        fi
        chmod 700 "$DATA"
        log "initialising $DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale \
            >"$DATA.initdb.log" 2>&1 || { cat "$DATA.initdb.log" >&2; die "initdb failed"; }
    fi
    make_certs
    if running; then
        log "already running on 127.0.0.1:$PORT"
    else
        log "starting on 127.0.0.1:$PORT"
        if ! as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key" \
            start >/dev/null; then
            tail -n 30 "$DATA/server.log" >&2 || true
            die "PostgreSQL did not start (is port $PORT taken?)"
        fi
    fi
    if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]]; then
        # Two concurrent starts may both try: accept "already exists".
        psql_admin -c "CREATE DATABASE $DB" 2>/dev/null \
            || [[ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" == "1" ]] \
            || die "cannot create database $DB"
    fi
    echo "$URL"
}

stop() {
    if running; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        log "stopped"
    else
        log "not running"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    clean) stop; rm -rf "$DATA" "$DATA.initdb.log" "$CA"; log "removed $DATA" ;;
    url) echo "$URL" ;;
    ca) echo "$CA" ;;
    status) if running; then log "running on 127.0.0.1:$PORT"; else log "not running"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|clean|url|ca|status" >&2; exit 2 ;;
esac
