"""How the library tells a user about a problem: the error type for bad input (paths, data, models,
settings), and warnings attributed to the user's own call."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__)) + os.sep


class ProxSparseError(Exception):
    """Bad or unusable input: the CLI prints its message as one line and exits with status 2."""


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first frame outside this package (the user's line calling `sparsify_`, `learn`,
    `learn_masks`...), however deep the library's own calls go: the warning names the user's code,
    and Python's once-per-location filter counts each call site of theirs apart."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_FOLDER):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
