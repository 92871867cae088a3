"""`benchmarks/prox_speed.py` on a small matrix: it times the three side by side and the operator never
does worse than the literal reference on the objective."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_small_run_prints_a_row_per_lambda_with_no_objective_worse_than_the_reference():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "prox_speed.py"), "--size", "128", "--lams", "0.1", "1",
         "--repeats", "1", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["0.1", "1"]
    assert all(float(row[-2]) <= 1e-12 for row in rows)  # obj op-ref: rounding at most
