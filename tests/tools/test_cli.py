"""The CLI as a whole: quiet on stderr (no torchao/torch import noise), examples in every --help, helps that agree with the library."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HELP_EVERY_COMMAND = """
import contextlib, io, sys
from proxsparse_ao.tools.cli import COMMANDS, main
for argv in [["--help"]] + [[command.__name__.rsplit(".", 1)[-1], "--help"] for command in COMMANDS]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as done:
            assert done.code == 0, (argv, done.code)
    text = out.getvalue()
    assert "examples:" in text and "proxsparse-tool" in text, (argv, text)
    print(argv[0], "ok")
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_every_help_has_examples_and_stderr_stays_empty():
    done = run_python(HELP_EVERY_COMMAND)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "--help ok" and "verify ok" in lines and all(line.endswith(" ok") for line in lines)


def test_top_level_help_documents_exit_codes():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "proxsparse_ao.tools.cli", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stderr == ""
    assert "exit status: 0" in done.stdout and "1 a check failed" in done.stdout and "2 the input" in done.stdout


def test_a_failing_command_prints_exactly_one_clean_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "proxsparse_ao.tools.cli", "eval", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: model folder not found: {tmp_path / 'missing'}"]
    assert done.stdout.splitlines() == [f"loading {tmp_path / 'missing'} ..."]  # a log says each stage as it starts


def test_sigterm_stops_a_command_like_ctrl_c_with_its_cleanups_run(monkeypatch, capsys):
    """`timeout`, schedulers and `docker stop` send SIGTERM: the command's `finally` blocks run (a
    save removes its temporary folder), the exit status is 143, and the handler is put back."""
    import signal
    import time

    from proxsparse_ao.tools import assets, cli

    cleaned = []

    def run(args, console):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(assets, "run", run)
    assert cli.main(["assets"]) == 143
    assert cleaned == [True] and capsys.readouterr().err.strip() == "terminated"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_bad_option_is_one_line_naming_it_not_the_usage_block():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "proxsparse_ao.tools.cli", "eval", "--seqlen", "abc"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: proxsparse-tool eval: argument --seqlen: invalid int value: 'abc' (see proxsparse-tool eval --help)"
    ]


@pytest.mark.parametrize("command", ["prune", "compare"])
def test_the_calibration_help_names_every_text_the_library_accepts(command, capsys):
    from proxsparse_ao.data import TEXT_NAMES
    from proxsparse_ao.tools import cli

    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    entry = capsys.readouterr().out.split("\n  --calibration ")[1].split("\n  --")[0]  # the option's own help
    assert all(name in entry for name in TEXT_NAMES), entry
