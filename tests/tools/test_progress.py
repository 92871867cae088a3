"""What commands show while they work: in a log (pipe, file, CI) plain lines, so a long run is seen going."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from proxsparse_ao.tools.progress import StepLog, reporter, stage


def log_console() -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    return Console(file=sink, width=200), sink


def terminal_console() -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    return Console(file=sink, width=200, force_terminal=True), sink


def test_in_a_log_a_stage_is_one_line_printed_when_it_starts():
    console, sink = log_console()
    with stage(console, "loading the model"):
        console.print("inside")
    assert sink.getvalue().splitlines() == ["loading the model ...", "inside"]


def test_on_a_terminal_a_stage_is_a_spinner_not_a_line():
    console, sink = terminal_console()
    with stage(console, "loading the model"):
        pass
    assert "loading the model ..." not in sink.getvalue()


def test_in_a_log_a_loop_says_its_first_step_and_each_quarter():
    console, sink = log_console()
    logged = StepLog(console, "learning masks")
    for step in range(1, 9):
        logged(step, 8, f"loss {1 / step:.2f}")
    assert sink.getvalue().splitlines() == [
        "learning masks: step 1/8, loss 1.00", "learning masks: step 2/8, loss 0.50", "learning masks: step 4/8, loss 0.25",
        "learning masks: step 6/8, loss 0.17", "learning masks: step 8/8, loss 0.12",
    ]


def test_a_loop_of_unknown_length_or_on_a_terminal_prints_nothing():
    console, sink = log_console()
    StepLog(console, "pruning")(1, None)
    terminal, terminal_sink = terminal_console()
    for step in range(1, 5):
        StepLog(terminal, "pruning")(step, 4)
    assert sink.getvalue() == "" and terminal_sink.getvalue() == ""


def test_a_reporter_moves_its_bar_and_in_a_log_prints_the_loops_lines():
    console, sink = log_console()
    with Progress(console=console, disable=True) as bar:
        report = reporter(bar, "perplexity", console, "window")
        for done in range(1, 5):
            report(done, 4)
        (task,) = bar.tasks
    assert (task.completed, task.total) == (4, 4)
    assert sink.getvalue().splitlines() == [f"perplexity: window {done}/4" for done in range(1, 5)]
