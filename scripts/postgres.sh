#!/usr/bin/env bash
# A project-local PostgreSQL server on loopback, for the study tests and benches.
#
#   scripts/postgres.sh start   # install (Debian's package) if needed, init, start
#                               # (on failure: a warning and exit 0; start-strict exits non-zero)
#   scripts/postgres.sh stop
#   scripts/postgres.sh status
#   scripts/postgres.sh url     # prints the URL of the running server (it holds the password)
#
# The cluster lives in .tunebook/pg (git-ignored), listens only on 127.0.0.1 on a free
# port, has no Unix socket, and requires a random password. Its URL is written to
# .tunebook/postgres_url, which the tests read. PostgreSQL refuses to run as root, so
# under root the server runs as the `postgres` system user. Idempotent: `start` on a
# running server only prints the URL.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="$ROOT/.tunebook"
PGROOT="$STATE/pg"
URL_FILE="$STATE/postgres_url"
DB=tunebook
DB_USER=tunebook

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local candidate
    if command -v pg_ctl >/dev/null 2>&1; then
        candidate="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
        if [ -x "$candidate/initdb" ] && [ -x "$candidate/postgres" ]; then
            echo "$candidate"
            return 0
        fi
    fi
    candidate="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
    if [ -n "$candidate" ] && [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/initdb" ]; then
        echo "$candidate"
        return 0
    fi
    return 1
}

install_postgres() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            log "no PostgreSQL server binaries found and not root: install Debian's 'postgresql' package"
            return 1
        fi
    fi
    log "installing Debian's postgresql package (apt-get)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# The account the server runs as: ourselves, or a system user when we are root.
server_user() {
    if [ "$(id -u)" -ne 0 ]; then
        id -un
        return
    fi
    if ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    fi
    echo postgres
}

as_server() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u "$SERVER_USER" -- "$@")  # its own cwd may be closed to it
    else
        "$@"
    fi
}

free_port() {
    python3 - "$@" <<'EOF'
import socket, sys
preferred = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else 0
for port in (preferred, 0):
    try:
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        s.close()
        break
    except OSError:
        continue
EOF
}

running() {
    [ -f "$DATA/postmaster.pid" ] && as_server "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

url() {
    echo "postgresql://$DB_USER:$(cat "$PGROOT/password")@127.0.0.1:$(cat "$PGROOT/port")/$DB"
}

ready() {
    PGPASSWORD="$(cat "$PGROOT/password")" "$BINDIR/psql" -h 127.0.0.1 -p "$(cat "$PGROOT/port")" \
        -U "$DB_USER" -d "$DB" -Atc "select 1" >/dev/null 2>&1
}

setup_paths() {
    if [ -f "$STATE/pg_root" ]; then
        PGROOT="$(cat "$STATE/pg_root")"
    fi
    DATA="$PGROOT/data"
    if ! BINDIR="$(find_bindir)"; then
        if [ "${1:-}" = start ]; then
            install_postgres
            BINDIR="$(find_bindir)" || { log "postgresql installed but pg_ctl/initdb not found"; exit 1; }
        else
            log "PostgreSQL is not installed"
            exit 1
        fi
    fi
    SERVER_USER="$(server_user)"
}

start() {
    mkdir -p "$PGROOT"
    if running && [ -f "$URL_FILE" ] && ready; then
        log "already running on 127.0.0.1:$(cat "$PGROOT/port") (URL in $URL_FILE)"
        return 0
    fi
    if [ "$(id -u)" -eq 0 ]; then
        chown "$SERVER_USER" "$PGROOT"
        if ! as_server test -w "$PGROOT"; then
            # A parent directory (e.g. /root) is closed to the server's user: keep the
            # cluster under /tmp instead, one per checkout, and remember where.
            PGROOT="/tmp/tunebook-pg-$(echo "$ROOT" | md5sum | cut -c1-12)"
            log "the $SERVER_USER user cannot reach $ROOT; the cluster goes to $PGROOT"
            mkdir -p "$PGROOT"
            chown "$SERVER_USER" "$PGROOT"
            chmod 700 "$PGROOT"
            echo "$PGROOT" >"$STATE/pg_root"
            DATA="$PGROOT/data"
        fi
    fi
    if [ ! -f "$DATA/PG_VERSION" ]; then
        rm -rf "$DATA"
        umask 077
        python3 -c 'import secrets; print(secrets.token_hex(16))' >"$PGROOT/password"
        local pwfile
        pwfile="$(mktemp)"
        cp "$PGROOT/password" "$pwfile"
        [ "$(id -u)" -eq 0 ] && chown "$SERVER_USER" "$pwfile"
        log "initialising a cluster in $DATA"
        as_server "$BINDIR/initdb" -D "$DATA" -U "$DB_USER" --pwfile="$pwfile" \
            --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --no-instructions >/dev/null
        rm -f "$pwfile"
        umask 022
    fi
    local port
    port="$(free_port "$(cat "$PGROOT/port" 2>/dev/null || true)")"
    echo "$port" >"$PGROOT/port"
    if ! running; then
        rm -f "$DATA/postmaster.pid"
        as_server "$BINDIR/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=''" start >/dev/null
    fi
    local existing
    existing="$(PGPASSWORD="$(cat "$PGROOT/password")" "$BINDIR/psql" -h 127.0.0.1 -p "$port" -U "$DB_USER" \
        -d postgres -Atc "select 1 from pg_database where datname = '$DB'")"
    if [ "$existing" != 1 ]; then
        PGPASSWORD="$(cat "$PGROOT/password")" "$BINDIR/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB"
    fi
    umask 077
    url >"$URL_FILE"
    umask 022
    ready || { log "the server started but does not answer; see $DATA/server.log"; exit 1; }
    log "running on 127.0.0.1:$port (URL in $URL_FILE)"
}

stop() {
    if running; then
        as_server "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        log "stopped"
    fi
    rm -f "$URL_FILE"
}

case "${1:-}" in
    # A server that cannot start must not stop `make test`: the PostgreSQL tests then
    # skip, naming the reason; this line says why it did not start.
    start) "$0" start-strict || log "PostgreSQL could not be started (see above); its tests will be skipped" ;;
    start-strict) setup_paths start; start ;;
    stop) setup_paths; stop ;;
    status) setup_paths; if running; then echo running; else echo stopped; exit 3; fi ;;
    url) setup_paths; running && url ;;
    *) echo "usage: $0 start|start-strict|stop|status|url" >&2; exit 2 ;;
esac
