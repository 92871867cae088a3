"""`benchmarks/learn_eval.py` at a tiny budget on the embedded model: one setting learned, checked 2:4 and
scored, written as the JSON `summarize.py` reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_run_writes_a_result_summarize_reads(tmp_path):
    out = tmp_path / "tiny_s0.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "learn_eval.py"), "--set", "samples=1", "--set", "seqlen=16",
         "--eval-tokens", "256", "--eval-seqlen", "128", "--magnitude", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["config"]["samples"] == 1 and result["calibration_shape"] == [1, 16]
    methods = {row["method"]: row for row in result["rows"]}
    assert set(methods) == {"magnitude", "proxsparse"}
    assert all(row["ppl"]["wikipedia"] > 1 for row in methods.values())
    summary = subprocess.run([sys.executable, str(REPO / "benchmarks" / "summarize.py"), str(out)],
                             capture_output=True, text=True, timeout=300)
    assert summary.returncode == 0 and "| tiny | 0 |" in summary.stdout
