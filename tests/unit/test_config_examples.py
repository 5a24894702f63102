"""What ships in config/: the example configs, the systemd units and the Grafana dashboard.

Each example config must load (and `hpcscale check-config` must accept it) and render a job
script for every pool; each systemd unit must have what a user service needs; every metric a
dashboard query uses must be one the code exports; and the wheel must carry the job-script
templates and config/ as hpcscale/_data/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hpcscale
from hpcscale import config
from hpcscale.jobscript import render
from hpcscale.server.metrics import Metrics
from hpcscale.statestore import open_store

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
PACKAGE_DIR = Path(hpcscale.__file__).resolve().parent
EXAMPLES = sorted(CONFIG_DIR.glob("*.toml"))
UNITS = {"hpcscale.service": "serve", "hpcscale-manager.service": "manager"}
DASHBOARD = CONFIG_DIR / "grafana-dashboard.json"


@pytest.fixture(autouse=True)
def _no_config_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """HPCSCALE_SERVER__URL and the like would override the files under test."""
    for name in list(os.environ):
        if re.match(r"HPCSCALE_(SERVER|MANAGER|POOLS)", name) or name == "HPCSCALE_CONFIG":
            monkeypatch.delenv(name)


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not re.match(r"HPCSCALE_(SERVER|MANAGER|POOLS|CONFIG)", k)
    }


# ---------------------------------------------------------------------- example configs


def test_one_example_per_kind_of_cluster() -> None:
    names = {path.name for path in EXAMPLES}
    assert {
        "example.toml",
        "slurm-cpu-cluster.toml",
        "slurm-gpu-cluster.toml",
        "laptop-local.toml",
        "postgres-multi-cluster.toml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_and_renders_every_pool(path: Path, tmp_path: Path) -> None:
    settings = config.load(path)
    assert settings.pools, f"{path.name}: an example without pools shows nothing"
    for pool in settings.pools:
        # Rendering checks what validation alone does not (e.g. whitespace in #SBATCH values).
        job = render(pool, settings, "example-check", 2, tmp_path / "worker.token")
        assert f"--pool {pool.name}" in job.script


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_check_config_cli_accepts_example(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hpcscale", "check-config", str(path)],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {path}: OK")


def test_check_config_cli_refuses_a_broken_copy(tmp_path: Path) -> None:
    """The CLI check above means something: a bad value exits 2 and names the key."""
    text = (CONFIG_DIR / "slurm-cpu-cluster.toml").read_text()
    broken = tmp_path / "broken.toml"
    broken.write_text(text.replace("max_workers = 100", "max_workers = -1", 1))
    result = subprocess.run(
        [sys.executable, "-m", "hpcscale", "check-config", str(broken)],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "pools[0].max_workers" in result.stderr


def test_each_example_is_its_kind() -> None:
    cpu = config.load(CONFIG_DIR / "slurm-cpu-cluster.toml")
    assert [p.name for p in cpu.pools] == ["cpu", "bigmem"]
    for pool in cpu.pools:
        assert pool.scheduler == "slurm"
        assert pool.slurm.partition and pool.slurm.account and pool.slurm.qos

    gpu = config.load(CONFIG_DIR / "slurm-gpu-cluster.toml")
    (gpu_pool,) = gpu.pools
    asks_for_gpu = gpu_pool.slurm.gres == "gpu:1" or "--gres=gpu:1" in (
        gpu_pool.slurm.extra_directives
    )
    assert asks_for_gpu
    assert "module load cuda" in gpu_pool.slurm.setup
    assert gpu_pool.worker.slots >= 1

    laptop = config.load(CONFIG_DIR / "laptop-local.toml")
    assert {p.scheduler for p in laptop.pools} == {"local"}
    assert laptop.server.database.startswith("sqlite:///")

    multi = config.load(CONFIG_DIR / "postgres-multi-cluster.toml")
    assert multi.server.database.startswith("postgresql://")
    # Pool names are global in the store: one cluster's pools carry its manager's name.
    assert all(p.name.startswith(f"{multi.manager.name}-") for p in multi.pools)


# ---------------------------------------------------------------------- systemd units


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number}: not KEY=VALUE in a section: {raw!r}"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"line {number}: bad key"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, "the file ends in a line continuation"
    return sections


def test_parse_unit_reads_repeated_keys_and_continuations() -> None:
    unit = parse_unit(
        "[Service]\n# c\nEnvironment=A=1\nEnvironment=B=2\nExecStart=/x \\\n  serve\n"
    )
    assert unit == {"Service": {"Environment": ["A=1", "B=2"], "ExecStart": ["/x serve"]}}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_user_unit(name: str) -> None:
    unit = parse_unit((CONFIG_DIR / name).read_text())
    assert {"Unit", "Service", "Install"} <= set(unit)
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    argv = exec_start.split()
    assert Path(argv[0]).name == "hpcscale" and argv[1] == UNITS[name], exec_start
    assert service["Restart"] == ["on-failure"]
    assert re.fullmatch(r"\d+(ms|s|min)?", service["RestartSec"][-1])
    assert "HPCSCALE_CONFIG=%h/.config/hpcscale/config.toml" in service["Environment"]
    # A user unit: no User=/Group= (refused in a user instance), wanted by the user's default
    # target (multi-user.target does not exist there).
    assert not {"User", "Group"} & set(service)
    assert unit["Install"]["WantedBy"] == ["default.target"]
    # Mount-namespace hardening needs unprivileged user namespaces in a user instance, which
    # many HPC sites disable: the service would then fail to start at all.
    needs_userns = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ReadOnlyPaths"}
    assert not needs_userns & set(service)
    assert service.get("NoNewPrivileges") == ["yes"]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_finds_no_unknown_keys(name: str, tmp_path: Path) -> None:
    """Where systemd-analyze exists, it must know every key (ExecStart points at a stand-in,
    since verify insists that the binary exists)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # not a skip: the parse test above still holds
        return
    text = (CONFIG_DIR / name).read_text()
    copy = tmp_path / name
    copy.write_text(re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={sys.executable} -V", text))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # Only what it says about this file: it may grumble about other units on the machine.
    about_ours = [line for line in (result.stdout + result.stderr).splitlines() if name in line]
    assert not about_ours, "\n".join(about_ours)


# ---------------------------------------------------------------------- Grafana dashboard

_PROMQL_WORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "atan2", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, durations
    and Grafana variables taken out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_promql_metric_names() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) (rate(hpcscale_http_request_seconds_bucket"
        '{job=~"$job", route!="/v1/wait"}[$__rate_interval]))) * 60 or vector(0)'
    )
    assert promql_metric_names(expr) == {"hpcscale_http_request_seconds_bucket"}
    assert promql_metric_names("time() - max by (pool) (a_b{x='y'}) offset 5m > bool 1e3") == {
        "a_b"
    }
    assert promql_metric_names("sum(up) / on (job) group_left (pool) invented_total") == {
        "up",
        "invented_total",
    }


def source_metrics() -> dict[str, str]:
    """Metric names written in the package's source, with the kind of their constructor
    (counter, histogram, summary; anything else, e.g. a name in a dict of gauges: gauge)."""
    kinds: dict[str, str] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        text = path.read_text()
        for name in re.findall(r"[\"'](hpcscale_[a-z0-9_]+)[\"']", text):
            kinds.setdefault(name, "gauge")
        constructors = r"\b(Counter|Histogram|Summary)(?:MetricFamily)?\(\s*[\"'](hpcscale_\w+)"
        for kind, name in re.findall(constructors, text):
            kinds[name] = kind.lower()
    return kinds


def exposed_names(name: str, kind: str) -> set[str]:
    """The sample names Prometheus stores for a metric of this kind (prometheus_client)."""
    if kind == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


def registry_names(tmp_path: Path) -> set[str]:
    """What the server's /metrics registry really exposes, by family name and type."""
    store = open_store(f"sqlite:///{tmp_path}/metrics.db")
    try:
        families = list(Metrics(store).registry.collect())
    finally:
        store.close()
    return {n for family in families for n in exposed_names(family.name, family.type)}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [
        (f"panel {panel.get('title')!r}", target["expr"])
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        assert match, f"variable {var['name']}: expected label_values(METRIC, LABEL): {query}"
        found.append((f"variable {var['name']!r}", match.group(1)))
    return found


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    (source,) = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS" and source["pluginId"] == "prometheus"
    panels = list(all_panels(dashboard))
    assert sum(1 for p in panels if p.get("targets")) >= 10
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_dashboard_uses_only_metrics_the_code_exports(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    in_source = set()
    for name, kind in source_metrics().items():
        in_source |= exposed_names(name, kind)
    served = registry_names(tmp_path)
    checked = queries(dashboard)
    assert checked
    for where, expr in checked:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= in_source, f"{where}: not in hpcscale's source: {names - in_source}"
        assert names <= served, f"{where}: not on /metrics: {names - served}"


# ---------------------------------------------------------------------- the wheel


@pytest.mark.timeout(120)
def test_wheel_ships_jobscripts_and_configs(tmp_path: Path) -> None:
    """Built offline from the venv's hatchling when it has one (about 2 s), else in pip's
    isolated build environment (hatchling from PyPI)."""
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]
    argv += ["-q", "-w", str(tmp_path)]
    if importlib.util.find_spec("hatchling") is not None:
        argv.append("--no-build-isolation")
    result = subprocess.run(
        [*argv, str(ROOT)],
        cwd=tmp_path,
        env={**os.environ, "PIP_NO_INPUT": "1"},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("hpcscale-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {
        "hpcscale/_data/jobscripts/slurm-worker.sh",
        "hpcscale/_data/jobscripts/local-worker.sh",
        "hpcscale/_data/config/example.toml",
    } <= names
    shipped = {f"hpcscale/_data/config/{p.name}" for p in CONFIG_DIR.iterdir() if p.is_file()}
    assert shipped <= names, shipped - names
