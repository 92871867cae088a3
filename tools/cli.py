"""`proxsparse-tool`: one entry point, one module per command (each has `add_parser` and `run`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from proxsparse_ao.errors import ProxSparseError

from . import quickstart

COMMANDS = [quickstart]

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def quiet_libraries() -> None:
    """Silence library chatter (torchao's CUDA-extension load failures on CPU, HF warnings)."""
    for name in ("torchao", "transformers", "datasets", "lm_eval", "accelerate", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxsparse-tool",
        description="Learn 2:4 sparsity masks for LLMs (ProxSparse), evaluate and deploy them.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        return int(args.run(args, console) or EXIT_OK)
    except ProxSparseError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
