"""Plain-text tables for people; the CLI prints JSON instead when asked with --json."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from typing import Any

from hpcscale.models import Backlog, DecisionRecord, Event, HostInfo, PoolInfo, Task, Worker


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def tasks_table(tasks: Sequence[Task]) -> str:
    return table(
        ["ID", "STATE", "QUEUE", "PRIO", "TRIES", "EXIT", "COMMAND"],
        [
            [
                t.id,
                t.state.value,
                t.queue,
                t.priority,
                f"{t.attempts}/{t.max_attempts}",
                "-" if t.exit_code is None else t.exit_code,
                clip(shlex.join(t.command)),
            ]
            for t in tasks
        ],
    )


def task_detail(task: Task) -> str:
    fields = [
        ("id", task.id),
        ("state", task.state.value),
        ("queue", task.queue),
        ("priority", task.priority),
        ("command", shlex.join(task.command)),
        ("cwd", task.cwd or "-"),
        ("env", " ".join(f"{k}={v}" for k, v in task.env.items()) or "-"),
        ("slots", task.slots),
        ("attempts", f"{task.attempts}/{task.max_attempts}"),
        ("timeout", "-" if task.timeout is None else f"{task.timeout:g}s"),
        ("lease owner", task.lease_owner or "-"),
        ("fence", task.fence),
        ("exit code", "-" if task.exit_code is None else task.exit_code),
        ("reason", task.reason or "-"),
        ("submitted", when(task.submitted_at)),
        ("started", when(task.started_at)),
        ("ended", when(task.ended_at)),
    ]
    out = "\n".join(f"{k:>12}: {v}" for k, v in fields)
    if task.output_tail:
        out += "\n\n--- output (last lines) ---\n" + task.output_tail.rstrip()
    return out


def events_table(events: Sequence[Event]) -> str:
    return table(
        ["TIME", "KIND", "TASK", "WORKER", "DETAIL"],
        [
            [when(e.ts), e.kind, e.task_id or "-", (e.worker_id or "-")[:12], e.detail or ""]
            for e in events
        ],
    )


def backlog_table(backlog: Sequence[Backlog]) -> str:
    return table(
        ["QUEUE", "CLAIMABLE", "SLOTS", "OLDEST"],
        [[b.queue, b.count, b.slots, ago(b.oldest_age)] for b in backlog],
    )


def workers_table(workers: Sequence[Worker]) -> str:
    now = time.time()
    return table(
        ["WORKER", "POOL", "STATE", "JOB", "HOST", "SLOTS", "BUSY", "DONE", "HEARTBEAT"],
        [
            [
                w.id[:12],
                w.pool,
                w.state.value,
                "-"
                if w.job_id is None
                else w.job_id + ("" if w.array_index is None else f"_{w.array_index}"),
                w.host,
                w.slots,
                w.busy_slots,
                w.tasks_done,
                ago(max(0.0, now - w.last_heartbeat)),
            ]
            for w in workers
        ],
    )


def decisions_text(records: Sequence[DecisionRecord]) -> str:
    blocks = []
    for record in records:
        data = record.data
        head = (
            f"{when(record.ts)}  pool {record.pool}: {data.get('state', '?')}, desired "
            f"{data.get('desired', '-')}, cap {data.get('cap', '-')}, in flight "
            f"{data.get('in_flight', '-')}, submit {data.get('submit', 0)}, cancel "
            f"{data.get('cancel_pending', 0)}"
        )
        reasons, notes = data.get("reasons") or [], data.get("notes") or []
        lines = [f"    - {r}" for r in reasons] if isinstance(reasons, list) else []
        lines += [f"    * {n}" for n in notes] if isinstance(notes, list) else []
        blocks.append("\n".join([head, *lines]))
    return "\n".join(blocks)


def pools_table(pools: Sequence[dict[str, Any]]) -> str:
    rows = []
    for entry in pools:
        info: PoolInfo = entry["pool"]
        last: DecisionRecord | None = entry["last"]
        data = last.data if last else {}
        obs = data.get("observation")
        obs = obs if isinstance(obs, dict) else {}
        rows.append(
            [
                info.name,
                data.get("state", "-"),
                info.control.value,
                obs.get("breaker", "-"),
                data.get("desired", "-"),
                _cap(data),
                data.get("in_flight", "-"),
                obs.get("pending", "-"),
                _waiting(data),
                _seconds(data.get("queue_wait")),
                obs.get("starting", "-"),
                obs.get("registered", "-"),
                info.max_workers_override if info.max_workers_override is not None else "-",
                _per_hour(data),
                "failed" if data.get("preflight", "ok") != "ok" else "ok",
                "crash-loop" if data.get("alarm") else "-",
                _budget(data),
                ago(max(0.0, time.time() - last.ts)) if last else "-",
            ]
        )
    return table(
        [
            "POOL",
            "STATE",
            "CONTROL",
            "BREAKER",
            "DESIRED",
            "CAP",
            "IN FLIGHT",
            "PENDING",
            "WAITING FOR",
            "QUEUE WAIT",
            "STARTING",
            "REGISTERED",
            "SET-MAX",
            "SUBMITTED/H",
            "PREFLIGHT",
            "ALARM",
            "BUDGET LEFT",
            "DECIDED",
        ],
        rows,
    )


def _cap(data: dict[str, Any]) -> str:
    """The effective cap, and the site's limit when it is what holds the pool (issue 14)."""
    cap, site, obs = data.get("cap"), data.get("site"), data.get("observation")
    if not isinstance(cap, int):
        return "-"
    site = site if isinstance(site, dict) else {}
    obs = obs if isinstance(obs, dict) else {}
    in_flight = sum(obs.get(k, 0) for k in ("unconfirmed", "pending", "starting", "registered"))
    allowance, limit = site.get("allowance"), site.get("limit")
    if isinstance(allowance, int) and limit and cap >= in_flight + allowance:
        return f"{cap} ({clip(str(limit), 40)})"
    return str(cap)


