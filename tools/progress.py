"""What a command shows while it works: live on a terminal, plain lines in a log (a pipe, a file, CI),
where rich's spinners and transient bars print nothing and a run of minutes would look stuck."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


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

    def __init__(self, console: Console, description: str, parts: int = 4) -> None:
        self.console, self.description, self.parts, self.shown = console, description, parts, -1

    def __call__(self, step: int, total: int | None, detail: str = "") -> None:
        if self.console.is_terminal or not total:
            return
        part = step * self.parts // total
        if part > self.shown:
            self.shown = part
            line = f"{self.description}: step {step}/{total}" + (f", {detail}" if detail else "")
            self.console.print(line, highlight=False, soft_wrap=True)
