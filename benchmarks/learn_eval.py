"""One ProxSparse setting on the embedded default model, evaluated on several texts.

    .venv/bin/python benchmarks/learn_eval.py --threads 1 --set seed=1 --set activation_aware=false \
        --json benchmarks/results/run.json

Loads SmolLM2-135M-Instruct (the embedded default), makes the calibration tokens of the
config (`--preset`, then every `--set field=value`, values parsed as JSON), learns the masks,
applies them to the ORIGINAL weights, checks the model is exactly 2:4, and reports perplexity
on each `--text` (first --eval-tokens tokens, windows of --eval-seqlen), the learning's wall
time and memory: `peak_rss_gib`, the process's peak RSS while it learned and applied the masks
(model included), and `memory_added_gib`, that peak minus the RSS it started from (measured as
`proxsparse-tool compare` measures it; the magnitude row likewise for its pruning, so neither
row carries the other's or the evaluation's peak). Each pruned row records `pruned_layers`, the
count and a fingerprint of the layers it pruned, as `compare` does, so `summarize.py` can tell
runs that pruned the same layers under different `ignore` patterns. Dense and magnitude rows
are optional (`--dense`, `--magnitude`). Failures are recorded in the JSON too. Bad input (an
unknown preset or field, a missing text file, a number out of range, a batch_size above samples, an
unwritable --json) is one line and exit status 2, before the model loads (a seqlen or --eval-seqlen
longer than the model's context, a --text shorter than one --eval-seqlen window: as soon as it is
loaded, before the learning). Was `learn_vs_magnitude.py`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from script_input import OneLineParser, at_least, run_script  # noqa: E402

from proxsparse_ao.quiet import quiet_libraries  # noqa: E402

quiet_libraries()  # before anything imports torchao, which logs its failures at import time

from proxsparse_ao.api import apply_masks, calibration_tokens, learn  # noqa: E402
from proxsparse_ao.config import ProxSparseConfig, check_batch_size  # noqa: E402
from proxsparse_ao.context import check_context  # noqa: E402
from proxsparse_ao.data import check_text, load_text  # noqa: E402
from proxsparse_ao.errors import ProxSparseError  # noqa: E402
from proxsparse_ao.evaluation import perplexity, tokenize_text  # noqa: E402
from proxsparse_ao.export import check_pruned  # noqa: E402
from proxsparse_ao.history import write_history  # noqa: E402
from proxsparse_ao.masks import magnitude_mask  # noqa: E402
from proxsparse_ao.memory import PeakMemory  # noqa: E402
from proxsparse_ao.models import DEFAULT_MODEL_LABEL, load_model  # noqa: E402
from proxsparse_ao.targets import pruned_layers, select_targets  # noqa: E402
from proxsparse_ao.tools.options import check_no_repeats, check_one_window, check_result_files  # noqa: E402


def memory_fields(memory: PeakMemory) -> dict:
    """The pruning's peak RSS (model included) and what it added, GiB; the added part is None where the
    peak cannot be reset (no /proc), the peak then being the process's lifetime peak."""
    added = memory.added
    return {"peak_rss_gib": round(memory.peak / 2**30, 2), "memory_added_gib": None if added is None else round(added / 2**30, 2)}


def step_line(stats) -> str:
    """A progress line of one learning step; `-` for the mask statistics of a step without a statistics
    pass (a run of more than 64 steps computes them only every few steps)."""

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    return (f"step {stats.step}/{stats.total_steps} loss {stats.loss:.3f} 2:4 {shown(stats.fraction_24)} "
            f"moved {shown(stats.changed_vs_start)}")


