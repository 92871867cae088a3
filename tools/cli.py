"""`proxsparse-tool`: one entry point, one module per command (each has `add_parser` and `run`)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from proxsparse_ao.quiet import quiet_libraries

quiet_libraries()  # before any command module imports torchao, which logs its failures at import time

from rich.console import Console  # noqa: E402

from proxsparse_ao.errors import ProxSparseError  # noqa: E402

from . import assets, compare, prune, quickstart, verify  # noqa: E402
from . import eval as eval_command  # noqa: E402
from .options import typed_options  # noqa: E402
from .signals import Terminated, on_sigterm, raise_terminated  # noqa: E402

COMMANDS = [quickstart, assets, eval_command, prune, compare, verify]

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

EPILOG = """examples:
  proxsparse-tool assets                              # prepare the embedded model and text
  proxsparse-tool eval --tasks local_winogrande --limit 100
  proxsparse-tool prune --output pruned/ --eval       # learn 2:4 masks on the embedded model
  proxsparse-tool verify pruned/                      # structure, accuracy, deployment checks
  proxsparse-tool COMMAND --help                      # options and more examples

exit status: 0 success (every check passed), 1 a check failed, 2 the input could not be used
(missing or corrupt files, bad options); errors are one line on stderr.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line, like every other error, not with the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="proxsparse-tool",
        description="Learn 2:4 sparsity masks for LLMs (ProxSparse), evaluate and deploy them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    args.given = typed_options(build_parser, argv)
    console = Console(stderr=False)
    previous = on_sigterm(raise_terminated)
    try:
        return int(args.run(args, console) or EXIT_OK)
    except ProxSparseError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130
    except Terminated:
        Console(stderr=True).print("terminated")
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            on_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
