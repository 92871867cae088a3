"""`benchmarks/summarize.py`: the seed table of the committed issue-9 results, and one-line errors for bad files and options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def summarize(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "summarize.py"), *paths],
                          capture_output=True, text=True, timeout=300)


def test_the_committed_results_summarise_by_run_and_seed():
    results = sorted(str(p) for p in (REPO / "benchmarks" / "results" / "issue9").glob("*.json"))
    done = summarize(*results)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| run | seeds | PPL wikipedia (mean ± sd, min..max) | PPL news")
    assert any(line.startswith("| default | ") for line in lines)
    assert any(line.startswith("| compare:sparsegpt | ") for line in lines)


def test_a_missing_or_foreign_file_or_a_bad_option_is_one_line_and_exit_2(tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"x": 1}')
    for argv, message in (([tmp_path / "nope.json"], "cannot read"), ([foreign], "is not a learn_eval.py or compare result"),
                          (["--bogus", foreign], "unrecognized arguments: --bogus"), ([], "the following arguments are required")):
        done = summarize(*argv)
        assert done.returncode == 2 and done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: ") and message in line
