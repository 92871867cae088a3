"""Running a benchmark script in this process, as `python benchmarks/NAME ARGS...` runs it."""

from __future__ import annotations

import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def run_benchmark(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """`run_benchmark("summarize.py", *args)`: (exit status, stdout, stderr) of the script's `__main__`
    run in-process (no interpreter start-up), with sys.path and sys.argv restored afterwards."""

    def run(name: str, *argv: object) -> tuple[int, str, str]:
        script = BENCHMARKS / name
        monkeypatch.syspath_prepend(str(BENCHMARKS))
        monkeypatch.setattr(sys, "argv", [str(script), *map(str, argv)])
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
        captured = capsys.readouterr()
        return stop.value.code, captured.out, captured.err

    return run


@pytest.fixture
def refuses(run_benchmark) -> Callable[..., None]:
    """`refuses("prox_speed.py", "--size", "130", message="...")`: the script exits 2 with one
    `error: ...` line on stderr naming the problem, no traceback and no usage block, and prints nothing else."""

    def check(name: str, *argv: object, message: str) -> None:
        code, out, err = run_benchmark(name, *argv)
        assert code == 2, err
        (line,) = err.strip().splitlines()
        assert line.startswith("error: ") and message in line, line
        assert out == ""

    return check


@pytest.fixture
def refused_from_a_fresh_interpreter() -> Callable[..., None]:
    """`refused_from_a_fresh_interpreter("prox_speed.py", "--device", "cuda:99", starts="error: ...")`: run as
    its own process, the script exits 2 with one stderr line starting so, and no library chatter before it."""

    def check(name: str, *argv: object, starts: str) -> None:
        done = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, argv)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(starts), line

    return check
