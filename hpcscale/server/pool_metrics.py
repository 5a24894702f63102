"""The manager's gauges on the server's /metrics, read from the store at scrape time.

Derived from the newest decision each pool's manager recorded, so they are there whether the
manager runs inside `serve` or on another login node, and the server keeps no state for them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hpcscale.policy import PoolState
from hpcscale.statestore import Store
from hpcscale.statestore.manager_records import latest_decisions, pool_totals

GAUGES = {
    # metric name: (help, where in the decision record)
    "hpcscale_pool_claimable": (
        "Claimable tasks in the pool's queues",
        ("observation", "claimable"),
    ),
    "hpcscale_pool_desired_workers": ("Workers the policy wants", ("desired",)),
    "hpcscale_pool_max_workers": ("The pool's cap after set-max", ("cap",)),
    "hpcscale_pool_in_flight_workers": ("Workers in flight (policy's count)", ("in_flight",)),
    "hpcscale_pool_submitted_last_cycle": ("Workers submitted in the last cycle", ("submit",)),
    "hpcscale_pool_est_task_seconds": ("Estimated task duration", ("observation", "est_duration")),
    "hpcscale_pool_queue_wait_seconds": ("Estimated submit-to-register wait", ("queue_wait",)),
    "hpcscale_pool_cycle_seconds": ("Duration of the manager's last cycle", ("cycle_seconds",)),
    "hpcscale_pool_scheduler_seconds": (
        "Scheduler query time of the last cycle",
        ("scheduler_seconds",),
    ),
    "hpcscale_pool_last_decision_timestamp": ("When the last decision was made", ("ts",)),
    "hpcscale_pool_submitted_last_hour": (
        "Workers submitted in the last hour (the runaway guard's count)",
        ("submitted_last_hour",),
    ),
    "hpcscale_pool_max_submit_per_hour": (
        "The pool's ceiling on workers submitted per hour",
        ("max_submit_per_hour",),
    ),
}
WORKER_STATES = ("unconfirmed", "pending", "starting", "registered", "leaving_soon")


class PoolCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        records = latest_decisions(self.store)
        families = {
            name: GaugeMetricFamily(name, text, labels=["pool"])
            for name, (text, _) in GAUGES.items()
        }
        workers = GaugeMetricFamily(
            "hpcscale_pool_workers", "Workers of a pool by state", labels=["pool", "state"]
        )
        state = GaugeMetricFamily(
            "hpcscale_pool_state", "1 for the pool's current state", labels=["pool", "state"]
        )
        breaker = GaugeMetricFamily(
            "hpcscale_pool_breaker_open",
            "1 while the pool's breaker is open or probing",
            labels=["pool"],
        )
        alarm = GaugeMetricFamily(
            "hpcscale_pool_crash_loop_alarm",
            "1 while elements of the pool keep failing or ending at once without a task",
            labels=["pool"],
        )
        preflight = GaugeMetricFamily(
            "hpcscale_pool_preflight_failed",
            "1 while the scheduler's test of the pool's job script refuses it",
            labels=["pool"],
        )
        budget = GaugeMetricFamily(
            "hpcscale_pool_budget_hours",
            "A [pools.budget] in core- or GPU-hours: its limit, burned, reserved and left",
            labels=["pool", "kind", "what"],
        )
        for record in records:
            data = {**record.data, "ts": record.ts}
            budgets = data.get("budget")
            for kind, numbers in (budgets if isinstance(budgets, dict) else {}).items():
                for what in ("limit", "burned", "reserved", "left"):
                    value = (
                        _number(numbers.get(f"{what}_hours")) if isinstance(numbers, dict) else None
                    )
                    if value is not None:
                        budget.add_metric([record.pool, str(kind), what], value)
            alarm.add_metric([record.pool], 1.0 if data.get("alarm") else 0.0)
            preflight.add_metric([record.pool], 0.0 if data.get("preflight", "ok") == "ok" else 1.0)
            obs = data.get("observation")
            obs = obs if isinstance(obs, dict) else {}
            for name, (_, path) in GAUGES.items():
                value = _dig(data, path)
                if value is not None:
                    families[name].add_metric([record.pool], value)
            for key in WORKER_STATES:
                value = _number(obs.get(key))
                if value is not None:
                    workers.add_metric([record.pool, key], value)
            for option in PoolState:
                state.add_metric(
                    [record.pool, option.value], 1.0 if data.get("state") == option.value else 0.0
                )
            breaker.add_metric(
                [record.pool], 0.0 if obs.get("breaker", "closed") == "closed" else 1.0
            )
        yield from families.values()
        yield from (workers, state, breaker, alarm, preflight, budget)
        submitted = CounterMetricFamily(
            "hpcscale_pool_submitted_workers",
            "Workers asked of the scheduler (array elements, refused ones included)",
            labels=["pool"],
        )
        failed = CounterMetricFamily(
            "hpcscale_pool_failed_starts", "Workers that failed to start", labels=["pool"]
        )
        for pool, totals in sorted(pool_totals(self.store).items()):
            submitted.add_metric([pool], totals.elements)
            failed.add_metric([pool], totals.failed_starts)
        yield from (submitted, failed)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _dig(data: dict[str, object], path: tuple[str, ...]) -> float | None:
    value: object = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return _number(value)
