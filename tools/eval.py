"""`proxsparse-tool eval`: perplexity (the paper's protocol) and zero-shot accuracy of a model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from proxsparse_ao.cache import atomic_write_bytes
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.quiet import quiet_libraries

from .options import check_result_files, refuse_unused, require_at_least
from .progress import progress_bars, reporter, stage

if TYPE_CHECKING:
    from proxsparse_ao.zeroshot import ZeroShot

DEFAULT_MAX_TOKENS = 16384
DTYPES = ("float32", "bfloat16", "float16")

EXAMPLES = f"""examples:
  proxsparse-tool eval                                   # default model, default text, first {DEFAULT_MAX_TOKENS} tokens
  proxsparse-tool eval --max-tokens 0                    # the whole evaluation text (~145k tokens, slow on CPU)
  proxsparse-tool eval --no-ppl --tasks local_winogrande --limit 200
  proxsparse-tool eval ./my-model --text wiki.txt --seqlen 2048 --json result.json
  proxsparse-tool eval meta-llama/Llama-2-7b-hf --text wikitext2 --tasks piqa arc_easy   # needs the hub

MODEL: omitted (the embedded SmolLM2-135M-Instruct), a local Hugging Face folder or a hub id.
--text: wikipedia or news (embedded, their evaluation parts), wikitext2 or c4 (hub), or a .txt/.jsonl file.
Local zero-shot tasks: local_winogrande, local_science_mc, local_physical_intuition over the
JSONL files in --zeroshot-data (or $PROXSPARSE_ZEROSHOT_DATA); other names are lm-eval tasks.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="perplexity and zero-shot accuracy of a model",
        description="Perplexity in non-overlapping windows (exp of the mean window loss) and lm-eval zero-shot accuracy.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model folder or hub id (default: embedded)")
    parser.add_argument("--text", default=None, metavar="NAME|PATH", help="evaluation text (default: wikipedia)")
    parser.add_argument("--seqlen", type=int, default=1024, metavar="L", help="window length in tokens (default 1024)")
    parser.add_argument(
        "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
        help=f"evaluate the first N tokens of the text, 0 for all (default {DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument("--batch-size", type=int, default=1, metavar="B", help="windows per forward pass (default 1)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--no-ppl", action="store_true", help="skip perplexity (zero-shot only)")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="TASK", help="zero-shot tasks (local_* offline)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="first N items of each task")
    parser.add_argument("--zeroshot-data", default=None, metavar="DIR", help="folder of the local tasks' JSONL files")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    no_ppl = "with --no-ppl" if args.no_ppl else None
    no_tasks = None if args.tasks else "without --tasks"
    refuse_unused(args, {"--text": no_ppl, "--seqlen": no_ppl, "--max-tokens": no_ppl, "--batch-size": no_ppl,
                         "--limit": no_tasks, "--zeroshot-data": no_tasks})
    require_at_least(args, {"seqlen": 2, "batch_size": 1, "limit": 1})
    if args.max_tokens < 0:
        raise ProxSparseError(f"--max-tokens must be 0 (all) or positive, got {args.max_tokens}")
    if args.no_ppl and not args.tasks:
        raise ProxSparseError("nothing to do: --no-ppl without --tasks")
    check_result_files({"--json": args.json}, model_folder=args.model,
                       inputs={"--text": args.text, "--zeroshot-data": args.zeroshot_data})


def _zero_shot_rows(table: Table, scores: ZeroShot, seconds: float) -> None:
    """acc and acc_norm per task, the mean acc over all tasks, and the mean acc_norm (a `-` naming the tasks without one)."""
    for name, acc in scores.accuracy.items():
        table.add_row(f"{name} acc", f"{acc:.4f}", f"{scores.items[name]} items, 0-shot")
        if scores.accuracy_norm[name] is not None:
            table.add_row(f"{name} acc_norm", f"{scores.accuracy_norm[name]:.4f}", "length-normalised: log-likelihood per character")
    count = f"{len(scores.accuracy)} task{'s' if len(scores.accuracy) != 1 else ''}"
    table.add_row("zero-shot average acc", f"{scores.average:.4f}", f"mean acc of {count}, {seconds:.1f} s")
    without = [name for name, norm in scores.accuracy_norm.items() if norm is None]
    if scores.average_norm is not None:
        table.add_row("zero-shot average acc_norm", f"{scores.average_norm:.4f}", f"mean acc_norm of {count}")
    elif len(without) < len(scores.accuracy):
        table.add_row("zero-shot average acc_norm", "-", f"not every task has acc_norm (none for {', '.join(without)})")


def run(args: argparse.Namespace, console: Console) -> int:
    _check(args)
    import torch
    from transformers.utils import logging as hf_logging

    from proxsparse_ao.context import check_context
    from proxsparse_ao.data import DEFAULT_TEXT, load_text
    from proxsparse_ao.evaluation import perplexity, tokenize_text
    from proxsparse_ao.models import DEFAULT_MODEL_LABEL, is_default, load_model
    from proxsparse_ao.zeroshot import check_tasks, zero_shot

    hf_logging.disable_progress_bar()
    quiet_libraries()  # again: importing transformers puts the hub's logger back to WARNING
    if args.tasks:
        check_tasks(args.tasks, args.zeroshot_data)
    text = None if args.no_ppl else load_text(args.text, "evaluation")  # a bad --text fails before the model loads
    label = DEFAULT_MODEL_LABEL if is_default(args.model) else str(args.model)
    result: dict = {"model": label, "dtype": args.dtype, "ppl": None, "tokens": None}
    with stage(console, f"loading {label}"):
        model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    table = Table(title=f"proxsparse-ao eval: {label} ({args.dtype})")
    for column in ("metric", "value", "detail"):
        table.add_column(column)

    if not args.no_ppl:
        check_context(model, args.seqlen, "--seqlen")
        text_name = args.text or DEFAULT_TEXT
        with stage(console, f"tokenising {text_name}"):
            ids = tokenize_text(tokenizer, text)
        started = time.perf_counter()
        with progress_bars(console) as bar:
            ppl = perplexity(
                model, ids, args.seqlen, batch_size=args.batch_size, max_tokens=args.max_tokens or None,
                progress=reporter(bar, f"perplexity, {args.seqlen}-token windows", console, "window"),
            )
        seconds = time.perf_counter() - started
        result.update(ppl.to_dict(), text=text_name, text_tokens=int(ids.numel()), ppl_seconds=round(seconds, 2))
        table.add_row(
            "perplexity", f"{ppl.ppl:.4f}",
            f"{text_name}: {ppl.tokens:,} of {ids.numel():,} tokens, {ppl.windows} window{'s' if ppl.windows != 1 else ''} of {ppl.seqlen}, {seconds:.1f} s",
        )

    if args.tasks:
        started = time.perf_counter()
        with progress_bars(console) as bar:
            scores = zero_shot(
                model, tokenizer, args.tasks, limit=args.limit, data_dir=args.zeroshot_data,
                progress=reporter(bar, f"zero-shot {', '.join(args.tasks)}", console, "request"),
            )
        seconds = time.perf_counter() - started
        result["zero_shot"] = scores.to_dict() | {"limit": args.limit, "seconds": round(seconds, 2)}
        _zero_shot_rows(table, scores, seconds)

    console.print(table)
    if args.json:
        path = Path(args.json).expanduser()
        atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())
        console.print(f"wrote {path}")
    return 0
