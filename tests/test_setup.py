"""`setup.sh` with a virtual or conda environment active: it installs there and links `.venv` to it,
so the README's `.venv/bin/...` commands run in that environment; a link to no environment is refused.

The stand-in `python` has torch (it answers the version question) and records every call, so no
package is installed; the path without an active environment is what CI runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = """#!/bin/sh
echo "$@" >> "$CALLS"
case "$*" in *"print(torch.__version__)"*) echo 2.13.0+cpu ;; esac
exit 0
"""


def _environment(tmp_path: Path, name: str) -> Path:
    prefix = tmp_path / name
    (prefix / "bin").mkdir(parents=True)
    python = prefix / "bin" / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    return prefix


def _setup(tmp_path: Path, **active: str) -> subprocess.CompletedProcess:
    checkout = tmp_path / "checkout"
    checkout.mkdir(exist_ok=True)
    shutil.copy(ROOT / "setup.sh", checkout / "setup.sh")
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PROXSPARSE_VENV")}
    env.update(active, CALLS=str(tmp_path / "calls.txt"))
    return subprocess.run(["bash", str(checkout / "setup.sh")], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_an_active_environment_is_installed_into_and_dot_venv_links_to_it(tmp_path, variable):
    prefix = _environment(tmp_path, "env")
    done = _setup(tmp_path, **{variable: str(prefix)})
    assert done.returncode == 0, done.stderr
    link = tmp_path / "checkout" / ".venv"
    assert link.is_symlink() and link.resolve() == prefix.resolve()
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[-1].startswith("-m pip install -q -c ") and calls[-1].endswith(' -e .[test]')
    assert f"done ({link.name}/bin/python)" in done.stdout and "keeping the installed torch (torch==2.13.0+cpu)" in done.stdout
    again = _setup(tmp_path, **{variable: str(prefix)})  # a second run keeps the link and installs there again
    assert again.returncode == 0 and link.resolve() == prefix.resolve()


def test_a_dot_venv_link_to_no_environment_is_refused_in_one_line(tmp_path):
    (tmp_path / "checkout").mkdir()
    (tmp_path / "checkout" / ".venv").symlink_to(tmp_path / "gone")
    done = _setup(tmp_path, VIRTUAL_ENV=str(_environment(tmp_path, "env")))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"setup: .venv links to {tmp_path / 'gone'}, which has no bin/python: "
                                   "remove the link, or point PROXSPARSE_VENV elsewhere")
