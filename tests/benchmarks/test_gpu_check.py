"""The prepared GPU check runs end to end: its `--smoke` mode is the same code on CPU with tiny
shapes, so a change that would break the one GPU run a session may get is caught here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_completes_every_stage_and_writes_its_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--smoke"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "probe: the cached-plan cuSPARSELt caller is not used here" in done.stdout
    stages = ("environment", "kernel_correctness", "cusparselt_paths", "per_shape_speed", "end_to_end_tiny_random", "prox_step")
    for stage in stages:
        assert stage in results and "error" not in results[stage], (stage, results.get(stage))
    assert results["kernel_correctness"]["all_passed"] and results["prox_step"]["all_passed"]
    assert {"dense", "sparse"} <= set(results["end_to_end_tiny_random"]["decode"])
    for phase in ("prefill", "decode"):  # both variants timed in alternating blocks, each on its own copy
        timed = results["end_to_end_tiny_random"][phase]
        assert timed["dense"]["calls_timed"] == timed["sparse"]["calls_timed"] > 0
        assert "fastest_ms_per_call" in timed["dense"] and "sparse_over_dense_fastest_call" in timed
