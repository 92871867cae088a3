"""`setup.sh` and the environment it installs into: a fresh `.venv`, or, with a virtual or conda
environment active (other than conda's base) and no `.venv` yet, that environment, `.venv` linking
to it so that the README's `.venv/bin/...` commands run in it.

A stand-in `python` plays every interpreter: it has torch (it answers the version questions, as
$TORCH_VERSION and $TORCH_METADATA say), makes a venv by copying itself, and records each call with
its own path and the torch pin pip is given, so nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = """#!/bin/sh
echo "$0 $*" >> "$CALLS"
case "$*" in
  *"print(torch.__version__)"*) echo "${TORCH_VERSION:-2.13.0+cpu}" ;;
  *'m.version("torch")'*) [ -n "${TORCH_METADATA-2.13.0+cpu}" ] || exit 1; echo "${TORCH_METADATA-2.13.0+cpu}" ;;
  "-m pip install"*) while [ $# -gt 0 ]; do [ "$1" = -c ] && echo "pin: $(cat "$2")" >> "$CALLS"; shift; done ;;
  "-m venv"*) for last in "$@"; do :; done; mkdir -p "$last/bin"; cp "$0" "$last/bin/python" ;;
esac
exit 0
"""


def environment(tmp_path: Path, name: str) -> Path:
    """A folder with bin/python, the stand-in: a virtual or conda environment to the script."""
    prefix = tmp_path / name
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").write_text(STAND_IN)
    (prefix / "bin" / "python").chmod(0o755)
    return prefix


def setup(tmp_path: Path, first_on_path: Path | None = None, **variables: str) -> subprocess.CompletedProcess:
    """Run a copy of setup.sh with these variables (none of the caller's environment variables leak in)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir(exist_ok=True)
    shutil.copy(ROOT / "setup.sh", checkout / "setup.sh")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PROXSPARSE_VENV")}
    env.update(variables, CALLS=str(tmp_path / "calls.txt"))
    if first_on_path is not None:
        env["PATH"] = f"{first_on_path / 'bin'}:{env['PATH']}"
    return subprocess.run(["bash", str(checkout / "setup.sh")], capture_output=True, text=True, env=env, timeout=60)


def pip_installs(tmp_path: Path) -> list[Path]:
    """The interpreter of each `pip install -e .[test]` (links resolved; the script runs in the checkout)."""
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    return [(tmp_path / "checkout" / call.split(" ")[0]).resolve() for call in calls if call.endswith(" -e .[test]")]


def test_without_an_active_environment_a_fresh_venv_is_made_and_installed_into(tmp_path):
    python = environment(tmp_path, "interpreter") / "bin" / "python"
    done = setup(tmp_path, PYTHON=str(python))
    venv = tmp_path / "checkout" / ".venv"
    assert done.returncode == 0, done.stderr
    assert venv.is_dir() and not venv.is_symlink()
    assert pip_installs(tmp_path) == [venv / "bin" / "python"]
    assert done.stdout.splitlines()[-1] == f"setup: done ({venv}/bin/python)"


def test_an_active_virtual_or_conda_environment_is_installed_into_through_a_dot_venv_link(tmp_path):
    for variable in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        run = tmp_path / variable
        active = environment(run, "env")
        done = setup(run, active, **{variable: str(active), "CONDA_DEFAULT_ENV": "work"})
        link = run / "checkout" / ".venv"
        assert done.returncode == 0, done.stderr
        assert link.is_symlink() and link.resolve() == active.resolve()
        assert f"setup: installing into the active environment {active} (.venv links to it)" in done.stdout
        again = setup(run, active, **{variable: str(active), "CONDA_DEFAULT_ENV": "work"})
        assert again.returncode == 0 and "installing into" not in again.stdout and link.resolve() == active.resolve()
        assert pip_installs(run) == [(active / "bin" / "python").resolve()] * 2


def test_conda_base_is_left_alone_and_a_venv_is_made_from_its_python(tmp_path):
    base = environment(tmp_path, "conda")
    done = setup(tmp_path, base, CONDA_PREFIX=str(base), CONDA_DEFAULT_ENV="base", PYTHON=str(base / "bin" / "python"))
    venv = tmp_path / "checkout" / ".venv"
    assert done.returncode == 0, done.stderr
    assert venv.is_dir() and not venv.is_symlink() and pip_installs(tmp_path) == [venv / "bin" / "python"]
    assert f"{base}/bin/python -m venv --system-site-packages .venv" in (tmp_path / "calls.txt").read_text()


def test_the_python_first_on_path_decides_between_a_virtual_and_a_conda_environment(tmp_path):
    virtual, conda = environment(tmp_path, "venv"), environment(tmp_path, "conda")
    done = setup(tmp_path, conda, VIRTUAL_ENV=str(virtual), CONDA_PREFIX=str(conda), CONDA_DEFAULT_ENV="work")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "checkout" / ".venv").resolve() == conda.resolve()


