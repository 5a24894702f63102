"""Footprint on a login node: what `hpcscale serve` holds while idle, and what `hpcscale --help`
costs (issue 16; goals: serve idle <= 60 MB RSS, --help <= 0.1 s).

    python bench/footprint.py             # print the table
    python bench/footprint.py --write     # ... and write it into BENCHMARKS.md ("Footprint")

- `--help`: the installed console script (`<venv>/bin/hpcscale --help`, else `python -m
  hpcscale`) run `--runs` times; the median and best wall time, beside a bare `python -c pass`
  on the same interpreter (the floor no code of ours can go under); modules imported, counted
  from `python -X importtime` (every module the command loads, the interpreter's own included).
- serve idle: the real `hpcscale serve` on a free loopback port with a fresh SQLite store and
  one local pool (min_workers 0, so no worker runs), measured after /healthz answers and
  `--settle` seconds of idling (the manager's loop has run its cycles): VmRSS of the process
  from /proc, beside a bare interpreter's and beside the field's stack alone
  (bench/footprint_floor_app.py: FastAPI, SQLAlchemy on SQLite, pydantic, prometheus-client,
  httpx and tenacity under uvicorn, none of hpcscale's code), measured the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[server]
url = "http://127.0.0.1:{port}"
bind = "127.0.0.1:{port}"
database = "sqlite:///{root}/state.db"
token_file = "{root}/token"

[manager]
name = "footprint"
poll_interval = "2s"
state_dir = "{root}/manager"

[[pools]]
name = "local"
scheduler = "local"
max_workers = 2

[pools.slurm]
time = "00:10:00"
"""
MARK_START = "<!-- footprint:start -->"
MARK_END = "<!-- footprint:end -->"


def command() -> list[str]:
    script = Path(sys.executable).parent / "hpcscale"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hpcscale"]


def timed(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return times


def modules_of_help() -> int:
    probe = (
        "from hpcscale.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return sum(1 for line in done.stderr.splitlines() if line.startswith("import time:")) - 1


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def idle_rss(argv: list[str], port: int, root: Path, settle: float) -> float:
    """VmRSS of `argv` (a server on `port`) once /healthz answers and `settle` seconds passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCSCALE_")}
    with (root / "serve.log").open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit((root / "serve.log").read_text()) from None
                time.sleep(0.1)
        time.sleep(settle)
        return rss_mb(server.pid)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def serve_idle_rss(settle: float) -> float:
    root = Path(tempfile.mkdtemp(prefix="hpcscale-footprint-"))
    port = free_port()
    (root / "config.toml").write_text(CONFIG.format(port=port, root=root))
    argv = [*command(), "serve", "--allow-root", "--config", str(root / "config.toml")]
    return idle_rss(argv, port, root, settle)


def stack_idle_rss(settle: float) -> float:
    root = Path(tempfile.mkdtemp(prefix="hpcscale-footprint-floor-"))
    port = free_port()
    app = Path(__file__).resolve().parent / "footprint_floor_app.py"
    argv = [sys.executable, str(app), str(port), f"sqlite:///{root}/floor.db"]
    return idle_rss(argv, port, root, settle)


def bare_rss() -> float:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(1)
    try:
        return rss_mb(bare.pid)
    finally:
        bare.kill()
        bare.wait()


def table(runs: int, settle: float) -> str:
    helps = timed([*command(), "--help"], runs)
    bare = timed([sys.executable, "-c", "pass"], runs)
    rows = [
        ("`hpcscale --help`, median (best)", f"{statistics.median(helps):.3f} s "
         f"({min(helps):.3f} s)", "≤ 0.1 s"),
        ("bare `python -c pass`, median (best)", f"{statistics.median(bare):.3f} s "
         f"({min(bare):.3f} s)", "the floor"),
        ("modules `hpcscale --help` imports", str(modules_of_help()), ""),
        (f"`hpcscale serve` idle RSS (after {settle:g} s)", f"{serve_idle_rss(settle):.1f} MB",
         "≤ 60 MB"),
        (f"the field's stack alone, idle (after {settle:g} s)", f"{stack_idle_rss(settle):.1f} MB",
         "the floor for this stack"),
        ("bare interpreter RSS", f"{bare_rss():.1f} MB", "the floor"),
    ]  # fmt: skip
    lines = ["| measure | value | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def write(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    body = path.read_text()
    block = (
        f"{MARK_START}\n`python bench/footprint.py --write` ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}):\n\n{text}\n{MARK_END}"
    )
    if MARK_START in body:
        start, end = body.index(MARK_START), body.index(MARK_END) + len(MARK_END)
        body = body[:start] + block + body[end:]
    else:
        body = body.rstrip() + "\n\n## Footprint (issue 16)\n\n" + block + "\n"
    path.write_text(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    text = table(args.runs, args.settle)
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
