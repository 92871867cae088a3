"""Importing the package's torchao-based API prints nothing, and leaves torchao's logging as the user set it."""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_the_learning_and_baseline_api_prints_nothing():
    """On a CPU machine torchao's import logged a "Failed to load ..." line per CUDA extension, and torch a
    deprecation about torchao's Enum: kernels this package never calls."""
    done = python("from proxsparse_ao import ProxSparseConfig, sparsify_; from proxsparse_ao.baselines import prune")
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_the_users_torchao_log_levels_are_kept_and_its_warnings_still_shown():
    code = (
        "import logging\n"
        "logging.getLogger('torch.utils._pytree').setLevel(logging.DEBUG)\n"
        "import proxsparse_ao.config\n"
        "print(logging.getLogger('torchao').level, logging.getLogger('torch.utils._pytree').level)\n"
        "logging.getLogger('torchao').warning('the user\\'s own torchao warning')\n"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(0), str(10)]  # NOTSET, DEBUG: as before the import
    assert "the user's own torchao warning" in done.stderr
