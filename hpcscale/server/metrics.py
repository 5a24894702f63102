"""What /metrics shows: request latency, claims and results counted as they happen, and the
store's task, worker and pool gauges read from the store at scrape time.

The pool gauges derive from the newest decision each pool's manager recorded, so they are
there whether the manager runs inside `serve` or on another login node, and the server keeps no
state for them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hpcscale.models import DecisionRecord, TaskState
from hpcscale.policy import PoolState
from hpcscale.statestore import Store
from hpcscale.statestore.manager_records import latest_decisions, pool_totals


class Metrics:
    """The registry one app serves on /metrics, and the counters its routes bump."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "hpcscale_http_request_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.claimed = Counter(
            "hpcscale_tasks_claimed", "Tasks handed to workers", ["queue"], registry=self.registry
        )
        self.results = Counter(
            "hpcscale_task_results",
            "Results recorded, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.store_gauges = StoreCollector(store)
        self.registry.register(self.store_gauges)
        self.claimed_in = functools.cache(self.claimed.labels)
        self.results_by = functools.cache(self.results.labels)
        self.registry.register(PoolCollector(store))

    def configure(self, pools: Iterable[str], queues: Iterable[str]) -> None:
        """The config's pools and queues: each has its series from the first scrape, zeros on a
        fresh install (else a dashboard's panels and its $queue/$job variables are empty)."""
        self.store_gauges.pools = frozenset(pools)
        self.store_gauges.queues = frozenset(queues)


class StoreCollector(Collector):
    """Task counts by queue and state, read from the store when Prometheus scrapes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pools: frozenset[str] = frozenset()  # configured: shown even at zero
        self.queues: frozenset[str] = frozenset()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "hpcscale_tasks", "Tasks in the store by queue and state", labels=["queue", "state"]
        )
        counts = self.store.count_tasks()
        queues = sorted({q for q, _ in counts} | self.queues)
        for queue in queues:
            for state in TaskState:
                family.add_metric([queue, state.value], counts.get((queue, state.value), 0))
        yield family
        workers = GaugeMetricFamily("hpcscale_workers", "Live workers by pool", labels=["pool"])
        known = self.pools | {pool.name for pool in self.store.list_pools()}  # managers' pools
        by_pool: dict[str, int] = dict.fromkeys(known, 0)
        for worker in self.store.list_workers(live_only=True):
            by_pool[worker.pool] = by_pool.get(worker.pool, 0) + 1
        for pool, count in sorted(by_pool.items()):
            workers.add_metric([pool], count)
        yield workers


GAUGES = {
    # metric name: (help, where in the decision record)
    "hpcscale_pool_claimable": (
        "Claimable tasks in the pool's queues",
        ("observation", "claimable"),
    ),
    "hpcscale_pool_desired_workers": ("Workers the policy wants", ("desired",)),
    "hpcscale_pool_max_workers": (
        "The pool's effective cap: max_workers after set-max, a window and the site's limits",
        ("cap",),
    ),
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
    """The manager's gauges and counters per pool, from what its managers recorded."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        families = _PoolFamilies()
        records = latest_decisions(self.store)
        for record in records:
            families.add(record.pool, {**record.data, "ts": record.ts})
        yield from families.all()
        yield pending_elements(records)
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


class _PoolFamilies:
    """The gauge families of one scrape, filled one pool's decision record at a time."""

    def __init__(self) -> None:
        self.gauges = {
            name: GaugeMetricFamily(name, text, labels=["pool"])
            for name, (text, _) in GAUGES.items()
        }
        self.workers = GaugeMetricFamily(
            "hpcscale_pool_workers", "Workers of a pool by state", labels=["pool", "state"]
        )
        self.state = GaugeMetricFamily(
            "hpcscale_pool_state", "1 for the pool's current state", labels=["pool", "state"]
        )
        self.breaker = GaugeMetricFamily(
            "hpcscale_pool_breaker_open",
            "1 while the pool's breaker is open or probing",
            labels=["pool"],
        )
        self.alarm = GaugeMetricFamily(
            "hpcscale_pool_crash_loop_alarm",
            "1 while elements of the pool keep failing or ending at once without a task",
            labels=["pool"],
        )
        self.preflight = GaugeMetricFamily(
            "hpcscale_pool_preflight_failed",
            "1 while the scheduler's test of the pool's job script refuses it",
            labels=["pool"],
        )
        self.budget = GaugeMetricFamily(
            "hpcscale_pool_budget_hours",
            "A [pools.budget] in core- or GPU-hours: its limit, burned, reserved and left",
            labels=["pool", "kind", "what"],
        )

    def add(self, pool: str, data: dict[str, object]) -> None:
        budgets = data.get("budget")
        for kind, numbers in (budgets if isinstance(budgets, dict) else {}).items():
            for what in ("limit", "burned", "reserved", "left"):
                value = _number(numbers.get(f"{what}_hours")) if isinstance(numbers, dict) else None
                if value is not None:
                    self.budget.add_metric([pool, str(kind), what], value)
        self.alarm.add_metric([pool], 1.0 if data.get("alarm") else 0.0)
        self.preflight.add_metric([pool], 0.0 if data.get("preflight", "ok") == "ok" else 1.0)
        obs = data.get("observation")
        obs = obs if isinstance(obs, dict) else {}
        for name, (_, path) in GAUGES.items():
            value = _dig(data, path)
            if value is not None:
                self.gauges[name].add_metric([pool], value)
        for key in WORKER_STATES:
            value = _number(obs.get(key))
            if value is not None:
                self.workers.add_metric([pool, key], value)
        for option in PoolState:
            chosen = 1.0 if data.get("state") == option.value else 0.0
            self.state.add_metric([pool, option.value], chosen)
        self.breaker.add_metric([pool], 0.0 if obs.get("breaker", "closed") == "closed" else 1.0)

    def all(self) -> Iterator[Metric]:
        yield from self.gauges.values()
        yield from (self.workers, self.state, self.breaker, self.alarm, self.preflight)
        yield self.budget


def pending_elements(records: Iterable[DecisionRecord]) -> Metric:
    """hpcscale_pending_elements{pool,reason}: why each pool's pending elements wait, in the
    scheduler's words (Priority, Resources, PartitionDown, QOSMaxJobsPerUserLimit, ...), as
    the manager last saw them (issue 14)."""
    family = GaugeMetricFamily(
        "hpcscale_pending_elements",
        "Pending elements of a pool by the reason the scheduler gives",
        labels=["pool", "reason"],
    )
    for record in records:
        reasons = record.data.get("pending_reasons")
        for reason, count in (reasons if isinstance(reasons, dict) else {}).items():
            value = _number(count)
            if value is not None:
                family.add_metric([record.pool, str(reason)], value)
    return family


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
