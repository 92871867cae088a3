"""`proxsparse-tool prune`: learn 2:4 masks (ProxSparse) or take a baseline's, apply them, save the folder."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import typing
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from proxsparse_ao.baselines import METHODS as BASELINES
from proxsparse_ao.baselines import BaselineConfig, config_fields, config_for, needs_calibration
from proxsparse_ao.calibration import token_count
from proxsparse_ao.config import (
    CALIBRATION_MODES,
    PRECISIONS,
    PRESETS,
    STRENGTH_MODES,
    STRENGTH_SCHEDULES,
    TRAIN_MODES,
    W0_DEVICES,
    ConfigError,
    ProxSparseConfig,
    check_batch_size,
)
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.models import check_model_name
from proxsparse_ao.quiet import quiet_libraries

from .library_warnings import is_ours
from .options import check_checkpoint_dir, check_not_inside, check_result_files, name_flags, parse_device, refuse_unused, require_at_least
from .progress import LEARNING_FIELDS, learning_reporter, progress_bars, reporter, stage

METHODS = ("proxsparse", *BASELINES)
DTYPES = ("float32", "bfloat16", "float16")

EXAMPLES = """examples:
  proxsparse-tool prune --output pruned/                         # embedded model, default settings
  proxsparse-tool prune --output pruned/ --samples 16 --seqlen 256 --eval
  proxsparse-tool prune ./my-model --output out/ --lr 3e-3 --lambda1 3 --plot curves.png
  proxsparse-tool prune --method magnitude --output mag/ --eval
  proxsparse-tool prune --method wanda --output wanda/ --samples 64 --seqlen 512   # a baseline, saved the same way
  proxsparse-tool prune --output out/ --checkpoint-dir ckpt/     # rerun the same command to resume
  proxsparse-tool prune --output paper/ --preset paper --samples 64 --calibration default  # the published recipe

