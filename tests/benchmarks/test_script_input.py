"""`benchmarks/script_input.py`: the benchmark scripts end on bad input and Ctrl-C as `proxsparse-tool` does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from script_input import OneLineParser, at_least, finite, run_script  # noqa: E402


class Refused(Exception):
    pass


def _raises(error: BaseException):
    def main() -> int:
        raise error

    return main


def test_a_refused_value_is_one_line_and_exit_2(capsys):
    assert run_script(_raises(Refused("--size 130 is not a multiple of 4")), Refused) == 2
    assert capsys.readouterr().err == "error: --size 130 is not a multiple of 4\n"


def test_ctrl_c_is_one_word_and_exit_130(capsys):
    assert run_script(_raises(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_other_errors_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        run_script(_raises(ZeroDivisionError()), Refused)


def test_a_bad_option_is_one_line_naming_it(capsys):
    parser = OneLineParser(prog="prox_speed.py")
    parser.add_argument("--repeats", type=at_least(1))
    parser.add_argument("--budget-s", type=finite(0))
    for argv, message in ((["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
                          (["--budget-s", "nan"], "argument --budget-s: must be finite, got nan")):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err == f"error: prox_speed.py: {message} (see prox_speed.py --help)\n"

