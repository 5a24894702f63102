"""TEMPORARY: today's `hpcscale worker` command, kept working until hpcscale/cli/worker.py lands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hpcscale import config
from hpcscale.errors import ConfigError


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "worker", parents=[common], help="the worker loop (what job scripts run)",
        description="Claim and run tasks until a reason to stop. Every option defaults to the "
        "pool's [pools.worker] settings when --pool names a pool of the config.",
    )  # fmt: skip
    p.add_argument("--pool", default=os.environ.get("HPCSCALE_POOL"), help="pool name")
    p.add_argument("--url", default=None, help="statestore URL (default: [server] url)")
    p.add_argument("--token-file", default=None, help="0600 token file ([server] token_file)")
    p.add_argument("--tls-ca", default=None, help="CA file to trust for https ([server] tls_ca)")
    p.add_argument("--queues", "--queue", default=None, help="comma-separated queues")
    p.add_argument("--submission", default=None, help="submission tag (set by job scripts)")
    p.add_argument("--slots", type=int, default=None)
    p.add_argument("--max-tasks", type=int, default=None, help="0: no limit")
    for name in ("max-time", "empty-claim-sleep", "heartbeat-interval", "claim-margin",
                 "task-duration-prior", "unreachable-timeout"):  # fmt: skip
        p.add_argument(f"--{name}", default=None, help="a duration, e.g. 30s, 5m, 01:00:00")
    p.add_argument("--max-empty-claims", type=int, default=None)
    p.add_argument("--output-dir", default=None, help="where task stdout/stderr files go")
    p.set_defaults(func=cmd_worker)


def _duration(args: argparse.Namespace, name: str, default: float) -> float:
    value = getattr(args, name)
    if value is None:
        return default
    try:
        return config.parse_duration(value)
    except ValueError as exc:
        raise ConfigError([f"--{name.replace('_', '-')}: {exc}"]) from exc


def worker_options(args: argparse.Namespace, settings: config.Settings) -> Any:
    from hpcscale.worker.loop import WorkerOptions

    pool_name = args.pool or "manual"
    pool = next((p for p in settings.pools if p.name == pool_name), None)
    defaults = pool.worker if pool is not None else config.WorkerConfig()
    queues = args.queues.split(",") if args.queues else (pool.queues if pool else ["default"])
    prior = pool.task_duration_prior if pool is not None else 300.0
    return WorkerOptions(
        pool=pool_name,
        url=args.url or settings.server.url,
        token_file=args.token_file or settings.server.token_file,
        queues=tuple(q.strip() for q in queues if q.strip()),
        submission=args.submission,
        slots=args.slots if args.slots is not None else defaults.slots,
        max_tasks=args.max_tasks if args.max_tasks is not None else defaults.max_tasks,
        max_time=_duration(args, "max_time", defaults.max_time),
        max_empty_claims=args.max_empty_claims
        if args.max_empty_claims is not None
        else defaults.max_empty_claims,
        empty_claim_sleep=_duration(args, "empty_claim_sleep", defaults.empty_claim_sleep),
        heartbeat_interval=_duration(args, "heartbeat_interval", defaults.heartbeat_interval),
        claim_margin=_duration(args, "claim_margin", defaults.claim_margin),
        task_duration_prior=_duration(args, "task_duration_prior", prior),
        unreachable_timeout=_duration(args, "unreachable_timeout", defaults.unreachable_timeout),
        output_dir=args.output_dir or defaults.output_dir,
        tls_ca=args.tls_ca or settings.server.tls_ca,
    )


def cmd_worker(args: argparse.Namespace) -> int:
    from hpcscale.tokens import token_for
    from hpcscale.worker.loop import run_worker

    settings = config.load(args.config)
    opts = worker_options(args, settings)
    key = "--token-file" if args.token_file else "server.token_file"
    token = token_for(opts.token_file, key)
    return run_worker(opts, token)
