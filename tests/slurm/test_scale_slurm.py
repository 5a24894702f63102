"""Issue 7: a manager cycle makes as many Slurm calls with 1,000 elements in flight as with 10.

The real manager and SlurmScheduler on the lab; every subprocess is counted at hpcscale.proc.run
(bench/scale.py's `slurm_calls`, which submits held arrays and scancels them by name at the end).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.scale import slurm_calls
from tests.slurm_fixtures import require_slurm, unique

pytestmark = pytest.mark.slurm


def test_slurm_calls_per_cycle_do_not_grow_with_elements_in_flight(tmp_path: Path) -> None:
    require_slurm()
    few = slurm_calls(unique("scale"), 10, tmp_path / "few")
    many = slurm_calls(unique("scale"), 1000, tmp_path / "many")
    assert many.pending_seen == [0, 1000, 1010, 1010, 1010]  # the manager saw them all as its own
    assert many.cycles == few.cycles
    # The first cycle also reads the site's limits (issue 14): a second squeue, the user's jobs.
    first = Counter({"sbatch --test-only": 1, "scontrol show config": 1, "squeue": 2, "sbatch": 1})
    assert few.cycles == [first, Counter(squeue=1, sbatch=1)] + [Counter(squeue=1)] * 3
