"""`quiet_libraries`: what the command-line entry points silence before the libraries load."""

from __future__ import annotations

import subprocess
import sys

import pytest

# torch's CUDA builds say this through torch.utils.cpp_extension when Inductor starts on a machine
# without a CUDA runtime (seen with torch 2.11.0+cu130 on a CPU-only machine)
EMIT = ("import logging, torch; logging.getLogger('torch.utils.cpp_extension')"
        ".warning(\"No CUDA runtime is found, using CUDA_HOME='/usr/local'\")")


@pytest.mark.parametrize("quiet", [False, True])
def test_a_cuda_build_without_a_cuda_runtime_says_nothing_on_stderr_once_quiet(quiet):
    prefix = "from proxsparse_ao.quiet import quiet_libraries; quiet_libraries(); " if quiet else ""
    done = subprocess.run([sys.executable, "-c", prefix + EMIT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("No CUDA runtime is found" in done.stderr) is not quiet
