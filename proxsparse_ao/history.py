"""Per-step statistics of a learning run: a JSON log, and a PNG plot when matplotlib is installed."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache import atomic_write_bytes
from .errors import ProxSparseError

CURVES = (("loss", "loss (CE + lambda2 F)"), ("ce", "cross-entropy"), ("frozen", "lambda2 F"),
          ("fraction_24", "fraction of groups already 2:4"), ("changed_vs_magnitude", "groups whose mask differs from magnitude's"),
          ("changed_vs_start", "groups whose mask moved from its start"))
LOG_FILE = "learning_log.json"  # the log's name inside a pruned-model folder (save_pruned's extra_files)


def history_json(history: Sequence[dict[str, Any]], **summary: Any) -> bytes:
    """The log as JSON, {**summary, "steps": [...per-step stats...]}: one format for `write_history`
    and for the LOG_FILE that `prune`, `quickstart` and the torchrun entry save beside the model."""
    return json.dumps({**summary, "steps": list(history)}, indent=1, default=str).encode()


def write_history(path: str | Path, history: Sequence[dict[str, Any]], **summary: Any) -> Path:
    """Write `history_json(history, **summary)` to `path` atomically."""
    path = Path(path)
    atomic_write_bytes(path, history_json(history, **summary))
    return path


def check_plotting() -> None:
    """Refuse a plot before any work when matplotlib, which `plot_history` needs, is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ProxSparseError(
            "plotting needs matplotlib, which is not installed: `pip install matplotlib` "
            "(the JSON log has the same numbers)"
        ) from err


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """A PNG with one panel per curve over steps. Needs matplotlib (an optional dependency)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ProxSparseError("nothing to plot: the run has no steps")
    figure, axes = plt.subplots(len(CURVES), 1, figsize=(7, 2.2 * len(CURVES)), sharex=True)
    for axis, (key, label) in zip(axes, CURVES):
        points = [(row["step"], row[key]) for row in history if row.get(key) is not None]
        if points:
            axis.plot(*zip(*points), linewidth=1.2)
        axis.set_ylabel(label, fontsize=8)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
