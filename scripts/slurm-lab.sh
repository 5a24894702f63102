#!/usr/bin/env bash
# A throwaway Slurm cluster on this one machine, for hpcscale's tests.
#
#   scripts/slurm-lab.sh up      install Debian's slurm + munge if missing, start 4 virtual nodes
#   scripts/slurm-lab.sh down    stop only the daemons this script started (pid files)
#   scripts/slurm-lab.sh env     print `export SLURM_CONF=...` (eval it, or source $DIR/env.sh)
#   scripts/slurm-lab.sh status  the pids and sinfo
#   scripts/slurm-lab.sh restart-ctld   restart only slurmctld, keeping its state: running jobs
#                                       go on, the queue is read back (the chaos soak's fault)
#
# SLURM_LAB_ACCOUNTING=1 makes it a second, independent kind of lab, with accounting and limits
# like a real site's (default dir /tmp/hpcscale-slurm-lab-acct, ClusterName hpcscaleacct): a
# private MariaDB (Debian's mariadb-server) and a slurmdbd, AccountingStorageEnforce=
# associations,limits,qos, account hpcscale-lab, QOS normal (root's default, no limits) and high
# (Preempt=normal, PreemptType=preempt/qos, PreemptMode=REQUEUE). Tests change limits at run time
# with `sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=4` and reset them with =-1. Its
# env.sh also exports HPCSCALE_TEST_SLURM_ACCOUNTING=1 (see write_env). It can run side by side
# with a plain lab (its own dir, ports, munge socket); `up` starts from an empty accounting DB.
# The same up|down|env|status|restart-ctld commands; `down` in either mode stops whatever the dir
# has running, MariaDB and slurmdbd included.
#
# Everything lives under $SLURM_LAB_DIR (default /tmp/hpcscale-slurm-lab): config, munge key and
# socket, state, spool, logs, pid files. Nothing in /etc is touched, no systemd is needed, and
# every daemon runs as root (the machines this targets: Debian 12, root, no cgroup freezer).
# Why each setting is there: see the comments in write_conf. `up` is idempotent; it runs with
# CI=true and no stdin.
set -euo pipefail

ACCOUNTING="${SLURM_LAB_ACCOUNTING:-0}"
case "$ACCOUNTING" in 1 | true | yes) ACCOUNTING=1 ;; *) ACCOUNTING=0 ;; esac
if [ "$ACCOUNTING" = 1 ]; then
    DIR="${SLURM_LAB_DIR:-/tmp/hpcscale-slurm-lab-acct}"
    CLUSTER=hpcscaleacct
else
    DIR="${SLURM_LAB_DIR:-/tmp/hpcscale-slurm-lab}"
    CLUSTER=hpcscalelab
fi
# SLURM_LAB_CLUSTER: another ClusterName (scripts/multicluster-lab.sh runs two labs side by side).
CLUSTER="${SLURM_LAB_CLUSTER:-$CLUSTER}"
CONF="$DIR/slurm.conf"
NODES=(n1 n2 n3 n4)
PACKAGES=(slurmctld slurmd slurm-client munge)
# eatmydata: fsync made a no-op for the throwaway DB (mariadb-install-db 4 s -> 0.5 s here).
[ "$ACCOUNTING" = 1 ] && PACKAGES+=(slurmdbd mariadb-server eatmydata)
# The accounting lab: its MariaDB (files owned by the mysql user the package creates), its DB.
DB_DIR="$DIR/mariadb"
DB_SOCKET="$DB_DIR/run/mariadb.sock"
DB_PID="$DB_DIR/run/mariadbd.pid"
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=hpcscale-lab  # a throwaway DB reachable only on 127.0.0.1
ACCOUNT=hpcscale-lab

