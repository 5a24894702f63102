#!/usr/bin/env bash
# Shows, and asserts, how the accounting lab (SLURM_LAB_ACCOUNTING=1 scripts/slurm-lab.sh up)
# behaves like a real site's Slurm: sacct, QOS and association limits changed at run time,
# partition states, requeue, QOS preemption, a killed slurmd. Exits non-zero on the first
# mismatch; prints each command's output verbatim (the formats parsers are written against).
#
#   SLURM_LAB_DIR=/tmp/x scripts/accounting-lab-check.sh     (the lab's dir: its env.sh is read)
#   source /tmp/x/env.sh && scripts/accounting-lab-check.sh   (or the env of an up lab)
#
# It changes the lab's limits and partition and puts them all back on the way out (also on a
# failure); run it on a lab no test is using at the same time. CHECK_NODE_DOWN=0 skips the
# slowest part (a killed slurmd, ~35 s until its node is DOWN).
set -euo pipefail

if [ -n "${SLURM_LAB_DIR:-}" ] && [ -f "$SLURM_LAB_DIR/env.sh" ]; then
    # shellcheck disable=SC1091
    source "$SLURM_LAB_DIR/env.sh"
fi
[ "${HPCSCALE_TEST_SLURM_ACCOUNTING:-}" = 1 ] && [ -f "${SLURM_CONF:-}" ] || {
    echo "no accounting lab: SLURM_LAB_ACCOUNTING=1 SLURM_LAB_DIR=DIR scripts/slurm-lab.sh up," \
        "then SLURM_LAB_DIR=DIR $0" >&2
    exit 2
}
export SLURM_CONF
LAB="$(dirname "$SLURM_CONF")"
NAME="acctcheck-$$"  # every job of this script has it: scancel --name touches no other job
WORK="$(mktemp -d)"
cd "$WORK"
CHECKS=0

