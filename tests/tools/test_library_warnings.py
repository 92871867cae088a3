"""A command shows this project's warnings (library, passes, commands) and no one else's, nor deprecations."""

from __future__ import annotations

import warnings
from pathlib import Path

import proxsparse_ao
import torch

from proxsparse_ao.tools.library_warnings import is_ours


def _caught(category: type[Warning], filename: str) -> warnings.WarningMessage:
    return warnings.WarningMessage("message", category, filename, 1)


def test_the_librarys_and_the_commands_warnings_are_shown():
    library = Path(proxsparse_ao.__file__).parent
    assert is_ours(_caught(UserWarning, str(library / "data.py")))
    assert is_ours(_caught(RuntimeWarning, str(Path(__file__).parents[2] / "tools" / "distributed.py")))


def test_other_packages_warnings_and_deprecations_are_not():
    assert not is_ours(_caught(UserWarning, torch.__file__))
    assert not is_ours(_caught(DeprecationWarning, proxsparse_ao.__file__))
    assert not is_ours(_caught(FutureWarning, proxsparse_ao.__file__))


def test_a_path_that_merely_names_the_package_is_not_ours(tmp_path):
    """A checkout or virtualenv under a folder called proxsparse_ao does not make torch's warnings ours."""
    elsewhere = tmp_path / "proxsparse_ao" / ".venv" / "lib" / "torch" / "nn.py"
    assert not is_ours(_caught(UserWarning, str(elsewhere)))
    assert not is_ours(_caught(UserWarning, "<frozen importlib._bootstrap>"))
