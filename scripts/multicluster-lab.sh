#!/usr/bin/env bash
# A site that outgrew one login node, on one machine (issue 17): two Slurm clusters (alpha and
# bravo: two slurmctlds, their own 4 nodes and ClusterNames, from scripts/slurm-lab.sh), one
# PostgreSQL (scripts/pg-lab.sh), two `hpcscale server` replicas on it behind haproxy (Debian's
# package, installed when missing), and one `hpcscale manager` per cluster, each with one pool
# serving the same queue (mc) through haproxy. Workers reach the API through haproxy too.
#
#   scripts/multicluster-lab.sh up          bring it all up (idempotent); prints env.sh
#   scripts/multicluster-lab.sh down        stop everything it started, remove the dir
#   scripts/multicluster-lab.sh env         print env.sh (HPCSCALE_TEST_MC_* names)
#   scripts/multicluster-lab.sh status      each process and whether it is alive
#   scripts/multicluster-lab.sh start NAME  (re)start one of: server-a server-b manager-alpha
#                                           manager-bravo haproxy
#   scripts/multicluster-lab.sh stop NAME [SIGNAL]   stop it (TERM; KILL for a kill -9)
#   scripts/multicluster-lab.sh ctld-stop|ctld-start CLUSTER   stop / start (state kept) the
#                                           cluster's slurmctld; its slurmds keep running jobs
#
# Everything lives under $MULTICLUSTER_LAB_DIR (default /tmp/hpcscale-multicluster-lab). Runs as
# root (the Slurm labs need it). The managers poll every $MULTICLUSTER_POLL (default 2s) and
# each pool's local cap is $MULTICLUSTER_MAX_WORKERS (default 5), its target_drain_time 10s (a
# burst asks for many workers at once), and its workers leave after 3 tasks (they churn, so a
# share freed by a manager gone is seen within the tests' minutes); the global cap of queue mc is
# the store's, set with `hpcscale set-cap` (the tests set it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${MULTICLUSTER_LAB_DIR:-/tmp/hpcscale-multicluster-lab}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
POLL="${MULTICLUSTER_POLL:-2s}"
MAX_WORKERS="${MULTICLUSTER_MAX_WORKERS:-5}"
CLUSTERS=(alpha bravo)
REPLICAS=(a b)
QUEUE=mc

