#!/usr/bin/env bash
# A throwaway PostgreSQL for the test suite: Debian's package (installed when missing), a
# cluster in a temp dir owned by a non-root user, on a free loopback port.
#   scripts/pg-lab.sh up     start it; writes $PG_LAB_DIR/env.sh (exports HPCSCALE_TEST_PG_URL)
#   scripts/pg-lab.sh down   stop it and remove the dir
#   scripts/pg-lab.sh restart   stop it (fast: clients are disconnected, everything committed is
#                               kept) and start it again on the same port and data
set -euo pipefail
DIR="${PG_LAB_DIR:-/tmp/hpcscale-pg-lab}"
PY="${PYTHON:-python3}"

pg_bin() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        [ -x "$bin/initdb" ] && { echo "$bin"; return 0; }
    done
    return 1
}

install_pg() {
    if pg_bin >/dev/null; then return 0; fi
    if [ "$(id -u)" != 0 ]; then
        echo "pg-lab: PostgreSQL is not installed and we are not root to install it" >&2
        return 1
    fi
    echo "pg-lab: installing Debian's postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends postgresql </dev/null >/dev/null \
        || { apt-get update -q </dev/null >/dev/null \
             && apt-get install -y -q --no-install-recommends postgresql </dev/null >/dev/null; }
    rm -f /usr/sbin/policy-rc.d
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

up() {
    if [ -f "$DIR/env.sh" ] && [ -f "$DIR/data/postmaster.pid" ] \
        && kill -0 "$(head -1 "$DIR/data/postmaster.pid")" 2>/dev/null; then
        echo "pg-lab: already up ($DIR/env.sh)" >&2; return 0
    fi
    install_pg
    local bin port
    bin="$(pg_bin)"
    rm -rf "$DIR"; mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
    port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    as_owner "$bin/initdb" -D "$DIR/data" -U hpcscale -A trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1
    as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U hpcscale hpcscale_test
    cat > "$DIR/env.sh" <<ENV
export HPCSCALE_TEST_PG_URL=postgresql://hpcscale@127.0.0.1:$port/hpcscale_test
export PG_LAB_BIN=$bin
export PG_LAB_PORT=$port
ENV
    echo "pg-lab: up on 127.0.0.1:$port ($DIR/env.sh)" >&2
}

down() {
    local bin
    if [ -f "$DIR/data/postmaster.pid" ] && bin="$(pg_bin)"; then
        as_owner "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
}

restart() {
    local bin
    [ -f "$DIR/data/postmaster.pid" ] || { echo "pg-lab: not running in $DIR" >&2; return 1; }
    bin="$(pg_bin)"
    # Same options as at `up` (pg_ctl keeps them in postmaster.opts); -l: the log stays in the
    # file, not on our stdout.
    as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -m fast -w -t 60 restart >/dev/null
    echo "pg-lab: restarted ($DIR)" >&2
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    restart) restart ;;
    *) echo "usage: $0 up|down|restart" >&2; exit 2 ;;
esac
