"""`proxsparse-tool verify DIR`: is this pruned model exactly 2:4, how accurate is it, and does it deploy?"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from proxsparse_ao.cache import atomic_write_bytes
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.quiet import quiet_libraries
from proxsparse_ao.zeroshot import ZeroShot, check_tasks

from .options import check_not_inside, check_result_files, parse_device, refuse_unused, require_at_least
from .progress import progress_bars, reporter, stage

DEFAULT_MAX_TOKENS = 16384
DTYPES = ("float32", "bfloat16", "float16")
CPU_DEPLOY_TOKENS = 128
SHOWN_LAYERS = 10

EXAMPLES = f"""examples:
  proxsparse-tool verify pruned/                          # structure, perplexity vs the dense source, compile check
  proxsparse-tool verify pruned/ --baseline ./dense-model --json verify.json
  proxsparse-tool verify pruned/ --tasks local_winogrande --limit 200
  proxsparse-tool verify pruned/ --no-ppl --no-compile    # structure only: seconds, no data
  proxsparse-tool verify pruned/ --min-speedup 1.1        # on CUDA sm80+: fail below 1.1x end to end

Checks, in order:
  structure   every target linear exactly 2:4 (and +0.0 where its saved mask is off); targets from
              proxsparse.json, else every Linear the default ignore list leaves in (never lm_head).
              Failing layers are named. No data needed.
  accuracy    perplexity of the model and of its dense source (proxsparse.json's source_model or
              --baseline) on --text (first --max-tokens tokens, default {DEFAULT_MAX_TOKENS}); zero-shot with --tasks.
  deployment  proxsparse_ao.compile with the 2:4 rewrite forced, in --deploy-dtype: every eligible
              linear must be rewritten and the logits must match the eager masked model.
  speed       CUDA sm80+ only: sparse vs dense per layer and end to end (--min-speedup X fails below X).
              Elsewhere it reports "skipped: needs CUDA sm80+" and speedup null, never an estimate.

