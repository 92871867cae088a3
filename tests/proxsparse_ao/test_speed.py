"""Per-shape sparse-vs-dense decisions: buckets, probes, caching, persistence (with a scripted timer)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.speed import (
    OPEN_END_PROBE, SpeedTable, buckets_for, interleaved_seconds, probes, probes_for, time_linear,
)

CPU = torch.device("cpu")


class ScriptedTimer:
    """Sparse is 1.5x faster than dense from M = `from_m` up, 0.8x below; counts calls."""

    def __init__(self, from_m: int) -> None:
        self.from_m = from_m
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, device, dtype, m, n, k):
        self.calls.append((m, n, k))
        return (1.5, 1.0) if m >= self.from_m else (0.8, 1.0)


def test_buckets_and_probes():
    assert buckets_for((1, 1)) == [(1, 1)]
    assert buckets_for((100, 600)) == [(17, 128), (129, 512), (513, 2048)]
    assert buckets_for((3000, None)) == [(2049, 8192), (8193, None)]
    assert probes((2, 16)) == (2, 16)
    assert probes((1, 1)) == (1,)
    assert probes((8193, None)) == (8193, OPEN_END_PROBE)
    assert probes_for((2048, 2048)) == (2048,)
    assert probes_for((100, 600)) == (17, 128, 129, 512, 513, 2048)


def test_sparse_only_where_every_probe_is_faster():
    timer = ScriptedTimer(from_m=129)
    table = SpeedTable(timer)
    chosen, why = table.choose(CPU, torch.bfloat16, 4096, 4096, (2048, 2048))
    assert chosen and why == "faster than dense (at least 1.50x, at M=2048)"
    assert timer.calls == [(2048, 4096, 4096)]  # a static M is timed at exactly that M
    chosen, why = table.choose(CPU, torch.bfloat16, 4096, 4096, (1, 1))
    assert not chosen and why.startswith("slower than dense at M=1 (1.0000 ms sparse vs 0.8000 ms dense")
    # a dynamic range reaching down into a losing bucket stays dense
    assert not table.choose(CPU, torch.bfloat16, 4096, 4096, (2, None))[0]
    assert table.choose(CPU, torch.bfloat16, 4096, 4096, (129, None))[0]


def test_a_shape_whose_sparse_kernel_fails_stays_dense_with_the_reason():
    def failing_timer(device, dtype, m, n, k):
        raise RuntimeError("sparse_semi_structured_mad_op : Supported only on GPUs with compute capability 8.x")

    chosen, why = SpeedTable(failing_timer).choose(CPU, torch.bfloat16, 4096, 4096, (2048, 2048))
    assert not chosen and why == "the 2:4 kernel failed: sparse_semi_structured_mad_op : Supported only on GPUs with compute capability 8.x"


def test_each_shape_is_timed_once_and_persisted(tmp_path):
    timer = ScriptedTimer(from_m=1)
    path = tmp_path / "timings.json"
    table = SpeedTable(timer, path=path)
    table.choose(CPU, torch.float16, 256, 512, (513, 2048))
    table.choose(CPU, torch.float16, 256, 512, (600, 700))
    assert timer.calls == [(513, 256, 512), (2048, 256, 512)]
    stored = json.loads(path.read_text())
    assert len(stored) == 2 and all("float16" in key and "n=256 k=512" in key for key in stored)

    again = ScriptedTimer(from_m=1)
    SpeedTable(again, path=path).choose(CPU, torch.float16, 256, 512, (513, 2048))
    assert again.calls == []


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{", "cannot be read as saved 2:4 timings (Expecting property name"),
        ("", "cannot be read as saved 2:4 timings (Expecting value"),
        ("[1.0, 2.0]", "is not a file of saved 2:4 timings"),
        ('{"cpu | float16 | m=1 n=2 k=4": [1.0]}', "is not a file of saved 2:4 timings"),
        ('{"cpu | float16 | m=1 n=2 k=4": [-1, 0]}', "positive times"),
    ],
)
def test_a_timings_file_that_is_not_saved_timings_is_refused_naming_it(tmp_path, content, problem):
    path = tmp_path / "timings.json"
    path.write_text(content)
    with pytest.raises(ProxSparseError, match=re.escape(f"{path} ") + ".*" + re.escape(problem)):
        SpeedTable(ScriptedTimer(from_m=1), path=path)


def test_a_timings_path_that_cannot_hold_the_file_is_refused_before_any_timing(tmp_path):
    with pytest.raises(ProxSparseError, match="is a folder: name a file"):
        SpeedTable(ScriptedTimer(from_m=1), path=tmp_path)
    table = SpeedTable(ScriptedTimer(from_m=1), path=tmp_path / "new" / "timings.json")  # its folder is made
    assert (tmp_path / "new").is_dir() and table.choose(CPU, torch.float16, 64, 64, (16, 16))[0]


def test_a_failed_save_keeps_the_timings_and_warns_instead_of_failing_the_compile(tmp_path, monkeypatch):
    import proxsparse_ao.speed

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    table = SpeedTable(ScriptedTimer(from_m=1), path=tmp_path / "timings.json")
    monkeypatch.setattr(proxsparse_ao.speed, "atomic_write_bytes", full_disk)
    with pytest.warns(RuntimeWarning, match="not saved to .*timings.json: No space left on device"):
        chosen, _ = table.choose(CPU, torch.float16, 64, 64, (16, 16))
    assert chosen


@pytest.mark.parametrize("min_speedup", [0, -1, float("nan"), "x", True])
def test_the_minimum_speedup_must_be_a_positive_number(min_speedup):
    with pytest.raises(ProxSparseError, match="min_speedup must be a positive number"):
        SpeedTable(ScriptedTimer(from_m=1), min_speedup=min_speedup)


def test_minimum_speedup_guards_against_noise():
    table = SpeedTable(lambda *args: (1.01, 1.0), min_speedup=1.02)
    chosen, why = table.choose(CPU, torch.bfloat16, 64, 64, (16, 16))
    assert not chosen and "needs 1.02x" in why


def test_time_linear_measures_both_kernels_on_cpu():
    dense_ms, sparse_ms = time_linear(CPU, torch.bfloat16, 8, 64, 128, reps=2)
    assert dense_ms > 0 and sparse_ms > 0


def test_interleaved_timing_alternates_the_variants_and_times_each_alike():
    calls: list[str] = []
    steps = {"dense": lambda: calls.append("dense"), "sparse": lambda: calls.append("sparse")}
    seconds = interleaved_seconds(steps, CPU, warmup=1, rounds=3, per_round=2)
    d, s = "dense", "sparse"
    assert calls == [d, s] + [d, d, s, s] + [s, s, d, d] + [d, d, s, s]  # warm-up, then A B, B A, A B
    assert {name: len(times) for name, times in seconds.items()} == {d: 6, s: 6}
    assert all(t >= 0 for times in seconds.values() for t in times)


def test_timings_are_kept_apart_per_2to4_kernel_path(monkeypatch):
    """A timing of torch's cuSPARSELt wrapper must not be read back as one of the cached-plan caller."""
    from proxsparse_ao import speed

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(speed, "cuda_backend", lambda capability: "cusparselt")
    monkeypatch.setattr(speed, "direct_cusparselt", lambda: object())
    cached = speed.device_key(torch.device("cuda"))
    monkeypatch.setattr(speed, "direct_cusparselt", lambda: None)
    wrapper = speed.device_key(torch.device("cuda"))
    assert cached.endswith("sm90 torch " + torch.__version__ + " cusparselt cached plans")
    assert wrapper.endswith("cusparselt torch wrapper") and cached.startswith("NVIDIA H200")


