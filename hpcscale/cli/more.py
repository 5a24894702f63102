"""Commands of the worker and the job scripts, registered on the main parser."""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any

from hpcscale import config
from hpcscale.errors import ConfigError


def add_commands(
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

    p = sub.add_parser(
        "render-script", parents=[common],
        help="print a pool's job script and sbatch argv, submitting nothing",
    )  # fmt: skip
    p.add_argument("pool")
    p.add_argument("--count", type=int, default=1)
    p.set_defaults(func=cmd_render_script)

    p = sub.add_parser(
        "demo",
        parents=[listing],
        help="the whole loop on this machine: embedded store, local workers",
    )
    p.add_argument("--tasks", type=int, default=40, help="tasks in the burst")
    p.add_argument("--max-workers", type=int, default=4, help="the pool's cap")
    p.set_defaults(func=cmd_demo)

    from hpcscale.sim import engine as simulate

    simulate.add_command(sub, common, listing)

    p = sub.add_parser(
        "serve", parents=[common], help="statestore API + the manager loops of the config's pools"
    )
    p.add_argument("--allow-root", action="store_true", help="run even as root (not advised)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "manager", parents=[common], help="the manager loops alone, against a remote server"
    )
    p.add_argument("--once", action="store_true", help="one cycle, then exit")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and print the sbatch argv; submit and record nothing",
    )
    p.set_defaults(func=cmd_manager)

    p = sub.add_parser("why", parents=[common, listing], help="a pool's last decisions and why")
    p.add_argument("pool")
    p.add_argument("--limit", type=int, default=5)
    p.set_defaults(func=cmd_why)

    for name, text in (
        ("pause", "submit nothing for POOL (workers keep running)"),
        ("resume", "undo pause or drain"),
        ("drain", "submit nothing, cancel pending, workers finish and exit"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("pool")
        if name == "drain":
            p.add_argument(
                "--cancel-running",
                action="store_true",
                help="also scancel running workers (their tasks are released)",
            )
        p.set_defaults(func=cmd_control, control=name)

    p = sub.add_parser(
        "hosts", parents=[common, listing], help="worker hosts: failure streaks, denied claims"
    )
    p.add_argument("--allow", metavar="NODE", help="let a denied node's workers claim again")
    p.set_defaults(func=cmd_hosts)

    p = sub.add_parser("set-max", parents=[common], help="lower (or restore) a pool's max_workers")
    p.add_argument("pool")
    p.add_argument("max", type=int, help="the new cap (the config's max_workers still bounds it)")
    p.set_defaults(func=cmd_set_max)


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
    from hpcscale.tokens import read_token
    from hpcscale.worker.loop import run_worker

    settings = config.load(args.config)
    opts = worker_options(args, settings)
    key = "--token-file" if args.token_file else "server.token_file"
    token = os.environ.get("HPCSCALE_TOKEN") or read_token(opts.token_file, key)
    return run_worker(opts, token)


def cmd_render_script(args: argparse.Namespace) -> int:
    from hpcscale.jobscript import render

    settings = config.load(args.config)
    pool = settings.pool(args.pool)
    token_file = config.worker_token_file(settings, pool.name)
    job = render(pool, settings, "render-only", args.count, token_file)
    print(job.script)
    print(f"# submit with (the script on stdin), {args.count} element(s):")
    print(shlex.join(job.sbatch_argv))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hpcscale.cli.main import server_settings

    settings = server_settings(args)
    from hpcscale.server.run import run_server  # after the checks: a bad config answers at once

    run_server(settings, with_manager=True)
    return 0


def cmd_manager(args: argparse.Namespace) -> int:
    from hpcscale.tokens import read_token

    settings = config.load(args.config)
    token = os.environ.get("HPCSCALE_TOKEN") or read_token(settings.server.token_file)
    from hpcscale.manager.loop import run_manager  # after the checks: a bad config answers at once

    return run_manager(settings, token, once=args.once, dry_run=args.dry_run)


def cmd_why(args: argparse.Namespace) -> int:
    from hpcscale.cli import display
    from hpcscale.cli.main import emit, make_client

    with make_client(args) as client:
        records = client.decisions(args.pool, args.limit)
    emit(
        args,
        records,
        lambda: (
            display.decisions_text(records)
            if records
            else f"no decisions recorded for pool {args.pool!r} yet"
        ),
    )
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from hpcscale.cli.main import make_client
    from hpcscale.models import Control, PoolUpdate

    control = {"pause": Control.PAUSE, "resume": Control.CONTINUE, "drain": Control.DRAIN}[
        args.control
    ]
    if args.control == "drain" and args.cancel_running:
        control = Control.EXIT
    settings = config.load(args.config)
    settings.pool(args.pool)  # a clear error for a pool the config does not know
    with make_client(args, settings) as client:
        info = client.update_pool(args.pool, PoolUpdate(control=control))
    print(f"pool {info.name}: {info.control.value} (takes effect within one manager cycle)")
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    from hpcscale.cli import display
    from hpcscale.cli.main import emit, make_client

    with make_client(args) as client:
        hosts = client.allow_host(args.allow) if args.allow else client.hosts()
    emit(args, hosts, lambda: display.hosts_table(hosts))
    return 0


def cmd_set_max(args: argparse.Namespace) -> int:
    from hpcscale.cli.main import make_client
    from hpcscale.models import PoolUpdate

    if args.max < 0:
        raise ConfigError([f"set-max: the cap must be ≥ 0, got {args.max}"])
    settings = config.load(args.config)
    pool = settings.pool(args.pool)
    with make_client(args, settings) as client:
        info = client.update_pool(args.pool, PoolUpdate(max_workers=args.max))
    effective = min(pool.max_workers, args.max)
    print(f"pool {info.name}: max workers {effective} (config max_workers {pool.max_workers})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hpcscale.cli.demo import run_demo

    if args.tasks < 1 or args.max_workers < 1:
        raise ConfigError(["demo: --tasks and --max-workers must be ≥ 1"])
    summary = run_demo(args.tasks, args.max_workers, as_json=args.json)
    return 0 if summary.succeeded == summary.tasks else 1