exit status: 0 every check passed (skipped ones do not fail), 1 a check failed (the failing layers
or numbers are printed), 2 the input could not be used (missing folder, not a model, corrupt
weights or masks, proxsparse.json that does not parse, no target layers, unknown task, a local
--baseline folder that would not load, is a pruned model or has a shorter context than --seqlen:
checked before the first check; a dense source whose linear layers differ from the pruned
model's (another architecture or size) or whose tokenizer splits --text differently, so the
comparison would mean nothing: checked before any perplexity or zero-shot); errors are one line
on stderr and no --json file is written.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "verify",
        help="check a pruned model: exact 2:4, accuracy vs its dense source, compile and speed",
        description="Verify a pruned model folder before deploying it: structure, accuracy, deployment, speed.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", metavar="DIR", help="the pruned model folder (Hugging Face files, proxsparse.json optional)")
    parser.add_argument("--baseline", default=None, metavar="MODEL",
                        help="dense model to compare with (default: source_model from proxsparse.json)")
    parser.add_argument("--text", default=None, metavar="NAME|PATH", help="evaluation text (default: wikipedia, embedded)")
    parser.add_argument("--seqlen", type=int, default=1024, metavar="L", help="perplexity window in tokens (default 1024)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                        help=f"evaluate the first N tokens of the text, 0 for all (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="TASK", help="zero-shot tasks (local_* run offline)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="first N items of each task")
    parser.add_argument("--zeroshot-data", default=None, metavar="DIR", help="folder of the local tasks' JSONL files")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype for the accuracy checks (default float32)")
    parser.add_argument("--deploy-dtype", choices=("bfloat16", "float16"), default="bfloat16",
                        help="dtype the 2:4 kernels run in for the deployment and speed checks (default bfloat16)")
    parser.add_argument("--deploy-tokens", type=int, default=None, metavar="N",
                        help=f"tokens per deployment/speed forward pass (default: --seqlen on CUDA, {CPU_DEPLOY_TOKENS} on CPU, "
                             "at most the model's maximum context)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    parser.add_argument("--min-speedup", type=float, default=None, metavar="X",
                        help="fail when the end-to-end speedup is below X (checked on CUDA sm80+ only)")
    parser.add_argument("--no-ppl", action="store_true", help="skip perplexity")
    parser.add_argument("--no-compile", action="store_true", help="skip the deployment and speed checks")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    no_compile = "with --no-compile" if args.no_compile else None
    no_tasks = None if args.tasks else "without --tasks"
    refuse_unused(args, {
        "--deploy-dtype": no_compile, "--deploy-tokens": no_compile, "--max-tokens": "with --no-ppl" if args.no_ppl else None,
        "--text": "with --no-ppl and --no-compile" if args.no_ppl and args.no_compile else None,
        "--seqlen": _seqlen_unused(args),
        "--baseline": "with --no-ppl and without --tasks" if args.no_ppl and not args.tasks else None,
        "--limit": no_tasks, "--zeroshot-data": no_tasks,
    })
    require_at_least(args, {"seqlen": 2, "limit": 1, "deploy_tokens": 1})
    if args.max_tokens < 0:
        raise ProxSparseError(f"--max-tokens must be 0 (all) or positive, got {args.max_tokens}")
    if args.min_speedup is not None and not 0 < args.min_speedup < math.inf:
        raise ProxSparseError(f"--min-speedup must be a positive finite number, got {args.min_speedup}")
    if args.min_speedup is not None and args.no_compile:
        raise ProxSparseError("--min-speedup needs the speed check, which --no-compile skips: drop one of the two")
    if not args.dir.strip():
        raise ProxSparseError("the model folder is empty: name the pruned model's folder")
    if args.baseline is not None and not args.baseline.strip():
        raise ProxSparseError("--baseline is empty: name the dense model's folder or hub id, or leave it out for "
                              "proxsparse.json's source_model")
    check_result_files({"--json": args.json}, model_folder=args.dir,
                       inputs={"--text": args.text, "--zeroshot-data": args.zeroshot_data})
    folder = Path(args.dir).expanduser()
    try:
        if not folder.exists():
            raise ProxSparseError(f"model folder not found: {args.dir}")
        if not folder.is_dir():
            raise ProxSparseError(f"{args.dir} is not a folder (verify takes a model folder)")
        next(folder.iterdir(), None)
    except OSError as err:
        raise ProxSparseError(f"cannot read the model folder {args.dir}: {err.strerror or err}") from None
    _check_json_not_in_dense_source(args, folder)
    if not (args.no_ppl and args.no_compile):
        from proxsparse_ao.data import check_text

        check_text(args.text)
    if args.baseline is not None:
        from proxsparse_ao.export import METADATA_FILE
        from proxsparse_ao.models import check_loadable
        from proxsparse_ao.verification import baseline_source

        source = baseline_source(None, args.baseline)[0]
        try:
            config = check_loadable(source)
        except ProxSparseError as err:
            raise ProxSparseError(f"--baseline: {err}") from None
        if config is not None:  # a local folder
            if _is_pruned(source):
                raise ProxSparseError(f"--baseline: {args.baseline} is a pruned model (it has {METADATA_FILE}), not a dense source")
            if not args.no_ppl:
                _check_baseline_context(config, args.seqlen, "--baseline: ")


def _seqlen_unused(args: argparse.Namespace) -> str | None:
    """Why --seqlen does nothing in this run, or None: without perplexity it only sets the compile check's
    tokens, and only on CUDA when --deploy-tokens does not."""
    if not args.no_ppl:
        return None
    if args.no_compile:
        return "with --no-ppl and --no-compile"
    if args.deploy_tokens:
        return "with --no-ppl and --deploy-tokens (the compile check's tokens)"
    device = parse_device(args.device)
    if device.type != "cuda":
        return f"with --no-ppl on {device.type}, where the compile check runs {CPU_DEPLOY_TOKENS} tokens unless --deploy-tokens says otherwise"
    return None


def _check_json_not_in_dense_source(args: argparse.Namespace, folder: Path) -> None:
    """--json must not land in the local folder of the dense source (--baseline, else proxsparse.json's
    source_model): the results would overwrite a file of that model, its config.json or weights."""
    if not args.json:
        return
    from proxsparse_ao.export import read_metadata
    from proxsparse_ao.verification import baseline_source

    metadata = read_metadata(folder) if args.baseline is None else None
    source = baseline_source(metadata, args.baseline)[0]
    if source is None or source == "default" or not Path(source).expanduser().is_dir():
        return
    which = "the --baseline folder" if args.baseline is not None else "the dense source folder (proxsparse.json's source_model)"
    check_not_inside(args.json, "--json", source, which)


def _is_pruned(source: str) -> bool:
    """Whether `source` is a local pruned-model folder (it has proxsparse.json), which is no dense source."""
    from proxsparse_ao.export import METADATA_FILE

    return (Path(source).expanduser() / METADATA_FILE).is_file()


def _check_baseline_context(config, seqlen: int, prefix: str = "") -> None:
    """Refuse perplexity windows longer than the dense source's maximum context, saying it is the baseline's limit."""
    from proxsparse_ao.context import config_max_context

    limit = config_max_context(config)
    if limit is not None and seqlen > limit:
        raise ProxSparseError(
            f"{prefix}--seqlen {seqlen} is longer than the baseline model's maximum context of {limit} tokens "
            f"(max_position_embeddings in its config): use at most {limit}"
        )


def _perplexity(model, ids, args: argparse.Namespace, what: str, console: Console):
    """Perplexity of `model` on `ids`; `_accuracy` has checked --seqlen against its context."""
    from proxsparse_ao.evaluation import perplexity

    with progress_bars(console) as bar:
        return perplexity(model, ids, args.seqlen, max_tokens=args.max_tokens or None,
                          progress=reporter(bar, f"perplexity ({what}), {args.seqlen}-token windows", console, "window"))


def _zero_shot(model, tokenizer, args: argparse.Namespace, what: str, console: Console):
    from proxsparse_ao.zeroshot import zero_shot

    with progress_bars(console) as bar:
        return zero_shot(model, tokenizer, args.tasks, limit=args.limit, data_dir=args.zeroshot_data,
                         progress=reporter(bar, f"zero-shot ({what}) {', '.join(args.tasks)}", console, "request"))


def _zero_shot_rows(table: Table, scores: ZeroShot, what: str) -> None:
    """acc of each task and, where lm-eval reports one, its length-normalised acc_norm."""
    for name, acc in scores.accuracy.items():
        table.add_row(f"{name} acc ({what})", "", f"{acc:.4f} ({scores.items[name]} items, 0-shot)")
        if scores.accuracy_norm[name] is not None:
            table.add_row(f"{name} acc_norm ({what})", "", f"{scores.accuracy_norm[name]:.4f} (length-normalised)")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_LAYERS])
    return shown + (f" and {len(names) - SHOWN_LAYERS} more" if len(names) > SHOWN_LAYERS else "")


