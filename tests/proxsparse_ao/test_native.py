"""The C prox kernel is built once per source and CPU, tuned for this CPU where the compiler can."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from proxsparse_ao import _native
from proxsparse_ao.prox import prox_2to4, prox_2to4_


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path) -> Path:
    """An empty kernel cache and no library loaded yet (both restored afterwards)."""
    monkeypatch.setenv("PROXSPARSE_CACHE", str(tmp_path))
    monkeypatch.delenv("PROXSPARSE_PROX_BACKEND", raising=False)
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_failure", None)
    return tmp_path


@pytest.fixture
def compiler():
    if _native._compiler() is None:
        pytest.skip("no C compiler")


def built(cache: Path) -> list[str]:
    return sorted(path.name for path in (cache / "kernels").glob("*.so"))


def test_a_build_is_reused_on_the_same_cpu_and_never_loaded_on_another(fresh_cache, compiler, monkeypatch):
    assert _native.load() is not None
    assert len(built(fresh_cache)) == 1
    monkeypatch.setattr(_native, "_library", None)
    assert _native.load() is not None
    assert len(built(fresh_cache)) == 1
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setattr(_native, "_cpu_identity", lambda: "another CPU with other vector units")
    assert _native.load() is not None
    assert len(built(fresh_cache)) == 2


def test_a_compiler_that_cannot_tune_for_this_cpu_builds_the_baseline(fresh_cache, compiler, monkeypatch):
    monkeypatch.setattr(_native, "_TUNINGS", [["-fno-such-option-anywhere"], []])
    library = _native.load()
    assert library is not None
    assert library.prox24_workspace_float() > 0
    assert len(built(fresh_cache)) == 1


def test_without_a_compiler_the_failure_says_why(fresh_cache, monkeypatch):
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    assert _native.load() is None
    assert _native.failure() == "no C compiler found (set CC)"


OPENMP_PROBE = """
import sys
from pathlib import Path

import torch

from proxsparse_ao import _native

library = _native.load()
if library is None or not library.prox24_openmp():
    sys.exit(3)
maps = Path("/proc/self/maps").read_text().splitlines()
print("\\n".join(sorted({line.split()[-1] for line in maps if "libgomp" in line})))
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to list loaded libraries")
def test_the_openmp_build_shares_torchs_openmp_runtime(compiler):
    """The solver's threads are then torch's own: none of them spins against the solver. Checked in a process
    of its own: what other tests load may bring another runtime (scikit-learn's, through older lm-eval)."""
    done = subprocess.run([sys.executable, "-c", OPENMP_PROBE], capture_output=True, text=True, timeout=600)
    if done.returncode == 3:
        pytest.skip("this compiler builds the kernel without OpenMP")
    assert done.returncode == 0, done.stderr
    runtimes = set(done.stdout.split())
    assert len(runtimes) == 1
    bundled = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if bundled.exists():
        assert runtimes == {str(bundled)}


def test_a_build_without_openmp_runs_its_spans_in_python_threads_to_the_same_bits(fresh_cache, compiler, monkeypatch):
    z = torch.randn(512, 512, generator=torch.Generator().manual_seed(31))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        first = prox_2to4(z, 0.5)
        first_has_openmp = _native.load().prox24_openmp()
        monkeypatch.setattr(_native, "_library", None)
        monkeypatch.setattr(_native, "_TUNINGS", [["-march=native"], []])
        assert _native.load().prox24_openmp() == 0
        assert torch.equal(prox_2to4(z, 0.5), first)
    finally:
        torch.set_num_threads(threads)
    if not first_has_openmp:
        pytest.skip("this compiler builds the kernel without OpenMP: both runs took Python threads")


@pytest.mark.parametrize("openmp", [True, False], ids=["openmp-build", "no-openmp-build"])
def test_the_in_place_check_names_the_first_non_finite_entry_in_either_build(fresh_cache, compiler, monkeypatch, openmp):
    """In place the weight is checked before anything is written: in the OpenMP team where the
    build has OpenMP, in Python threads where it has not."""
    if not openmp:
        monkeypatch.setattr(_native, "_TUNINGS", [["-march=native"], []])
    z = torch.randn(512, 1024)  # two threads: rows 0-255 and 256-511
    z[400, 7], z[300, 999] = float("inf"), float("nan")
    before = z.clone()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        if openmp and not _native.load().prox24_openmp():
            pytest.skip("this compiler builds the kernel without OpenMP")
        with pytest.raises(ValueError, match=r"non-finite value nan at \[300, 999\]"):
            prox_2to4_(z, 1.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(z.nan_to_num(), before.nan_to_num())
