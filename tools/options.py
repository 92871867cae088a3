"""Checks on command-line options shared by the commands (numbers, devices, output files): one-line errors before any work."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from proxsparse_ao.cache import check_writable_folder
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.models import usable_device


def require_at_least(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Each named option must be at least its minimum; an option left unset (None) passes."""
    for name, low in minimums.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise ProxSparseError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def typed_options(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> set[str]:
    """The option names (argparse dests) the command line sets itself, defaults left out: a command
    can then refuse an option that does nothing in its run instead of ignoring it."""
    parser = build_parser()
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += action.choices.values()
    for each in parsers:
        for option in each._actions:
            option.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "run"}


def refuse_unused(args: argparse.Namespace, unused: dict[str, str | None]) -> None:
    """`unused` maps an option to why it does nothing in this run (None: it does something). One the
    user typed is refused, naming why, rather than silently ignored (`args.given`: what they typed;
    a config field's flag has the dest cfg_FIELD)."""
    given = getattr(args, "given", set())
    for option, why in unused.items():
        dest = option[2:].replace("-", "_")
        if why and (dest in given or f"cfg_{dest}" in given):
            raise ProxSparseError(f"{option} does nothing {why}: drop it")


def name_flags(message: str) -> str:
    """A config error as the CLI user should read it: `ProxSparseConfig.lr` becomes `--lr`."""
    return re.sub(r"\b\w+Config\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), message)


def check_no_repeats(lists: dict[str, list[str] | None]) -> None:
    """An option taking several names (`--text a b`) must not name one twice: the repeat would be
    measured again and shown twice."""
    for option, values in lists.items():
        repeated = sorted({value for value in values or [] if values.count(value) > 1})
        if repeated:
            raise ProxSparseError(f"{option} lists {', '.join(repeated)} twice: drop the repeat")


def check_one_window(texts: dict[str, torch.Tensor], eval_seqlen: int) -> None:
    """Each evaluation text (its name, its token ids) must hold one --eval-seqlen window of tokens:
    refused up front, a short one would fail every perplexity measured on it."""
    for name, ids in texts.items():
        if ids.numel() < eval_seqlen:
            raise ProxSparseError(f"--text {name} has {ids.numel()} tokens, fewer than one --eval-seqlen window of "
                                  f"{eval_seqlen}: use a longer text or a smaller --eval-seqlen")


def parse_device(text: str | None) -> torch.device:
    """`--device` as a torch device that this machine has (default: cuda when available, else cpu)."""
    return usable_device(text or ("cuda" if torch.cuda.is_available() else "cpu"), "--device")


def check_not_inside(value: str | Path, option: str, folder: str | Path | None, which: str) -> None:
    """`value` must not be `folder` or lie inside it (`which` says what the folder is, for the message):
    a file written into the folder a save replaces is lost or overwrites a file of the model."""
    if folder is None:
        return
    path, root = Path(value).expanduser().resolve(), Path(folder).expanduser().resolve()
    if path == root or root in path.parents:
        raise ProxSparseError(f"{option} {value} is inside {which} {folder}: put it elsewhere")


def check_result_files(
    options: dict[str, str | None], model_folder: str | Path | None = None, output: str | Path | None = None,
    inputs: dict[str, str | list[str] | None] | None = None,
) -> None:
    """Result files (`--json`, `--log`, ...) are refused before any work when they could not be
    written at the end: a folder in the way, an unwritable place, two options naming one file, a
    file of the model folder the command reads, a path inside the folder the command saves, or
    one of the `inputs` the command reads (a text or calibration file, or a file in a data folder)."""
    seen: dict[Path, str] = {}
    inside = Path(model_folder).expanduser().resolve() if model_folder is not None and Path(model_folder).expanduser().is_dir() else None
    read = {Path(path).expanduser().resolve(): option for option, paths in (inputs or {}).items()
            for path in ([paths] if isinstance(paths, str) else paths or []) if path and Path(path).expanduser().exists()}
    for option, value in options.items():
        if not value:
            continue
        path = Path(value).expanduser().absolute()
        check_not_inside(path, option, output, "the --output folder, which the save replaces,")
        for source, reader in read.items():
            if path.resolve() == source or (source.is_dir() and source in path.resolve().parents):
                raise ProxSparseError(f"{option} {value} would overwrite what {reader} reads ({source}): write it elsewhere")
        if path.resolve() in seen:
            raise ProxSparseError(f"{option} and {seen[path.resolve()]} name the same file {value}")
        seen[path.resolve()] = option
        if path.is_dir():
            raise ProxSparseError(f"{option} {value} is a folder: name a file")
        if inside is not None and path.resolve().parent == inside:
            raise ProxSparseError(f"{option} {value} is inside the model folder being read: write it elsewhere")
        check_writable_folder(path.parent, f"{option} {value}")


def check_checkpoint_dir(folder: str | Path, output: str | Path, model: str | Path | None) -> None:
    """--checkpoint-dir must be writable and lie neither inside the --output folder (the save replaces it)
    nor inside the model folder being pruned."""
    check_not_inside(folder, "--checkpoint-dir", output, "the --output folder, which the save replaces,")
    if model is not None and Path(model).expanduser().is_dir():
        check_not_inside(folder, "--checkpoint-dir", model, "the model folder being pruned,")
    check_writable_folder(folder, f"--checkpoint-dir {folder}")