def _status(verdict: str) -> str:
    return {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]"}.get(verdict, "[yellow]skipped[/]")


def run(args: argparse.Namespace, console: Console) -> int:
    _check_args(args)
    if args.tasks:
        check_tasks(args.tasks, args.zeroshot_data)
    import torch
    from transformers.utils import logging as hf_logging

    from proxsparse_ao.context import check_context
    from proxsparse_ao.export import read_masks, read_metadata
    from proxsparse_ao.models import load_model
    from proxsparse_ao.verification import check_structure, measure_speed, speed_skip_reason, target_layers

    hf_logging.disable_progress_bar()
    quiet_libraries()  # again: importing transformers puts the hub's logger back to WARNING

    folder = Path(args.dir).expanduser()
    device = parse_device(args.device)
    metadata = read_metadata(folder)
    masks = read_masks(folder, metadata) if metadata is not None else None
    with stage(console, f"loading {folder}"):
        needs_tokenizer = not (args.no_ppl and args.no_compile) or bool(args.tasks)
        model, tokenizer = load_model(str(folder), dtype=getattr(torch, args.dtype), device=device, with_tokenizer=needs_tokenizer)
    if args.deploy_tokens and not args.no_compile:
        check_context(model, args.deploy_tokens, "--deploy-tokens")
    layers, targets_from, skipped = target_layers(model, metadata)

    table = Table(title=f"proxsparse-ao verify: {folder}")
    for column in ("check", "result", "detail"):
        table.add_column(column, overflow="fold")
    checks: dict[str, str] = {}
    result: dict[str, Any] = {"dir": str(folder), "device": str(device), "metadata": metadata is not None,
                              "source_model": (metadata or {}).get("source_model"), "method": (metadata or {}).get("method")}

    # 1. structure: no data, no GPU
    started = time.perf_counter()
    structure = check_structure(layers, masks, skipped, targets_from)
    result.update(structure.to_dict(), structure_seconds=round(time.perf_counter() - started, 2))
    checks["structure"] = "pass" if structure.pattern_ok else "fail"
    pattern = structure.pattern()
    table.add_row(
        "structure (exact 2:4)", _status(checks["structure"]),
        f"{len(structure.layers)} target layers ({targets_from}), {structure.groups:,} groups of 4: "
        f"{structure.bad_groups:,} bad; groups with 0/1/2/3/4 non-zeros: "
        + " / ".join(f"{pattern[k]:.1%}" for k in range(5))
        + (f"; masks checked ({'all +0.0 off-mask' if structure.pattern_ok else 'see failing layers'})" if masks is not None else ""),
    )
    for layer in structure.layers:
        if not layer.ok:
            table.add_row(f"  {layer.name}", _status("fail"), layer.problem())
    if structure.skipped:
        table.add_row("  not targets", "", f"{len(structure.skipped)} linear(s) cannot be 2:4: {_names(list(structure.skipped))}")
    after_failure = "skipped: the structure check failed"

    # 2. accuracy
    result.update(ppl=None, baseline_ppl=None, baseline=None, zero_shot=None, baseline_zero_shot=None)
    wants_accuracy = not args.no_ppl or bool(args.tasks)
    if not structure.pattern_ok or not wants_accuracy:
        checks["accuracy"] = after_failure if not structure.pattern_ok else "skipped: --no-ppl"
        table.add_row("accuracy", _status(checks["accuracy"]), checks["accuracy"].removeprefix("skipped: "))
    else:
        _accuracy(model, tokenizer, metadata, args, result, checks, table, console)

    # 3. deployment and 4. speed
    result.update(compile_rewritten=None, compile_eligible=None, deployment=None, speedup=None, speed=None)
    speed_reason = speed_skip_reason(device)
    if not structure.pattern_ok or args.no_compile:
        checks["deployment"] = after_failure if not structure.pattern_ok else "skipped: --no-compile"
        checks["speed"] = checks["deployment"]
        table.add_row("deployment (compile)", _status(checks["deployment"]), checks["deployment"].removeprefix("skipped: "))
    else:
        compiled, deploy_model, deploy_ids = _deployment(model, tokenizer, list(layers), args, device, result, checks, table, console)
        if checks["deployment"] != "pass" or speed_reason is not None:
            checks["speed"] = speed_reason or "skipped: the deployment check failed"
            note = checks["speed"].removeprefix("skipped: ")
            if args.min_speedup is not None:
                note += f"; --min-speedup {args.min_speedup} not checked"
            table.add_row("speed", _status("skipped"), note)
        else:
            with stage(console, "timing sparse vs dense (per layer and end to end)"):
                speed = measure_speed(deploy_model, compiled, deploy_ids, result["deployment"]["rewritten"])
            result.update(speed=speed, speedup=speed["speedup"])
            low = args.min_speedup is not None and speed["speedup"] < args.min_speedup
            checks["speed"] = "fail" if low else "pass"
            layer_speedups = [entry["speedup"] for entry in speed["per_layer"].values()]
            table.add_row(
                "speed (end to end)", _status(checks["speed"]),
                f"{speed['speedup']:.2f}x ({speed['dense_ms']:.3f} ms dense, {speed['sparse_ms']:.3f} ms 2:4, "
                f"{speed['tokens']} tokens)" + (f"; needs {args.min_speedup:.2f}x" if args.min_speedup is not None else ""),
            )
            if layer_speedups:
                table.add_row("speed (per layer)", "", f"{len(layer_speedups)} layers: {min(layer_speedups):.2f}x to {max(layer_speedups):.2f}x")
    result["speed_skipped"] = checks["speed"].removeprefix("skipped: ") if checks["speed"].startswith("skipped") else None

    failed = [name for name, verdict in checks.items() if verdict == "fail"]
    result.update(checks=checks, passed=not failed, exit_code=1 if failed else 0)
    console.print(table)
    if failed:
        reasons = []
        if "structure" in failed:
            reasons.append(f"{len(structure.failing)} of {len(structure.layers)} target layers fail the structure check: "
                           f"{_names(structure.failing)}")
        reasons += [name for name in failed if name != "structure"]
        console.print(f"[bold red]verify FAILED:[/] {'; '.join(reasons)}", highlight=False, soft_wrap=True)
    else:
        console.print("[green]verify passed[/] (skipped checks are listed above with the reason)", highlight=False)
    if args.json:
        path = Path(args.json).expanduser()
        atomic_write_bytes(path, (json.dumps(result, indent=2, default=str) + "\n").encode())
        console.print(f"wrote {path}", highlight=False)
    return result["exit_code"]


