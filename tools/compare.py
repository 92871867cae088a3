"""`proxsparse-tool compare`: every 2:4 method on the same calibration tokens, evaluated side by side.

Each method starts from a freshly loaded model; the pruning is timed and its memory measured on
its own: the peak it reached above what was resident when it started (the loaded model and the
evaluation tokens), with what earlier methods freed handed back to the system first. Everything
that can be refused (method names, calibration data, evaluation text, tasks, output paths, a
model the layer-wise methods cannot walk) is checked before the first method runs. The JSON file
is written atomically before the first method and after every one, and says which methods have
not finished and why (not run yet, failed, interrupted), so a cut-short run is never taken for a
whole one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from proxsparse_ao.cache import atomic_write_bytes
from proxsparse_ao.calibration import token_count
from proxsparse_ao.config import DEFAULT_IGNORE, DEFAULT_TARGETS
from proxsparse_ao.data import check_text
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.memory import PeakMemory
from proxsparse_ao.quiet import quiet_libraries
from proxsparse_ao.targets import pruned_layers
from proxsparse_ao.zeroshot import check_tasks

from .options import check_no_repeats, check_one_window, check_result_files, name_flags, parse_device, refuse_unused, require_at_least
from .progress import learning_reporter, progress_bars, reporter, stage
from .prune import calibration_words
from .signals import Terminated

METHODS = {
    "dense": "the unpruned model",
    "magnitude": "top-2 |W| per group of 4",
    "wanda": "top-2 |W| * ||X||, sequential calibration",
    "sparsegpt": "OBS pruning with weight updates, sequential calibration",
    "sparsegpt-mask": "SparseGPT's mask on the original weights",
    "proxsparse": "learned mask (ProxSparseConfig defaults unless set here)",
}
MASK_ONLY = {"dense": None, "magnitude": True, "wanda": True, "sparsegpt": False, "sparsegpt-mask": True, "proxsparse": True}
CALIBRATED = ("wanda", "sparsegpt", "sparsegpt-mask", "proxsparse")
DEFAULT_METHODS = "dense,magnitude,wanda,sparsegpt-mask,sparsegpt,proxsparse"
DTYPES = ("float32", "bfloat16", "float16")
MEMORY_HEADER = "peak memory added (GiB)"
NOT_RUN_YET = "not run yet (the run was still going, or was killed before it)"

EXAMPLES = f"""examples:
  proxsparse-tool compare                                          # {DEFAULT_METHODS}
  proxsparse-tool compare --text wikipedia news --json benchmarks/compare.json --markdown benchmarks/compare.md
  proxsparse-tool compare --methods magnitude,wanda --tasks local_winogrande --limit 200
  proxsparse-tool compare ./my-model --text wikipedia wiki.txt --samples 128 --seqlen 2048

methods: {", ".join(f"{name} ({what})" for name, what in METHODS.items())}.
Every calibrated method sees the same --samples x --seqlen tokens (seed --seed). Perplexity as
in `eval`: non-overlapping --eval-seqlen windows over the first --eval-tokens of each --text.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="prune with several 2:4 methods on the same data and compare them",
        description="Dense, magnitude, Wanda, SparseGPT and ProxSparse at 2:4 on the same calibration tokens, in one table.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model folder or hub id (default: embedded)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, metavar="M1,M2", help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--text", nargs="+", default=None, metavar="NAME|PATH", help="evaluation text(s): wikipedia, news, wikitext2, c4 or a file (default: wikipedia)")
    parser.add_argument("--eval-tokens", type=int, default=16384, metavar="N", help="first N tokens of each text, 0 = all (default 16384)")
    parser.add_argument("--eval-seqlen", type=int, default=1024, metavar="L", help="perplexity window (default 1024)")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="TASK", help="zero-shot tasks (local_* offline)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="first N items of each task")
    parser.add_argument("--zeroshot-data", default=None, metavar="DIR", help="folder of the local tasks' JSONL files")
    parser.add_argument("--samples", type=int, default=64, metavar="N", help="calibration samples (default 64)")
    parser.add_argument("--seqlen", type=int, default=512, metavar="L", help="tokens per calibration sample (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default 0)")
    parser.add_argument("--calibration", default="default", metavar="NAME|PATH|none",
                        help="calibration text: default, wikipedia, news, c4, wikitext2, a .txt/.jsonl path, or none")
    parser.add_argument("--calibration-mode", choices=("windows", "documents"), default="windows", help="default windows")
    parser.add_argument("--targets", nargs="+", default=None, metavar="PATTERN",
                        help=f"module patterns to prune (default {' '.join(DEFAULT_TARGETS)})")
    parser.add_argument("--ignore", nargs="+", default=None, metavar="PATTERN",
                        help=f"module patterns never pruned (default {' '.join(DEFAULT_IGNORE)})")
    parser.add_argument("--lambda1", type=float, default=None, help="ProxSparse prox strength (ProxSparseConfig default if unset)")
    parser.add_argument("--lr", type=float, default=None, help="ProxSparse learning rate (ProxSparseConfig default if unset)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--device", default="cpu", help="device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the rows as JSON, replaced after each method; its `unfinished` names the methods that did not finish")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="write the table as Markdown")
    parser.set_defaults(run=run)


