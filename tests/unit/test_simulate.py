"""The simulator: hand-computed runs, the hard max under stress, determinism, the CLI.

The hand-computed cases follow the real worker's loop (hpcscale/worker): after its last task a
worker claims at once, then every empty_claim_sleep; the max_empty_claims-th empty claim ends it,
so an idle worker leaves (max_empty_claims - 1) x empty_claim_sleep after its last task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcscale.cli import main as cli
from hpcscale.config import (
    ManagerConfig,
    PoolConfig,
    SlurmConfig,
    WorkerConfig,
    load,
    rules_from_pool,
)
from hpcscale.models import Control
from hpcscale.policy import decide
from hpcscale.sim.engine import Simulation, simulate
from hpcscale.sim.limits import ControlEvent
from hpcscale.sim.results import SimResult
from hpcscale.sim.sweep import Axis, sweep
from hpcscale.sim.workloads import (
    SCENARIOS,
    ClusterModel,
    QueueWait,
    SimTask,
    example_pool,
    read_swf_waits,
    read_trace,
    scenario_tasks,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"
MANAGER = ManagerConfig(poll_interval=30.0)


def pool(**changes: Any) -> PoolConfig:
    """A pool whose idle workers claim 3 times, 10 s apart (the hand-computed cases' worker)."""
    worker = WorkerConfig(**{"max_empty_claims": 3, **changes.pop("worker", {})})
    slurm = SlurmConfig(**changes.pop("slurm", {}))
    base: dict[str, Any] = {
        "name": "p",
        "max_workers": 1,
        "max_pending": 10,
        "task_duration_prior": 300.0,
        "target_drain_time": 1800.0,
    }
    return PoolConfig(**{**base, **changes}, worker=worker, slurm=slurm)


def cluster(wait: float = 0.0, latency: float = 0.0, **changes: Any) -> ClusterModel:
    changes.setdefault("queue_wait", QueueWait("fixed", wait))
    return ClusterModel(start_latency=latency, **changes)


def main(argv: list[str]) -> int:
    """`hpcscale simulate ARGV...` as the command line runs it (exit code, errors printed)."""
    return cli.main(["simulate", *argv])


def run(tasks: list[SimTask], *pools: PoolConfig, **options: Any) -> SimResult:
    options.setdefault("manager", MANAGER)
    options.setdefault("cluster", cluster())
    return simulate(tasks, list(pools), **options)


# ---------------------------------------------------------------------- hand-computed


def test_one_worker_known_durations_exact() -> None:
    """Submitted at 0 (wake-up), queued 20 s, registers at 25, runs 10+20+30 s until 85,
    empty claims at 85, 95, 105 -> leaves at 105: a job of 20..105 = 85 worker-s."""
    tasks = [SimTask(0.0, 10.0), SimTask(0.0, 20.0), SimTask(0.0, 30.0)]
    data = run(tasks, pool(), cluster=cluster(wait=20.0, latency=5.0)).to_dict()
    assert data["tasks_done"] == 3
    assert data["makespan"] == 85.0
    assert data["worker_seconds"] == 85.0
    assert data["busy_worker_seconds"] == 60.0
    assert data["idle_worker_seconds"] == 25.0
    assert data["busy_share"] == round(60 / 85, 3)
    assert data["first_task_to_first_worker"] == 25.0
    assert data["peak_workers"] == 1
    assert data["sbatch_calls"] == 1
    assert data["max_in_flight"] == 1
    assert data["pools"][0]["worker_end_reasons"] == {"idle": 1}
    assert data["task_wait_mean"] == pytest.approx((25 + 35 + 55) / 3, abs=1e-3)


def test_two_workers_one_array() -> None:
    """Backlog 4 x prior 1000 s over a 1000 s drain target needs 4, capped at 2: one sbatch of
    2; each runs two 100 s tasks and leaves 20 s later."""
    tasks = [SimTask(0.0, 100.0)] * 4
    rules = {"max_workers": 2, "task_duration_prior": 1000.0, "target_drain_time": 1000.0}
    data = run(tasks, pool(**rules)).to_dict()
    assert data["makespan"] == 200.0
    assert data["worker_seconds"] == 440.0
    assert data["idle_worker_seconds"] == 40.0
    assert data["sbatch_calls"] == 1
    assert data["pools"][0]["workers_submitted"] == 2
    assert data["peak_workers"] == 2


def test_max_tasks_worker_leaves_and_next_cycle_replaces_it() -> None:
    """max_tasks=1: the first worker runs 0..10 and leaves; the 30 s cycle submits the next."""
    tasks = [SimTask(0.0, 10.0), SimTask(0.0, 10.0)]
    data = run(tasks, pool(worker={"max_tasks": 1})).to_dict()
    assert data["makespan"] == 40.0
    assert data["worker_seconds"] == 20.0
    assert data["sbatch_calls"] == 2
    assert data["pools"][0]["worker_end_reasons"] == {"max_tasks": 2}


def test_no_claim_without_time_left() -> None:
    """A 2 min job: after a 100 s task, 20 s are left < p90 100 s + 30 s margin: it leaves."""
    tasks = [SimTask(0.0, 100.0)]
    data = run(tasks, pool(slurm={"time": "00:02:00"}, task_duration_prior=50.0)).to_dict()
    assert data["makespan"] == 100.0
    assert data["pools"][0]["worker_end_reasons"] == {"walltime": 1}


def test_task_released_before_the_wall_time_runs_again() -> None:
    """A 108 s task claimed at 5 s in a 120 s job would end at 113, after the release at
    120 - END_GRACE = 110: it is released and runs again on the next worker."""
    tasks = [SimTask(0.0, 5.0), SimTask(0.0, 108.0)]
    settings = pool(slurm={"time": "00:02:00"}, task_duration_prior=10.0)
    result = run(tasks, settings)
    assert result.requeued == 1
    assert result.tasks_done == 2
    assert result.to_dict()["pools"][0]["worker_end_reasons"]["walltime"] >= 1


def test_wake_up_on_first_task_versus_poll() -> None:
    tasks = [SimTask(5.0, 10.0)]
    woken = run(tasks, pool(), wake="empty").to_dict()
    polled = run(tasks, pool(), wake="none").to_dict()
    assert woken["first_task_to_first_worker"] == 0.0
    assert polled["first_task_to_first_worker"] == 30.0


def test_min_workers_stay_and_the_run_still_ends() -> None:
    tasks = [SimTask(0.0, 10.0)] * 3
    data = run(tasks, pool(min_workers=1, max_workers=2)).to_dict()
    assert data["tasks_done"] == 3
    assert data["pools"][0]["worker_end_reasons"].get("still_running") == 1


def test_unrunnable_and_unserved_tasks_are_noted() -> None:
    tasks = [SimTask(0.0, 10.0), SimTask(0.0, 7200.0), SimTask(0.0, 10.0, "elsewhere")]
    result = run(tasks, pool())
    assert result.tasks == 1
    assert result.tasks_done == 1
    assert any("longer than any worker" in n for n in result.notes)
    assert any("'elsewhere'" in n for n in result.notes)


# ---------------------------------------------------------------------- invariants


def _audit(limits: dict[str, int]) -> Any:
    """After every event: the hard max (invariant 3) and max_pending hold, counts are sane."""

    def check(sim: Simulation) -> None:
        for c in sim.pool_counts():
            in_flight = c.unconfirmed + c.pending + c.starting + c.registered
            assert min(c.unconfirmed, c.pending, c.starting, c.registered) >= 0, c
            assert in_flight <= c.max_workers, (sim.now, c)
            assert c.unconfirmed + c.pending <= c.max_pending, (sim.now, c)
            limits[c.name] = max(limits.get(c.name, 0), in_flight)

    return check


STRESS = [
    ("plain", {}, cluster(wait=30.0, latency=5.0)),
    (
        "harsh",
        {"min_workers": 2, "cancel_unneeded_pending": True, "worker": {"slots": 2, "max_tasks": 7},
         "slurm": {"array_throttle": 3}, "max_submit_per_cycle": 4},
        cluster(failed_start=0.2, sbatch_latency=40.0,
                queue_wait=QueueWait("exp", 90.0), latency=20.0),
    ),
]  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize(("label", "changes", "model"), STRESS, ids=[s[0] for s in STRESS])
def test_scenarios_respect_the_cap_at_every_event(
    name: str, label: str, changes: dict[str, Any], model: ClusterModel
) -> None:
    settings = pool(max_workers=12, max_pending=5, queues=["default", "gpu"], **changes)
    seen: dict[str, int] = {}
    result = run(scenario_tasks(name, seed=3, size=300), settings, cluster=model,
                 audit=_audit(seen))  # fmt: skip
    data = result.to_dict()
    assert data["tasks_done"] == 300, data["notes"]
    assert 0 < seen["p"] <= 12
    assert data["max_in_flight"] == seen["p"]
    assert data["pools"][0]["max_pending_seen"] <= 5
    assert 0 < data["busy_share"] <= 1


def test_two_pools_share_a_queue_and_each_keeps_its_cap() -> None:
    a = pool(name="a", max_workers=3)
    b = pool(name="b", max_workers=5, queues=["default", "gpu"])
    seen: dict[str, int] = {}
    tasks = scenario_tasks("bursty-gpu", seed=2, size=200) + scenario_tasks("burst", size=100)
    result = run(tasks, a, b, cluster=cluster(wait=10.0), audit=_audit(seen))
    assert result.tasks_done == 300
    assert seen["a"] <= 3 and seen["b"] <= 5
    assert result.to_dict()["cap"] == 8


def test_recorded_decisions_are_the_policys_on_the_same_observations() -> None:
    settings = example_pool()
    result = run(scenario_tasks("steady", size=300), settings, record=True)
    assert result.decisions
    rules = rules_from_pool(settings, ClusterModel().max_array_size)
    for _, obs, decision in result.decisions:
        assert decide(rules, obs) == decision


def test_deterministic_with_a_seed() -> None:
    model = cluster(queue_wait=QueueWait("exp", 60.0), failed_start=0.1, latency=5.0)
    settings = pool(max_workers=8)

    def once(seed: int) -> dict[str, Any]:
        tasks = scenario_tasks("long-tail", seed=seed, size=400)
        return run(tasks, settings, cluster=model, seed=seed).to_dict()

    assert once(7) == once(7)
    assert once(7) != once(8)


# ---------------------------------------------------------------------- inputs


def test_trace_csv_with_and_without_header(tmp_path: Path) -> None:
    with_header = tmp_path / "a.csv"
    with_header.write_text("# a comment\narrival,duration,queue\n0,30,gpu\n1m,2m,\n")
    assert read_trace(with_header) == [SimTask(0.0, 30.0, "gpu"), SimTask(60.0, 120.0)]
    bare = tmp_path / "b.csv"
    bare.write_text("5,10\n\n6,11,default,3\n")
    assert read_trace(bare) == [SimTask(5.0, 10.0), SimTask(6.0, 11.0, "default", 3)]
    bad = tmp_path / "c.csv"
    bad.write_text("arrival,duration\n0,soon\n")
    assert main(["--trace", str(bad), "--config", str(EXAMPLE)]) == 2


def test_swf_waits(tmp_path: Path) -> None:
    swf = tmp_path / "log.swf"
    swf.write_text("; Version: 2.2\n1 0 12 100 1 -1 -1 1 200 -1 1 1 1 -1 1 -1 -1 -1\n"
                   "2 5 -1 100 1 -1 -1 1 200 -1 1 1 1 -1 1 -1 -1 -1\n"
                   "3 9 40 100 1 -1 -1 1 200 -1 1 1 1 -1 1 -1 -1 -1\n")  # fmt: skip
    assert read_swf_waits(swf) == [12.0, 40.0]
    trace = tmp_path / "t.csv"
    trace.write_text("0,10\n0,10\n")
    assert main(["--trace", str(trace), "--queue-wait-trace", str(swf), "--config",
                 str(EXAMPLE), "--json"]) == 0  # fmt: skip


def test_queue_wait_parse() -> None:
    assert QueueWait.parse("fixed:30s") == QueueWait("fixed", 30.0)
    assert QueueWait.parse("exp:2m") == QueueWait("exp", 120.0)
    assert QueueWait.parse("45") == QueueWait("fixed", 45.0)
    assert main(["--scenario", "burst", "--queue-wait", "gamma:3", "--config", str(EXAMPLE)]) == 2


# ---------------------------------------------------------------------- the command


def test_example_config_is_valid() -> None:
    settings = load(EXAMPLE)
    assert [p.name for p in settings.pools] == ["cpu"]
    assert settings.pools[0].scheduler == "slurm"


def test_json_output_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--scenario", "burst", "--config", str(EXAMPLE), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("makespan", "worker_seconds", "busy_share", "idle_worker_seconds",
                "first_task_to_first_worker", "peak_workers", "sbatch_calls", "max_in_flight",
                "cap", "tasks", "tasks_done", "pools", "notes"):  # fmt: skip
        assert key in data, key
    assert data["tasks"] == data["tasks_done"] == SCENARIOS["burst"].size
    assert data["max_in_flight"] <= data["cap"] == 50
    assert data["pools"][0]["name"] == "cpu"