def _waiting(data: dict[str, Any]) -> str:
    """Why the pending elements wait, in the scheduler's words, most common first; or the
    site's refusal while it refuses the pool's submissions."""
    reasons = data.get("pending_reasons")
    parts = [f"{n} {r}" for r, n in reasons.items()] if isinstance(reasons, dict) else []
    site = data.get("site")
    refusal = site.get("refusal") if isinstance(site, dict) else None
    if refusal:
        parts.append(f"refused: {clip(str(refusal), 40)}")
    return ", ".join(parts) or "-"


def _seconds(value: object) -> str:
    return ago(value) if isinstance(value, int | float) and value > 0 else "-"


def _budget(data: dict[str, Any]) -> str:
    """Per budget kind: hours left of the limit (burned + reserved by elements in flight), and
    when it runs out at the current rate (what the running elements hold)."""
    budgets = data.get("budget")
    if not isinstance(budgets, dict) or not budgets:
        return "-"
    parts = []
    for kind, numbers in budgets.items():
        if isinstance(numbers, dict):
            left, limit = numbers.get("left_hours"), numbers.get("limit_hours")
            if isinstance(left, int | float) and isinstance(limit, int | float):
                eta = numbers.get("hours_to_exhaustion")
                until = f" (out in {eta:.3g}h)" if isinstance(eta, int | float) else ""
                parts.append(f"{kind} {max(0.0, left):.3g}/{limit:.3g}h{until}")
    return " ".join(parts) or "-"


def _per_hour(data: dict[str, Any]) -> str:
    """Workers submitted in the last hour against the pool's max_submit_per_hour."""
    used, ceiling = data.get("submitted_last_hour"), data.get("max_submit_per_hour")
    return "-" if used is None else f"{used}/{ceiling}"


def status_text(data: dict[str, Any]) -> str:
    backlog, pools, workers = data["queues"], data["pools"], data["workers"]
    return "\n".join(
        [
            "QUEUES",
            backlog_table(backlog) if backlog else "  nothing claimable",
            "",
            "POOLS",
            pools_table(pools) if pools else "  no pool has registered yet",
            *held_text(pools),
            "",
            "WORKERS",
            workers_table(workers) if workers else "  none live",
            *hosts_text(data.get("hosts", [])),
        ]
    )


def held_text(pools: Sequence[dict[str, Any]]) -> list[str]:
    """Each pool's waiting tasks wider than its workers, from its last decision (issue 16)."""
    lines = []
    for entry in pools:
        held = entry["last"].data.get("held") if entry["last"] else None
        held = held if isinstance(held, list) else []
        lines += [f"  pool {entry['pool'].name}: {h}" for h in held if isinstance(h, str)]
    return ["", "HELD", *lines] if lines else []


def hosts_table(hosts: Sequence[HostInfo]) -> str:
    """Every host the store has judged: its streak, and until when it is denied claims."""
    if not hosts:
        return "no worker host has failed a task yet"
    rows = [
        [h.host, "denied" if h.denied else "ok", when(h.denied_until) if h.denied else "",
         h.fail_streak, h.denials, clip(h.last_detail or "", 40)]
        for h in hosts
    ]  # fmt: skip
    return table(["HOST", "CLAIMS", "UNTIL", "STREAK", "DENIALS", "LAST FAILURE"], rows)


def hosts_text(hosts: Sequence[HostInfo]) -> list[str]:
    """Hosts denied claims, with why and until when; nothing while every host is trusted."""
    denied = [h for h in hosts if h.denied]
    if not denied:
        return []
    rows = [
        [h.host, when(h.denied_until), h.denials, clip(h.last_detail or "", 50)] for h in denied
    ]
    return ["", "HOSTS DENIED CLAIMS", table(["HOST", "UNTIL", "TIMES", "LAST FAILURE"], rows)]
