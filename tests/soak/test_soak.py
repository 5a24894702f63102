"""The chaos soak, short: 500 tasks per statestore through the real Slurm lab while the soak
kills workers, the manager, the server, restarts slurmctld (and PostgreSQL) and stalls the
store for 20 s; every fault kind at least once, light faults every ~2.5 s. The engine and what
it checks: tests/soak/engine.py and checks.py. The long run: bench/soak.py.

HPCSCALE_SOAK_SEED picks another workload and fault schedule (default 1); the report printed on
failure names the seed and keeps the run's files (server, manager and worker logs, the tasks'
records, the database) under pytest's tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.slurm_fixtures import require_slurm
from tests.soak.engine import LIGHT, Soak, SoakConfig

# Both runs restart slurmctld (and one PostgreSQL): under xdist they take turns on one worker,
# on labs of their own when scripts/test.sh brought them up (the soak_labs fixture).
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("soak")]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.usefixtures("soak_labs")
def test_chaos_soak(store: str, tmp_path: Path) -> None:
    require_slurm()
    if store == "postgres" and not os.environ.get("HPCSCALE_TEST_PG_URL"):
        pytest.skip("PostgreSQL not available: run scripts/pg-lab.sh up (HPCSCALE_TEST_PG_URL)")
    seed = int(os.environ.get("HPCSCALE_SOAK_SEED", "1"))
    cfg = SoakConfig(store=store, tasks=500, seed=seed)
    result = Soak(cfg, tmp_path).run()
    report = f"seed {seed}\n{result.report()}"
    print(report)
    assert result.ok, report
    assert set(result.fault_counts) >= set(LIGHT) | set(cfg.exclusive), report
    kinds = result.findings.states
    assert kinds["succeeded"] > 400 and kinds["dead"] >= result.kinds["poison"], report
