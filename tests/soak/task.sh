#!/bin/bash
# One task of the chaos soak (tests/soak/engine.py), run by a worker as
#   bash task.sh RECORDS KIND SECONDS [ARG]
# It appends its own records to the shared RECORDS file, one line per write (O_APPEND: lines of
# concurrent tasks never interleave):
#   start TS TASK ATTEMPT PID STARTTIME JOB KIND
#   end   TS TASK ATTEMPT PID STARTTIME RESULT     (RESULT: the exit code, TERM, or poison)
# TS is $EPOCHREALTIME (the clock the server stamps events with: same host); PID and STARTTIME
# (field 22 of /proc/PID/stat) name this process without ambiguity, so the soak can watch it
# live in /proc. SIGKILL leaves no end record: the soak's watcher bounds that run instead.
#
# KIND: ok (exit 0), flaky (exit 3 while the attempt is <= ARG, then 0), fail (exit 7 every
# time), timeout (runs SECONDS, far past the task's timeout), poison (SIGKILL of its own worker,
# the process that started it, on every attempt).
set -u
export LC_ALL=C
records=$1 kind=$2 seconds=$3 arg=${4:-0}
read -r -a stat <"/proc/$$/stat"
me="${HPCSCALE_TASK_ID:-?} ${HPCSCALE_TASK_ATTEMPT:-?} $$ ${stat[21]}"
record() { printf '%s %s %s %s\n' "$1" "$EPOCHREALTIME" "$me" "$2" >>"$records"; }

record start "${SLURM_JOB_ID:-none} $kind"
# The worker stops a run with SIGTERM to its process group (timeout, lease lost, cancel); so
# does scancel to every process of the job. Say so before going.
trap 'record end TERM; exit 143' TERM

if [ "$kind" = poison ]; then
    kill -KILL "$PPID"
    record end poison
    exit 0
fi
sleep "$seconds" &
wait $!
status=$?
if [ "$status" != 0 ]; then
    # The sleep was killed under us (scancel -s KILL reaches a job's processes one by one; an
    # OOM killer picks the biggest): say so and exit as it did, never as if it had finished.
    record end "$status"
    exit "$status"
fi
case $kind in
    ok | timeout) rc=0 ;;
    flaky) if [ "${HPCSCALE_TASK_ATTEMPT:-1}" -le "$arg" ]; then rc=3; else rc=0; fi ;;
    fail) rc=7 ;;
    *) rc=2 ;;
esac
record end "$rc"
exit "$rc"
