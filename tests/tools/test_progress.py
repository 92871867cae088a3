"""What commands show while they work: in a log (pipe, file, CI) plain lines, so a long run is seen going."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from proxsparse_ao.tools.progress import LEARNING_FIELDS, StepLog, learning_reporter, progress_bars, reporter, stage
from proxsparse_ao.training import StepStats


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


def test_a_commands_bars_show_on_a_terminal_and_are_off_in_a_log():
    assert progress_bars(terminal_console()[0]).disable is False
    assert progress_bars(log_console()[0]).disable is True


def test_bars_with_fields_show_them_and_the_time_left():
    console, sink = terminal_console()
    with progress_bars(console, LEARNING_FIELDS, keep=True) as bar:
        bar.add_task("learning", total=4, completed=2, loss="2.500", frac="75.0%", moved="3.0%")
    shown = sink.getvalue()
    assert "loss 2.500  2:4 75.0%  moved 3.0%" in shown and "ETA" in shown


def stats(step: int, loss: float, fraction_24: float | None = None, moved: float | None = None) -> StepStats:
    return StepStats(step=step, total_steps=4, loss=loss, ce=loss, frozen=0.0, lr=1e-4, grad_norm=1.0,
                     fraction_24=fraction_24, changed_vs_magnitude=moved, changed_vs_start=moved, seconds=0.1)


def test_the_learning_reporter_shows_the_loss_and_keeps_the_last_pattern_numbers_between_statistics_steps():
    console, sink = log_console()
    with Progress(console=console, disable=True) as bar:
        show = learning_reporter(bar, "learning masks", console)
        (task,) = bar.tasks
        assert task.fields == {"loss": "-", "frac": "-", "moved": "-"}
        show(stats(1, 3.0, fraction_24=0.5, moved=0.25))
        show(stats(2, 2.0))
    assert (task.completed, task.total) == (2, 4)
    assert task.fields == {"loss": "2.000", "frac": "50.0%", "moved": "25.0%"}
    assert sink.getvalue().splitlines() == ["learning masks: step 1/4, loss 3.000", "learning masks: step 2/4, loss 2.000"]
