"""`proxsparse-tool assets` prepares and reports the embedded default model and text."""

from __future__ import annotations

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
