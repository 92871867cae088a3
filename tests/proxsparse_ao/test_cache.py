"""The cache folder is configurable, writes are atomic with ordinary permissions, and a folder a result will be
written in is checked before any work."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxsparse_ao.cache import atomic_write_bytes, building, cache_dir, check_writable_folder
from proxsparse_ao.errors import ProxSparseError


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PROXSPARSE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("PROXSPARSE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "proxsparse_ao"


def test_atomic_write_leaves_only_the_finished_file_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "file.json"
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert os.listdir(target.parent) == ["file.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_a_folder_that_does_not_exist_yet_passes_the_check_and_is_not_made_by_it(tmp_path):
    check_writable_folder(tmp_path / "results" / "run1", "--json results/run1/x.json")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made_is_named_not_its_nearest_existing_ancestor():
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, where no folder can be made (Linux)")
    with pytest.raises(ProxSparseError, match=r"^--json /proc/nope/x.json: cannot create the folder /proc/nope \("):
        check_writable_folder("/proc/nope/deeper", "--json /proc/nope/x.json")


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ProxSparseError, match=f"--json x: {tmp_path / 'a_file'} is not a folder"):
        check_writable_folder(tmp_path / "a_file" / "sub", "--json x")


def test_a_file_error_while_building_in_the_cache_names_the_cache_and_how_to_choose_another(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXSPARSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ProxSparseError) as raised, building("the default text"):
        raise PermissionError(13, "Permission denied", str(tmp_path / "cache" / "text"))
    assert str(raised.value) == (f"cannot build the default text in the cache folder {tmp_path / 'cache'} "
                                 f"({tmp_path / 'cache' / 'text'}: Permission denied): set $PROXSPARSE_CACHE to a folder you can write")


def test_building_lets_other_errors_through_unchanged():
    with pytest.raises(KeyError), building("the default model"):
        raise KeyError("not a file error")