def _accuracy(model, tokenizer, metadata, args, result: dict, checks: dict, table: Table, console: Console) -> None:
    """Perplexity and zero-shot of the sparse model, then of its dense source when one can be loaded.
    The dense source is loaded first, so that a window longer than its context or a tokenizer that
    splits the text differently (a meaningless perplexity ratio) is refused before any perplexity runs."""
    import torch

    from proxsparse_ao.context import check_context
    from proxsparse_ao.data import load_text
    from proxsparse_ao.evaluation import tokenize_text
    from proxsparse_ao.export import METADATA_FILE
    from proxsparse_ao.models import load_model
    from proxsparse_ao.verification import baseline_source

    source, label = baseline_source(metadata, args.baseline)
    result["baseline"] = label
    dense = dense_tokenizer = None
    skipped = "no proxsparse.json source_model and no --baseline"
    if source not in (None, "default") and args.baseline is None and _is_pruned(source):
        skipped = f"its source_model {label} is a pruned model (it has {METADATA_FILE}), not a dense source: name one with --baseline"
        result["baseline_error"] = skipped
        source = None
    if source is not None:
        try:
            with stage(console, f"loading the dense source {label}"):
                dense, dense_tokenizer = load_model(source, dtype=getattr(torch, args.dtype), device=next(model.parameters()).device)
        except ProxSparseError as err:
            if args.baseline is not None:
                raise ProxSparseError(f"--baseline: {err}") from None
            result["baseline_error"] = str(err)
            skipped = f"could not load {label}: {err}"
    if dense is not None:
        _check_same_layers(model, dense, args.dir, label, "--baseline: " if args.baseline is not None else "")
    if not args.no_ppl:
        check_context(model, args.seqlen, "--seqlen")
        text = load_text(args.text, "evaluation")
        ids = tokenize_text(tokenizer, text)
        if dense is not None:
            prefix = "--baseline: " if args.baseline is not None else ""
            _check_baseline_context(dense.config, args.seqlen, prefix)
            if not torch.equal(ids, tokenize_text(dense_tokenizer, text)):
                raise ProxSparseError(
                    f"{prefix}the tokenizers of {args.dir} and of the dense source {label} split the evaluation text "
                    "into different tokens: their perplexities would not be comparable (use a dense source with the "
                    "pruned model's tokenizer, or --no-ppl)"
                )
        ppl = _perplexity(model, ids, args, "sparse", console)
        result.update(ppl=ppl.ppl, ppl_detail=ppl.to_dict())
        checks["accuracy"] = "pass" if math.isfinite(ppl.ppl) else "fail"
        table.add_row("perplexity (sparse)", _status(checks["accuracy"]),
                      f"{ppl.ppl:.4f} on {args.text or 'wikipedia'}: {ppl.tokens:,} tokens, {ppl.windows} window{'s' if ppl.windows != 1 else ''} of {ppl.seqlen}")
    if args.tasks:
        scores = _zero_shot(model, tokenizer, args, "sparse", console)
        result["zero_shot"] = scores.to_dict() | {"limit": args.limit}
        checks.setdefault("accuracy", "pass")
        _zero_shot_rows(table, scores, "sparse")
    if dense is None:
        table.add_row("dense source", _status("skipped"), skipped)
        return
    if not args.no_ppl:
        base = _perplexity(dense, ids, args, "dense", console)
        result.update(baseline_ppl=base.ppl, baseline_ppl_detail=base.to_dict())
        table.add_row("perplexity (dense source)", "", f"{base.ppl:.4f} ({label}); sparse/dense {result['ppl'] / base.ppl:.3f}x")
    if args.tasks:
        scores = _zero_shot(dense, dense_tokenizer, args, "dense", console)
        result["baseline_zero_shot"] = scores.to_dict() | {"limit": args.limit}
        _zero_shot_rows(table, scores, "dense")
    del dense


