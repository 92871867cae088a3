"""Which caught warnings a command shows: this project's own (the library, the passes, the commands),
not torch's or transformers', and no deprecation notices."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path


def _project_folders() -> tuple[Path, ...]:
    folders = []
    for name in ("proxsparse_ao", "proxsparse_ao.passes", "proxsparse_ao.tools"):
        spec = importlib.util.find_spec(name)
        folders += [Path(folder).resolve() for folder in (spec.submodule_search_locations or [])] if spec else []
    return tuple(folders)


PROJECT_FOLDERS = _project_folders()


def is_ours(warning: warnings.WarningMessage) -> bool:
    """Whether a warning caught with `warnings.catch_warnings(record=True)` is one of this project's to
    show: raised (or attributed, through `stacklevel`) in a file under its folders, and not a deprecation."""
    if issubclass(warning.category, (DeprecationWarning, FutureWarning)):
        return False
    try:
        path = Path(warning.filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(folder) for folder in PROJECT_FOLDERS)
