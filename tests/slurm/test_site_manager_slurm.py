"""The manager (`hpcscale serve`) on a lab with accounting and limits like a real site's (issue 14).

Needs `SLURM_LAB_ACCOUNTING=1 scripts/slurm-lab.sh up` (its env.sh exports
HPCSCALE_TEST_SLURM_ACCOUNTING_CONF). The tests change the user's QOS limits and the partition's
state, so they run one at a time (the accounting_slurm fixture's xdist group); each puts them
back in its teardown (the node test kills one node's slurmd and job processes, this lab's
only, found through /proc, and starts it again). squeue is sampled every 0.5 s all through the
scenarios about counts.
Each prints its figures (`-s` shows them): the issue's acceptance asks for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcscale.models import TaskSpec
from tests.services import ServerProcess
from tests.slurm.test_manager_slurm import Sampler
from tests.slurm_fixtures import (
    AccountingLab,
    cancel_and_wait,
    partition,
    set_qos,
    slurm,
    unique,
    wait_for,
)

pytestmark = pytest.mark.slurm
POOL = "cpu"


@pytest.fixture
def serve(accounting_slurm: AccountingLab, tmp_path: Path) -> Iterator[ServerProcess]:
    """`hpcscale serve` with a 2 s poll interval on the accounting lab; the QOS limits and the
    partition put back, and the pool's jobs cancelled, afterwards."""
    proc = ServerProcess(root=tmp_path, database=f"sqlite:///{tmp_path}/state.db",
                         manager=unique("m"), command="serve", poll_interval="2s")  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()
        cancel_and_wait(f"hpcscale.{proc.manager}.{POOL}", "site-other")
        set_qos(MaxSubmitJobsPerUser=-1, MaxJobsPerUser=-1)
        partition("up")


def start(serve: ServerProcess, setup: str = "", grace: str = "60s", **pool: object) -> None:
    """A pool that wants every worker it may have (a 5 s drain target); `setup`: a job-script
    line before the worker starts (a slow start-up)."""
    serve.pools = [{"name": POOL, "max_workers": 8, "max_pending": 8, "prior": "3s",
                    "max_empty_claims": 2, "empty_claim_sleep": "1s",
                    "drain": "5s", **pool}]  # fmt: skip
    serve.extra_manager = f'start_grace = "{grace}"\ncrash_seconds = "60s"\nbreaker_failures = 3'
    serve.write_config()
    if setup:
        text = serve.config_path.read_text()
        serve.config_path.write_text(
            text.replace("[pools.slurm]\n", f"[pools.slurm]\nsetup = [{setup!r}]\n")
        )
    serve.start()


def submit(serve: ServerProcess, n: int, command: list[str]) -> list[int]:
    with serve.admin() as admin:
        return admin.submit([TaskSpec(command=command)] * n).ids


def done(serve: ServerProcess, ids: list[int]) -> bool:
    with serve.admin() as admin:
        finished = admin.list_tasks(state="succeeded", limit=10_000)
    return {t.id for t in finished} >= set(ids)


def ours(serve: ServerProcess, states: str = "PENDING,RUNNING,COMPLETING,CONFIGURING") -> list[str]:
    out = slurm(
        "squeue", "-h", "-r", "--name", f"hpcscale.{serve.manager}.{POOL}", "-t", states, "-o", "%i"
    )
    return out.split()


def records(serve: ServerProcess, n: int = 500) -> list[dict[str, object]]:
    with serve.admin() as admin:
        return [r.data for r in admin.decisions(POOL, n)]


