"""What a command shows while it works: live on a terminal, plain lines in a log (a pipe, a file, CI),
where rich's spinners and transient bars print nothing and a run of minutes would look stuck."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress


@contextmanager
def stage(console: Console, text: str) -> Iterator[None]:
    """A spinner saying `text` on a terminal; in a log, `text` as one line when the stage starts."""
    if console.is_terminal:
        with console.status(text):
            yield
    else:
        console.print(f"{text} ...", highlight=False, soft_wrap=True)
        yield


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


def reporter(bar: Progress, description: str, log: Console, unit: str) -> Callable[[int, int | None], None]:
    """A `progress(done, total)` callback for the library's loops (`total` of `unit`s): it moves a new
    task of `bar` and, when `log` is not a terminal, prints StepLog's lines there."""
    task = bar.add_task(description, total=None)
    logged = StepLog(log, description, unit)

    def report(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)
        logged(done, total)

    return report