def test_a_speedup_of_exactly_the_minimum_is_enough():
    """"At least min_speedup": a layer timed at exactly that ratio goes sparse."""
    chosen, why = SpeedTable(lambda *args: (3.0, 2.0), min_speedup=1.5).choose(CPU, torch.bfloat16, 64, 64, (16, 16))
    assert chosen and why == "faster than dense (at least 1.50x, at M=16)"


@pytest.mark.parametrize(("dense_ms", "chosen"), [(1.01, False), (1.03, True)])
def test_by_default_sparse_must_be_2_percent_faster_so_timing_noise_keeps_a_layer_dense(dense_ms, chosen):
    assert SpeedTable(lambda *args: (dense_ms, 1.0)).choose(CPU, torch.bfloat16, 64, 64, (16, 16))[0] is chosen


def test_a_saved_timing_of_zero_milliseconds_is_refused(tmp_path):
    """A zero time is no measurement (it would read as an infinite speedup)."""
    path = tmp_path / "timings.json"
    path.write_text('{"cpu | float16 | m=1 n=64 k=64": [1.0, 0]}')
    with pytest.raises(ProxSparseError, match="is not a file of saved 2:4 timings"):
        SpeedTable(ScriptedTimer(from_m=1), path=path)


def test_a_timings_file_in_a_folder_that_cannot_be_written_is_refused_before_any_timing(open_tmp, unprivileged):
    import subprocess
    import sys

    folder = open_tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    code = ("import sys\nfrom proxsparse_ao.speed import SpeedTable\n"
            "try:\n    SpeedTable(path=sys.argv[1])\nexcept Exception as err:\n    print(type(err).__name__, err)\n")
    done = subprocess.run([*unprivileged, sys.executable, "-c", code, str(folder / "timings.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == f"ProxSparseError SpeedTable path {folder / 'timings.json'}: its folder is not writable", done.stderr
