"""`benchmarks/prox_speed.py` on a small matrix: it times the three side by side and the operator never
does worse than the literal reference on the objective; bad input is one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("argv, message", [
    (["--size", "130"], "--size: must be a multiple of 4"),
    (["--size", "abc"], "--size: expected an integer, got 'abc'"),
    (["--size", "0"], "--size: must be at least 4, got 0"),
    (["--lams", "1", "nan"], "--lams: must be finite, got nan"),
    (["--lams", "-1"], "--lams: must be at least 0, got -1"),
    (["--repeats", "0"], "--repeats: must be at least 1, got 0"),
    (["--device", "nowhere"], "--device 'nowhere'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, refuses):
    small = [] if "--size" in argv else ["--size", "128"]  # cheap even where the value is not refused
    refuses("prox_speed.py", *small, *argv, message=message)


def test_a_bad_value_is_one_line_from_a_fresh_interpreter_too(refused_from_a_fresh_interpreter):
    """No library chatter (torchao's load failures, torch's pytree notes) before the error line."""
    refused_from_a_fresh_interpreter("prox_speed.py", "--device", "cuda:99", starts="error: --device cuda:99")
