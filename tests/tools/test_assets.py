"""`proxsparse-tool assets` prepares and reports the embedded default model and text."""

from __future__ import annotations

import pytest

from cli_runner import CliRun, run_cli


def cli(*args: str) -> CliRun:
    return run_cli("assets", *args, columns=250)


def test_help_shows_examples():
    done = cli("--help")
    assert done.returncode == 0 and "proxsparse-tool assets --rebuild" in done.stdout


def test_reports_the_default_model_and_both_text_parts():
    done = cli()
    assert done.returncode == 0, done.stderr
    assert "SmolLM2-135M-Instruct" in done.stdout and "134.5M parameters, 30 layers" in done.stdout
    assert "calibration part" in done.stdout and "evaluation part" in done.stdout
    assert "parts share no article" in done.stdout
    assert "22 articles, 656,572 characters, 145,114 tokens" in done.stdout  # the count perplexity sees (eval says the same)


@pytest.mark.parametrize("under", ["", "sub"])
def test_a_cache_that_cannot_be_a_folder_is_one_line_and_exit_2(under, tmp_path, monkeypatch):
    """$PROXSPARSE_CACHE naming a file (or a path under one): the error names the cache and the variable, no traceback."""
    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder")
    cache = taken / under if under else taken
    monkeypatch.setenv("PROXSPARSE_CACHE", str(cache))
    done = cli()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot build the default model in the cache folder {cache} ({cache / 'models'}: Not a directory)")
    assert line.endswith("set $PROXSPARSE_CACHE to a folder you can write")
    assert taken.read_text() == "not a folder"
