"""The chaos soak's engine, shared by tests/soak/test_soak.py (short) and bench/soak.py (long).

Real Slurm (the lab of scripts/slurm-lab.sh), `hpcscale server` and `hpcscale manager` as two
processes (each can be kill -9'd and restarted on its own), two pools on two queues with small
hard maxes, and a seeded workload of tasks that run tests/soak/task.sh: ordinary ones of random
length, flaky ones (fail the first attempt), always-failing ones, ones that run past their
timeout, unstartable ones, poison ones that SIGKILL their own worker on every attempt, and some
the client cancels mid-run. Meanwhile seeded faults: scancel and scancel -s KILL of random live
workers, kill -9 of the manager, kill -9 of the server, a restart of slurmctld (its state kept),
a 20 s stall of the store (SQLite: another connection holding BEGIN EXCLUSIVE; PostgreSQL: a
transaction holding LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE) and, on PostgreSQL, a restart of
the database.

Watched while it runs: squeue every 0.5 s (each pool's elements in flight against its
max_workers, invariant 3), and every task process in /proc every 0.1 s. Checked at the end
(tests/soak/checks.py): nothing acknowledged lost, every task final in the state its kind
allows, no two executions of a task alive at once, the event log a valid path per task that
accounts for every execution.

The lab is found through SLURM_CONF (and SLURM_LAB_DIR, else SLURM_CONF's directory, for
`slurm-lab.sh restart-ctld`), PostgreSQL through HPCSCALE_TEST_PG_URL (and PG_LAB_DIR, else the
server's own data_directory's parent, for `pg-lab.sh restart`). Only the soak's own jobs are
ever cancelled (named hpcscale.<its unique manager>.<pool>).
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from hpcscale.client import Client
from hpcscale.errors import HpcscaleError
from hpcscale.models import TaskSpec
from hpcscale.statestore import open_store
from hpcscale.statestore.schema import events, tasks
from tests.services import ServerProcess
from tests.soak.checks import Execution, Findings, Plan, TaskEvent, TaskRow, check
from tests.soak.manager_process import ManagerProcess

REPO = Path(__file__).resolve().parents[2]
TASK_SH = Path(__file__).with_name("task.sh")
LIGHT = ("scancel", "scancel-kill", "manager-kill")
EXCLUSIVE = ("server-kill", "ctld-restart", "store-stall")  # + db-restart on PostgreSQL
LIGHT_WEIGHTS = (0.4, 0.4, 0.2)


@dataclass(frozen=True)
class PoolPlan:
    name: str
    queue: str
    max_workers: int
    slots: int


POOLS = (PoolPlan("soaka", "qa", 3, 1), PoolPlan("soakb", "qb", 2, 2))


@dataclass(frozen=True)
class SoakConfig:
    store: str  # "sqlite" or "postgres"
    tasks: int = 500
    seed: int = 1
    seconds: tuple[float, float] = (0.0, 0.4)  # an ordinary task's run time, uniform
    submit_batches: int = 10
    submit_over: float = 20.0  # the batches are spread over this many seconds
    light_every: float = 2.5  # mean seconds between light faults (exponential gaps)
    heavy_first: float = 6.0  # seconds into the run of the first exclusive fault
    heavy_gap: tuple[float, float] = (3.0, 6.0)  # between the end of one and the next
    heavy_rounds: int | None = 1  # each exclusive kind this many times; None: until done
    stall_seconds: float = 20.0
    deadline: float = 240.0  # the run fails if the work is not done by then
    lease_ttl: float = 10.0
    wall_time: str = "00:05:00"
    cancel_share: float = 0.02
    # A directory holding the `hpcscale` package to run instead of the installed one (PYTHONPATH
    # of the server, the manager and, through the job script's setup, the workers): a long run
    # then tests one version of the code even while the tree is being edited.
    code: str | None = None

    @property
    def exclusive(self) -> tuple[str, ...]:
        return EXCLUSIVE + (("db-restart",) if self.store == "postgres" else ())


@dataclass
class Fault:
    at: float  # seconds into the run
    kind: str
    detail: str
    seconds: float = 0.0
    error: str | None = None


@dataclass
class SoakResult:
    config: SoakConfig
    seconds: float = 0.0  # first submit to all tasks final
    finished: bool = False
    faults: list[Fault] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    cap_breaches: int = 0
    max_in_flight: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    squeue_failures: int = 0
    executions: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the harness's own troubles
    root: Path | None = None

    @property
    def fault_counts(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults if f.error is None)

    @property
    def ok(self) -> bool:
        f = self.findings
        return (
            self.finished
            and not self.errors
            and self.cap_breaches == 0
            and f.lost == f.unacknowledged == f.wrong_state == f.double_runs == f.mismatches == 0
        )

    def summary(self) -> str:
        f = self.findings
        faults = ", ".join(f"{k} {n}" for k, n in sorted(self.fault_counts.items()))
        return (
            f"{self.config.store}: {self.config.tasks} tasks in {self.seconds:.0f} s "
            f"({'finished' if self.finished else 'NOT FINISHED'}); faults: {faults or 'none'}; "
            f"lost {f.lost}, unacknowledged {f.unacknowledged}, double runs {f.double_runs}, "
            f"cap breaches {self.cap_breaches} (max in flight "
            f"{', '.join(f'{p} {n}' for p, n in sorted(self.max_in_flight.items()))}; "
            f"{self.samples} samples, {self.squeue_failures} unreadable), event-log mismatches "
            f"{f.mismatches}, wrong final state "
            f"{f.wrong_state}; states {dict(sorted(f.states.items()))}; executions "
            f"{self.executions}, dead by faults {f.dead_by_faults}, completed twice {f.reruns}"
        )

    def report(self) -> str:
        lines = [self.summary()]
        lines += [f"  harness: {e}" for e in self.errors]
        lines += [f"  {p}" for p in self.findings.problems]
        lines += [
            f"  fault at {x.at:6.1f}s {x.kind} {x.detail} ({x.seconds:.1f}s)"
            + (f" ERROR {x.error}" if x.error else "")
            for x in self.faults
        ]
        if self.root is not None:
            lines.append(f"  files: {self.root}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- the workload


def plan_workload(cfg: SoakConfig) -> list[Plan]:
    rng = random.Random(cfg.seed)
    n = cfg.tasks
    counts = {
        "poison": max(2, n // 250),
        "timeout": max(2, n // 100),
        "unstartable": max(2, n // 100),
        "fail": max(3, n * 3 // 100),
        "flaky": max(3, n * 4 // 100),
    }
    kinds = [k for k, c in counts.items() for _ in range(c)]
    kinds += ["ok"] * (n - len(kinds))
    rng.shuffle(kinds)
    lo, hi = cfg.seconds
    plans = []
    for i, kind in enumerate(kinds):
        queue = rng.choice([p.queue for p in POOLS])
        seconds, arg, attempts, timeout, cancel_at = rng.uniform(lo, hi), 0, 4, None, None
        if kind == "flaky":
            arg = 1
        elif kind in ("fail", "poison", "unstartable"):
            attempts = 2
        elif kind == "timeout":
            seconds, attempts, timeout = 30.0, 2, 1.0
        elif kind == "ok" and rng.random() < cfg.cancel_share:
            seconds = rng.uniform(2.0, 5.0)  # long enough to be running when cancelled
            cancel_at = -1.0  # set once its submission time is known
        plans.append(Plan(i, kind, queue, seconds, arg, attempts, timeout, cancel_at))
    return plans


def task_spec(plan: Plan, records: Path, missing: Path) -> TaskSpec:
    if plan.kind == "unstartable":
        command = [str(missing)]
    else:
        command = [
            "/bin/bash",
            str(TASK_SH),
            str(records),
            plan.kind,
            f"{plan.seconds:.3f}",
            str(plan.arg),
        ]
    return TaskSpec(
        command=command, queue=plan.queue, max_attempts=plan.max_attempts, timeout=plan.timeout
    )


# ---------------------------------------------------------------------- watchers


class Sampler(threading.Thread):
    """squeue every `every` s: each pool's elements in flight against its max_workers."""

    def __init__(self, manager: str, every: float = 0.5) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.names = {f"hpcscale.{manager}.{p.name}": p for p in POOLS}
        self.every = every
        self.stop = threading.Event()
        self.samples = 0
        self.failures = 0
        self.breaches: list[str] = []
        self.max_seen: dict[str, int] = {p.name: 0 for p in POOLS}

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                out = subprocess.run(
                    ["squeue", "-h", "-r", "--name", ",".join(self.names), "-o", "%i %j %T"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                ).stdout
            except (subprocess.SubprocessError, OSError):
                self.failures += 1  # slurmctld restarting: no sample
                continue
            counts = Counter(line.split()[1] for line in out.splitlines() if line.strip())
            self.samples += 1
            for name, pool in self.names.items():
                n = counts.get(name, 0)
                self.max_seen[pool.name] = max(self.max_seen[pool.name], n)
                if n > pool.max_workers:
                    self.breaches.append(
                        f"{time.time():.1f} {pool.name}: {n} > {pool.max_workers}: {out.strip()!r}"
                    )


class Watcher(threading.Thread):
    """Reads the tasks' records as they are written and watches each live one in /proc."""

    def __init__(self, records: Path, every: float = 0.1) -> None:
        super().__init__(name="soak-watcher", daemon=True)
        self.records = records
        self.every = every
        self.stop = threading.Event()
        self.runs: dict[tuple[int, str], Execution] = {}
        self.open: dict[tuple[int, str], Execution] = {}
        self.bad_lines: list[str] = []
        self._offset = 0
        self._partial = ""

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.poll()
        self.poll()

    def poll(self) -> None:
        self._read()
        now = time.time()
        for key, run in list(self.open.items()):
            if _alive(run.pid, run.starttime):
                run.last_alive = now
            else:
                run.gone = now
                del self.open[key]

    def _read(self) -> None:
        try:
            with self.records.open() as handle:
                handle.seek(self._offset)
                chunk = handle.read()
                self._offset = handle.tell()
        except FileNotFoundError:
            return
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        parts = line.split()
        try:
            what, ts, task, attempt, pid, starttime = parts[:6]
            key = (int(pid), starttime)
            if what == "start":
                run = Execution(
                    int(task), int(attempt), int(pid), starttime, parts[6], parts[7], float(ts)
                )
                self.runs[key] = run
                self.open[key] = run
                if _alive(run.pid, starttime):
                    run.last_alive = time.time()
            elif what == "end":
                run = self.runs[key]
                run.end, run.result = float(ts), parts[6]
                self.open.pop(key, None)
            else:
                raise ValueError(what)
        except (ValueError, IndexError, KeyError):
            self.bad_lines.append(line)


def _alive(pid: int, starttime: str) -> bool:
    """The process `pid` started at `starttime` (clock ticks since boot) exists, not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    rest = text[text.rfind(")") + 2 :].split()
    return len(rest) > 19 and rest[19] == starttime and rest[0] not in ("Z", "X")


# ---------------------------------------------------------------------- the run


class Soak:
    def __init__(self, cfg: SoakConfig, root: Path, say: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.root = root
        self.say = say
        self.manager_name = f"soak{uuid.uuid4().hex[:8]}"
        self.records = root / "records"
        self.plans = plan_workload(cfg)
        self.acked: dict[int, int] = {}
        self.cancelled: set[int] = set()
        self.faults: list[Fault] = []
        self.errors: list[str] = []
        self.t0 = 0.0
        self.done = threading.Event()
        self.submitted_all = threading.Event()
        self.lock = threading.Lock()  # restarts of the server vs. the harness's own calls
        self.rng = random.Random(cfg.seed + 1)
        self.db_url = ""
        self.server: ServerProcess | None = None
        self.manager: ManagerProcess | None = None
        self._stall: threading.Thread | None = None

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> SoakResult:
        result = SoakResult(self.cfg, root=self.root)
        result.kinds = Counter(p.kind for p in self.plans)
        self.root.mkdir(parents=True, exist_ok=True)
        probe = subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode != 0:
            result.errors = [f"squeue does not answer (SLURM_CONF?): {probe.stderr.strip()}"]
            return result
        with self._database() as url:
            self.db_url = url
            sampler = Sampler(self.manager_name)
            watcher = Watcher(self.records)
            try:
                self._start_services()
                sampler.start()
                watcher.start()
                result.finished, result.seconds = self._drive()
            except Exception as exc:  # the harness's own failure: reported, then cleaned up
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                self.done.set()
                self._wind_down()
                sampler.stop.set()
                watcher.stop.set()
                for thread in (sampler, watcher):
                    if thread.ident is not None:  # not started when the services failed to start
                        thread.join(timeout=15)
            result.faults = self.faults
            result.cap_breaches = len(sampler.breaches)
            result.max_in_flight = sampler.max_seen
            result.samples, result.squeue_failures = sampler.samples, sampler.failures
            result.executions = len(watcher.runs)
            self.errors += [f"cap breach: {b}" for b in sampler.breaches[:10]]
            self.errors += [f"unreadable record: {line!r}" for line in watcher.bad_lines[:10]]
            try:
                rows, task_events = self._read_store()
            except Exception as exc:
                self.errors.append(f"reading the store: {type(exc).__name__}: {exc}")
                rows, task_events = [], []
            result.findings = check(
                self.plans, self.acked, self.cancelled, rows, task_events, watcher.runs.values()
            )
        result.errors = self.errors
        return result

    def _drive(self) -> tuple[bool, float]:
        self.t0 = time.time()
        threads = [
            threading.Thread(target=self._workload, name="soak-workload", daemon=True),
            threading.Thread(target=self._faults, name="soak-faults", daemon=True),
        ]
        for thread in threads:
            thread.start()
        finished = False
        try:
            with self._client() as client:
                while time.time() - self.t0 < self.cfg.deadline:
                    if self.submitted_all.is_set() and self._all_final(client):
                        finished = True
                        break
                    time.sleep(1.0)
        finally:
            seconds = time.time() - self.t0
            self.done.set()  # no more submissions, cancels or faults, whatever happened
        for thread in threads:
            thread.join(timeout=60)
        if self._stall is not None:
            self._stall.join(timeout=60)
        self.say(
            f"soak {self.cfg.store}: work {'done' if finished else 'NOT done'} "
            f"after {seconds:.0f} s"
        )
        return finished, seconds

    def _all_final(self, client: Client) -> bool:
        with self.lock:
            return not client.list_tasks(state="waiting", limit=1) and not client.list_tasks(
                state="running", limit=1
            )

    # -- services ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _database(self) -> Iterator[str]:
        if self.cfg.store == "sqlite":
            yield f"sqlite:///{self.root}/state.db"
            return
        import psycopg

        admin = os.environ.get("HPCSCALE_TEST_PG_URL")
        if not admin:
            raise RuntimeError("no PostgreSQL: run scripts/pg-lab.sh up (HPCSCALE_TEST_PG_URL)")
        name = "soak_" + uuid.uuid4().hex[:12]
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.rsplit("/", 1)[0] + "/" + name
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _start_services(self) -> None:
        cfg = self.cfg
        pools: list[dict[str, object]] = [
            {
                "name": p.name,
                "queue": p.queue,
                "max_workers": p.max_workers,
                "max_pending": p.max_workers,
                "slots": p.slots,
                "prior": "0.3s",
                "drain": "5s",
                "max_empty_claims": 2,
                "empty_claim_sleep": "0.5s",
                "heartbeat_interval": "2s",
                "claim_margin": "2s",
                "time": cfg.wall_time,
                "signal_margin": "10s",
            }
            for p in POOLS
        ]
        self.server = ServerProcess(
            root=self.root,
            database=self.db_url,
            manager=self.manager_name,
            lease_ttl=f"{cfg.lease_ttl:g}s",
            pools=pools,
            command="server",
            poll_interval="1s",
            # Poison tasks and kills make quick worker deaths, the breaker's food: a short
            # cooldown keeps it probing instead of idling the pool for the default 5 minutes.
            extra_manager='breaker_cooldown = "5s"',
        )
        self.server.write_config()
        env = None
        if cfg.code:
            os.chdir(self.root)  # `python -m` puts the cwd first on sys.path: no package here
            env = {**os.environ, "PYTHONPATH": cfg.code}
            setup = f'setup = ["export PYTHONPATH={shlex.quote(cfg.code)}"]'
            text = self.server.config_path.read_text()
            self.server.config_path.write_text(
                text.replace("[pools.slurm]\n", f"[pools.slurm]\n{setup}\n")
            )
        self.server.env = env
        # The soak fails tasks and kills workers on purpose on 4 nodes: with every node
        # denied claims in turn (tests/test_hosts.py covers that), the pools would wait out
        # the denials instead of being soaked.
        text = self.server.config_path.read_text()
        text = text.replace(
            'reaper_interval = "1s"\n', 'reaper_interval = "1s"\nhost_failure_limit = 0\n', 1
        )
        self.server.config_path.write_text(text)
        self.server.start(timeout=60)
        self.manager = ManagerProcess(self.server.config_path, self.root / "manager.log", env)
        self.manager.start()

    def _client(self) -> Client:
        token = (self.root / "token").read_text().strip()
        assert self.server is not None
        return Client(self.server.url, token, retry_for=180.0, timeout=60.0)

    def _wind_down(self) -> None:
        """Let the workers leave on their own (idle), then stop everything the soak started."""
        names = [f"hpcscale.{self.manager_name}.{p.name}" for p in POOLS]
        if self.manager is not None and not self.manager.alive and self.server is not None:
            with contextlib.suppress(Exception):
                self.manager.start()
        deadline = time.time() + 30
        while time.time() < deadline and _our_jobs(names):
            time.sleep(1)
        if self.manager is not None:
            self.manager.stop()
        if self.server is not None:
            self.server.stop()
        for name in names:
            subprocess.run(["scancel", "--name", name], check=False, timeout=30)

    def _read_store(self) -> tuple[list[TaskRow], list[TaskEvent]]:
        store = open_store(self.db_url)
        try:
            with store.engine.connect() as conn:
                rows = [
                    TaskRow(r.id, r.state, r.attempts, r.max_attempts, r.reason)
                    for r in conn.execute(
                        select(
                            tasks.c.id,
                            tasks.c.state,
                            tasks.c.attempts,
                            tasks.c.max_attempts,
                            tasks.c.reason,
                        )
                    )
                ]
                log = [
                    TaskEvent(r.id, r.ts, r.kind.removeprefix("task."), r.task_id, r.detail)
                    for r in conn.execute(
                        select(
                            events.c.id,
                            events.c.ts,
                            events.c.kind,
                            events.c.task_id,
                            events.c.detail,
                        )
                        .where(events.c.task_id.is_not(None), events.c.kind.startswith("task."))
                        .order_by(events.c.id)
                    )
                ]
        finally:
            store.close()
        return rows, log

    # -- the workload: submissions and cancels -------------------------------------------

    def _workload(self) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed + 2)
        batches = max(1, cfg.submit_batches)
        size = -(-len(self.plans) // batches)
        actions: list[tuple[float, str, list[Plan]]] = []
        for b in range(batches):
            at = cfg.submit_over * b / max(1, batches - 1) if batches > 1 else 0.0
            chunk = self.plans[b * size : (b + 1) * size]
            actions.append((at, "submit", chunk))
            for plan in chunk:
                if plan.cancel_at is not None:
                    actions.append((at + rng.uniform(0.5, 15.0), "cancel", [plan]))
        actions.sort(key=lambda a: a[0])
        records, missing = self.records, self.root / "no-such-program"
        try:
            with self._client() as client:
                for at, what, chunk in actions:
                    if self._sleep_until(at):
                        return
                    if what == "submit":
                        reply = client.submit([task_spec(p, records, missing) for p in chunk])
                        for plan, tid in zip(chunk, reply.ids, strict=True):
                            self.acked[plan.index] = tid
                        if len(self.acked) == len(self.plans):
                            self.submitted_all.set()
                    else:
                        ids = [self.acked[p.index] for p in chunk if p.index in self.acked]
                        self.cancelled.update(client.cancel(ids))
        except HpcscaleError as exc:
            self.errors.append(f"workload: {exc}")
            self.submitted_all.set()

    def _sleep_until(self, at: float) -> bool:
        """Wait until `at` seconds into the run; True if the run is over first."""
        return self.done.wait(max(0.0, self.t0 + at - time.time()))

    # -- faults --------------------------------------------------------------------------

    def _faults(self) -> None:
        cfg, rng = self.cfg, self.rng
        heavy: list[str] = []
        next_heavy = cfg.heavy_first
        next_light = rng.expovariate(1 / cfg.light_every)
        rounds = 0
        light = list(LIGHT)  # each light kind once first, then at random
        rng.shuffle(light)
        while not self.done.is_set():
            now = time.time() - self.t0
            stalling = self._stall is not None and self._stall.is_alive()
            if now >= next_heavy and not stalling:
                if not heavy and (cfg.heavy_rounds is None or rounds < cfg.heavy_rounds):
                    heavy = list(cfg.exclusive)
                    rng.shuffle(heavy)
                    rounds += 1
                if heavy:
                    self._inject(heavy.pop())
                    ended = time.time() - self.t0
                    if self._stall is not None and self._stall.is_alive():
                        ended += cfg.stall_seconds
                    next_heavy = ended + rng.uniform(*cfg.heavy_gap)
                else:
                    next_heavy = float("inf")
            if now >= next_light:
                kind = light[-1] if light else rng.choices(LIGHT, LIGHT_WEIGHTS)[0]
                if self._inject(kind) and light:
                    light.pop()
                next_light = time.time() - self.t0 + rng.expovariate(1 / cfg.light_every)
            self.done.wait(0.1)

    def _inject(self, kind: str) -> bool:
        """One fault now; False when there was nothing to hit (no live worker)."""
        started = time.time()
        fault = Fault(at=started - self.t0, kind=kind, detail="")
        try:
            fault.detail = getattr(self, "_fault_" + kind.replace("-", "_"))()
        except Exception as exc:
            fault.error = f"{type(exc).__name__}: {exc}"
            self.errors.append(f"fault {kind} at {fault.at:.1f}s failed: {fault.error}")
        fault.seconds = time.time() - started
        if fault.detail == "skipped":
            return False
        self.faults.append(fault)
        return True

    def _live_elements(self) -> list[str]:
        names = ",".join(f"hpcscale.{self.manager_name}.{p.name}" for p in POOLS)
        try:
            out = subprocess.run(
                ["squeue", "-h", "-r", "--name", names, "-t", "RUNNING", "-o", "%i"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (subprocess.SubprocessError, OSError):
            return []
        return out.split()

    def _fault_scancel(self, *signal_args: str) -> str:
        live = self._live_elements()
        if not live:
            return "skipped"
        element = self.rng.choice(live)
        done = subprocess.run(
            ["scancel", *signal_args, element], check=False, timeout=30, capture_output=True
        )
        if done.returncode != 0:  # it ended between squeue and scancel: nothing was hit
            return "skipped"
        return element

    def _fault_scancel_kill(self) -> str:
        return self._fault_scancel("-s", "KILL")

    def _fault_manager_kill(self) -> str:
        assert self.manager is not None
        self.manager.stop(signal.SIGKILL)
        down = self.rng.uniform(0.2, 2.0)
        time.sleep(down)
        self.manager.start()
        return f"down {down:.1f}s"

    def _fault_server_kill(self) -> str:
        assert self.server is not None
        down = self.rng.uniform(0.5, 3.0)
        with self.lock:
            self.server.stop(signal.SIGKILL)
            time.sleep(down)
            self.server.start(timeout=90)
        return f"down {down:.1f}s"

    def _fault_ctld_restart(self) -> str:
        env = {**os.environ, "SLURM_LAB_DIR": slurm_lab_dir()}
        subprocess.run(
            ["bash", str(REPO / "scripts" / "slurm-lab.sh"), "restart-ctld"],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        return env["SLURM_LAB_DIR"]

    def _fault_db_restart(self) -> str:
        env = {**os.environ, "PG_LAB_DIR": pg_lab_dir()}
        subprocess.run(
            ["bash", str(REPO / "scripts" / "pg-lab.sh"), "restart"],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        return env["PG_LAB_DIR"]

    def _fault_store_stall(self) -> str:
        """Hold the store's write lock (SQLite) or the tasks table (PostgreSQL) for a while,
        from a connection of our own, in the background (light faults go on meanwhile)."""
        held = threading.Event()
        failed: list[str] = []

        def hold() -> None:
            try:
                if self.cfg.store == "sqlite":
                    path = self.db_url.removeprefix("sqlite:///")
                    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
                    try:
                        conn.execute("BEGIN EXCLUSIVE")
                        held.set()
                        time.sleep(self.cfg.stall_seconds)
                        conn.execute("ROLLBACK")
                    finally:
                        conn.close()
                else:
                    import psycopg

                    with psycopg.connect(self.db_url) as pg:
                        pg.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
                        held.set()
                        time.sleep(self.cfg.stall_seconds)
                        pg.rollback()
            except Exception as exc:
                failed.append(f"{type(exc).__name__}: {exc}")
                held.set()

        self._stall = threading.Thread(target=hold, name="soak-stall", daemon=True)
        self._stall.start()
        held.wait(90)
        if failed:
            raise RuntimeError(failed[0])
        return f"{self.cfg.stall_seconds:g}s"


def _our_jobs(names: list[str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "--name", ",".join(names), "-o", "%i"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout.split()


def slurm_lab_dir() -> str:
    """The lab's directory: $SLURM_LAB_DIR, else the directory of $SLURM_CONF (slurm-lab.sh
    writes its slurm.conf at the top of its directory)."""
    return os.environ.get("SLURM_LAB_DIR") or str(Path(os.environ["SLURM_CONF"]).parent)


def pg_lab_dir() -> str:
    """The PostgreSQL lab's directory: $PG_LAB_DIR, else the parent of the server's own data
    directory (pg-lab.sh keeps its cluster in $DIR/data)."""
    if os.environ.get("PG_LAB_DIR"):
        return os.environ["PG_LAB_DIR"]
    import psycopg

    with psycopg.connect(os.environ["HPCSCALE_TEST_PG_URL"], autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    return str(Path(str(row[0])).parent)
