"""Statestore throughput over real HTTP on loopback: claims + results per second.

    python bench/statestore.py                  # the full table, printed
    python bench/statestore.py --write          # ... and written into BENCHMARKS.md
    python bench/statestore.py --quick          # short cells, for a smoke test (~1 min)
    python bench/statestore.py --backends sqlite --workers 8 --batches 1 --profile out.svg

Each cell (backend x concurrent workers x batch size) starts the real server as its own process
(`python -m hpcscale server --config <tmp config>`) on a free loopback port with a fresh database
and token file, pre-submits N tasks over the API, registers one worker per claimer, and then
times from the first claim to the last result: every claimer loops "claim max_tasks=batch, then
one results call for the whole batch" until a claim comes back empty. N is sized from a short
warm-up run of the same cell so that a timed run takes about --seconds; of --runs timed runs
(each on N fresh tasks) the fastest is reported, since other work on a shared machine only ever
slows a run down.

The load generator is deliberately lean, because on a small machine its CPU is taken from the
server: a few processes (--procs, default one per CPU), each with one thread per claimer and one
keep-alive TCP connection per thread, speaking HTTP/1.1 from prebuilt bytes and reading replies
by Content-Length (`Http11`), with the standard library's json (`--client raw`, the default).
`--client project` drives the same loop through hpcscale.client.Client (httpx + tenacity,
pydantic models), as a real worker does, to show what that client costs on top.

PostgreSQL: HPCSCALE_TEST_PG_URL when set (a database per cell is created and dropped there),
else a throwaway cluster from scripts/pg-lab.sh in a temp dir, stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from queue import Empty
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench import report

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## Statestore throughput"
SUBMIT_CHUNK = 5000


# ---------------------------------------------------------------------- the server under test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """`hpcscale server` in its own process, with its own config, database and token file."""

    database: str
    workdir: Path
    profile: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    admin_token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        token_file = self.workdir / "token"
        config.write_text(
            "[server]\n"
            f'url = "{self.url}"\n'
            f'bind = "127.0.0.1:{self.port}"\n'
            f'database = "{self.database}"\n'
            f'token_file = "{token_file}"\n'
        )
        argv = [sys.executable, "-m", "hpcscale", "server", "--config", str(config)]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        with (self.workdir / "server.log").open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited {self.proc.returncode}:\n"
                    + (self.workdir / "server.log").read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError("server did not answer /healthz within 60 s")
            try:
                status, _ = request(self.url, "GET", "/healthz")
                if status == 200 and token_file.exists():
                    break
            except OSError:
                pass
            time.sleep(0.05)
        self.admin_token = token_file.read_text().strip()
        if self.profile is not None:
            spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.defpath}")
            if spy is None:
                raise RuntimeError("--profile needs py-spy: pip install py-spy")
            self.spy = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(self.proc.pid),
                    "--rate",
                    "250",
                    "--gil",  # samples of the thread holding the GIL: where the CPU goes
                    "--output",
                    str(self.profile),
                    "--format",
                    {".json": "speedscope", ".txt": "raw"}.get(self.profile.suffix, "flamegraph"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.spy is not None:  # py-spy writes its output when its target exits
            try:
                self.spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.spy.kill()
        self.proc = None


def request(
    url: str, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One HTTP request on a fresh connection (setup and checks only; not the timed loop)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        reply = conn.getresponse()
        raw = reply.read()
    finally:
        conn.close()
    text = raw.decode()
    is_json = reply.getheader("content-type", "").startswith("application/json")
    return reply.status, json.loads(text) if is_json else text


def call(url: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    status, reply = request(url, method, path, body, token)
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {reply}")
    return reply


# ---------------------------------------------------------------------- the load generator


def claimer_process(
    url: str,
    token: str,
    workers: list[str],
    queue: str,
    batch: int,
    client: str,
    ready: Any,
    go: MpEvent,
    out: Any,
) -> None:
    """One process of the load generator: a thread per worker id, each with its own connection."""
    import threading

    results: list[tuple[int, float, float, list[float], str | None]] = []
    lock = threading.Lock()
    host, port = url.removeprefix("http://").split(":")

    def run(worker_id: str) -> None:
        latencies: list[float] = []
        done = 0
        first = last = 0.0
        error = None
        loop = _raw_loop if client == "raw" else _project_loop
        try:
            step = loop(host, int(port), url, token, worker_id, queue, batch)
            next(step)  # connected and warm
            ready.put(1)
            go.wait()
            first = time.monotonic()
            for got, elapsed in step:
                latencies.append(elapsed)
                if got == 0:
                    break
                done += got
            last = time.monotonic()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            ready.put(1)
        with lock:
            results.append((done, first, last, latencies, error))

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(results)


class Http11:
    """A minimal HTTP/1.1 client on one keep-alive socket: the leanest honest load generator.

    Requests are built from bytes, responses read by Content-Length (the server always sends
    it). Compared with http.client (whose header parsing goes through the email package) it
    leaves more of a small machine's CPU to the server under test.
    """

    def __init__(self, host: str, port: int, token: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.buf = b""

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.sock.sendall(
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self.head
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head, rest = buf[:end] + b"\r\n", buf[end + 4 :]
        status = int(head[9:12])
        start = head.lower().find(b"\r\ncontent-length:")
        if start < 0:
            raise RuntimeError(f"no content-length in {head[:300]!r}")
        length = int(head[start + 17 : head.index(b"\r\n", start + 17)])
        while len(rest) < length:
            rest += self._recv()
        self.buf = rest[length:]
        return status, rest[:length]

    def _recv(self) -> bytes:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        return data


def _raw_loop(
    host: str, port: int, _url: str, token: str, worker_id: str, queue: str, batch: int
) -> Iterator[tuple[int, float]]:
    """claim -> results on one keep-alive connection (Http11); yields (tasks, seconds)."""
    http = Http11(host, port, token)
    claim_path = f"/v1/workers/{worker_id}/claim"
    results_path = f"/v1/workers/{worker_id}/results"
    claim_body = json.dumps({"queues": [queue], "max_tasks": batch, "free_slots": batch}).encode()
    http.request("GET", "/healthz")
    yield 0, 0.0
    while True:
        started = time.monotonic()
        status, raw = http.request("POST", claim_path, claim_body)
        if status != 200:
            raise RuntimeError(f"claim: {status} {raw[:300]!r}")
        tasks = json.loads(raw)
        if not tasks:
            yield 0, time.monotonic() - started
            return
        body = json.dumps(
            {
                "results": [
                    {"task_id": t["id"], "fence": t["fence"], "success": True, "exit_code": 0}
                    for t in tasks
                ]
            }
        ).encode()
        status, raw = http.request("POST", results_path, body)
        if status != 200:
            raise RuntimeError(f"results: {status} {raw[:300]!r}")
        if raw.count(b'"succeeded"') != len(tasks):
            raise RuntimeError(f"results not all succeeded: {raw[:300]!r}")
        yield len(tasks), time.monotonic() - started


def _project_loop(
    _host: str, _port: int, url: str, token: str, worker_id: str, queue: str, batch: int
) -> Iterator[tuple[int, float]]:
    """The same loop through hpcscale.client.Client (httpx, tenacity, pydantic)."""
    from hpcscale.client import Client
    from hpcscale.models import TaskResult

    with Client(url, token) as client:
        client.healthz()
        yield 0, 0.0
        while True:
            started = time.monotonic()
            tasks = client.claim(worker_id, [queue], max_tasks=batch, free_slots=batch)
            if not tasks:
                yield 0, time.monotonic() - started
                return
            outcomes = client.results(
                worker_id,
                [TaskResult(task_id=t.id, fence=t.fence, success=True, exit_code=0) for t in tasks],
            )
            if any(o.outcome != "succeeded" for o in outcomes):
                raise RuntimeError(f"results not all succeeded: {outcomes[:5]}")
            yield len(tasks), time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    tasks: int
    seconds: float
    latencies: list[float]
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else 0.0


def drive(server: Server, token: str, workers: int, batch: int, n: int, args: Any) -> Run:
    """Submit n tasks to a fresh queue, then let `workers` claimers drain it; time the drain."""
    queue = "q" + uuid.uuid4().hex[:8]
    spec = {"command": ["true"], "queue": queue, "max_attempts": 1}
    left = n
    while left:
        chunk = min(left, SUBMIT_CHUNK)
        call(
            server.url,
            "POST",
            "/v1/tasks",
            {"tasks": [spec] * chunk, "idempotency_key": uuid.uuid4().hex},
            server.admin_token,
        )
        left -= chunk
    ids = [
        call(server.url, "POST", "/v1/workers", {"pool": "bench", "queues": [queue]}, token)["id"]
        for _ in range(workers)
    ]
    procs_n = min(workers, args.procs)
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=claimer_process,
            args=(server.url, token, ids[i::procs_n], queue, batch, args.client, ready, go, out),
        )
        for i in range(procs_n)
    ]
    for proc in procs:
        proc.start()
    for _ in range(workers):
        ready.get(timeout=120)
    assert server.proc is not None
    cpu_before = cpu_seconds(server.proc.pid)
    go.set()
    collected: list[tuple[int, float, float, list[float], str | None]] = []
    for _ in procs:
        try:
            collected += out.get(timeout=900)
        except Empty as exc:
            raise RuntimeError("a load-generator process did not report") from exc
    server_cpu = cpu_seconds(server.proc.pid) - cpu_before
    for proc in procs:
        proc.join()
    errors = [e for *_, e in collected if e]
    if errors:
        raise RuntimeError("claimers failed: " + "; ".join(errors[:3]))
    done = sum(c[0] for c in collected)
    backlog = call(server.url, "GET", f"/v1/queues?queue={queue}", None, server.admin_token)
    left_over = sum(b["count"] for b in backlog)
    if done != n or left_over:
        raise RuntimeError(f"{done} of {n} tasks done, {left_over} still waiting")
    first = min(c[1] for c in collected)
    last = max(c[2] for c in collected)
    return Run(done, last - first, [x for c in collected for x in c[3]], server_cpu)


# ---------------------------------------------------------------------- backends


@contextlib.contextmanager
def postgres_base() -> Iterator[str]:
    """A PostgreSQL URL to create databases under: the test one, else a throwaway lab."""
    url = os.environ.get("HPCSCALE_TEST_PG_URL")
    if url:
        yield url
        return
    top = Path(tempfile.mkdtemp(prefix="hpcscale-bench-pg-"))
    top.chmod(0o755)  # as root, pg-lab.sh runs PostgreSQL as `postgres`, who must get in
    lab = top / "lab"
    env = {**os.environ, "PG_LAB_DIR": str(lab), "PYTHON": sys.executable}
    script = str(ROOT / "scripts" / "pg-lab.sh")
    subprocess.run([script, "up"], env=env, check=True)
    try:
        exported = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (lab / "env.sh").read_text().splitlines()
            if line.startswith("export ")
        )
        yield exported["HPCSCALE_TEST_PG_URL"]
    finally:
        subprocess.run([script, "down"], env=env, check=False)
        with contextlib.suppress(OSError):
            top.rmdir()


@contextlib.contextmanager
def database(backend: str, workdir: Path, pg_base: str | None) -> Iterator[str]:
    """A fresh database for one cell."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir}/state.db"
        return
    import psycopg

    assert pg_base is not None
    name = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_base.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(pg_base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_version(pg_base: str) -> str:
    import psycopg

    with psycopg.connect(pg_base) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# ---------------------------------------------------------------------- the table


@dataclass
class Cell:
    backend: str
    workers: int
    batch: int
    run: Run

    def row(self) -> str:
        lat = sorted(self.run.latencies)
        p50 = statistics.median(lat) * 1000 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else 0.0
        requests = 2 * len(lat) - self.workers  # claim+results per batch, one empty claim each
        return (
            f"| {self.backend} | {self.workers} | {self.batch} | {self.run.tasks:,} "
            f"| {self.run.seconds:.2f} | **{self.run.rate:,.0f}** "
            f"| {requests / self.run.seconds:,.0f} | {p50:.1f} | {p99:.1f} "
            f"| {100 * self.run.server_cpu / self.run.seconds:.0f}% |"
        )


HEADER = (
    "| backend | workers | batch | tasks | seconds | tasks/s | HTTP req/s "
    "| claim+results p50 ms | p99 ms | server CPU |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


NOTES = [
    "*HTTP req/s* counts claims and results calls (one of each per batch). *claim+results* is "
    "one claimer's round trip for a batch. *server CPU* is the server process's user+system "
    "time over the timed run: 100% is one core, all a single event loop can use.",
    "",
    "How the per-task endpoints (claim, results, heartbeat) are served, and why (profiles: "
    "`--profile out.svg`, py-spy on the server): uvicorn with httptools and uvloop; plain "
    "Starlette routes ahead of the FastAPI ones, the body validated from bytes, the reply "
    "serialized once; on SQLite the store is called on the event loop (its writes take the "
    "one write lock anyway) and the claims and results that arrive in the same turn of the "
    "loop share one transaction (a group commit, a savepoint each); the store speaks SQL to "
    "the driver directly on these paths, and SQLite's log is checkpointed by a thread of its "
    "own. With one claimer the loop is latency-bound: each task is two sequential round trips.",
    "",
]


def machine(pg: str | None) -> list[str]:
    versions = []
    for package in ("uvicorn", "httptools", "uvloop", "fastapi", "pydantic", "sqlalchemy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
    lines = [
        f"- machine: {report.machine_line()}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
        + (f", PostgreSQL {pg}" if pg else ""),
        f"- {', '.join(versions)}",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
    ]
    return lines


def write_section(text: str) -> None:
    report.write_section(SECTION, text)


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres")
    p.add_argument("--workers", default="1,8,32", help="concurrent claimers per cell")
    p.add_argument("--batches", default="1,32", help="max_tasks per claim (one results call each)")
    p.add_argument("--seconds", type=float, default=5.0, help="target length of a timed run")
    p.add_argument(
        "--runs",
        type=int,
        default=2,
        help="timed runs per cell (each on fresh tasks), the fastest reported: other work on "
        "the machine only ever slows a run down",
    )
    p.add_argument("--quick", action="store_true", help="1.5 s cells, one run each: a smoke test")
    p.add_argument(
        "--procs",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="load-generator processes (default: one per CPU)",
    )
    p.add_argument("--client", choices=["raw", "project"], default="raw")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the server of each cell into this .svg, .json (speedscope) or .txt "
        "(collapsed stacks), suffixed per cell",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (server logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.runs = 1.5, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    workers_list = [int(w) for w in args.workers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    top = Path(tempfile.mkdtemp(prefix="hpcscale-bench-"))
    cells: list[Cell] = []
    pg = None
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    print(HEADER, flush=True)
    with contextlib.ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, top, ignore_errors=True)
        pg_base = stack.enter_context(postgres_base()) if "postgres" in backends else None
        if pg_base:
            pg = pg_version(pg_base)
        for backend in backends:
            for workers in workers_list:
                for batch in batches:
                    name = f"{backend}-w{workers}-b{batch}"
                    workdir = top / name
                    workdir.mkdir()
                    profile = None
                    if args.profile is not None:
                        profile = args.profile.with_name(
                            f"{args.profile.stem}-{name}{args.profile.suffix}"
                        )
                    with database(backend, workdir, pg_base) as url:
                        server = Server(url, workdir, profile)
                        try:
                            server.start()
                            token = call(
                                server.url,
                                "POST",
                                "/v1/tokens",
                                {"role": "worker", "name": "bench"},
                                server.admin_token,
                            )["token"]
                            # Warm-up: the same cell, small, to warm caches and size N.
                            warm = drive(
                                server, token, workers, batch, max(300, workers * batch * 6), args
                            )
                            n = int(warm.rate * args.seconds)
                            n = max(workers * batch * 4, min(n, 400_000))
                            runs = [
                                drive(server, token, workers, batch, n, args)
                                for _ in range(args.runs)
                            ]
                            run = max(runs, key=lambda r: r.rate)
                        finally:
                            server.stop()
                    cell = Cell(backend, workers, batch, run)
                    cells.append(cell)
                    print(cell.row(), flush=True)
    elapsed = time.monotonic() - started
    command = "python bench/statestore.py" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    text = "\n".join(
        [
            SECTION,
            "",
            "Claims + results per second over real HTTP on loopback, measured by "
            "`bench/statestore.py`: the server (`hpcscale server`) runs as its own process with "
            "a fresh database per cell; N tasks are submitted first, then `workers` concurrent "
            "claimers loop *claim max_tasks=batch, then one results call for the batch* until "
            "the queue is empty, timed from the first claim to the last result; "
            f"the fastest of {args.runs} such run(s) per cell (after a warm-up run that sizes N "
            f"for about {args.seconds:g} s). "
            f"Load generator: `--client {args.client}` "
            + (
                "(a minimal HTTP/1.1 client on plain sockets, requests from prebuilt bytes and "
                "replies read by Content-Length, json from the standard library; one keep-alive "
                f"connection and thread per claimer, in up to {args.procs} processes), "
                if args.client == "raw"
                else "(hpcscale.client.Client: httpx + tenacity + pydantic, one per claimer, "
                f"threads in up to {args.procs} processes), "
            )
            + "on the same machine, so its CPU is taken from the server's.",
            "",
            *machine(pg),
            f"- command: `{command}` ({elapsed:.0f} s for the table); the machine's 1-minute "
            f"load average was {load_before:.1f} when it started (other work on the machine "
            "takes CPU from the server and makes the numbers lower and noisier)",
            "- SQLite: WAL, synchronous=NORMAL. PostgreSQL: scripts/pg-lab.sh "
            "(fsync=off, synchronous_commit=off: a throwaway cluster, not a tuned server).",
            "",
            HEADER,
            *(c.row() for c in cells),
            "",
            *NOTES,
        ]
    )
    print(f"\n({elapsed:.0f} s)")
    if args.write:
        write_section(text)
        print(f"wrote {BENCHMARKS}")
    if args.keep:
        print(f"kept {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