log() { printf 'slurm-lab: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and runs daemons as root)"; }

missing_packages() {
    local pkg missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    echo "${missing[@]:-}"
}

install_packages() {
    local missing
    missing="$(missing_packages)"
    [ -z "$missing" ] && return 0
    log "installing: $missing"
    # Package scripts would try to start the system's own daemons: forbid that during the install,
    # with a policy-rc.d of ours only if there is none already (and remove only ours afterwards).
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local apt=(apt-get install -y -q --no-install-recommends)
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" $missing </dev/null >"${TMPDIR:-/tmp}/slurm-lab-apt.log" 2>&1; then
        log "install failed; running apt-get update and trying again"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >>"${TMPDIR:-/tmp}/slurm-lab-apt.log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive "${apt[@]}" $missing </dev/null >>"${TMPDIR:-/tmp}/slurm-lab-apt.log" 2>&1 ||
            { [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -20 "${TMPDIR:-/tmp}/slurm-lab-apt.log" >&2; die "apt-get install failed"; }
    fi
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

# Ports that something already listens on (TCP, v4 and v6), from /proc: no tool needed.
used_ports() {
    local hex
    # mawk (Debian's awk) has no strtonum: print the hex port, convert in bash.
    for hex in $(awk 'NR > 1 && $4 == "0A" { n = split($2, a, ":"); print a[n] }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
        echo $((16#$hex))
    done | sort -un
}

# N free ports, starting from a base derived from the dir so two labs do not collide.
free_ports() {
    local want=$1 used port found=0 base
    used=" $(used_ports | tr '\n' ' ') "
    base=$((20000 + $(printf '%s' "$DIR" | cksum | cut -d' ' -f1) % 20000))
    port=$base
    while [ "$found" -lt "$want" ]; do
        case "$used" in *" $port "*) ;; *) echo "$port"; found=$((found + 1)) ;; esac
        port=$((port + 1))
    done
}

# Is the pid in FILE alive and running the program NAME (pid reuse must not fool us)?
alive() {
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 1
    pid="$(cat "$file" 2>/dev/null)" || return 1  # the daemon may remove it as it exits
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"
}

write_conf() {
    local host ports i
    host="$(hostname -s)"
    # slurmctld, one per slurmd, and (accounting lab) slurmdbd then mariadbd.
    mapfile -t ports < <(free_ports $((3 + ${#NODES[@]})))
    DBD_PORT=${ports[$((1 + ${#NODES[@]}))]}
    DB_PORT=${ports[$((2 + ${#NODES[@]}))]}
    {
        echo "# written by hpcscale scripts/slurm-lab.sh; throwaway"
        echo "ClusterName=$CLUSTER"
        echo "SlurmctldHost=$host(127.0.0.1)"
        echo "SlurmctldPort=${ports[0]}"
        # Root everywhere: the lab is a test fixture on a root-only machine.
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        # A private munged: its own key and socket, nothing shared with a system munge.
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "AuthInfo=socket=$DIR/munge/munge.socket"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmdSpoolDir=$DIR/spool/%n"
        echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
        echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
        # No cgroup freezer here: proctrack/cgroup fails and still reports jobs COMPLETED.
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        # 4 nodes x 4 CPUs on a 2-core machine: oversubscribed on purpose, so allow it.
        echo "SlurmdParameters=config_overrides"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "SchedulerType=sched/backfill"
        # Schedule at once (tests wait for pending -> running; the defaults add 1-2 s).
        echo "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0"
        echo "ReturnToService=2"
        echo "MpiDefault=none"
        echo "MailProg=/bin/true"
        echo "KillWait=5"
        # Finished jobs stay visible to squeue for 5 minutes (no accounting in the lab).
        echo "MinJobAge=300"
        echo "JobCompType=jobcomp/filetxt"
        echo "JobCompLoc=$DIR/log/jobcomp.txt"
        if [ "$ACCOUNTING" = 1 ]; then
            # Like a real site's: jobs need an association, QOS and association limits apply.
            echo "AccountingStorageType=accounting_storage/slurmdbd"
            echo "AccountingStorageHost=127.0.0.1"
            echo "AccountingStoragePort=$DBD_PORT"
            # The munge socket of the clients' (sacctmgr, sacct, slurmctld) connections to
            # slurmdbd: without it they use the system's /run/munge (AuthInfo is not read there).
            echo "AccountingStoragePass=$DIR/munge/munge.socket"
            echo "AccountingStorageEnforce=associations,limits,qos"
            echo "AccountingStoreFlags=job_comment"
            echo "JobAcctGatherType=jobacct_gather/linux"
            echo "PreemptType=preempt/qos"
            echo "PreemptMode=REQUEUE"
            # A killed slurmd makes its node DOWN in ~20 s, not the default 5 min.
            echo "SlurmdTimeout=20"
        else
            echo "AccountingStorageType=accounting_storage/none"
            echo "JobAcctGatherType=jobacct_gather/none"
        fi
        for i in "${!NODES[@]}"; do
            echo "NodeName=${NODES[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${ports[$((i + 1))]} CPUs=4 State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.new"
    mv "$CONF.new" "$CONF"
    [ "$ACCOUNTING" = 1 ] && write_dbd_conf
    return 0
}

# slurmdbd reads slurmdbd.conf from the dir of $SLURM_CONF and refuses it unless it is mode 0600.
write_dbd_conf() {
    (
        umask 077
        {
            echo "# written by hpcscale scripts/slurm-lab.sh; throwaway"
            echo "AuthType=auth/munge"
            echo "AuthInfo=socket=$DIR/munge/munge.socket"
            echo "DbdHost=localhost"
            echo "DbdAddr=127.0.0.1"
            echo "DbdPort=$DBD_PORT"
            echo "SlurmUser=root"
            echo "PidFile=$DIR/run/slurmdbd.pid"
            echo "LogFile=$DIR/log/slurmdbd.log"
            echo "DebugLevel=info"
            echo "StorageType=accounting_storage/mysql"
            echo "StorageHost=127.0.0.1"
            echo "StoragePort=$DB_PORT"
            echo "StorageUser=$DB_USER"
            echo "StoragePass=$DB_PASS"
            echo "StorageLoc=$DB_NAME"
        } >"$DIR/slurmdbd.conf.new"
    )
    chmod 600 "$DIR/slurmdbd.conf.new"
    mv "$DIR/slurmdbd.conf.new" "$DIR/slurmdbd.conf"
}

db_sql() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot --batch --skip-column-names "$@"; }

start_mariadb() {
    alive "$DB_PID" mariadbd && return 0
    local fresh=0
    install -d -m 755 -o mysql -g mysql "$DB_DIR" "$DB_DIR/run"
    # mariadbd runs as mysql: it must reach its files through the lab dir and its parents.
    runuser -u mysql -- test -w "$DB_DIR/run" ||
        die "the mysql user cannot reach $DB_DIR (a parent dir without o+x?)"
    if [ ! -d "$DB_DIR/data/mysql" ]; then
        rm -rf "$DB_DIR/data"
        eatmydata mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" \
            --auth-root-authentication-method=normal --skip-test-db \
            </dev/null >"$DIR/log/mariadb-install-db.log" 2>&1 ||
            die "mariadb-install-db failed: $(tail -5 "$DIR/log/mariadb-install-db.log")"
        fresh=1
    fi
    rm -f "$DB_SOCKET" "$DB_PID"
    # Throwaway: no durability needed, a small buffer pool, TCP on loopback only (slurmdbd).
    setsid eatmydata mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" \
        --socket="$DB_SOCKET" --pid-file="$DB_PID" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        --innodb-flush-log-at-trx-commit=2 \
        --log-error="$DB_DIR/mariadbd.err" </dev/null >/dev/null 2>&1 &
    if ! wait_for 60 db_sql -e 'select 1'; then
        if [ "$fresh" = 0 ]; then
            # A datadir left broken by a killed server: start again from a new one.
            log "mariadbd did not start on the old datadir; initialising a new one"
            stop_pid "$DB_PID" mariadbd
            rm -rf "$DB_DIR/data"
            start_mariadb
            return
        fi
        die "mariadbd did not start: $(tail -5 "$DB_DIR/mariadbd.err" 2>/dev/null)"
    fi
    # Every `up` starts from an empty accounting DB (like slurmctld -c): no jobs, limits or
    # associations of an earlier run.
    db_sql <<SQL || die "could not set up the accounting DB"
DROP DATABASE IF EXISTS $DB_NAME;
CREATE DATABASE $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL
}

start_slurmdbd() {
    slurmdbd </dev/null || die "slurmdbd did not start: $(tail -5 "$DIR/log/slurmdbd.log")"
    wait_for 30 sacctmgr -n show cluster ||
        die "slurmdbd not answering after 30 s: $(tail -5 "$DIR/log/slurmdbd.log")"
}

# The site's accounting, as slurmctld will find it: cluster, account, root's association, QOS.
# (~3 s: the add cluster creates the cluster's tables. One sacctmgr reading all the commands
# from stdin is no faster, and its exit status does not tell which failed.)
setup_accounting() {
    local out
    out="$(
        {
            sacctmgr -i add cluster "$CLUSTER" &&
                sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" \
                    Description="hpcscale test lab" Organization=hpcscale &&
                sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" &&
                sacctmgr -i add qos high &&
                sacctmgr -i modify qos high set Preempt=normal Priority=100 &&
                sacctmgr -i modify user root set qos=normal,high defaultqos=normal
        } 2>&1
    )" || die "sacctmgr setup failed: $out"
}

start_munge() {
    alive "$DIR/munge/munged.pid" munged && return 0
    install -d -m 755 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
    fi
    chmod 400 "$DIR/munge/munge.key"
    rm -f "$DIR/munge/munge.socket" "$DIR/munge/munge.socket.lock"
    # --force: munged refuses a socket left behind or a world-writable ancestor (/tmp) otherwise.
    munged --force \
        --key-file="$DIR/munge/munge.key" \
        --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" </dev/null
}

wait_for() {  # wait_for SECONDS CMD...: poll CMD every 0.1 s
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

nodes_idle() {
    [ "$(SLURM_CONF="$CONF" sinfo -h -N -o '%N %T' 2>/dev/null | grep -c ' idle')" -ge "${#NODES[@]}" ]
}

running() {
    alive "$DIR/munge/munged.pid" munged || return 1
    if [ "$ACCOUNTING" = 1 ]; then
        alive "$DB_PID" mariadbd || return 1
        alive "$DIR/run/slurmdbd.pid" slurmdbd || return 1
    fi
    alive "$DIR/run/slurmctld.pid" slurmctld || return 1
    local n
    for n in "${NODES[@]}"; do alive "$DIR/run/slurmd-$n.pid" slurmd || return 1; done
    SLURM_CONF="$CONF" scontrol ping >/dev/null 2>&1
}

write_env() {
    {
        printf 'export SLURM_CONF=%q\n' "$CONF"
        if [ "$ACCOUNTING" = 1 ]; then
            # For tests: this SLURM_CONF is a lab with accounting and limits; the second name
            # finds it even when SLURM_CONF points at the plain lab.
            echo "export HPCSCALE_TEST_SLURM_ACCOUNTING=1"
            printf 'export HPCSCALE_TEST_SLURM_ACCOUNTING_CONF=%q\n' "$CONF"
            printf 'export HPCSCALE_TEST_SLURM_CLUSTER=%q\n' "$CLUSTER"
            printf 'export HPCSCALE_TEST_SLURM_ACCOUNT=%q\n' "$ACCOUNT"
        fi
    } >"$DIR/env.sh.new"
    mv "$DIR/env.sh.new" "$DIR/env.sh"
}

up() {
    need_root
    install_packages
    if running; then
        write_env
        log "already up: $CONF"
        cat "$DIR/env.sh"
        return 0
    fi
    stop_all  # whatever half of a lab is left: stop it before starting afresh
    install -d -m 755 "$DIR" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
    for n in "${NODES[@]}"; do install -d -m 755 "$DIR/spool/$n"; done
    write_conf
    write_env
    start_munge
    wait_for 10 test -S "$DIR/munge/munge.socket" || die "munged did not start: $(tail -5 "$DIR/munge/munged.log" 2>/dev/null)"
    export SLURM_CONF="$CONF"
    if [ "$ACCOUNTING" = 1 ]; then
        start_mariadb
        start_slurmdbd
        setup_accounting
    fi
    # -c: a throwaway cluster starts from a clean state every time.
    slurmctld -c </dev/null || die "slurmctld did not start: $(tail -5 "$DIR/log/slurmctld.log")"
    for n in "${NODES[@]}"; do
        slurmd -N "$n" </dev/null || die "slurmd $n did not start: $(tail -5 "$DIR/log/slurmd-$n.log")"
    done
    wait_for 30 nodes_idle || {
        sinfo -N >&2 || true
        die "nodes not idle after 30 s; logs in $DIR/log"
    }
    if [ "$ACCOUNTING" = 1 ]; then
        log "up: 4 nodes idle, accounting (slurmdbd :$DBD_PORT, mariadb :$DB_PORT); $CONF"
    else
        log "up: 4 nodes idle; $CONF"
    fi
    cat "$DIR/env.sh"
}

stop_pid() {  # stop_pid FILE NAME: SIGTERM, wait, SIGKILL; only if it is still NAME
    local file=$1 name=$2 pid i
    alive "$file" "$name" || { rm -f "$file"; return 0; }
    pid="$(cat "$file")"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        alive "$file" "$name" || break
        sleep 0.1
    done
    if alive "$file" "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$file"
}

stop_all() {
    local n pids=()
    if [ -f "$CONF" ] && alive "$DIR/run/slurmctld.pid" slurmctld; then
        # Cancel what runs on the lab so no job step outlives its slurmd, and let the jobs end
        # while slurmctld still answers: a slurmd child reporting a job's end to a controller
        # that is gone retries for ever (seen: one left behind per test run).
        SLURM_CONF="$CONF" scancel --quiet --full --user=root 2>/dev/null || true
        wait_for 15 queue_empty || true
    fi
    # Stop the daemons in parallel: each takes ~2 s after SIGTERM.
    for n in "${NODES[@]}"; do stop_pid "$DIR/run/slurmd-$n.pid" slurmd & pids+=($!); done
    stop_pid "$DIR/run/slurmctld.pid" slurmctld & pids+=($!)
    wait "${pids[@]}" 2>/dev/null || true
    # The accounting lab's (in either mode: `down` stops whatever this dir has running).
    stop_pid "$DIR/run/slurmdbd.pid" slurmdbd
    stop_pid "$DB_PID" mariadbd
    stop_pid "$DIR/munge/munged.pid" munged
    stop_strays
}

queue_empty() { [ -z "$(SLURM_CONF="$CONF" squeue -h 2>/dev/null)" ]; }

# Whatever the daemons forked and left running (a slurmd child retrying an RPC, a slurmstepd):
# only processes of this lab, known by the SLURM_CONF they were started with.
stop_strays() {
    local pid
    for pid in $(pgrep -x 'slurmd|slurmstepd|slurmctld|slurmdbd' 2>/dev/null || true); do
        { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$CONF" &&
            kill -KILL "$pid" 2>/dev/null || true
    done
}

# slurmctld alone: SIGTERM (it saves its state on the way out), then started again WITHOUT -c,
# so it recovers the jobs from StateSaveLocation while the slurmds keep running them. Between
# the two, squeue/sbatch/scancel fail (the window a real controller restart or failover opens).
restart_ctld() {
    need_root
    [ -f "$CONF" ] || die "no lab at $DIR (run: $0 up)"
    alive "$DIR/run/slurmctld.pid" slurmctld || die "slurmctld is not running in $DIR"
    export SLURM_CONF="$CONF"
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
    slurmctld </dev/null || die "slurmctld did not start again: $(tail -5 "$DIR/log/slurmctld.log")"
    wait_for 30 scontrol ping || die "slurmctld not answering 30 s after its restart; $DIR/log"
    log "slurmctld restarted (state kept): pid $(cat "$DIR/run/slurmctld.pid")"
}

down() {
    need_root
    stop_all
    rm -f "$DIR/env.sh"
    log "down"
}

status() {
    local n
    local files=("$DIR/munge/munged.pid:munged")
    [ "$ACCOUNTING" = 1 ] && files+=("$DB_PID:mariadbd" "$DIR/run/slurmdbd.pid:slurmdbd")
    files+=("$DIR/run/slurmctld.pid:slurmctld")
    for f in "${files[@]}"; do
        if alive "${f%%:*}" "${f##*:}"; then echo "${f##*:} $(cat "${f%%:*}")"; else echo "${f##*:} down"; fi
    done
    for n in "${NODES[@]}"; do
        if alive "$DIR/run/slurmd-$n.pid" slurmd; then echo "slurmd-$n $(cat "$DIR/run/slurmd-$n.pid")"; else echo "slurmd-$n down"; fi
    done
    if running; then SLURM_CONF="$CONF" sinfo -N; else return 1; fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) [ -f "$DIR/env.sh" ] || die "no lab at $DIR (run: $0 up)"; cat "$DIR/env.sh" ;;
    status) status ;;
    restart-ctld) restart_ctld ;;
    *) echo "usage: [SLURM_LAB_ACCOUNTING=1] $0 up|down|env|status|restart-ctld   (dir: \$SLURM_LAB_DIR, default /tmp/hpcscale-slurm-lab, or -acct)" >&2; exit 2 ;;
esac