def test_the_checkouts_own_venv_still_active_after_removal_is_made_anew_not_linked_to_itself(tmp_path):
    python = environment(tmp_path, "interpreter") / "bin" / "python"
    done = setup(tmp_path, VIRTUAL_ENV=str(tmp_path / "checkout" / ".venv"), PYTHON=str(python))
    venv = tmp_path / "checkout" / ".venv"
    assert done.returncode == 0, done.stderr
    assert venv.is_dir() and not venv.is_symlink()


def test_an_existing_venv_is_kept_and_said_to_be_used_instead_of_the_active_environment(tmp_path):
    python = environment(tmp_path, "interpreter") / "bin" / "python"
    assert setup(tmp_path, PYTHON=str(python)).returncode == 0
    active = environment(tmp_path, "env")
    done = setup(tmp_path, active, VIRTUAL_ENV=str(active))
    assert done.returncode == 0, done.stderr
    assert f"setup: .venv already exists: installing there, not into the active environment {active}" in done.stdout
    assert pip_installs(tmp_path)[-1] == tmp_path / "checkout" / ".venv" / "bin" / "python"


def test_a_chosen_folder_in_a_folder_not_made_yet_is_linked_there(tmp_path):
    active = environment(tmp_path, "env")
    done = setup(tmp_path, active, VIRTUAL_ENV=str(active), PROXSPARSE_VENV="envs/proxsparse/")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "checkout" / "envs" / "proxsparse").resolve() == active.resolve()


def test_a_venv_link_to_no_environment_is_refused_in_one_line(tmp_path):
    (tmp_path / "checkout").mkdir()
    (tmp_path / "checkout" / ".venv").symlink_to(tmp_path / "gone")
    active = environment(tmp_path, "env")
    done = setup(tmp_path, active, VIRTUAL_ENV=str(active))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"setup: .venv links to {tmp_path / 'gone'}, which has no bin/python: "
                                   "remove the link, or point PROXSPARSE_VENV elsewhere")


def test_the_installed_torch_is_pinned_by_the_version_pip_knows_it_by(tmp_path):
    # PyPI's CUDA wheel of torch 2.11.0 says "2.11.0+cu130" as torch.__version__; pip cannot match a pin of that
    python = environment(tmp_path, "interpreter") / "bin" / "python"
    done = setup(tmp_path, PYTHON=str(python), TORCH_VERSION="2.11.0+cu130", TORCH_METADATA="2.11.0")
    assert done.returncode == 0, done.stderr
    assert "setup: keeping the installed torch (torch==2.11.0)" in done.stdout
    assert "pin: torch==2.11.0" in (tmp_path / "calls.txt").read_text().splitlines()


def test_a_torch_pip_cannot_see_is_refused_in_one_line_not_replaced(tmp_path):
    python = environment(tmp_path, "interpreter") / "bin" / "python"
    done = setup(tmp_path, PYTHON=str(python), TORCH_METADATA="")
    assert done.returncode == 2
    assert done.stderr.strip() == ("setup: .venv/bin/python imports a torch that pip does not see installed "
                                   "(no package metadata), so it cannot be kept: install torch with pip or conda")
    assert pip_installs(tmp_path) == []
