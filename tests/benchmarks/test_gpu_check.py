"""The prepared GPU check runs end to end: its `--smoke` mode is the same code on CPU with tiny
shapes, so a change that would break the one GPU run a session may get is caught here.

The GPU machine has torch and transformers but none of the project's other dependencies, so the
smoke run hides them (a `sitecustomize` that marks them absent): an import of one of them on the
check's path fails here, not in the GPU session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ABSENT_ON_THE_GPU_MACHINE = ("torchao", "lm_eval", "datasets", "rich")


def without_absent_packages(folder: Path) -> dict[str, str]:
    """An environment in which the packages the GPU machine lacks cannot be imported."""
    folder.mkdir()
    lines = ["import sys", *(f"sys.modules[{name!r}] = None" for name in ABSENT_ON_THE_GPU_MACHINE)]
    (folder / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable}


def test_the_absent_packages_really_cannot_be_imported(tmp_path):
    env = without_absent_packages(tmp_path / "site")
    probe = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(n) for n in sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", probe, *ABSENT_ON_THE_GPU_MACHINE], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_smoke_run_completes_every_stage_and_writes_its_json(tmp_path):
    env = without_absent_packages(tmp_path / "site")
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--smoke"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert "probe: the cached-plan cuSPARSELt caller is not used here" in done.stdout
    stages = ("environment", "kernel_correctness", "cusparselt_paths", "per_shape_speed", "compiled_rewrite",
              "end_to_end_tiny_random", "prox_step")
    for stage in stages:
        assert stage in results and "error" not in results[stage], (stage, results.get(stage))
    assert results["kernel_correctness"]["all_passed"] and results["prox_step"]["all_passed"]
    assert any("not used here" in line for line in results["environment"]["cusparselt_probe"])  # the probe's log, kept
    rewrite = results["compiled_rewrite"]  # sparse="always": every eligible linear rewritten, logits within tolerance
    assert rewrite["ok"] and rewrite["deployment"]["all_rewritten"] and rewrite["deployment"]["outputs_match"]
    assert len(rewrite["deployment"]["rewritten"]) == rewrite["pruned_linears"] == 14
    assert {"dense", "sparse"} <= set(results["end_to_end_tiny_random"]["decode"])
    for phase in ("prefill", "decode"):  # both variants timed in alternating blocks, each on its own copy
        timed = results["end_to_end_tiny_random"][phase]
        assert timed["dense"]["calls_timed"] == timed["sparse"]["calls_timed"] > 0
        assert "fastest_ms_per_call" in timed["dense"] and "sparse_over_dense_fastest_call" in timed
    prefill = results["end_to_end_tiny_random"]["prefill"]  # one fixed shape: compiled static, M = batch x tokens
    assert prefill["compile_kwargs"] == {"dynamic": False}
    tokens = prefill["batch"] * prefill["tokens"]
    for variant in ("dense", "sparse"):
        assert [tokens, tokens] in prefill[variant]["m_ranges_per_graph"][0], prefill[variant]["m_ranges_per_graph"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-folder"], "--model: no-such-folder is not a model folder (no config.json in it)"),
    (["--budget-s", "nan"], "--budget-s: must be finite, got nan"),
    (["--budget-s", "-5"], "--budget-s: must be at least 0, got -5"),
    (["--prefill-tokens", "2k"], "--prefill-tokens: expected an integer, got '2k'"),
    (["--decode-steps", "0"], "--decode-steps: must be at least 1, got 0"),
    (["--sparse", "never"], "argument --sparse: invalid choice: 'never'"),
])
def test_a_bad_option_is_one_line_and_exit_2_before_any_stage(argv, message, tmp_path, refuses):
    refuses("gpu_check.py", tmp_path / "out", "--smoke", *argv, message=message)
    assert not (tmp_path / "out").exists()


def test_an_output_path_that_is_a_file_is_refused(tmp_path, refuses):
    taken = tmp_path / "results.json"
    taken.write_text("{}")
    refuses("gpu_check.py", taken, "--smoke", message=f"argument out: {taken} is a file, not a folder")


def test_ctrl_c_during_a_stage_is_one_word_and_exit_130(tmp_path):
    """The one script run on a borrowed GPU: Ctrl-C there ends as in proxsparse-tool, without a traceback."""
    import signal

    env = without_absent_packages(tmp_path / "site")
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), str(tmp_path / "out"), "--smoke"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as run:
        first = run.stdout.readline()  # the first stage is done: the script is inside its stages now
        assert "environment: done" in first, first
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=300)
    assert run.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err[-2000:]
