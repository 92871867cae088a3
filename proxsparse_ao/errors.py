"""How the library tells a user about a problem: the error type for bad input (paths, data, models,
settings), and warnings attributed to the user's own call."""

from __future__ import annotations

import sys
import warnings


class ProxSparseError(Exception):
    """Bad or unusable input: the CLI prints its message as one line and exits with status 2."""


def meta_weight_message(name: str, advice: str = "load the model's weights into memory first") -> str:
    """What to tell a user whose layer `name` has its weight on the meta device (never loaded, or offloaded
    by accelerate): every check that reads weight values says it the same way, with its own `advice`."""
    return f"{name}: the weight is on the meta device (not loaded, or offloaded by accelerate): {advice}"


def _in_library(module: str) -> bool:
    """Whether code of this module name is the library's own, not its caller's: the CLI
    (`proxsparse_ao.tools`, wherever it is installed) calls the library as a user does."""
    inside = module == "proxsparse_ao" or module.startswith("proxsparse_ao.")
    return inside and not (module == "proxsparse_ao.tools" or module.startswith("proxsparse_ao.tools."))


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first frame outside the library (the user's line calling `sparsify_`, `learn`,
    `learn_masks`..., or the CLI's), however deep the library's own calls go, so that the warning
    names the caller's code; frames are told apart by module name, not by file, so the installed
    layout does not matter."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _in_library(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1 if frame is not None else 2)
