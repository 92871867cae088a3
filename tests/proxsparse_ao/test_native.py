"""The C prox kernel is built once per source and CPU, tuned for this CPU where the compiler can."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxsparse_ao import _native


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
