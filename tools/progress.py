"""What a command shows while it works: live on a terminal, plain lines in a log (a pipe, a file, CI),
where rich's spinners and transient bars print nothing and a run of minutes would look stuck."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from proxsparse_ao.training import StepStats

LEARNING_FIELDS = "loss {task.fields[loss]}  2:4 {task.fields[frac]}  moved {task.fields[moved]}"
"""The learning loop's live numbers, for `progress_bars(console, LEARNING_FIELDS)`: the loss, the fraction of groups
already exactly 2:4 and of groups whose mask moved from its start (both only on steps with statistics)."""


@contextmanager
def stage(console: Console, text: str) -> Iterator[None]:
    """A spinner saying `text` on a terminal; in a log, `text` as one line when the stage starts."""
    if console.is_terminal:
        with console.status(text):
            yield
    else:
        console.print(f"{text} ...", highlight=False, soft_wrap=True)
        yield


def progress_bars(console: Console, fields: str | None = None, *, keep: bool = False) -> Progress:
    """The bars of a command's loops on a terminal: description, bar, count, `fields` (a format of
    each task's fields), elapsed time and, with `fields`, the time left; `keep` leaves them on screen
    when done. Off in a log, where `reporter` prints StepLog's lines instead."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fields:
        columns += [TextColumn(fields), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    else:
        columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console, transient=not keep, disable=not console.is_terminal)


class StepLog:
    """In a log, one line at the loop's first step and at each quarter of its steps (a terminal shows
    the live bar instead)."""

    def __init__(self, console: Console, description: str, unit: str = "step", parts: int = 4) -> None:
        self.console, self.description, self.unit, self.parts, self.shown = console, description, unit, parts, -1

    def __call__(self, step: int, total: int | None, detail: str = "") -> None:
        if self.console.is_terminal or not total:
            return
        part = step * self.parts // total
        if part > self.shown:
            self.shown = part
            line = f"{self.description}: {self.unit} {step}/{total}" + (f", {detail}" if detail else "")
            self.console.print(line, highlight=False, soft_wrap=True)


def reporter(progress: Progress, description: str, log: Console, unit: str, **fields: str) -> Callable[..., None]:
    """A `report(done, total, detail="", **fields)` callback for a loop of `total` `unit`s: it moves a
    new task of `progress` (its `fields` start as given) and, when `log` is not a terminal, prints
    StepLog's lines there, `detail` appended."""
    task = progress.add_task(description, total=None, **fields)
    logged = StepLog(log, description, unit)

    def report(done: int, total: int | None, detail: str = "", **changed: str) -> None:
        progress.update(task, completed=done, total=total, **changed)
        logged(done, total, detail)

    return report


def learning_reporter(progress: Progress, description: str, log: Console) -> Callable[[StepStats], None]:
    """A `learn(callback=...)` for the learning loop: its bar task carries LEARNING_FIELDS, its log
    lines the loss."""
    report = reporter(progress, description, log, "step", loss="-", frac="-", moved="-")

    def show(stats: StepStats) -> None:
        numbers = {"loss": f"{stats.loss:.3f}"}
        if stats.fraction_24 is not None:
            numbers["frac"] = f"{stats.fraction_24:.1%}"
        if stats.changed_vs_start is not None:
            numbers["moved"] = f"{stats.changed_vs_start:.1%}"
        report(stats.step, stats.total_steps, f"loss {numbers['loss']}", **numbers)

    return show