def parse_methods(spec: str) -> list[str]:
    """The method list of `--methods`; unknown, repeated or no names are refused."""
    names = [name.strip().lower() for name in spec.split(",") if name.strip()]
    if not names:
        raise ProxSparseError("--methods is empty: name at least one of " + ", ".join(METHODS))
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ProxSparseError(f"unknown method(s) {', '.join(unknown)}: use {', '.join(METHODS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ProxSparseError(f"method(s) listed twice: {', '.join(repeated)}")
    return names


def _check(args: argparse.Namespace, methods: list[str]) -> None:
    uncalibrated = None if any(m in CALIBRATED for m in methods) else f"without a calibrated method ({', '.join(CALIBRATED)})"
    refuse_unused(args, {
        "--samples": uncalibrated, "--seqlen": uncalibrated, "--seed": uncalibrated, "--calibration-mode": uncalibrated,
        "--calibration": uncalibrated if args.calibration.lower() != "none" else None,
        "--lambda1": None if "proxsparse" in methods else "without proxsparse in --methods",
        "--lr": None if "proxsparse" in methods else "without proxsparse in --methods",
        "--limit": None if args.tasks else "without --tasks", "--zeroshot-data": None if args.tasks else "without --tasks",
    })
    require_at_least(args, {"eval_seqlen": 2, "samples": 1, "seqlen": 2, "limit": 1, "threads": 1})
    for method in methods:
        if method != "dense":
            method_config(method, args)  # a bad --lr, --lambda1 or pattern fails here, not after the other methods ran
    if args.eval_tokens < 0 or (args.eval_tokens and args.eval_tokens < args.eval_seqlen):
        raise ProxSparseError(f"--eval-tokens must be 0 (all) or cover one window of {args.eval_seqlen}, got {args.eval_tokens}")
    if args.calibration.lower() == "none":
        needy = [m for m in methods if m in CALIBRATED]
        if needy:
            raise ProxSparseError(f"{', '.join(needy)} need(s) calibration data, but --calibration none was given")
    check_no_repeats({"--text": args.text, "--tasks": args.tasks})  # each a second column of the same numbers
    for text in args.text or []:
        check_text(text)
    if any(m in CALIBRATED for m in methods):
        check_text(args.calibration)
    check_result_files({"--json": args.json, "--markdown": args.markdown}, model_folder=args.model,
                       inputs={"--text": args.text, "--calibration": args.calibration, "--zeroshot-data": args.zeroshot_data})
    parse_device(args.device)


def _calibration_words(calibration: dict) -> str:
    """The settings' calibration record in words (`prune`'s wording)."""
    return calibration_words(calibration["mode"], calibration["samples"], calibration["seqlen"], calibration["tokens"])


def _patterns(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The (targets, ignore) patterns every method prunes with: the flags, else the configs' defaults."""
    return list(args.targets or DEFAULT_TARGETS), list(DEFAULT_IGNORE if args.ignore is None else args.ignore)


def method_config(method: str, args: argparse.Namespace) -> Any:
    """The config `method` prunes with under these flags; a bad value is a ConfigError naming the flag."""
    from proxsparse_ao.baselines import config_for
    from proxsparse_ao.config import ConfigError, ProxSparseConfig

    common = {k: v for k, v in (("targets", args.targets), ("ignore", args.ignore)) if v is not None}
    calib = {"samples": args.samples, "seqlen": args.seqlen, "seed": args.seed,
             "calibration_mode": args.calibration_mode} | ({} if args.calibration.lower() == "none" else {"calibration": args.calibration})
    try:
        if method == "proxsparse":
            extra = {k: v for k, v in (("lambda1", args.lambda1), ("lr", args.lr)) if v is not None}
            return ProxSparseConfig(**common, **calib, **extra)
        return config_for(method, **common, **({} if method == "magnitude" else calib))
    except ConfigError as err:
        raise ConfigError(name_flags(str(err))) from None


def _prune(method: str, model, tokens, args, bar: Progress, console: Console) -> dict:
    """Prune `model` in place with `method`; returns its masks and method-specific details."""
    from proxsparse_ao.baselines import prune

    config = method_config(method, args)
    if method == "proxsparse":
        from proxsparse_ao.api import apply_masks, learn

        result = learn(model, config, calibration=tokens, stats_every=16,
                       callback=learning_reporter(bar, f"{method}: learning masks", console))
        apply_masks(model, result.masks, config)
        return {"masks": result.masks, "config": config.to_dict(), "stopped": result.stopped}
    result = prune(model, config, calibration=tokens, progress=reporter(bar, f"{method}: pruning", console, "block"))
    return {"masks": result.masks, "config": config.to_dict()}


def _pattern_ok(model, masks: dict) -> bool:
    from proxsparse_ao.masks import is_nm

    exact = all(bool((m.reshape(-1, 4).sum(1) == 2).all()) for m in masks.values())
    return bool(masks) and exact and all(is_nm(model.get_submodule(name).weight) for name in masks)


def _changed(before: dict, masks: dict) -> float:
    from proxsparse_ao.masks import mask_codes

    groups = sum(int(codes.numel()) for codes in before.values())
    changed = sum(int((mask_codes(masks[name]) != codes).sum()) for name, codes in before.items())
    return changed / max(groups, 1)


def run(args: argparse.Namespace, console: Console) -> int:
    methods = parse_methods(args.methods)
    _check(args, methods)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    from proxsparse_ao.api import calibration_tokens
    from proxsparse_ao.baselines import decoder_blocks
    from proxsparse_ao.config import ProxSparseConfig
    from proxsparse_ao.context import check_context
    from proxsparse_ao.data import DEFAULT_TEXT, load_text
    from proxsparse_ao.evaluation import perplexity, tokenize_text
    from proxsparse_ao.masks import magnitude_mask, mask_codes
    from proxsparse_ao.models import DEFAULT_MODEL_LABEL, is_default, load_model
    from proxsparse_ao.targets import select_targets

    hf_logging.disable_progress_bar()
    quiet_libraries()  # again: importing transformers puts the hub's logger back to WARNING
    if args.threads:
        torch.set_num_threads(args.threads)
    label = DEFAULT_MODEL_LABEL if is_default(args.model) else str(args.model)
    dtype = getattr(torch, args.dtype)
    texts = args.text or [DEFAULT_TEXT]

    with stage(console, "checking inputs: model, texts, calibration, tasks"):
        model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
        check_context(model, args.eval_seqlen, "--eval-seqlen")
        if any(m in CALIBRATED for m in methods):
            check_context(model, args.seqlen, "--seqlen")
        selection = select_targets(model, *_patterns(args))
        if any(m in ("wanda", "sparsegpt", "sparsegpt-mask") for m in methods):
            decoder_blocks(model, selection.layers)
        device = next(model.parameters()).device
        del model
        eval_ids = {name: tokenize_text(tokenizer, load_text(name, "evaluation")) for name in texts}
        check_one_window(eval_ids, args.eval_seqlen)  # before any method runs, not by each one after its pruning
        tokens = None
        if any(m in CALIBRATED for m in methods):
            config = ProxSparseConfig(samples=args.samples, seqlen=args.seqlen, seed=args.seed,
                                      calibration=args.calibration, calibration_mode=args.calibration_mode)
            tokens = calibration_tokens(config, tokenizer)
        if args.tasks:
            check_tasks(args.tasks, args.zeroshot_data)

    settings = {
        "model": label, "dtype": args.dtype, "device": str(device), "threads": torch.get_num_threads(),
        "calibration": None if tokens is None else {"text": args.calibration, "mode": args.calibration_mode,
                                                    "samples": args.samples, "seqlen": args.seqlen, "seed": args.seed,
                                                    "tokens": token_count(tokens)},
        "evaluation": {"texts": texts, "max_tokens": args.eval_tokens or None, "seqlen": args.eval_seqlen},
        "tasks": args.tasks, "limit": args.limit, "command": command_line(args, methods),
    }
    console.print(f"compare on {label}: {', '.join(methods)}; "
                  + (f"calibration {_calibration_words(settings['calibration'])}; " if tokens is not None else "")
                  + f"perplexity on {', '.join(texts)}", highlight=False)

    def measure(method: str) -> dict:
        with progress_bars(console) as bar:
            model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
            row: dict = {"method": method, "mask_only": MASK_ONLY[method]}
            if method != "dense":
                layers = select_targets(model, *_patterns(args)).layers
                before = {name: mask_codes(magnitude_mask(layer.weight)).cpu() for name, layer in layers.items()}
                with PeakMemory(device) as memory:
                    started = time.perf_counter()
                    details = _prune(method, model, tokens, args, bar, console)
                    seconds = time.perf_counter() - started
                row.update(prune_seconds=round(seconds, 2), prune_memory_bytes=memory.added, peak_memory_bytes=memory.peak,
                           memory_before_bytes=memory.start, pattern_ok=_pattern_ok(model, details["masks"]),
                           changed_vs_magnitude=_changed(before, details["masks"]), layers=len(details["masks"]),
                           pruned_layers=pruned_layers(details["masks"]), config=details["config"])
                if details.get("stopped"):
                    row["stopped"] = details["stopped"]
                del before, details
            else:
                row.update(prune_seconds=None, prune_memory_bytes=None, peak_memory_bytes=None, pattern_ok=False,
                           changed_vs_magnitude=None)
            row["ppl_by_text"] = {}
            for name, ids in eval_ids.items():
                result = perplexity(model, ids, args.eval_seqlen, max_tokens=args.eval_tokens or None,
                                    progress=reporter(bar, f"{method}: perplexity on {name}", console, "window"))
                row["ppl_by_text"][name] = result.ppl
            row["ppl"] = row["ppl_by_text"][texts[0]]
            if args.tasks:
                from proxsparse_ao.zeroshot import zero_shot

                scores = zero_shot(model, tokenizer, args.tasks, limit=args.limit, data_dir=args.zeroshot_data,
                                   progress=reporter(bar, f"{method}: zero-shot", console, "request"))
                row["zero_shot"] = scores.accuracy
                row["zero_shot_average"] = scores.average
                row["zero_shot_norm"] = scores.accuracy_norm
                row["zero_shot_norm_average"] = scores.average_norm
                row["zero_shot_items"] = scores.items
            del model
        return row

    json_path = Path(args.json).expanduser() if args.json else None
    rows: list[dict] = []
    unfinished = dict.fromkeys(methods, NOT_RUN_YET)
    if json_path:
        _write_json(json_path, settings, rows, unfinished, "running")
    current = None
    try:
        for current in methods:
            try:
                row = measure(current)
                del unfinished[current]
            except Exception as err:  # one failing method must not lose the others' rows
                row = {"method": current, "mask_only": MASK_ONLY[current], "error": f"{type(err).__name__}: {err}",
                       "ppl": None, "ppl_by_text": {}, "pattern_ok": False, "prune_seconds": None}
                unfinished[current] = "failed: " + row["error"]
            rows.append(row)
            console.print(_summary(row), highlight=False)
            if json_path:
                _write_json(json_path, settings, rows, unfinished, "finished" if len(rows) == len(methods) else "running")
    except BaseException as stop:  # Ctrl-C, SIGTERM (raised like Ctrl-C by the CLI), or anything else ending the run
        status, why = _stopped_by(stop)
        stopped_at = len(rows)
        for method in methods[stopped_at:]:
            unfinished[method] = f"{why} during this method" if method == current else f"not run: {why} before it"
        if json_path:
            try:
                _write_json(json_path, settings, rows, unfinished, status)
                console.print(f"partial results in {args.json}: {stopped_at} of {len(methods)} method(s) finished", highlight=False)
            except ProxSparseError:  # the file cannot be written (what may have stopped the run): the first error is the one to say
                pass
        raise
    console.print(_table(rows, texts, args.tasks, label))
    if args.json:
        console.print(f"wrote {args.json}")
    if args.markdown:
        atomic_write_bytes(Path(args.markdown).expanduser(), markdown(rows, texts, args.tasks, settings).encode())
        console.print(f"wrote {args.markdown}")
    return 0 if all(row["pattern_ok"] for row in rows if row["method"] != "dense") and not unfinished else 1


def _stopped_by(stop: BaseException) -> tuple[str, str]:
    """(status, reason) for what ended a run before its last method."""
    if isinstance(stop, KeyboardInterrupt):
        return "interrupted", "interrupted (Ctrl-C)"
    if isinstance(stop, Terminated):
        return "terminated", "terminated (SIGTERM)"
    return "stopped", f"stopped ({type(stop).__name__})"


def command_line(args: argparse.Namespace, methods: list[str]) -> str:
    """The command that reproduces this run, every setting it uses spelled out (output paths included);
    settings no method uses are left out, as the command would refuse them."""
    unused = set()
    if not any(m in CALIBRATED for m in methods):
        unused |= {"samples", "seqlen", "seed", "calibration", "calibration_mode"}
    if "proxsparse" not in methods:
        unused |= {"lambda1", "lr"}
    if not args.tasks:
        unused |= {"limit", "zeroshot_data"}
    parts = ["proxsparse-tool", "compare"] + ([str(args.model)] if args.model else []) + ["--methods", args.methods]
    for flag in ("text", "tasks", "targets", "ignore"):
        values = getattr(args, flag)
        if values:
            parts += [f"--{flag}", *values]
    for flag in ("eval_tokens", "eval_seqlen", "limit", "zeroshot_data", "samples", "seqlen", "seed", "calibration",
                 "calibration_mode", "lambda1", "lr", "dtype", "device", "threads", "json", "markdown"):
        value = getattr(args, flag)
        if value is not None and flag not in unused:
            parts += ["--" + flag.replace("_", "-"), str(value)]
    return shlex.join(parts)


def _write_json(path: Path, settings: dict, rows: list[dict], unfinished: dict[str, str], status: str) -> None:
    """The results so far, replaced in one step (temporary file, then rename): `complete` is true only
    when every method finished; `unfinished` names each method that did not, with why; `status` is
    running, finished, interrupted, terminated, or stopped (another error ended the run; a file left
    "running" belongs to a killed run). A file that cannot be written is a ProxSparseError."""
    record = {"complete": status == "finished" and not unfinished, "status": status, "unfinished": unfinished,
              "settings": settings, "rows": rows}
    try:
        atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    except OSError as err:
        raise ProxSparseError(f"--json {path}: cannot write it: {err.strerror or err}") from None


def _summary(row: dict) -> str:
    if "error" in row:
        return f"{row['method']}: FAILED ({row['error']})"
    text = f"{row['method']}: ppl {row['ppl']:.2f}"
    if row["prune_seconds"] is not None:
        text += f", pruned in {row['prune_seconds']:.1f} s, exactly 2:4: {'yes' if row['pattern_ok'] else 'NO'}"
    return text


def _cells(row: dict, texts: list[str], tasks: list[str]) -> list[str]:
    mask_only = {None: "-", True: "yes", False: "no"}[row["mask_only"]]
    if "error" in row:
        return [row["method"], mask_only, "failed: " + row["error"][:60]] + ["-"] * (len(_headers(texts, tasks)) - 3)
    cells = [row["method"], mask_only] + [f"{row['ppl_by_text'][t]:.2f}" for t in texts]
    if tasks:
        norms = row.get("zero_shot_norm") or {}
        cells += [_accuracy(row["zero_shot"][t], norms.get(t)) for t in tasks]
        cells += [_accuracy(row["zero_shot_average"], row.get("zero_shot_norm_average"))]
    dense = row["prune_seconds"] is None
    cells += [
        "-" if dense else f"{row['prune_seconds']:.1f}",
        "-" if dense else _gib(row.get("prune_memory_bytes")),
        "-" if dense else f"{row['changed_vs_magnitude']:.1%}",
        "-" if dense else ("yes" if row["pattern_ok"] else "NO"),
    ]
    return cells


def _accuracy(acc: float, acc_norm: float | None) -> str:
    """acc, and acc_norm in brackets where the task (or, for the average, every task) has one."""
    return f"{acc:.4f}" if acc_norm is None else f"{acc:.4f} ({acc_norm:.4f})"


def _gib(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 2**30:.2f}"


def _headers(texts: list[str], tasks: list[str]) -> list[str]:
    headers = ["method", "mask only"] + [f"PPL {t}" for t in texts]
    if tasks:
        headers += [f"{t} acc (acc_norm)" for t in tasks] + ["zero-shot avg acc (acc_norm)"]
    return headers + ["prune time (s)", MEMORY_HEADER, "groups != magnitude", "exactly 2:4"]


def _table(rows: list[dict], texts: list[str], tasks: list[str], label: str) -> Table:
    table = Table(title=f"proxsparse-ao compare: {label}")
    for header in _headers(texts, tasks):
        method = header == "method"  # never cut: "sparsegpt" and "sparsegpt-mask" must stay apart in a narrow terminal
        # the other columns fold rather than end in "…": at 80 columns (a pipe, a log) with zero-shot tasks
        # every number was cut to its first digits ("12…", "0.…")
        table.add_column(header, justify="left" if method else "right", no_wrap=method, min_width=14 if method else None,
                         overflow="ellipsis" if method else "fold")
    for row in rows:
        table.add_row(*_cells(row, texts, tasks))
    return table


def memory_words(device: str) -> str:
    """What the memory column holds, for the note under the Markdown table."""
    where = ("the CUDA allocator's peak during pruning minus what it held when pruning started (host memory not counted)"
             if device.startswith("cuda") else
             "the process's peak resident memory during pruning minus its resident memory when pruning started")
    return (f"Peak memory added: {where}; the freshly loaded model and the evaluation tokens were already resident, "
            "and what earlier methods freed was handed back to the system first, so each row is that method's own cost.")


def markdown_cell(text: str) -> str:
    """`text` as one Markdown table cell: line breaks become spaces and `|` is escaped, so that a failed
    method's multi-line error or a text file name with a pipe neither ends its row early nor adds columns."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).replace("|", "\\|")


def markdown(rows: list[dict], texts: list[str], tasks: list[str], settings: dict) -> str:
    """The comparison as a Markdown table, with the settings and the command below it."""
    headers = _headers(texts, tasks)
    lines = ["| " + " | ".join(map(markdown_cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(markdown_cell, _cells(row, texts, tasks))) + " |" for row in rows]
    calib = settings["calibration"]
    evaluation = settings["evaluation"]
    lines += [
        "",
        f"Model: {settings['model']} ({settings['dtype']}, {settings['device']}, {settings['threads']} thread(s)). "
        + (f"Calibration: {_calibration_words(calib)} of {calib['text']} ({calib['mode']}, seed {calib['seed']}), "
           "the same tokens for every method. " if calib else "")
        + f"Perplexity: {evaluation['seqlen']}-token windows over "
        + (f"the first {evaluation['max_tokens']:,} tokens" if evaluation["max_tokens"] else "all tokens")
        + f" of {', '.join(evaluation['texts'])}."
        + (f" Zero-shot: {', '.join(settings['tasks'])}" + (f", first {settings['limit']} items each" if settings["limit"] else "")
           + "; lm-eval's acc, with acc_norm (length-normalised) in brackets where the task has it, and for the"
           " average where every task has it." if settings["tasks"] else ""),
        memory_words(settings["device"]),
        "",
        f"Command: `{settings['command']}`",
        "",
    ]
    return "\n".join(lines)
