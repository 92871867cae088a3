"""`proxsparse-tool quickstart`: the README's main job end to end (prox, learning, 2:4 check, perplexity, save)."""

from __future__ import annotations

import argparse
import os
import time

import torch
from rich.console import Console
from rich.table import Table

from proxsparse_ao import fraction_nm, magnitude_mask, prox_2to4
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.export import check_output
from proxsparse_ao.prox import backend
from proxsparse_ao.quiet import quiet_libraries

from .options import require_at_least
from .progress import LEARNING_FIELDS, learning_reporter, progress_bars, stage

QUICK_SAMPLES, QUICK_SEQLEN, QUICK_EVAL_TOKENS = 16, 256, 4096
EVAL_WINDOW = 1024  # tokens per perplexity window

EXAMPLES = f"""examples:
  proxsparse-tool quickstart                      # {QUICK_SAMPLES} x {QUICK_SEQLEN} calibration tokens: a few minutes on 2 CPU cores
  proxsparse-tool quickstart --samples 64 --seqlen 512 --output pruned/   # the benchmark's budget (about 10 min of learning)

The main job: load the embedded SmolLM2-135M-Instruct, learn 2:4 masks with ProxSparse on the
embedded calibration text, apply them to the original weights, check every target is exactly
2:4, and report perplexity (first {QUICK_EVAL_TOKENS} tokens of the embedded evaluation text, 1024-token
windows) dense, with magnitude's mask and with the learned mask. The default budget is small so
the command stays quick; the learned mask needs more steps to pull far ahead of magnitude
(benchmarks/RESULTS.md).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quickstart",
        help="run the main job end to end on the embedded default model",
        description="Run the main job on the embedded default model and report each stage honestly.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=QUICK_SAMPLES, help=f"calibration samples (default {QUICK_SAMPLES})")
    parser.add_argument("--seqlen", type=int, default=QUICK_SEQLEN, help=f"tokens per sample (default {QUICK_SEQLEN})")
    parser.add_argument("--eval-tokens", type=int, default=QUICK_EVAL_TOKENS,
                        help=f"evaluation tokens, at least one window of {EVAL_WINDOW}; whole windows are evaluated (default {QUICK_EVAL_TOKENS})")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="also save the pruned model here (an earlier pruned-model folder there is replaced)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    require_at_least(args, {"samples": 1, "seqlen": 2, "eval_tokens": EVAL_WINDOW})
    if args.output is not None:
        if not args.output.strip():
            raise ProxSparseError("--output is empty: name a folder, or leave --output out to save nothing")
        check_output(args.output, overwrite=True)  # before minutes of work: only an earlier output is replaced
    table = Table(title="proxsparse-ao quickstart")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("detail")

    weight = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    shrunk = prox_2to4(weight, 10.0)
    seconds = time.perf_counter() - started
    shrinks = bool((shrunk.abs() <= weight.abs()).all()) and bool((shrunk * weight >= 0).all())
    table.add_row(
        "2:4 prox operator",
        "[green]ran[/]" if shrinks else "[red]check failed[/]",
        f"{backend()} solver, 576x1536 fp32 at lam=10: {seconds * 1e3:.1f} ms, {fraction_nm(shrunk):.1%} of groups 2:4"
        + ("" if shrinks else "; it grew a weight or flipped a sign"),
    )
    failed = _main_job(args, console, table) or not shrinks
    table.add_row(
        "verify (structure, accuracy, compile)", "[yellow]separate command[/]",
        f"proxsparse-tool verify {args.output or 'DIR'}" + ("" if args.output else "  (save the model with --output DIR first)"),
    )
    console.print(table)
    return 1 if failed else 0


def _main_job(args: argparse.Namespace, console: Console, table: Table) -> bool:
    """Embedded model -> ProxSparse masks -> exact 2:4 check -> perplexity; True when a check failed."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    from proxsparse_ao import ProxSparseConfig, apply_masks, learn, save_pruned
    from proxsparse_ao.context import check_context
    from proxsparse_ao.data import load_text
    from proxsparse_ao.evaluation import perplexity, tokenize_text
    from proxsparse_ao.export import check_pruned
    from proxsparse_ao.history import LOG_FILE, history_json
    from proxsparse_ao.models import DEFAULT_MODEL_LABEL, load_model

    hf_logging.disable_progress_bar()
    quiet_libraries()  # again: importing transformers puts the hub's logger back to WARNING
    started = time.perf_counter()
    with stage(console, f"loading {DEFAULT_MODEL_LABEL} and the embedded text (first run: downloads and converts)"):
        model, tokenizer = load_model()
        check_context(model, args.seqlen, "--seqlen")
        ids = tokenize_text(tokenizer, load_text(None, "evaluation"))
        measured = perplexity(model, ids, EVAL_WINDOW, max_tokens=args.eval_tokens)  # whole windows: at most --eval-tokens
        dense = measured.ppl
    windows = f"{measured.windows} window{'s' if measured.windows != 1 else ''} of {EVAL_WINDOW}"
    table.add_row(
        "embedded model and text", "[green]ran[/]",
        f"{DEFAULT_MODEL_LABEL}; dense perplexity {dense:.2f} ({measured.tokens:,} tokens, {windows}), "
        f"{time.perf_counter() - started:.0f} s",
    )

    config = ProxSparseConfig(samples=args.samples, seqlen=args.seqlen)
    started = time.perf_counter()
    with progress_bars(console, LEARNING_FIELDS) as bar:
        result = learn(model, config, tokenizer=tokenizer, callback=learning_reporter(bar, "learning 2:4 masks", console))
    learn_seconds = time.perf_counter() - started
    with stage(console, "perplexity with magnitude's mask and with the learned mask"):
        layers = {name: model.get_submodule(name) for name in result.masks}
        magnitude = {name: magnitude_mask(layer.weight) for name, layer in layers.items()}
        originals = {name: layer.weight.detach().clone() for name, layer in layers.items()}
        apply_masks(model, magnitude, config)
        magnitude_ppl = perplexity(model, ids, EVAL_WINDOW, max_tokens=args.eval_tokens).ppl
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(originals[name])
        del originals
        apply_masks(model, result.masks, config)
        try:
            check_pruned(model, result.masks)
            exact = True
        except ProxSparseError as err:
            exact = False
            table.add_row("exact 2:4 check", "[red]FAILED[/]", str(err))
        learned_ppl = perplexity(model, ids, EVAL_WINDOW, max_tokens=args.eval_tokens).ppl
    detail = (
        f"{len(result.masks)} layers exactly 2:4; {result.steps_done} steps of {args.samples} x {args.seqlen} tokens in "
        f"{learn_seconds:.0f} s; perplexity dense {dense:.2f}, magnitude {magnitude_ppl:.2f}, ProxSparse {learned_ppl:.2f}; "
        f"{result.changed_vs_magnitude:.1%} of groups differ from magnitude's mask"
    )
    status = "[green]ran[/]" if exact and not result.stopped else "[red]check failed[/]"
    table.add_row("ProxSparse mask learning", status, detail + (f"; stopped: {result.stopped}" if result.stopped else ""))
    if args.output:
        from .prune import calibration_record, versions

        metadata = {
            "method": "proxsparse", "source_model": DEFAULT_MODEL_LABEL, "dtype": "float32", "config": config.to_dict(),
            "data": calibration_record(config, result.extra["calibration_shape"], result.extra["calibration_tokens"]),
            "statistics": {"steps": result.steps_done, "total_steps": result.total_steps, "stopped": result.stopped,
                           "changed_vs_magnitude": result.changed_vs_magnitude, "learn_seconds": round(learn_seconds, 2)},
            "perplexity": {"dense": dense, "magnitude": magnitude_ppl, "pruned": learned_ppl},
            "versions": versions(),
        }
        with stage(console, f"saving {args.output}"):
            save_pruned(model, args.output, result.masks, metadata, tokenizer=tokenizer, overwrite=True,
                        extra_files={LOG_FILE: history_json(result.history, method="proxsparse")})
        table.add_row("saved", "[green]ran[/]", str(args.output))
    return not exact or bool(result.stopped)
