"""The chaos soak, long: the engine of tests/soak/ (the short test runs 500 tasks) on thousands.

    python bench/soak.py --tasks 10000 --store sqlite --write
    python bench/soak.py --tasks 10000 --store postgres --write   # HPCSCALE_TEST_PG_URL set
    python bench/soak.py --tasks 300 --store sqlite --keep        # a quick look, files kept
    python bench/soak.py --tasks 10000 --store sqlite --write --code /tmp/copy   # see --code

Needs the Slurm lab (SLURM_CONF; `slurmctld` is restarted during the run, so use a lab of your
own: SLURM_LAB_DIR=... scripts/slurm-lab.sh up) and, for postgres, the PostgreSQL lab
(HPCSCALE_TEST_PG_URL; restarted during the run too: PG_LAB_DIR=... scripts/pg-lab.sh up).

What it runs and checks: tests/soak/engine.py and tests/soak/checks.py. It prints one line per
run, and with --write keeps it in BENCHMARKS.md's "Chaos soak" section (one row per store, the
latest run). Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench import report
from tests.soak.engine import POOLS, Soak, SoakConfig, SoakResult

SECTION = "## Chaos soak"
HEADER = (
    "| store | tasks | faults injected | lost | double runs | cap breaches | event-log "
    "mismatches | wrong final state | duration | final states (executions) | run |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|"
)


def long_config(store: str, tasks: int, seed: int) -> SoakConfig:
    """Faults at a rate a long run survives: light ones every ~10 s, an exclusive one (server
    kill, slurmctld restart, 20 s store stall, database restart) every 40-80 s, kinds in turn."""
    return SoakConfig(
        store=store,
        tasks=tasks,
        seed=seed,
        seconds=(0.0, 0.4),
        submit_batches=max(1, tasks // 250),
        submit_over=max(0.0, (tasks // 250 - 1) * 10.0),
        light_every=10.0,
        heavy_first=30.0,
        heavy_gap=(40.0, 80.0),
        heavy_rounds=None,
        deadline=max(600.0, tasks * 0.3),
    )


def row(result: SoakResult, load: str) -> str:
    f = result.findings
    faults = ", ".join(f"{k} {n}" for k, n in sorted(result.fault_counts.items()))
    states = ", ".join(f"{k} {n}" for k, n in sorted(f.states.items()))
    duration = f"{result.seconds / 60:.1f} min" + ("" if result.finished else " (NOT FINISHED)")
    return (
        f"| {result.config.store} | {result.config.tasks:,} | {faults} | {f.lost} | "
        f"{f.double_runs} | {result.cap_breaches} | {f.mismatches} | {f.wrong_state} | "
        f"{duration} | {states} ({result.executions:,}) | {report.today()}, seed "
        f"{result.config.seed}, load average before {load}"
        + (f", code: {Path(result.config.code).name}" if result.config.code else "")
        + " |"
    )


def section(rows: Sequence[str]) -> str:
    caps = ", ".join(f"{p.name} max {p.max_workers} ({p.slots} slot(s) a worker)" for p in POOLS)
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False)
    return "\n".join(
        [
            SECTION,
            "",
            "`bench/soak.py`: the real Slurm lab (scripts/slurm-lab.sh), `hpcscale server` and "
            "`hpcscale manager` as separate processes, two pools on two queues "
            f"({caps}), and a seeded workload of tasks running tests/soak/task.sh: ordinary "
            "ones of 0-0.4 s, flaky ones (fail the first attempt), always-failing ones "
            "(max_attempts 2: end dead), ones that run past their 1 s timeout (dead), unstartable "
            "ones (failed), poison ones that SIGKILL their own worker on every attempt (dead), "
            "and 2% the client cancels mid-run. Faults, seeded: scancel and scancel -s KILL of a "
            "random live worker, kill -9 of the manager (restarted after 0.2-2 s) about every "
            "10 s; kill -9 of the server (restarted after 0.5-3 s), a slurmctld restart (state "
            "kept: scripts/slurm-lab.sh restart-ctld), a 20 s stall of the store (SQLite: "
            "another connection holding BEGIN EXCLUSIVE; PostgreSQL: LOCK TABLE tasks IN ACCESS "
            "EXCLUSIVE MODE) and, on PostgreSQL, a restart of the database "
            "(scripts/pg-lab.sh restart), one of these every 40-80 s, in turn.",
            "",
            "Checks (tests/soak/checks.py): squeue every 0.5 s, each pool's elements in flight "
            "never above its max_workers (*cap breaches*); every id submit returned exists and "
            "ends final (*lost*), in the state its kind allows (*wrong final state*); no two "
            "executions of a task alive at once, from the tasks' own start/end records and, for "
            "a run killed without an end record, the soak's watcher that saw its process in "
            "/proc until it was gone (*double runs*); per task, the store's task.* events a "
            "valid path ending in the task's state, attempts = claims - releases, each "
            "execution under exactly one claim with that claim's attempt number, each result "
            "event backed by what the execution itself wrote (*event-log mismatches*). "
            "Duration: first submit to every task final.",
            "",
            f"- machine: {report.machine_line()}",
            f"- {slurm.stdout.strip() or 'slurm ?'}; Python {platform.python_version()}",
            "- command: `python bench/soak.py --tasks TASKS --store STORE --write` (as root, with "
            "labs of its own: restarts of slurmctld and PostgreSQL would disturb anyone else's)",
            "",
            HEADER,
            *rows,
        ]
    )


def kept_rows(store: str, path: Path) -> list[str]:
    """The other stores' rows of the section as it stands."""
    if not path.exists():
        return []
    text = path.read_text()
    start = text.find(SECTION)
    if start < 0:
        return []
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end >= 0 else len(text)]
    return [
        line
        for line in body.splitlines()
        if line.startswith("| ")
        and line.split("|")[1].strip() in ("sqlite", "postgres")
        and line.split("|")[1].strip() != store
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write", action="store_true", help="keep the result in BENCHMARKS.md")
    p.add_argument("--output", type=Path, default=report.BENCHMARKS, help="for --write")
    p.add_argument("--keep", action="store_true", help="keep the run's files (logs, records, db)")
    p.add_argument(
        "--code",
        type=Path,
        help="a copy of the repository (e.g. `git archive HEAD | tar -x -C DIR`) whose code every "
        "process runs, this soak's own included: a long run tests one version of the code while "
        "the working tree is being edited",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.code is not None:
        code = args.code.resolve()
        here = Path(__file__).resolve().parent.parent
        if here != code:  # run the copy's own soak, so the harness speaks the same version
            script = code / "bench" / "soak.py"
            argv = [*sys.argv[1:], "--output", str(args.output.resolve())]
            os.execv(sys.executable, [sys.executable, str(script), *argv])  # noqa: S606
        import hpcscale

        print(f"running {hpcscale.__file__}")
    if not os.environ.get("SLURM_CONF"):
        print("no Slurm lab: SLURM_CONF is not set (scripts/slurm-lab.sh up)", file=sys.stderr)
        return 2
    if args.store == "postgres" and not os.environ.get("HPCSCALE_TEST_PG_URL"):
        print("no PostgreSQL: HPCSCALE_TEST_PG_URL is not set (scripts/pg-lab.sh up)",
              file=sys.stderr)  # fmt: skip
        return 2
    root = Path(tempfile.mkdtemp(prefix=f"hpcscale-soak-{args.store}-"))
    load = Path("/proc/loadavg").read_text().split()[0]
    started = time.monotonic()
    cfg = long_config(args.store, args.tasks, args.seed)
    if args.code is not None:
        cfg = replace(cfg, code=str(args.code.resolve()))
    result = Soak(cfg, root).run()
    print(result.report())
    print(f"({time.monotonic() - started:.0f} s in all; seed {args.seed})")
    if args.write:
        rows = [*kept_rows(args.store, args.output), row(result, load)]
        rows.sort(key=lambda r: r.split("|")[1])
        report.write_section(SECTION, section(rows), args.output)
        print(f"wrote {args.output}")
    if args.keep or not result.ok:
        print(f"files kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