The output folder holds the HF model (dense weights, pruned entries +0.0), masks.safetensors,
proxsparse.json (settings, source, statistics) and learning_log.json (per-step statistics).
--lambda1 is the shrink-to-step ratio (strength "relative", default) or the paper's threshold
(--strength absolute). --preset sets every field first; the other flags then override it.
--method magnitude, wanda, sparsegpt (OBS with weight updates) or sparsegpt-mask (its mask on
the original weights) reads only the flags its config has: --targets, --ignore, --strict and,
but for magnitude, the calibration flags (--samples, --seqlen, --seed, --calibration,
--calibration-mode); any other ProxSparse flag is refused.
"""

_FIELD_CHOICES = {
    "strength": STRENGTH_MODES,
    "strength_schedule": STRENGTH_SCHEDULES,
    "train": TRAIN_MODES,
    "precision": PRECISIONS,
    "w0_device": W0_DEVICES,
    "calibration_mode": CALIBRATION_MODES,
}
_FIELD_HELP = {
    "lambda1": "prox strength: shrink-to-step ratio (relative) or threshold (absolute)",
    "strength": "relative (scale-aware, default) or absolute (the paper's lambda1)",
    "strength_schedule": "constant (the paper) or lr (the threshold follows the lr schedule)",
    "activation_aware": "prox and final top-2 on W * input-channel norms (Wanda's space) instead of W",
    "lambda2": "frozen-weight term weight (0 = off)",
    "epsilon": "frozen-weight term epsilon",
    "lr": "AdamW learning rate",
    "warmup_ratio": "fraction of steps with linear warmup",
    "max_grad_norm": "gradient clipping norm (0 = off)",
    "weight_decay": "AdamW weight decay",
    "samples": "calibration samples (one step per batch)",
    "seqlen": "tokens per calibration sample",
    "batch_size": "samples per step",
    "seed": "seed of the calibration sample and its order",
    "calibration": "calibration text: default, wikipedia, news, c4, wikitext2 or a .txt/.jsonl path",
    "calibration_mode": "windows (packed random windows) or documents (truncated documents)",
    "targets": "module patterns to prune (class name, name suffix or re:REGEX)",
    "ignore": "module patterns never pruned",
    "strict": "fail on target layers whose in_features is not a multiple of 4",
    "precision": "dtype the learning runs in (auto = the model's)",
    "train": "which parameters train: targets or all",
    "w0_device": "where the original weights wait during learning: cpu or model",
    "gradient_checkpointing": "recompute activations in backward (less memory)",
    "checkpoint_dir": "save training state here and resume from it",
    "checkpoint_every": "steps between training-state saves",
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prune",
        help="learn 2:4 masks with ProxSparse and save the pruned model",
        description="Learn 2:4 sparsity masks end to end (ProxSparse), apply them to the original weights and save the model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model folder or hub id (default: embedded)")
    parser.add_argument("--method", choices=METHODS, default="proxsparse",
                        help="how masks are chosen: ProxSparse (default) or a baseline")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write the pruned model to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--device", default="cpu", help="device to load the model on (default cpu)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--eval", action="store_true", help="perplexity before and after on the embedded evaluation text")
    parser.add_argument("--eval-tokens", type=int, default=16384, metavar="N", help="tokens for --eval (default 16384)")
    parser.add_argument("--eval-seqlen", type=int, default=1024, metavar="L", help="window for --eval (default 1024)")
    parser.add_argument("--log", default=None, metavar="FILE", help="also write the per-step JSON log here")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="plot the per-step curves (needs matplotlib)")
    add_config_flags(parser.add_argument_group("ProxSparse settings (ProxSparseConfig fields)"))
    parser.set_defaults(run=run)


def add_config_flags(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--preset and one flag per ProxSparseConfig field (dest `cfg_FIELD`, default None = unset), with
    help, type and choices: what `config_from_args` reads. Shared by prune and the torchrun command."""
    group.add_argument("--preset", choices=tuple(PRESETS), default="default", help="named setting the flags below override (default: default)")
    hints = typing.get_type_hints(ProxSparseConfig)
    defaults = ProxSparseConfig()
    for f in dataclasses.fields(ProxSparseConfig):
        if f.name not in _FIELD_HELP:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{_FIELD_HELP[f.name]} (default {default})"
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(flag, dest=f"cfg_{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is list:
            group.add_argument(flag, dest=f"cfg_{f.name}", nargs="+", default=None, metavar="PATTERN", help=help_text)
        else:
            base = next((t for t in (float, int, str) if t is kind or t in typing.get_args(kind)), str)
            group.add_argument(
                flag, dest=f"cfg_{f.name}", type=base, default=None, choices=_FIELD_CHOICES.get(f.name),
                metavar=None if f.name in _FIELD_CHOICES else f.name.upper(), help=help_text,
            )


def check_model_not_in_patterns(args: argparse.Namespace) -> None:
    """--targets and --ignore take every word after them, so a MODEL folder given after them lands in
    their patterns and the embedded model would be pruned instead: refuse a pattern that is a folder
    when no MODEL was given."""
    if args.model is not None:
        return
    for field_name in ("targets", "ignore"):
        for pattern in getattr(args, f"cfg_{field_name}", None) or []:
            if Path(pattern).expanduser().is_dir():
                raise ProxSparseError(
                    f"{_flag(field_name)} {pattern!r} is a folder, not a module pattern: give MODEL before "
                    f"{_flag(field_name)} (its patterns take every word after it)"
                )


def check_calibration_not_in_output(config: ProxSparseConfig | BaselineConfig, output: str | Path) -> None:
    """A --calibration file inside the --output folder (an earlier pruned model replaced with --overwrite)
    would be deleted by the save, and proxsparse.json would record a text that is gone."""
    calibration = getattr(config, "calibration", None)
    if calibration and Path(calibration).expanduser().is_file():
        check_not_inside(calibration, "--calibration", output, "the --output folder, which the save replaces,")


def _set_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {name[4:]: value for name, value in vars(args).items() if name.startswith("cfg_") and value is not None}


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_from_args(args: argparse.Namespace) -> ProxSparseConfig | BaselineConfig:
    """The config the flags describe for --method (unset flags keep the defaults). A baseline takes
    only the flags its config has: a ProxSparse-only flag given with it is refused, not ignored.
    A bad value is a ConfigError that names the flag, not the Python field."""
    try:
        return _config_from_args(args)
    except ConfigError as err:
        raise ConfigError(name_flags(str(err))) from None


def _config_from_args(args: argparse.Namespace) -> ProxSparseConfig | BaselineConfig:
    method = getattr(args, "method", "proxsparse")
    if method == "proxsparse":
        config = ProxSparseConfig.preset(getattr(args, "preset", "default"), **_set_fields(args))
        check_batch_size(config)  # the command makes --samples calibration samples
        return config
    values, accepted = _set_fields(args), config_fields(method)
    refused = (["preset"] if getattr(args, "preset", "default") != "default" else []) + sorted(set(values) - accepted)
    if refused:
        readable = sorted(accepted & set(_FIELD_HELP), key=list(_FIELD_HELP).index)
        raise ConfigError(f"{', '.join(map(_flag, refused))}: not read by --method {method} "
                          f"(it reads {', '.join(map(_flag, readable))})")
    return config_for(method, **values)


def source_label(model: str) -> str:
    """How the metadata names the dense source: a local folder by its absolute path (verify may
    run from elsewhere), a hub id as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def run(args: argparse.Namespace, console: Console) -> int:
    check_model_name(args.model)
    check_model_not_in_patterns(args)
    config = config_from_args(args)
    no_log = f"with --method {args.method}, which learns nothing step by step" if args.method != "proxsparse" else None
    no_eval = None if args.eval else "without --eval"
    refuse_unused(args, {"--eval-tokens": no_eval, "--eval-seqlen": no_eval, "--log": no_log, "--plot": no_log,
                         "--checkpoint-every": None if getattr(config, "checkpoint_dir", None) else "without --checkpoint-dir"})
    require_at_least(args, {"eval_seqlen": 2, "eval_tokens": 1})
    if args.eval_tokens < args.eval_seqlen and args.eval:
        raise ProxSparseError(f"--eval-tokens ({args.eval_tokens}) must cover one window of --eval-seqlen ({args.eval_seqlen})")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    from proxsparse_ao.api import apply_masks, calibration_tokens, learn
    from proxsparse_ao.context import check_context
    from proxsparse_ao.data import check_text
    from proxsparse_ao.export import check_output, check_pruned, save_pruned
    from proxsparse_ao.history import LOG_FILE, check_plotting, history_json, plot_history, write_history
    from proxsparse_ao.models import DEFAULT_MODEL_LABEL, is_default, load_model

    hf_logging.disable_progress_bar()
    quiet_libraries()  # again: importing transformers puts the hub's logger back to WARNING
    require_at_least(args, {"threads": 1})
    device = parse_device(args.device)
    output = check_output(args.output, args.overwrite, source=args.model, overwrite_flag="--overwrite")
    check_calibration_not_in_output(config, args.output)
    check_result_files({"--log": args.log, "--plot": args.plot}, model_folder=args.model, output=args.output,
                       inputs={"--calibration": getattr(config, "calibration", None)})
    if args.plot:
        try:
            check_plotting()
        except ProxSparseError as err:
            raise ProxSparseError(f"--plot {args.plot}: {err}") from None  # not after the run
    if getattr(config, "checkpoint_dir", None):
        check_checkpoint_dir(config.checkpoint_dir, args.output, args.model)
        for option, value in {"--log": args.log, "--plot": args.plot}.items():
            if value:  # it would replace the training state a rerun resumes from, or the folder itself
                check_not_inside(value, option, config.checkpoint_dir, "the --checkpoint-dir folder, which holds the training state,")
    calibrated = args.method == "proxsparse" or needs_calibration(config)
    if calibrated:
        check_text(config.calibration)
    if args.threads:
        torch.set_num_threads(args.threads)
    label = DEFAULT_MODEL_LABEL if is_default(args.model) else source_label(args.model)
    with stage(console, f"loading {label}"):
        model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=device)
    if calibrated:
        check_context(model, config.seqlen, "--seqlen")
    if args.eval:
        check_context(model, args.eval_seqlen, "--eval-seqlen")

    table = Table(title=f"proxsparse-ao prune ({args.method}): {label}")
    for column in ("", "value"):
        table.add_column(column)
    ppl = {}
    eval_ids = None
    if args.eval:
        eval_ids = _eval_tokens(tokenizer, console)
        ppl["dense"] = _perplexity(model, eval_ids, args, console, "dense perplexity")

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.method == "proxsparse":
            with stage(console, f"preparing {calibration_words(config.calibration_mode, config.samples, config.seqlen)} of {config.calibration}"):
                tokens = calibration_tokens(config, tokenizer)
            with progress_bars(console, LEARNING_FIELDS, keep=True) as bar:
                result = learn(model, config, tokenizer=tokenizer, calibration=tokens,
                               callback=learning_reporter(bar, "learning masks", console))
            masks, history = result.masks, result.history
            stats = {
                "steps": result.steps_done, "total_steps": result.total_steps, "resumed_from": result.resumed_from,
                "stopped": result.stopped, "changed_vs_magnitude": result.changed_vs_magnitude,
                "changed_vs_start": result.changed_vs_start, "learn_seconds": round(result.seconds, 2), "peak_memory_bytes": result.peak_memory_bytes,
                "skipped": result.extra.get("skipped", {}), "final": history[-1] if history else None,
            }
            data = calibration_record(config, tokens.shape, token_count(tokens))
            apply_masks(model, masks, config)
        else:
            masks, stats, data = _prune_baseline(model, config, tokenizer, console)
            history, result = [], None
        check_pruned(model, masks)
    seconds = time.perf_counter() - started
    for warning in caught:
        if is_ours(warning):
            console.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)

    if args.eval:
        ppl["pruned"] = _perplexity(model, eval_ids, args, console, "pruned perplexity")
    metadata = {
        "method": args.method,
        "source_model": label,
        "dtype": args.dtype,
        "config": config.to_dict(),
        "data": data,
        "statistics": stats | {"seconds": round(seconds, 2)},
        "perplexity": ppl or None,
        "versions": versions(),
    }
    log = history_json(history, method=args.method)
    with stage(console, f"saving {output}"):
        check_output(output, args.overwrite, overwrite_flag="--overwrite")  # again: another run may have saved there since
        save_pruned(model, output, masks, metadata, tokenizer=tokenizer, overwrite=args.overwrite, extra_files={LOG_FILE: log})
    if args.log:
        write_history(Path(args.log).expanduser(), history, method=args.method)
    if args.plot:
        try:
            plot_history(history, Path(args.plot).expanduser())
            table.add_row("plot", str(args.plot))
        except ProxSparseError as err:
            console.print(f"[yellow]no plot:[/] {err}", highlight=False, soft_wrap=True)

    total = sum(int(m.numel()) // 4 for m in masks.values())
    table.add_row("target layers", f"{len(masks)} ({total:,} groups of 4), exactly 2:4")
    if result is not None:
        table.add_row("steps", f"{result.steps_done}/{result.total_steps}" + (f" (resumed at {result.resumed_from})" if result.resumed_from else ""))
        if history:
            last = history[-1]
            table.add_row("final loss / CE", f"{last['loss']:.4f} / {last['ce']:.4f}")
            table.add_row("learned weights already 2:4", f"{last['fraction_24']:.2%}" if last["fraction_24"] is not None else "-")
        table.add_row("groups whose mask differs from magnitude's", f"{result.changed_vs_magnitude:.2%}")
        table.add_row("groups whose mask moved from its start", f"{result.changed_vs_start:.2%}")
        table.add_row("peak memory", f"{result.peak_memory_bytes / 2**30:.2f} GiB")
    table.add_row("time", f"{seconds:.1f} s")
    for name, value in ppl.items():
        table.add_row(f"perplexity ({name})", f"{value:.3f}")
    table.add_row("saved", str(output))
    console.print(table)
    if result is not None and result.stopped:
        console.print(f"[bold yellow]learning stopped early:[/] {result.stopped}", highlight=False, soft_wrap=True)
        return 1
    return 0


def calibration_record(config: ProxSparseConfig | BaselineConfig, shape: typing.Sequence[int], tokens: int) -> dict:
    """What proxsparse.json records of the calibration data: `shape` of the token tensor and the real
    `tokens` in it (fewer than its size in documents mode, where short documents are padded)."""
    return {"calibration": config.calibration, "mode": config.calibration_mode, "shape": list(shape), "tokens": tokens,
            "seed": config.seed}


def calibration_words(mode: str, samples: int, seqlen: int, tokens: int | None = None) -> str:
    """How the CLI names calibration data: windows are N x L tokens, documents at most L each (and
    the real `tokens` they hold, when known)."""
    if mode == "documents":
        return f"{samples} documents of at most {seqlen} tokens" + (f" ({tokens:,} tokens)" if tokens is not None else "")
    return f"{samples} x {seqlen} tokens"


def _prune_baseline(model, config: BaselineConfig, tokenizer, console: Console) -> tuple[dict, dict, dict | None]:
    """Prune `model` in place with a baseline; its masks, statistics and calibration record."""
    from proxsparse_ao.api import calibration_tokens
    from proxsparse_ao.baselines import prune

    tokens, data = None, None
    if needs_calibration(config):
        with stage(console, f"preparing {calibration_words(config.calibration_mode, config.samples, config.seqlen)} of {config.calibration}"):
            tokens = calibration_tokens(config, tokenizer, model)
        data = calibration_record(config, tokens.shape, token_count(tokens))
    with progress_bars(console) as bar:
        result = prune(model, config, tokenizer=tokenizer, calibration=tokens,
                       progress=reporter(bar, "pruning decoder blocks", console, "block"))
    return result.masks, {"skipped": result.skipped, "prune_seconds": round(result.seconds, 2)}, data


def _eval_tokens(tokenizer, console: Console):
    from proxsparse_ao.data import load_text
    from proxsparse_ao.evaluation import tokenize_text

    with stage(console, "reading and tokenising the evaluation text"):
        return tokenize_text(tokenizer, load_text(None, "evaluation"))


def _perplexity(model, ids, args: argparse.Namespace, console: Console, what: str) -> float:
    from proxsparse_ao.evaluation import perplexity

    with progress_bars(console) as bar:
        result = perplexity(model, ids, args.eval_seqlen, max_tokens=args.eval_tokens, progress=reporter(bar, what, console, "window"))
    return result.ppl


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("proxsparse-ao", "torch", "torchao", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