def _linear_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every nn.Linear of `model` by name, with its weight's shape."""
    from torch import nn

    return {name: tuple(module.weight.shape) for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def _check_same_layers(model, dense, folder: str, label: str, prefix: str) -> None:
    """Refuse a dense source whose linear layers (names and shapes) are not the pruned model's: another
    architecture or size is not what the model was pruned from, so comparing with it would mean nothing."""
    mine, theirs = _linear_shapes(model), _linear_shapes(dense)
    differ = sorted(name for name in mine.keys() | theirs.keys() if mine.get(name) != theirs.get(name))
    if not differ:
        return
    first, size = differ[0], lambda shape: "x".join(map(str, shape))
    if first not in mine:
        what = f"it has a linear {first} ({size(theirs[first])}) the pruned model lacks"
    elif first not in theirs:
        what = f"it lacks the pruned model's linear {first} ({size(mine[first])})"
    else:
        what = f"its linear {first} is {size(theirs[first])}, the pruned model's {size(mine[first])}"
    more = f" (and {len(differ) - 1} more linear{'s' if len(differ) > 2 else ''} differ)" if len(differ) > 1 else ""
    raise ProxSparseError(
        f"{prefix}the dense source {label} is not the model {folder} was pruned from: {what}{more}; comparing "
        "with it would mean nothing (name the dense model it was pruned from)"
    )


def _deployment(model, tokenizer, targets: list[str], args, device, result: dict, checks: dict, table: Table, console: Console):
    """Compile with the rewrite forced and compare with eager; returns (compiled, deployment model, input ids)."""
    import torch

    from proxsparse_ao.context import max_context
    from proxsparse_ao.data import load_text
    from proxsparse_ao.evaluation import tokenize_text
    from proxsparse_ao.verification import check_deployment

    tokens = args.deploy_tokens
    if not tokens:
        tokens = args.seqlen if device.type == "cuda" else CPU_DEPLOY_TOKENS
        tokens = min(tokens, max_context(model) or tokens)
    ids = tokenize_text(tokenizer, load_text(args.text, "evaluation"))[:tokens].unsqueeze(0)
    with stage(console, f"compiling with the 2:4 rewrite forced ({args.deploy_dtype}, {ids.shape[1]} tokens)"):
        deployment, compiled, deploy = check_deployment(model, ids, targets, getattr(torch, args.deploy_dtype))
    result.update(compile_rewritten=len(deployment.rewritten), compile_eligible=len(deployment.eligible),
                  deployment=deployment.to_dict())
    checks["deployment"] = "pass" if deployment.ok else "fail"
    missed = [n for n in deployment.eligible if n not in deployment.rewritten]
    detail = (
        f"{len(deployment.rewritten)} of {len(deployment.eligible)} eligible linears rewritten into linear24 "
        f"({deployment.dtype}, compiled in {deployment.compile_seconds:.0f} s); logits vs the eager masked model in "
        f"float32: relative error {deployment.error:.2e} (eager {deployment.dtype}: {deployment.eager_error:.2e}, "
        f"allowed {deployment.tolerance:.2e}), same top-1 token {deployment.top1_agreement:.1%}"
    )
    if not deployment.eligible:
        detail += "; no linear is eligible"
    if missed:
        detail += f"; not rewritten: {_names(missed)}"
    if deployment.targets_not_eligible:
        detail += f"; {len(deployment.targets_not_eligible)} target(s) stay dense: {_names(list(deployment.targets_not_eligible))}"
    table.add_row("deployment (compile)", _status(checks["deployment"]), detail)
    return compiled, deploy, ids