def test_text_output_and_default_pool(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert main(["--scenario", "bursty-gpu", "--tasks", "50", "--config", str(empty)]) == 0
    out = capsys.readouterr().out
    assert "makespan" in out and "pool cpu:" in out
    assert "runs on queue 'default'" in out
    assert main(["--scenario", "burst", "--config", str(EXAMPLE), "--pool", "nope"]) == 2


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "run.png"
    args = ["--scenario", "burst", "--tasks", "300", "--config", str(EXAMPLE), "--plot", str(out)]
    assert main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_add_parsers_registers_on_a_parser() -> None:
    import argparse

    from hpcscale.cli import simulate as module

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true")
    parser = argparse.ArgumentParser()
    module.add_parsers(parser.add_subparsers(dest="command"), common, listing)
    args = parser.parse_args(["simulate", "--scenario", "steady", "--json", "--seed", "4"])
    assert args.func is module.cmd_simulate
    assert args.seed == 4 and args.json


def test_horizon_counts_from_the_first_task_and_charges_running_jobs() -> None:
    epoch = 1.7e9  # a trace with Unix timestamps
    tasks = [SimTask(epoch, 10.0), SimTask(epoch, 4000.0)]
    settings = pool(slurm={"time": "02:00:00"})
    done = run(tasks, settings, horizon=3 * 3600.0)
    assert done.tasks_done == 2
    cut = run(tasks, settings, horizon=1000.0)
    assert cut.tasks_done == 1
    assert cut.makespan is None
    assert cut.to_dict()["worker_seconds"] == 1000.0  # submitted and started at the first task
    assert any("not done by the horizon" in n for n in cut.notes)


# ------------------------------------------------------- what the manager decides with (issue 15)


def submitted_at(result: SimResult) -> list[tuple[float, int]]:
    return [(o.now, d.submit) for _, o, d in result.decisions if d.submit]


def test_the_hourly_ceiling_holds_submissions_in_every_rolling_hour() -> None:
    """Workers that leave at once (max_tasks 1) want replacing each cycle; the ceiling says no."""
    tasks = [SimTask(0.0, 60.0)] * 40
    capped = pool(max_workers=4, max_submit_per_hour=6, worker={"max_tasks": 1})
    result = run(tasks, capped, record=True, horizon=4 * 3600.0)
    asked = submitted_at(result)
    for start, _ in asked:
        assert sum(n for t, n in asked if start <= t < start + 3600.0) <= 6
    assert any("max_submit_per_hour" in " ".join(d.reasons) for _, _, d in result.decisions)
    free = run(tasks, pool(max_workers=4, worker={"max_tasks": 1}), horizon=4 * 3600.0)
    assert free.pools[0].submitted > 6 and free.makespan is not None  # the ceiling did bind


def test_a_budget_caps_the_worst_case_of_new_workers() -> None:
    """1 core-hour and 30-minute jobs: two workers' worst case fits, a third never does."""
    tasks = [SimTask(0.0, 600.0)] * 20
    spent = pool(max_workers=8, slurm={"time": "00:30:00"}, budget={"core_hours": 1.0})
    result = run(tasks, spent, record=True, horizon=6 * 3600.0)
    assert result.pools[0].submitted == 2
    assert result.tasks_done < 20
    assert any(d.state == "budget-exhausted" for _, _, d in result.decisions)


def test_a_window_caps_the_pool_and_its_floor_keeps_workers_warm() -> None:
    capped = pool(max_workers=8, schedule=[{"cron": "* * * * *", "duration": "1d",
                                            "max_workers": 2}])  # fmt: skip
    result = run([SimTask(0.0, 60.0)] * 50, capped)
    assert result.max_in_flight == 2
    warm = pool(max_workers=8, worker={"max_empty_claims": 1, "empty_claim_sleep": 1.0},
                schedule=[{"cron": "0 0 * * *", "duration": "30m", "min_workers": 3}])  # fmt: skip
    tasks = [SimTask(0.0, 5.0), SimTask(7200.0, 5.0)]
    held = run(tasks, warm, horizon=3 * 3600.0)
    reasons = held.pools[0].end_reasons
    # three workers for the window's half hour, idle but not surplus; they leave when it closes
    assert held.pools[0].submitted == 4 and reasons.get("idle") == 4, reasons
    assert held.pools[0].worker_seconds > 3 * 1800.0


def test_failed_starts_open_the_breaker() -> None:
    tasks = [SimTask(0.0, 60.0)] * 20
    broken = run(tasks, pool(max_workers=4), cluster=cluster(failed_start=1.0), record=True,
                 horizon=3600.0)  # fmt: skip
    assert broken.tasks_done == 0
    states = {d.state for _, _, d in broken.decisions}
    assert "degraded" in states
    # closed: 4; open for the cooldown (300 s), then one probe at a time; closed again when
    # the failures leave the breaker_window (900 s): 20 in the hour, not 4 a cycle (480)
    asked = [(o.breaker, d.submit) for _, o, d in broken.decisions if d.submit]
    assert all(n == 1 for breaker, n in asked if breaker == "probe")
    assert not any(breaker == "open" for breaker, _ in asked)
    assert broken.pools[0].submitted == 20


def test_controls_pause_drain_and_set_max() -> None:
    tasks = [SimTask(0.0, 60.0)] * 200
    many = pool(max_workers=8, max_pending=8)
    paused = run(tasks, many, controls=[ControlEvent(0.0, None, Control.PAUSE)], horizon=3600.0)
    assert paused.pools[0].submitted == 0 and paused.tasks_done == 0
    resumed = run(
        tasks,
        many,
        horizon=3600.0,
        controls=[
            ControlEvent(0.0, None, Control.PAUSE),
            ControlEvent(600.0, "p", Control.CONTINUE),
        ],
    )
    assert resumed.to_dict()["first_task_to_first_worker"] >= 600.0
    drained = run(tasks, many, controls=[ControlEvent(120.0, None, Control.DRAIN)])
    assert drained.pools[0].end_reasons.get("drain", 0) > 0 and drained.tasks_done < 200
    capped = run(tasks, many, controls=[ControlEvent.parse("0:p:max=3")])
    assert capped.max_in_flight == 3


def test_queue_waits_delay_the_first_worker() -> None:
    tasks = [SimTask(0.0, 60.0)] * 10
    waited = run(tasks, pool(max_workers=2), cluster=cluster(wait=600.0, latency=5.0))
    assert waited.to_dict()["first_task_to_first_worker"] == 605.0


def test_the_measured_tail_reaches_the_rule() -> None:
    """The simulator measures a worker's overhead as the manager does (ended workers), and
    the rule then uses it instead of the prior."""
    tasks = [SimTask(i * 300.0, 5.0) for i in range(4)]
    result = run(tasks, pool(max_workers=2), record=True)
    tails = [o.tail for _, o, _ in result.decisions]
    assert tails[0] is None and tails[-1] is not None and tails[-1] > 0
    assert (
        "(measured)" in " ".join(result.decisions[-1][2].reasons)
        or result.decisions[-1][1].claimable == 0
    )


def test_the_measured_start_up_reaches_the_rule() -> None:
    """The simulator measures a worker's start-up as the manager does (estimate.startup_overhead
    of job start -> registration): the prior until a worker registered, then the cluster's
    start latency, named as measured in the reasons."""
    tasks = [SimTask(i * 30.0, 5.0) for i in range(8)]
    result = run(tasks, pool(max_workers=2), cluster=cluster(latency=7.0), record=True)
    startups = [o.startup for _, o, _ in result.decisions]
    assert startups[0] is None and startups[-1] == pytest.approx(7.0)
    sized = [d.reasons for _, o, d in result.decisions if o.startup and o.claimable]
    assert sized and "7s start-up (measured)" in " ".join(sized[0])


def test_text_has_units_and_names_the_keys_it_cannot_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[[pools]]\nname = "cpu"\n[pools.worker]\nheartbeat_interval = "1m"\n'
                    '[pools.slurm]\nmem = "4G"\n')  # fmt: skip
    assert main(["--scenario", "burst", "--tasks", "50", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "worker-s" in out and "% of the allocated worker-seconds" in out
    assert "makespan" in out and " s\n" in out
    assert "pools[cpu].worker.heartbeat_interval" in out and "pools[cpu].slurm.mem" in out
    assert main(["--scenario", "burst", "--config", str(conf), "--control", "x:pause"]) == 2


def test_issue_15_budget_ceiling_and_window_are_all_honoured(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The report: a 2 core-hour budget, max_submit_per_hour = 5 and a window capping at 2
    printed peak_workers 19."""
    conf = tmp_path / "c.toml"
    conf.write_text('[[pools]]\nname = "cpu"\nmax_workers = 50\nmax_submit_per_hour = 5\n'
                    '[pools.budget]\ncore_hours = 2\n[[pools.schedule]]\ncron = "* * * * *"\n'
                    'duration = "2h"\nmax_workers = 2\n')  # fmt: skip
    assert main(["--scenario", "burst", "--config", str(conf), "--horizon", "1d", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_workers"] == 2 and data["pools"][0]["workers_submitted"] == 2


def test_a_trickle_under_the_hourly_ceiling_is_served_by_held_workers() -> None:
    """A task every 20 s, workers that leave at their first empty claim: a job a task spends
    the ceiling (4 x max_workers = 32 an hour) in minutes; the pool then holds its worker
    (policy.hold_idle) instead of leaving the trickle waiting for the hour to roll."""
    tasks = [SimTask(i * 20.0, 5.0) for i in range(180)]
    result = run(tasks, pool(max_workers=8, worker={"max_empty_claims": 1}), record=True)
    assert result.pools[0].submitted <= 32
    waits = sorted(result.task_waits)
    assert waits[int(0.9 * len(waits))] < 60.0, "no task waited for the hour to roll"
    assert any(d.hold for _, _, d in result.decisions)


# ------------------------------------------------------------------------ simulate --sweep


def test_the_sweeps_point_of_the_config_is_plain_simulate() -> None:
    """Issue 15, acceptance 4: the grid point equal to the current config reproduces plain
    `simulate` (every figure), and the config's value joins an axis that lacks it."""
    tasks = scenario_tasks("bursts", seed=42, size=120)
    pools = [pool(max_workers=8, efficiency=0.9, worker={"max_empty_claims": 1})]
    sim_cluster = cluster(wait=0.5, latency=2.7)

    def one(sim_pools: list[PoolConfig], manager: ManagerConfig) -> SimResult:
        return simulate(tasks, sim_pools, manager=manager, cluster=sim_cluster)

    axes = [Axis.parse("efficiency=0.8,0.95"), Axis.parse("manager.poll_interval=10s,30s")]
    points = sweep(axes, pools, MANAGER, one)
    assert len(points) == 3 * 2  # 0.9 joined the efficiency axis
    (mine,) = [p for p in points if p.current]
    assert mine.values == (0.9, 30.0)
    assert mine.result.to_dict() == one(pools, MANAGER).to_dict()
    other = next(p for p in points if p.values == (0.95, 10.0))
    assert other.result.to_dict() != mine.result.to_dict()


def test_sweep_on_the_command_line_prints_a_table_and_a_png(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep.png"
    argv = ["--scenario", "bursts", "--tasks", "60", "--config", str(EXAMPLE),
            "--sweep", "worker.max_empty_claims=1,3", "--plot", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("<- config") == 1 and "makespan s" in text and "worker-s" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--scenario", "bursts", "--config", str(EXAMPLE), "--sweep", "nokey=1"]) == 2
    assert main(["--scenario", "bursts", "--config", str(EXAMPLE), "--sweep", "efficiency=2"]) == 2