def parse_settings(pairs: list[str]) -> dict:
    """`--set FIELD=VALUE` pairs as config overrides, each value parsed as JSON where it parses."""
    values = {}
    for pair in pairs:
        key, equals, raw = pair.partition("=")
        if not key or not equals:
            raise ProxSparseError(f"--set {pair!r}: expected FIELD=VALUE")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="ProxSparseConfig preset (default: the defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a ProxSparseConfig field")
    parser.add_argument("--text", nargs="+", default=["wikipedia", "news"], help="evaluation texts (default wikipedia news)")
    parser.add_argument("--eval-tokens", type=at_least(0), default=16384, help="first N tokens of each text, 0 = all (default 16384)")
    parser.add_argument("--eval-seqlen", type=at_least(2), default=1024, help="perplexity window (default 1024)")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch threads (1 is faster on a shared 2-core machine)")
    parser.add_argument("--dense", action="store_true", help="also evaluate the dense model")
    parser.add_argument("--magnitude", action="store_true", help="also evaluate magnitude 2:4")
    parser.add_argument("--label", default=None, help="a name for the run in the JSON")
    parser.add_argument("--json", type=Path, default=None, help="write the results (and the per-step log) here")
    args = parser.parse_args(argv)
    config = ProxSparseConfig.preset(args.preset, **parse_settings(args.set))
    check_batch_size(config)  # the script makes `samples` calibration samples
    if args.eval_tokens and args.eval_tokens < args.eval_seqlen:
        raise ProxSparseError(f"--eval-tokens must be 0 (all) or cover one window of {args.eval_seqlen}, got {args.eval_tokens}")
    check_no_repeats({"--text": args.text})
    for text in args.text:
        check_text(text)
    check_text(config.calibration)
    check_result_files({"--json": args.json and str(args.json)}, inputs={"--text": args.text, "--calibration": config.calibration})
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict = {"label": args.label, "command": " ".join(sys.argv), "config": config.to_dict(), "model": DEFAULT_MODEL_LABEL,
                     "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    model, tokenizer = load_model()
    check_context(model, args.eval_seqlen, "--eval-seqlen")
    calibration = calibration_tokens(config, tokenizer, model)  # seqlen must fit the model's context
    texts = {name: tokenize_text(tokenizer, load_text(name, "evaluation")) for name in args.text}
    check_one_window(texts, args.eval_seqlen)  # before the learning, not by the perplexity after it
    results["calibration_shape"] = list(calibration.shape)

    def ppl(m) -> dict[str, float]:
        values = {}
        for name, ids in texts.items():
            start = time.perf_counter()
            values[name] = round(perplexity(m, ids, args.eval_seqlen, max_tokens=args.eval_tokens or None).ppl, 3)
            print(f"  perplexity on {name}: {values[name]:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
        return values

    rows = []
    print(f"proxsparse ({args.label or args.preset}): learning", flush=True)
    last = [time.perf_counter()]

    def progress(stats) -> None:
        if stats.step == 1 or stats.step % 8 == 0 or stats.step == stats.total_steps:
            now = time.perf_counter()
            print(f"  {step_line(stats)} ({now - last[0]:.0f} s)", flush=True)
            last[0] = now

    start = time.perf_counter()
    try:
        with PeakMemory(torch.device("cpu")) as memory:
            result = learn(model, config, calibration=calibration, callback=progress)
            apply_masks(model, result.masks, config)
            check_pruned(model, result.masks)
        seconds = time.perf_counter() - start
        rows.append({"method": "proxsparse", "ppl": ppl(model), "seconds": round(seconds, 1), **memory_fields(memory),
                     "pruned_layers": pruned_layers(result.masks),
                     "changed_vs_magnitude": round(result.changed_vs_magnitude, 4),
                     "changed_vs_start": round(result.changed_vs_start, 4), "stopped": result.stopped,
                     "final_ce": result.history[-1]["ce"] if result.history else None, **result.extra})
        results["history"] = result.history
    except Exception as err:  # record failures too
        rows.append({"method": "proxsparse", "error": f"{type(err).__name__}: {err}", "seconds": round(time.perf_counter() - start, 1)})

    if args.dense or args.magnitude:
        model, _ = load_model()
    if args.dense:
        print("dense", flush=True)
        rows.append({"method": "dense", "ppl": ppl(model), "seconds": 0.0})
    if args.magnitude:
        print("magnitude", flush=True)
        start = time.perf_counter()
        with PeakMemory(torch.device("cpu")) as memory:
            layers = select_targets(model, config.targets, config.ignore).layers
            masks = {name: magnitude_mask(layer.weight) for name, layer in layers.items()}
            apply_masks(model, masks, config)
            check_pruned(model, masks)
        seconds = round(time.perf_counter() - start, 1)  # pruning only, as the ProxSparse row times learning only
        rows.append({"method": "magnitude", "ppl": ppl(model), "seconds": seconds, **memory_fields(memory),
                     "pruned_layers": pruned_layers(masks)})

    results["rows"] = rows
    print(json.dumps(rows, indent=1))
    if args.json:
        history = results.pop("history", [])
        try:
            write_history(args.json, history, **results)
        except OSError as err:  # checked before the run, but the folder can go or fill up meanwhile
            raise ProxSparseError(f"--json {args.json}: cannot write it: {err.strerror or err} (the rows are printed above)") from None
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(run_script(main, ProxSparseError))
