#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for tests.
#
#   tests/pg/postgres.sh start [DIR]   -> prints postgres://postgres@127.0.0.1:PORT/postgres on stdout
#   tests/pg/postgres.sh stop DIR      -> stops the cluster and removes DIR
#
# `start` without DIR creates a fresh temp dir and prints its path on stderr
# (and writes it to $ZTMESH_PG_DIR_FILE when that is set). DIR/url holds the URL.
# Installs PostgreSQL with apt when initdb/postgres are not found. initdb and
# postgres refuse to run as root, so they run as the `postgres` user (created
# when missing). Trust auth, loopback only, a free port, fsync off.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_pg_bin() {
    # prints the directory that holds initdb and postgres, or nothing
    local d
    if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v postgres)")"
        return
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return
        fi
    done
}

ensure_pg() {
    PG_BIN=$(find_pg_bin)
    if [ -z "$PG_BIN" ]; then
        [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and we are not root (install the 'postgresql' package)"
        log "PostgreSQL not found; installing it with apt-get (quiet)"
        export DEBIAN_FRONTEND=noninteractive
        timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
        timeout 900 apt-get install -y -qq --no-install-recommends postgresql >&2 \
            || die "apt-get install postgresql failed"
        PG_BIN=$(find_pg_bin)
        [ -n "$PG_BIN" ] || die "postgresql installed but initdb/postgres still not found"
    fi
}

# Run a command as the unprivileged postgres user (or as ourselves when not root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ensure_pg_user() {
    [ "$(id -u)" = 0 ] || return 0
    if ! id postgres >/dev/null 2>&1; then
        log "creating system user postgres"
        useradd --system --user-group --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin postgres
    fi
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

cmd_start() {
    local dir=${1:-}
    ensure_pg
    ensure_pg_user
    if [ -z "$dir" ]; then
        dir=$(mktemp -d /tmp/ztmesh-pg.XXXXXX)
    else
        mkdir -p "$dir"
        [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
    fi
    dir=$(readlink -f "$dir")
    touch "$dir/.ztmesh-pg"          # marker: `stop` only removes dirs that have it
    mkdir -p "$dir/data" "$dir/sock"
    chmod 755 "$dir"
    chmod 700 "$dir/data"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir" "$dir/data" "$dir/sock"
        # the postgres user must be able to reach DIR through its parents
        as_pg test -x "$dir" || die "user postgres cannot access $dir (parent directory permissions)"
    fi
    if [ -n "${ZTMESH_PG_DIR_FILE:-}" ]; then
        echo "$dir" >"$ZTMESH_PG_DIR_FILE"
    fi
    log "cluster dir: $dir (binaries: $PG_BIN)"

    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }

    local port attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        # setsid + nohup: the server outlives this script and is not hit by the caller's Ctrl-C
        as_pg setsid nohup "$PG_BIN/postgres" -D "$dir/data" -k "$dir/sock" \
            -h 127.0.0.1 -p "$port" \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=300 -c shared_buffers=64MB \
            </dev/null >"$dir/postgres.log" 2>&1 &
        local i ready=0
        for i in $(seq 1 150); do   # up to 30 s
            if grep -q "database system is ready to accept connections" "$dir/postgres.log" 2>/dev/null \
                && python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null; then
                ready=1
                break
            fi
            if grep -q "could not bind\|could not create listen socket\|FATAL" "$dir/postgres.log" 2>/dev/null; then
                break
            fi
            sleep 0.2
        done
        if [ "$ready" = 1 ]; then
            local url="postgres://postgres@127.0.0.1:$port/postgres"
            echo "$url" >"$dir/url"
            log "ready on 127.0.0.1:$port"
            echo "$url"
            return 0
        fi
        log "postgres did not become ready on port $port (attempt $attempt); log:"
        tail -n 20 "$dir/postgres.log" >&2 || true
        stop_server "$dir"
    done
    die "could not start PostgreSQL (dir left for inspection: $dir)"
}

stop_server() {
    local dir=$1 pid i
    [ -f "$dir/data/postmaster.pid" ] || return 0
    pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    case "$pid" in ''|*[!0-9]*) return 0 ;; esac
    kill -INT "$pid" 2>/dev/null || return 0
    for i in $(seq 1 100); do       # up to 10 s for a fast shutdown
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "postgres (pid $pid) did not stop after SIGINT; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

cmd_stop() {
    local dir=${1:-}
    [ -n "$dir" ] || die "usage: $0 stop DIR"
    [ -d "$dir" ] || { log "$dir does not exist; nothing to stop"; return 0; }
    [ -f "$dir/.ztmesh-pg" ] || die "$dir was not created by $0 start (no .ztmesh-pg marker); not touching it"
    stop_server "$dir"
    rm -rf -- "$dir"
    log "stopped and removed $dir"
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
