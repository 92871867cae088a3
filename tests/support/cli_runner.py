"""Run `proxsparse-tool` inside the test process and see what a user would: exit status, stdout, stderr.

A subprocess per run spends seconds importing torch, transformers and lm-eval before the command
starts; what the command itself does (parse, check, work, print, exit status) is the same in this
process. Tests about the process itself keep a real subprocess: signals, permission bits under
`unshare -U`, what libraries print while they import, the installed entry point.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch

from proxsparse_ao.tools import cli


@dataclass(frozen=True)
class CliRun:
    """What a shell would see of one `proxsparse-tool` run (the fields of subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, columns: int = 200, cwd: Path | None = None) -> CliRun:
    """`proxsparse-tool ARGS...` with a terminal `columns` wide, from `cwd`; an exception a command lets
    escape propagates (a subprocess would print a traceback, which every caller refuses anyway)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_columns, saved_cwd, saved_threads = os.environ.get("COLUMNS"), Path.cwd(), torch.get_num_threads()
    os.environ["COLUMNS"] = str(columns)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                returncode = cli.main([str(arg) for arg in args])
            except SystemExit as exit_:
                returncode = _exit_status(exit_, stderr)
    finally:
        os.chdir(saved_cwd)
        if saved_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved_columns
        torch.set_num_threads(saved_threads)  # --threads
        torch._dynamo.reset()  # each run compiles from scratch, as in its own process
    return CliRun(returncode, stdout.getvalue(), stderr.getvalue())


def run_cli_process(*args: object, prefix: tuple[str, ...] = (), columns: int = 200) -> CliRun:
    """`proxsparse-tool ARGS...` in a process of its own, started through `prefix` (e.g. `unshare -U`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": str(columns)}
    command = [*prefix, sys.executable, "-m", "proxsparse_ao.tools.cli", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    return CliRun(done.returncode, done.stdout, done.stderr)


def _exit_status(exit_: SystemExit, stderr: io.StringIO) -> int:
    """The status Python's interpreter would exit with for `exit_` (a message goes to stderr, status 1)."""
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    stderr.write(f"{exit_.code}\n")
    return 1
