"""Bad input to a benchmark script: one line on stderr and exit status 2, as `proxsparse-tool` reports it.

The format is tools/cli.py's (`error: PROG: MESSAGE (see PROG --help)` for an option, `error: MESSAGE`
for a value the library refuses), without importing the CLI: the GPU check uses this module on a
machine that has torch and transformers only, so it needs nothing but the standard library.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2, like `proxsparse-tool`'s, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer of at least `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def finite(low: float | None = None) -> Callable[[str], float]:
    """An argparse `type`: a finite number, at least `low` when given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value

    return parse


def run_script(main: Callable[[], int], *user_errors: type[BaseException]) -> int:
    """Run a script's `main`: an error of `user_errors` (the library's ProxSparseError: a value it
    refuses) is one line and exit 2, Ctrl-C is "interrupted" and exit 130, as in the CLI."""
    try:
        return main()
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