log() { printf 'multicluster-lab: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

slurm_lab() {  # slurm_lab CLUSTER ACTION
    SLURM_LAB_DIR="$DIR/slurm-$1" SLURM_LAB_CLUSTER="$1" "$ROOT/scripts/slurm-lab.sh" "$2"
}
pg_lab() { PYTHON="$PY" PG_LAB_DIR="$DIR/pg" "$ROOT/scripts/pg-lab.sh" "$1"; }
conf_of() { echo "$DIR/slurm-$1/slurm.conf"; }

install_haproxy() {
    command -v haproxy >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "haproxy is not installed and we are not root to install it"
    log "installing Debian's haproxy"
    export DEBIAN_FRONTEND=noninteractive
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install -y -q --no-install-recommends haproxy </dev/null >/dev/null \
        || { apt-get update -q </dev/null >/dev/null \
             && apt-get install -y -q --no-install-recommends haproxy </dev/null >/dev/null; }
    rm -f /usr/sbin/policy-rc.d
    command -v haproxy >/dev/null || die "haproxy did not install"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

alive() {  # alive NAME: its pid file names a live process
    local file="$DIR/run/$1.pid"
    [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null
}

write_configs() {
    local r c port
    # shellcheck disable=SC1091
    . "$DIR/pg/env.sh"
    {
        echo "HAPROXY_PORT=$(free_port)"
        for r in "${REPLICAS[@]}"; do echo "SERVER_${r^^}_PORT=$(free_port)"; done
        echo "PG_URL=$HPCSCALE_TEST_PG_URL"
    } > "$DIR/ports"
    # shellcheck disable=SC1091
    . "$DIR/ports"
    for r in "${REPLICAS[@]}"; do
        port="SERVER_${r^^}_PORT"
        install -d -m 700 "$DIR/server-$r"
        cat > "$DIR/server-$r/config.toml" <<EOF
[server]
url = "http://127.0.0.1:${!port}"
bind = "127.0.0.1:${!port}"
database = "$PG_URL"
token_file = "$DIR/token"
lease_ttl = "20s"
reaper_interval = "1s"
EOF
    done
    for c in "${CLUSTERS[@]}"; do
        install -d -m 700 "$DIR/manager-$c" "$DIR/manager-$c/out"
        cat > "$DIR/manager-$c/config.toml" <<EOF
[server]
url = "http://127.0.0.1:$HAPROXY_PORT"
token_file = "$DIR/token"

[manager]
name = "$c"
poll_interval = "$POLL"
state_dir = "$DIR/manager-$c/state"

[[pools]]
name = "$c-cpu"
queues = ["$QUEUE"]
scheduler = "slurm"
max_workers = $MAX_WORKERS
max_pending = $MAX_WORKERS
task_duration_prior = "2s"
target_drain_time = "10s"
max_submit_per_hour = 100000  # the runaway guard is not under test here; workers churn

[pools.slurm]
partition = "debug"
time = "00:10:00"
output = "$DIR/manager-$c/out/slurm-%A_%a.out"

[pools.worker]
max_tasks = 3
max_empty_claims = 2
empty_claim_sleep = "1s"
heartbeat_interval = "2s"
output_dir = "$DIR/manager-$c/out/tasks"
EOF
    done
    cat > "$DIR/haproxy.cfg" <<EOF
# written by scripts/multicluster-lab.sh: the API replicas behind one address
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 90s
    timeout server 90s
    retries 3
    option redispatch
frontend api
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    server a 127.0.0.1:$SERVER_A_PORT check inter 500ms fall 2 rise 1
    server b 127.0.0.1:$SERVER_B_PORT check inter 500ms fall 2 rise 1
EOF
}

write_env() {
    # shellcheck disable=SC1091
    . "$DIR/ports"
    {
        printf 'export HPCSCALE_TEST_MC_DIR=%q\n' "$DIR"
        echo "export HPCSCALE_TEST_MC_URL=http://127.0.0.1:$HAPROXY_PORT"
        echo "export HPCSCALE_TEST_MC_SERVER_A=http://127.0.0.1:$SERVER_A_PORT"
        echo "export HPCSCALE_TEST_MC_SERVER_B=http://127.0.0.1:$SERVER_B_PORT"
        printf 'export HPCSCALE_TEST_MC_PG_URL=%q\n' "$PG_URL"
        printf 'export HPCSCALE_TEST_MC_TOKEN_FILE=%q\n' "$DIR/token"
        printf 'export HPCSCALE_TEST_MC_SLURM_CONF_ALPHA=%q\n' "$(conf_of alpha)"
        printf 'export HPCSCALE_TEST_MC_SLURM_CONF_BRAVO=%q\n' "$(conf_of bravo)"
        printf 'export HPCSCALE_TEST_MC_LAB=%q\n' "$ROOT/scripts/multicluster-lab.sh"
        echo "export HPCSCALE_TEST_MC_QUEUE=$QUEUE"
    } > "$DIR/env.sh"
}

wait_healthy() {  # wait_healthy URL SECONDS
    "$PY" - "$1" "$2" <<'EOF'
import sys, time, httpx
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        if httpx.get(url + "/healthz", timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
}

start() {  # start NAME: detached, its pid in run/NAME.pid, its output in log/NAME.log
    local name=$1 port
    alive "$name" && return 0
    # shellcheck disable=SC1091
    . "$DIR/ports"
    case "$name" in
        server-a | server-b)
            port="SERVER_${name#server-}"; port="${port^^}_PORT"
            setsid "$PY" -m hpcscale server --allow-root --config "$DIR/$name/config.toml" \
                >>"$DIR/log/$name.log" 2>&1 </dev/null &
            echo $! > "$DIR/run/$name.pid"
            wait_healthy "http://127.0.0.1:${!port}" 30 || die "$name did not start: $(tail -5 "$DIR/log/$name.log")"
            ;;
        manager-alpha | manager-bravo)
            SLURM_CONF="$(conf_of "${name#manager-}")" setsid "$PY" -m hpcscale manager \
                --config "$DIR/$name/config.toml" >>"$DIR/log/$name.log" 2>&1 </dev/null &
            echo $! > "$DIR/run/$name.pid"
            ;;
        haproxy)
            haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/run/haproxy.pid" >>"$DIR/log/haproxy.log" 2>&1
            wait_healthy "http://127.0.0.1:$HAPROXY_PORT" 30 || die "haproxy does not reach a replica"
            ;;
        *) die "no such process: $name" ;;
    esac
}

stop() {  # stop NAME [SIGNAL]: signal it (TERM by default) and wait until it is gone
    local name=$1 sig=${2:-TERM} pid i
    alive "$name" || { rm -f "$DIR/run/$name.pid"; return 0; }
    pid="$(cat "$DIR/run/$name.pid")"
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    rm -f "$DIR/run/$name.pid"
}

ctld() {  # ctld stop|start CLUSTER: the controller alone; the slurmds keep their jobs
    local action=$1 cluster=$2 lab="$DIR/slurm-$2"
    [ -f "$(conf_of "$cluster")" ] || die "no cluster $cluster in $DIR"
    if [ "$action" = stop ]; then
        [ -f "$lab/run/slurmctld.pid" ] && kill -TERM "$(cat "$lab/run/slurmctld.pid")" 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -f "$lab/run/slurmctld.pid" ] && kill -0 "$(cat "$lab/run/slurmctld.pid")" 2>/dev/null || break
            sleep 0.1
        done
    else
        SLURM_CONF="$(conf_of "$cluster")" slurmctld </dev/null || die "slurmctld of $cluster did not start"
        for _ in $(seq 1 300); do SLURM_CONF="$(conf_of "$cluster")" scontrol ping >/dev/null 2>&1 && return 0; sleep 0.1; done
        die "slurmctld of $cluster not answering"
    fi
}

