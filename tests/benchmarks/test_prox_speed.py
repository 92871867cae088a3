"""`benchmarks/prox_speed.py` on a small matrix: it times the three side by side and the operator never
does worse than the literal reference on the objective; bad input (a size too large for the memory
included) is one line and exit 2."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from proxsparse_ao.errors import ProxSparseError

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


@pytest.fixture
def prox_speed(monkeypatch):
    """The script as a module, for its memory arithmetic."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("prox_speed")


def test_a_size_too_large_for_the_memory_is_refused_before_anything_is_allocated(refuses):
    """10^6 x 10^6 fp32 is 3.6 TiB for the matrix alone: one line saying so, not the allocator's traceback."""
    refuses("prox_speed.py", "--size", "1000000", message="--size 1000000 needs about 149,011.6 GiB of cpu memory")


def test_the_refusal_names_the_largest_size_that_fits(prox_speed, monkeypatch):
    monkeypatch.setattr(prox_speed, "available_bytes", lambda where: prox_speed.REFERENCE_BYTES * 1002 * 1002)
    prox_speed.check_memory(1000, torch.device("cpu"), reference=True)  # fits: nothing said
    with pytest.raises(ProxSparseError, match=r"^--size 1004 needs about .* GiB of cpu memory, .* available: use --size 1000 or less$"):
        prox_speed.check_memory(1004, torch.device("cpu"), reference=True)


def test_on_cuda_the_device_and_the_host_are_each_counted(prox_speed):
    """The reference runs on the device only with --with-reference; the objective check always runs on the host."""
    million = 1000 * 1000
    assert prox_speed.memory_needed(1000, torch.device("cuda:0"), reference=False) == {
        "cpu": prox_speed.HOST_BYTES * million, "cuda:0": prox_speed.DEVICE_BYTES * million}
    assert prox_speed.memory_needed(1000, torch.device("cuda:0"), reference=True)["cuda:0"] == prox_speed.REFERENCE_BYTES * million


def test_an_allocation_that_fails_anyway_is_one_line_and_exit_2(refuses, monkeypatch):
    """Memory taken by another process after the check: the allocator's error in one line, no traceback."""

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 65536 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(torch, "randn", no_memory)
    refuses("prox_speed.py", "--size", "128", message="--size 128: ran out of memory on cpu ([enforce fail at alloc_cpu.cpp:127]")
