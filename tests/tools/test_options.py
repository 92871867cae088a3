"""Options are checked the same way in every command: numbers, and options that would do nothing."""

from __future__ import annotations

import argparse

import pytest

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.tools import cli
from proxsparse_ao.tools.options import refuse_unused, require_at_least, typed_options


def test_values_at_or_above_the_minimum_and_unset_options_pass():
    require_at_least(argparse.Namespace(seqlen=2, limit=None), {"seqlen": 2, "limit": 1})


def test_the_error_names_the_flag_as_typed_and_the_value():
    with pytest.raises(ProxSparseError, match=r"^--batch-size must be at least 1, got 0$"):
        require_at_least(argparse.Namespace(batch_size=0), {"batch_size": 1})


def test_the_options_a_command_line_typed_are_told_from_defaults():
    assert typed_options(cli.build_parser, ["prune", "--output", "out", "--eval-seq", "64", "--lr", "1e-3"]) == {
        "output", "eval_seqlen", "cfg_lr"}
    assert typed_options(cli.build_parser, ["verify", "pruned", "--no-ppl"]) == {"dir", "no_ppl"}


def test_a_typed_option_that_does_nothing_is_refused_naming_why():
    args = argparse.Namespace(given={"limit"})
    refuse_unused(args, {"--limit": None, "--zeroshot-data": "without --tasks"})
    with pytest.raises(ProxSparseError, match=r"^--limit does nothing without --tasks: drop it$"):
        refuse_unused(args, {"--limit": "without --tasks"})


@pytest.mark.parametrize("argv, message", [
    (["prune", "--output", "out", "--eval-seqlen", "64"], "--eval-seqlen does nothing without --eval"),
    (["prune", "--method", "magnitude", "--output", "out", "--plot", "p.png"],
     "--plot does nothing with --method magnitude, which learns nothing step by step"),
    (["verify", "pruned", "--no-compile", "--deploy-dtype", "float16"], "--deploy-dtype does nothing with --no-compile"),
    (["verify", "pruned", "--no-ppl", "--no-compile", "--text", "notes.txt"],
     "--text does nothing with --no-ppl and --no-compile"),
    (["verify", "pruned", "--no-ppl", "--baseline", "dense/"], "--baseline does nothing with --no-ppl and without --tasks"),
    (["eval", "--no-ppl", "--tasks", "local_winogrande", "--seqlen", "512"], "--seqlen does nothing with --no-ppl"),
    (["eval", "--limit", "20"], "--limit does nothing without --tasks"),
    (["compare", "--methods", "dense,magnitude", "--samples", "8"], "--samples does nothing without a calibrated method"),
    (["compare", "--methods", "dense,wanda", "--lr", "1e-3"], "--lr does nothing without proxsparse in --methods"),
    (["prune", "--output", "out", "--checkpoint-every", "4"], "--checkpoint-every does nothing without --checkpoint-dir"),
    (["verify", "pruned", "--no-ppl", "--no-compile", "--seqlen", "64"], "--seqlen does nothing with --no-ppl and --no-compile"),
])
def test_commands_refuse_options_that_would_do_nothing_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_result_file_named_as_the_output_folder_itself_is_refused(tmp_path):
    from proxsparse_ao.tools.options import check_not_inside

    with pytest.raises(ProxSparseError, match="is inside the --output folder"):
        check_not_inside(tmp_path / "out", "--json", tmp_path / "out", "the --output folder")
    with pytest.raises(ProxSparseError, match="is inside the --output folder"):
        check_not_inside(tmp_path / "out" / "r.json", "--json", tmp_path / "out", "the --output folder")
    check_not_inside(tmp_path / "out.json", "--json", tmp_path / "out", "the --output folder")