names() { echo server-a server-b haproxy manager-alpha manager-bravo; }

up() {
    [ "$(id -u)" = 0 ] || die "must run as root (the Slurm labs need it)"
    install_haproxy
    install -d -m 755 "$DIR"  # the PostgreSQL lab inside runs as user postgres
    install -d -m 700 "$DIR/run" "$DIR/log"
    local c pids=() failed=0 name
    for c in "${CLUSTERS[@]}"; do slurm_lab "$c" up >"$DIR/log/slurm-$c.log" 2>&1 & pids+=($!); done
    pg_lab up >"$DIR/log/pg.log" 2>&1 & pids+=($!)
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    [ "$failed" = 0 ] || die "a lab did not come up: $(tail -n 5 "$DIR"/log/slurm-*.log "$DIR/log/pg.log")"
    [ -f "$DIR/ports" ] || write_configs
    write_env
    for name in $(names); do start "$name"; done
    log "up: clusters ${CLUSTERS[*]}, replicas ${REPLICAS[*]} behind haproxy, a manager per cluster"
    cat "$DIR/env.sh"
}

down() {
    local name c
    for name in manager-alpha manager-bravo haproxy server-a server-b; do
        [ -d "$DIR/run" ] && stop "$name"
    done
    for c in "${CLUSTERS[@]}"; do [ -d "$DIR/slurm-$c" ] && slurm_lab "$c" down || true; done
    [ -d "$DIR/pg" ] && pg_lab down || true
    rm -rf "$DIR"
    log "down"
}

status() {
    local name
    for name in $(names); do
        if alive "$name"; then echo "$name $(cat "$DIR/run/$name.pid")"; else echo "$name down"; fi
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) [ -f "$DIR/env.sh" ] || die "no lab at $DIR (run: $0 up)"; cat "$DIR/env.sh" ;;
    status) status ;;
    start) start "${2:?start NAME}" ;;
    stop) stop "${2:?stop NAME [SIGNAL]}" "${3:-TERM}" ;;
    ctld-stop) ctld stop "${2:?ctld-stop CLUSTER}" ;;
    ctld-start) ctld start "${2:?ctld-start CLUSTER}" ;;
    *) echo "usage: $0 up|down|env|status|start NAME|stop NAME [SIGNAL]|ctld-stop CLUSTER|ctld-start CLUSTER" >&2; exit 2 ;;
esac