def why(serve: ServerProcess) -> str:
    """`hpcscale why` as a user runs it."""
    argv = [sys.executable, "-m", "hpcscale", "why", POOL, "--limit", "1"]
    argv += ["--config", str(serve.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def status(serve: ServerProcess) -> str:
    argv = [sys.executable, "-m", "hpcscale", "status", "--config", str(serve.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def assert_healthy(serve: ServerProcess) -> None:
    """No failed start, no breaker, no alarm, never degraded: the site's doing is no failure."""
    with serve.admin() as admin:
        assert admin.events(kind_prefix="pool.failed_start", limit=100) == []
    data = records(serve)
    assert all(d.get("state") != "degraded" for d in data), [d.get("reasons") for d in data]
    assert not any(d.get("alarm") for d in data)
    breakers = [obs.get("breaker") for d in data if isinstance(obs := d.get("observation"), dict)]
    assert set(breakers) <= {"closed"}, breakers


def test_a_submit_limit_caps_the_pool_and_a_raise_grows_it(serve: ServerProcess) -> None:
    """Acceptance 1: MaxSubmitJobsPerUser=4, max_workers 8, 40 tasks: never more than 4 of ours
    in squeue, `why` names the limit, all tasks done, no failed start; raised to 8 mid-run,
    the pool grows past 4 within about two poll intervals."""
    set_qos(MaxSubmitJobsPerUser=4)
    start(serve)
    began = time.monotonic()
    with Sampler(serve.manager) as sampler:
        ids = submit(serve, 40, ["sleep", "4"])
        wait_for("4 elements of ours", lambda: len(ours(serve)) >= 4, 60)
        wait_for("why to name the QOS limit", lambda: "MaxSubmitJobsPerUser=4" in why(serve), 30)
        text, table = why(serve), status(serve)
        capped = list(sampler.samples)
        set_qos(MaxSubmitJobsPerUser=8)
        raised = time.monotonic()
        wait_for("the pool to grow past 4", lambda: len(ours(serve)) > 4, 30, every=0.25)
        grew = time.monotonic() - raised
        wait_for("all 40 tasks done", lambda: done(serve, ids), 240)
    print(f"\n[a] 40/40 done in {time.monotonic() - began:.0f}s; max of ours in squeue under"
          f" the limit {max(capped)}, after the raise {max(sampler.samples)}; grew past 4"
          f" {grew:.1f}s after the raise (poll interval 2s)\n{text}")  # fmt: skip
    assert max(capped) <= 4, capped
    assert grew <= 2 * 2 + 3  # two poll intervals and an sbatch
    assert "MaxSubmitJobsPerUser=4" in table
    assert_healthy(serve)


def test_the_users_other_jobs_count_against_the_limit(serve: ServerProcess) -> None:
    """Acceptance 2: MaxSubmitJobsPerUser=4 with 3 jobs of another name already queued by the
    same user: the pool stays at 1 element, and all its tasks succeed through it."""
    set_qos(MaxSubmitJobsPerUser=4)
    for _ in range(3):
        slurm("sbatch", "--job-name=site-other", "--output=/dev/null", "--wrap", "sleep 300")
    start(serve)
    with Sampler(serve.manager) as sampler:
        ids = submit(serve, 10, ["sleep", "1"])
        wait_for("all 10 tasks done", lambda: done(serve, ids), 120)
    text = why(serve)
    print(f"\n[a2] 10/10 done; max of ours in squeue {max(sampler.samples)} (3 other jobs)")
    assert max(sampler.samples) == 1, sampler.samples
    assert_healthy(serve)
    assert "with 3 of" in text or "with 4 of" in text, text


def test_a_drained_partition_holds_the_pool_and_up_resumes_it(serve: ServerProcess) -> None:
    """Acceptance 3: partition DRAIN (sbatch refused) then UP: no failed start nor breaker,
    `why` names the refusal, the first sbatch within two poll intervals of UP; DOWN (sbatch
    accepted, elements pend): `why` and `status` show PartitionDown."""
    partition("drain")
    start(serve, max_workers=4, max_pending=4)
    ids = submit(serve, 8, ["sleep", "1"])
    wait_for("why to name the refusal", lambda: "partition unavailable" in why(serve), 30)
    time.sleep(10)  # several cycles refused
    text = why(serve)
    assert ours(serve) == []
    partition("up")
    up = time.monotonic()
    wait_for("an sbatch after UP", lambda: ours(serve, "all"), 30, every=0.25)
    first = time.monotonic() - up
    wait_for("all 8 tasks done", lambda: done(serve, ids), 120)
    print(f"\n[b] 8/8 done; first sbatch {first:.1f}s after UP (poll interval 2s)\n{text}")
    assert first <= 2 * 2 + 2
    assert_healthy(serve)

    wait_for("the pool to empty", lambda: not ours(serve), 60)
    partition("down")
    more = submit(serve, 4, ["sleep", "1"])
    wait_for("why to show PartitionDown", lambda: "PartitionDown" in why(serve), 40)
    table = status(serve)
    print(f"[c] partition DOWN:\n{why(serve)}\n{table}")
    assert "PartitionDown" in table
    partition("up")
    wait_for("the 4 more done", lambda: done(serve, more), 120)
    assert_healthy(serve)


def requeue_now(element: str) -> None:
    """`scontrol requeue`, then let it start again soon (its default BeginTime is ~2 min; a
    start in the same second as the kill is refused, see accounting-lab-check.sh)."""
    slurm("scontrol", "requeue", element)
    wait_for(
        f"{element} pending",
        lambda: slurm("squeue", "-h", "-j", element, "-o", "%T").strip() == "PENDING",
        20,
    )
    time.sleep(2)
    slurm("scontrol", "update", f"jobid={element}", "starttime=now")


def test_a_requeued_element_with_a_slow_start_is_no_failed_start(serve: ServerProcess) -> None:
    """Acceptance 4: workers that take 10 s to start; a busy element requeued 10 times in a
    row: it is never cancelled, never a failed start, never above the max, and the tasks all
    succeed on their default 3 attempts with each requeue's attempt given back (the site took
    the job, the task did nothing wrong): every task shows 1 attempt. Three elements, so that
    one is busy while the others start again (10 s each)."""
    # start_grace 20 s: more than a run's start-up, less than the first run's start to the
    # next run's registration (a requeued element that kept its first run's clock failed).
    start(serve, setup="sleep 10", grace="20s", max_workers=3, max_pending=3)
    began = time.monotonic()
    with Sampler(serve.manager) as sampler:
        with serve.admin() as admin:
            ids = admin.submit([TaskSpec(command=["sleep", "4"])] * 12).ids
        requeued = []
        for _ in range(10):
            busy = wait_for("a busy element", lambda: busy_element(serve), 90, every=0.25)
            requeue_now(busy)
            requeued.append(busy)
        wait_for("all 12 tasks done", lambda: done(serve, ids), 300)
    print(f"\n[d] 12/12 done in {time.monotonic() - began:.0f}s; requeued {requeued}; max of"
          f" ours in squeue {max(sampler.samples)}")  # fmt: skip
    assert max(sampler.samples) <= 3
    with serve.admin() as admin:
        attempts = [admin.get_task(i).attempts for i in ids]
    assert attempts == [1] * 12, attempts  # a requeue's attempt given back
    log = (serve.root / "server.log").read_text()
    assert "failed to start" not in log
    assert_healthy(serve)


def busy_element(serve: ServerProcess) -> str | None:
    """A running element of ours whose worker holds a task."""
    with serve.admin() as admin:
        workers = [w for w in admin.list_workers(live=True) if w.busy_slots and w.job_id]
    running = set(ours(serve, "RUNNING"))
    found = [f"{w.job_id}_{w.array_index}" for w in workers]
    return next((e for e in found if e in running), None)


def test_a_preempted_worker_gives_its_tasks_back_at_once(serve: ServerProcess) -> None:
    """Acceptance 4 (preemption): a --qos=high job that needs every CPU requeues our normal
    elements; the tasks they ran are waiting again long before the lease TTL, nothing counts
    as a failed start, and all succeed once the elements run again."""
    serve.lease_ttl = "120s"
    start(serve, max_workers=2, max_pending=2)
    ids = submit(serve, 6, ["sleep", "8"])
    wait_for("two busy workers", lambda: len(running_tasks(serve)) == 2, 90)
    held = running_tasks(serve)
    cpus = slurm("sinfo", "-h", "-o", "%C").strip().split("/")[3]
    high = slurm("sbatch", "--parsable", "--qos=high", "-n", cpus, "--job-name=site-other",
                 "--output=/dev/null", "--wrap", "sleep 5").strip()  # fmt: skip
    preempted = time.monotonic()
    wait_for("the preempted tasks back", lambda: not held & running_tasks(serve), 60, every=0.25)
    back = time.monotonic() - preempted
    wait_for("the high job to end", lambda: not slurm("squeue", "-h", "-j", high, "-o", "%i"), 60)
    time.sleep(2)
    for element in ours(serve, "PENDING"):  # requeued: BeginTime ~2 min; sooner, for the test
        slurm("scontrol", "update", f"jobid={element}", "starttime=now")
    wait_for("all 6 tasks done", lambda: done(serve, ids), 300)
    print(f"\n[e] 6/6 done; the preempted tasks back {back:.1f}s after the high job (lease 120s)")
    assert back < 30
    with serve.admin() as admin:  # preempted: the attempt given back
        assert [admin.get_task(i).attempts for i in ids] == [1] * 6
    assert_healthy(serve)


def running_tasks(serve: ServerProcess) -> set[int]:
    with serve.admin() as admin:
        return {t.id for t in admin.list_tasks(state="running", limit=100)}


def proc_table() -> dict[int, tuple[int, str, list[str]]]:
    """Every process: pid -> (parent pid, command line, environment), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            environ = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, cmdline, environ)
    return table


def node_pids(conf: str, node: str) -> set[int]:
    """One lab node's processes and nothing else: its slurmd (pid file, command line checked),
    the job processes Slurm started there (their environment names this lab's SLURM_CONF and
    the node), the slurmstepd above each, and everything below those."""
    table = proc_table()
    found: set[int] = set()
    pid_file = Path(conf).parent / "run" / f"slurmd-{node}.pid"
    if pid_file.is_file():
        pid = int(pid_file.read_text().strip() or 0)
        if table.get(pid, (0, "", []))[1] == f"slurmd -N {node}":
            found.add(pid)
    for pid, (ppid, _, environ) in table.items():
        if f"SLURM_CONF={conf}" in environ and f"SLURMD_NODENAME={node}" in environ:
            found.add(pid)
            if table.get(ppid, (0, "", []))[1].startswith("slurmstepd:"):
                found.add(ppid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_node(conf: str, node: str) -> int:
    """The node dies as a machine would: its slurmd, then its job steps and their workers and
    tasks, SIGKILLed, so nothing tells slurmctld (it marks the node DOWN after SlurmdTimeout).
    Returns how many processes were killed."""
    killed: set[int] = set()
    for _ in range(5):  # again until none is left: a task may fork while we kill
        pids = node_pids(conf, node) - killed
        if not pids:
            break
        for pid in sorted(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.2)
    return len(killed)


def restore_node(conf: str, node: str) -> None:
    """Its slurmd started again as scripts/slurm-lab.sh does, the node resumed if Slurm still
    has it DOWN, and waited for until it takes jobs (later tests want all 4 nodes)."""
    table = proc_table()
    if not any(table[p][1] == f"slurmd -N {node}" for p in node_pids(conf, node) if p in table):
        subprocess.run(["slurmd", "-N", node], stdin=subprocess.DEVNULL, check=True, timeout=30)

    def usable() -> bool:
        state = slurm("sinfo", "-h", "-n", node, "-o", "%T").strip()
        if state.startswith(("down", "drain", "fail")):
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                           capture_output=True, check=False, timeout=30)  # fmt: skip
        return state in ("idle", "mixed", "allocated")

    wait_for(f"{node} back", usable, 60, every=1)


def node_of(element: str) -> str:
    return slurm("squeue", "-h", "-j", element, "-o", "%N").strip()


def test_a_node_that_dies_gives_its_tasks_back_before_the_lease_ttl(
    serve: ServerProcess, accounting_slurm: AccountingLab
) -> None:
    """Acceptance 5: a node's slurmd and everything it runs killed (NODE_FAIL once Slurm marks
    it DOWN, ~30 s): the tasks its workers held are waiting or running again long before the
    lease TTL (120 s), nothing counts as a failed start, no breaker nor alarm; new elements run
    on the other nodes; all tasks succeed; never above the max. 2 CPUs an element: 2 per node."""
    serve.lease_ttl = "120s"
    start(serve, max_workers=4, max_pending=4, cpus_per_task=2, max_tasks=2)
    with Sampler(serve.manager) as sampler:
        ids = submit(serve, 20, ["sleep", "4"])
        busy = wait_for("a busy element", lambda: busy_element(serve), 90, every=0.25)
        node = node_of(busy)
        on_node = {e for e in ours(serve, "RUNNING") if node_of(e) == node}
        with serve.admin() as admin:
            owners = {w.id for w in admin.list_workers(live=True)
                      if f"{w.job_id}_{w.array_index}" in on_node}  # fmt: skip
            held = {t.id: t.lease_owner for t in admin.list_tasks(state="running", limit=100)
                    if t.lease_owner in owners}  # fmt: skip
        assert held, (on_node, owners)
        before = set(ours(serve))

        def new_elsewhere() -> list[str]:
            running = set(ours(serve, "RUNNING")) - before
            return [f"{e} on {n}" for e in running if (n := node_of(e)) not in ("", node)]

        try:
            killed = kill_node(accounting_slurm.conf, node)
            killed_at, wall_killed = time.monotonic(), time.time()

            def back() -> bool:
                with serve.admin() as admin:
                    tasks = [admin.get_task(i) for i in held]
                return all(t.state.value != "running" or t.lease_owner != held[t.id]
                           for t in tasks)  # fmt: skip

            wait_for("the dead node's tasks back", back, 110, every=0.25)
            returned = time.monotonic() - killed_at
            fresh = wait_for("a new element on another node", new_elsewhere, 60)
            # Slurm holds a requeued element ~2 min (BeginTime) and the manager counts it in
            # flight, so the last tasks could wait for it: let it start now (as for preemption).
            for element in set(ours(serve, "PENDING")) & on_node:
                slurm("scontrol", "update", f"jobid={element}", "starttime=now")
            wait_for("all 20 tasks done", lambda: done(serve, ids), 240)
        finally:
            restore_node(accounting_slurm.conf, node)
    runs = slurm("sacct", "-n", "-P", "-X", "-D", f"--name=hpcscale.{serve.manager}.{POOL}",
                 "-o", "JobID,Start,NodeList,State")  # fmt: skip
    rows = [line.split("|") for line in runs.splitlines()]
    after = [r for r in rows if (time_of(r[1]) or 0) > wall_killed + 1]
    print(
        f"\n[f] 20/20 done; killed {node} ({killed} processes, {len(held)} tasks held);"
        f" tasks back {returned:.1f}s after the kill (lease 120s); new element {fresh[0]};"
        f" runs started since:"
        f" {[(r[0], r[2], r[3]) for r in after]}; max of ours in squeue {max(sampler.samples)}"
    )
    assert returned < 60
    assert any(r[2] != node and r[3] == "COMPLETED" for r in after), after
    assert max(sampler.samples) <= 4
    assert "failed to start" not in (serve.root / "server.log").read_text()
    assert_healthy(serve)


def time_of(text: str) -> float | None:
    """sacct's local-time stamp as epoch seconds (None for Unknown)."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def test_budgets_burn_what_sacct_charged(serve: ServerProcess) -> None:
    """Acceptance 6: a pool with a core-hours budget, 2 CPUs an element and a 5 s start-up
    (time the worker is not registered but Slurm charges), its workers run and end; the burn
    the user sees (the decision record `status`/`why`/metrics read) agrees with sacct's
    CPUTimeRAW summed over the pool's jobs within one element's charge. The estimate from
    registrations misses each element's start-up, more than one element's worth in all."""
    budget = '[pools.budget]\ncore_hours = 1.0\nwindow = "1h"'
    start(serve, setup="sleep 5", max_workers=4, max_pending=4, cpus_per_task=2, max_tasks=2,
          time="00:02:00", pool_tables=budget)  # fmt: skip
    ids = submit(serve, 16, ["sleep", "2"])
    wait_for("all 16 tasks done", lambda: done(serve, ids), 180)
    wait_for("every element ended", lambda: not ours(serve), 60)
    name = f"--name=hpcscale.{serve.manager}.{POOL}"

    def charged() -> list[int]:
        out = slurm("sacct", "-n", "-P", "-X", "-D", name, "-o", "CPUTimeRAW,State")
        rows = [line.split("|") for line in out.splitlines()]
        return (
            [] if any(s in ("RUNNING", "PENDING") for _, s in rows) else [int(c) for c, _ in rows]
        )

    per_element = wait_for("sacct to show every run ended", charged, 30)
    ended = time.time()

    def burned() -> float | None:
        """The core-hours burned as the newest decision recorded since sacct saw every end."""
        with serve.admin() as admin:
            for decision in reversed(admin.decisions(POOL, 20)):
                budget = decision.data.get("budget")
                if decision.ts > ended + 1 and isinstance(budget, dict):
                    return float(budget["core"]["burned_hours"])
        return None

    hpcscale = wait_for("a decision after the last end", burned, 30)
    sacct = sum(per_element) / 3600
    one = max(per_element) / 3600
    print(f"\n[g] {len(per_element)} elements; hpcscale burned {hpcscale:.4f} core-h, sacct"
          f" CPUTimeRAW {sacct:.4f} core-h; one element at most {one:.4f} core-h")  # fmt: skip
    assert abs(hpcscale - sacct) <= one, (hpcscale, sacct, per_element)
    assert f"core {1 - hpcscale:.3g}/1h" in status(serve)  # left: nothing is in flight