say() { printf '\n== %s\n' "$*"; }
ok() { CHECKS=$((CHECKS + 1)); printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
show() {  # run and print a command (quoted as typed) with its output, verbatim
    local a line='$'
    for a in "$@"; do
        case "$a" in *[[:space:]\'\"\|\&\;\(\)\<\>\$\*]*) line+=" '$a'" ;; *) line+=" $a" ;; esac
    done
    printf '%s\n' "$line"
    "$@"
}

sb() { sbatch --job-name="$NAME" -o /dev/null "$@"; }

wait_until() {  # wait_until SECONDS WHAT CMD...: poll CMD every 0.2 s
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
        sleep 0.2
    done
}

queue() { squeue -h -r -n "$NAME" -o '%i %T %r'; }
count() { queue | grep -c -- "$1" || true; }  # count 'RUNNING None'
none_left() { [ -z "$(squeue -h -n "$NAME")" ]; }
cancel_all() {
    scancel --name="$NAME" 2>/dev/null || true
    wait_until 30 "the check's jobs to leave the queue" none_left
}

reset_limits() {
    sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=-1 MaxJobsPerUser=-1 GrpSubmitJobs=-1 >/dev/null
    sacctmgr -i modify user root set MaxSubmitJobs=-1 MaxJobs=-1 GrpSubmitJobs=-1 >/dev/null
}

cleanup() {
    local rc=$?
    scancel --name="$NAME" 2>/dev/null || true
    scontrol update partitionname=debug state=up 2>/dev/null || true
    reset_limits 2>/dev/null || true
    if [ -n "${KILLED_NODE:-}" ]; then
        slurmd -N "$KILLED_NODE" </dev/null 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

say "the lab"
show scontrol show config | grep -E 'ClusterName|AccountingStorage(Type|Enforce)|AccountingStoreFlags|PreemptType|PreemptMode|SlurmdTimeout'
show sinfo
cancel_all
reset_limits

# ---------------------------------------------------------------------------------------------
say "1. a finished job in sacct, with its comment"
id=$(sb --parsable --comment="hpcscale check $$" --wrap 'sleep 2')
ended() { [ -z "$(squeue -h -j "$id" -t PD,R,CG)" ]; }
wait_until 30 "job $id to end" ended
t_end=$(date +%s.%N)
acct_has_it() {
    sacct -n -X -P -j "$id" --format=State,Comment | grep -qx "COMPLETED|hpcscale check $$"
}
wait_until 10 "sacct to show job $id COMPLETED with its comment" acct_has_it
lag=$(awk -v a="$(date +%s.%N)" -v b="$t_end" 'BEGIN { printf "%.1f", a - b }')
show sacct -P -j "$id" --format=JobID,State,Start,End,Comment
end_field=$(sacct -n -X -P -j "$id" --format=End)
end_lag=$(($(date +%s) - $(date -d "$end_field" +%s)))
[ "$end_lag" -le 5 ] || fail "sacct showed the job $end_lag s after its End"
ok "sacct shows job $id COMPLETED with its comment $lag s after squeue lost it ($end_lag s after End)"

# ---------------------------------------------------------------------------------------------
say "2. QOS MaxSubmitJobsPerUser=4: an array of 8 refused whole, of 4 accepted"
show sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=4
rc=0
sb --array=0-7 --wrap 'sleep 60' 2>"$WORK/err" || rc=$?
printf '$ sbatch --array=0-7 ...  -> exit %s, stderr:\n' "$rc"
cat "$WORK/err"
[ "$rc" = 1 ] || fail "sbatch --array=0-7 over MaxSubmitJobsPerUser=4: exit $rc, not 1"
expected='sbatch: error: QOSMaxSubmitJobPerUserLimit
sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user'"'"'s size and/or time limits)'
[ "$(cat "$WORK/err")" = "$expected" ] || fail "unexpected stderr: $(cat "$WORK/err")"
[ -z "$(squeue -h -n "$NAME")" ] || fail "part of the refused array was queued"
ok "array 0-7 refused whole (exit 1, QOSMaxSubmitJobPerUserLimit)"
id=$(sb --parsable --array=0-3 --wrap 'sleep 60') || fail "sbatch --array=0-3 refused"
[ "$(queue | wc -l)" = 4 ] || fail "array 0-3: $(queue | wc -l) elements queued"
rc=0
sb --wrap 'sleep 60' 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "a 5th job was accepted (exit $rc)"
ok "array 0-3 accepted ($id); one job more refused"
cancel_all
show sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=-1

# ---------------------------------------------------------------------------------------------
say "3. QOS MaxJobsPerUser=2: accepted, the extra elements pend"
show sacctmgr -i modify qos normal set MaxJobsPerUser=2
id=$(sb --parsable --array=0-4 --wrap 'sleep 60')
two_running() { [ "$(count 'RUNNING None')" = 2 ] && [ "$(count 'PENDING QOSMaxJobsPerUserLimit')" = 3 ]; }
wait_until 15 "2 running, 3 pending QOSMaxJobsPerUserLimit" two_running
show squeue -h -r -n "$NAME" -o '%i %T %r'
ok "array $id: 2 RUNNING, 3 PENDING with reason QOSMaxJobsPerUserLimit"
cancel_all
show sacctmgr -i modify qos normal set MaxJobsPerUser=-1

# ---------------------------------------------------------------------------------------------
say "4. partition drain / down / up"
show scontrol update partitionname=debug state=drain
rc=0
sb --wrap 'sleep 60' 2>"$WORK/err" || rc=$?
printf '$ sbatch ...  -> exit %s, stderr:\n' "$rc"
cat "$WORK/err"
[ "$rc" = 1 ] || fail "sbatch to a drained partition: exit $rc"
grep -qxF 'sbatch: error: Batch job submission failed: Required partition not available (inactive or drain)' "$WORK/err" ||
    fail "unexpected stderr for a drained partition"
ok "DRAIN: sbatch refused"
show scontrol update partitionname=debug state=down
id=$(sb --parsable --array=0-1 --wrap 'sleep 60') || fail "sbatch to a DOWN partition refused"
both_down() { [ "$(count 'PENDING PartitionDown')" = 2 ]; }
wait_until 10 "2 elements pending PartitionDown" both_down
sleep 1
both_down || fail "elements left PartitionDown while the partition is down"
show squeue -h -r -n "$NAME" -o '%i %T %r'
ok "DOWN: accepted, elements pend with PartitionDown"
show scontrol update partitionname=debug state=up
both_run() { [ "$(count 'RUNNING None')" = 2 ]; }
wait_until 10 "the 2 elements to run once the partition is up" both_run
show squeue -h -r -n "$NAME" -o '%i %T %r'
ok "UP: they run"
cancel_all

# ---------------------------------------------------------------------------------------------
say "5. limits as sacctmgr shows them (QOS and root's associations)"
show sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=4 MaxJobsPerUser=2 GrpSubmitJobs=10
show sacctmgr -i modify user root set MaxSubmitJobs=6 MaxJobs=3 GrpSubmitJobs=8
show sacctmgr show qos format=Name,MaxSubmitPU,MaxJobsPU,GrpSubmit -P
show sacctmgr show assoc where user=root format=Cluster,Account,User,MaxSubmit,MaxJobs,GrpSubmit,QOS,DefaultQOS -P
sacctmgr -n show qos normal format=Name,MaxSubmitPU,MaxJobsPU,GrpSubmit -P | grep -qx 'normal|4|2|10' ||
    fail "QOS normal does not show 4|2|10"
[ "$(sacctmgr -n show assoc where user=root format=MaxSubmit,MaxJobs,GrpSubmit -P | sort -u)" = '6|3|8' ] ||
    fail "root's associations do not show 6|3|8"
ok "sacctmgr shows the QOS and association limits"
show sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=-1 MaxJobsPerUser=-1 GrpSubmitJobs=-1
rc=0
sb --array=0-7 --wrap 'sleep 60' 2>"$WORK/err" || rc=$?
printf '$ sbatch --array=0-7 ...  (association MaxSubmitJobs=6) -> exit %s, stderr:\n' "$rc"
cat "$WORK/err"
[ "$rc" = 1 ] || fail "an array of 8 over the association's MaxSubmitJobs=6: exit $rc"
grep -q 'AssocMaxSubmitJobLimit' "$WORK/err" || fail "no AssocMaxSubmitJobLimit in stderr"
ok "association MaxSubmitJobs=6 refuses an array of 8 whole"
id=$(sb --parsable --array=0-4 --wrap 'sleep 60')
assoc_max() { [ "$(count 'RUNNING None')" = 3 ] && [ "$(count 'PENDING AssocMaxJobsLimit')" = 2 ]; }
wait_until 15 "3 running, 2 pending AssocMaxJobsLimit" assoc_max
show squeue -h -r -n "$NAME" -o '%i %T %r'
ok "association MaxJobs=3: 3 RUNNING, 2 PENDING with reason AssocMaxJobsLimit"
cancel_all
reset_limits
show sacctmgr show qos format=Name,MaxSubmitPU,MaxJobsPU,GrpSubmit -P
show sacctmgr show assoc where user=root format=Cluster,Account,User,MaxSubmit,MaxJobs,GrpSubmit,QOS,DefaultQOS -P

# ---------------------------------------------------------------------------------------------
say "6. array and job count limits"
show scontrol show config | grep -E 'MaxArraySize|MaxJobCount'

# ---------------------------------------------------------------------------------------------
say "7. scontrol requeue of a running element: PENDING, then RUNNING, same job id"
id=$(sb --parsable --array=0-1 --wrap 'sleep 120')
el="${id}_0"
el_running() { squeue -h -j "$el" -o '%T' | grep -qx RUNNING; }
wait_until 15 "$el to run" el_running
raw=$(squeue -h -j "$el" -o '%A')
show squeue -h -r -j "$el" -o '%i %A %T %r %S'
show scontrol requeue "$el"
el_pending() { squeue -h -j "$el" -o '%T' | grep -qx PENDING; }
wait_until 15 "$el to be PENDING again" el_pending
show squeue -h -r -j "$el" -o '%i %A %T %r %S'
squeue -h -j "$el" -o '%r' | grep -qx BeginTime || fail "requeued $el pends for another reason"
ok "requeued $el pends with reason BeginTime"
# Not at once: slurmd revokes the killed run's credential, and a restart in the same wall-clock
# second on the same node is refused ("Killing non-startable batch JobId=N: Job credential
# revoked" in slurmctld.log) and the element ends FAILED, exit 1, NonZeroExitCode (seen 1 in 6
# when starttime=now came right after the PENDING). The default BeginTime (~2 min) avoids it.
sleep 2
show scontrol update jobid="$el" starttime=now
wait_until 15 "$el to run again" el_running
show squeue -h -r -j "$el" -o '%i %A %T %r %S'
[ "$(squeue -h -j "$el" -o '%A')" = "$raw" ] || fail "$el has a new job id"
show sacct -D -P -j "$el" --format=JobID,JobIDRaw,State,Start,End
sacct -n -D -X -P -j "$el" --format=State | grep -qx REQUEUED || fail "sacct -D has no REQUEUED run of $el"
sleep 1
el_running || fail "$el did not stay RUNNING: $(squeue -h -r -j "$el" -t all -o '%i %T %r')"
ok "$el RUNNING again with the same job id ($raw) after starttime=now"
cancel_all

# ---------------------------------------------------------------------------------------------
say "8. preemption: a --qos=high job needing every CPU requeues a running --qos=normal job"
low=$(sb --parsable --qos=normal --wrap 'sleep 300')
low_running() { squeue -h -j "$low" -o '%T' | grep -qx RUNNING; }
wait_until 15 "job $low to run" low_running
cpus=$(sinfo -h -o '%C' | cut -d/ -f4)
high=$(sb --parsable --qos=high -n "$cpus" --wrap 'sleep 10')
preempted() {
    squeue -h -j "$high" -o '%T' | grep -qx RUNNING && squeue -h -j "$low" -o '%T' | grep -qx PENDING
}
wait_until 20 "job $high (high) to run and $low (normal) to be requeued" preempted
show squeue -h -r -n "$NAME" -o '%i %T %r %q'
show sacct -D -P -j "$low" --format=JobID,State,Start,End,QOS
sacct -n -D -X -P -j "$low" --format=State | grep -qx PREEMPTED || fail "sacct has no PREEMPTED run of $low"
ok "job $high (qos high, $cpus CPUs) preempted job $low (qos normal): requeued, same id"
cancel_all

# ---------------------------------------------------------------------------------------------
if [ "${CHECK_NODE_DOWN:-1}" = 1 ]; then
    say "9. a killed slurmd: its node DOWN within SlurmdTimeout (20 s) + a ping cycle"
    node=n4
    KILLED_NODE=$node
    kill -KILL "$(cat "$LAB/run/slurmd-$node.pid")"
    t0=$SECONDS
    node_down() { sinfo -h -N -n "$node" -o '%T' | grep -q '^down'; }
    wait_until 90 "$node to be DOWN" node_down
    show sinfo -h -N -n "$node" -o '%N %T %E'
    ok "$node DOWN $((SECONDS - t0)) s after its slurmd was killed"
    slurmd -N "$node" </dev/null
    KILLED_NODE=
    node_idle() { sinfo -h -N -n "$node" -o '%T' | grep -qx idle; }
    wait_until 30 "$node to be idle again" node_idle
    ok "$node idle again once its slurmd is back (ReturnToService=2)"
fi

# ---------------------------------------------------------------------------------------------
say "limits reset"
reset_limits
sacctmgr -n show qos format=MaxSubmitPU,MaxJobsPU,GrpSubmit -P | grep -qvx '||' && fail "a QOS limit is left"
sacctmgr -n show assoc format=MaxSubmit,MaxJobs,GrpSubmit -P | grep -qvx '||' && fail "an association limit is left"
ok "no QOS or association limit left; partition debug up"
printf '\n%s passed, 0 failed\n' "$CHECKS"
