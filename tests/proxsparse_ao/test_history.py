"""The per-step JSON log and the optional PNG plot."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.history import plot_history, write_history

ROWS = [{"step": i, "loss": 3.0 - i / 10, "ce": 3.0, "frozen": 0.0, "fraction_24": i / 10, "changed_vs_magnitude": 0.01 * i} for i in range(1, 5)]


def test_json_log(tmp_path):
    path = write_history(tmp_path / "log.json", ROWS, method="proxsparse")
    data = json.loads(path.read_text())
    assert data["method"] == "proxsparse" and data["steps"] == ROWS


def test_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ProxSparseError, match="pip install matplotlib"):
        plot_history(ROWS, tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_plot_writes_a_png(tmp_path):
    path = plot_history(ROWS, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
