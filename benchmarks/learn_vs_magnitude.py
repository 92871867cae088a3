"""ProxSparse vs magnitude 2:4 on the embedded default model, same calibration tokens.

    .venv/bin/python benchmarks/learn_vs_magnitude.py --threads 1 --json out.json

Loads SmolLM2-135M-Instruct (the embedded default), draws the calibration tokens once, and
reports perplexity on the embedded evaluation text (first --eval-tokens tokens, windows of
--eval-seqlen) for dense, magnitude 2:4 and ProxSparse 2:4 (learned mask on the original
weights), with the learning's wall time and the process's peak RSS after each stage.
Each pruned model is checked to be exactly 2:4 on every target.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxsparse_ao.api import apply_masks, calibration_tokens, learn  # noqa: E402
from proxsparse_ao.config import ProxSparseConfig  # noqa: E402
from proxsparse_ao.data import load_text  # noqa: E402
from proxsparse_ao.evaluation import perplexity, tokenize_text  # noqa: E402
from proxsparse_ao.export import check_pruned  # noqa: E402
from proxsparse_ao.history import write_history  # noqa: E402
from proxsparse_ao.masks import magnitude_mask  # noqa: E402
from proxsparse_ao.models import DEFAULT_MODEL_LABEL, load_model  # noqa: E402
from proxsparse_ao.targets import select_targets  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--lr", type=float, default=ProxSparseConfig.lr)
    parser.add_argument("--lambda1", type=float, default=ProxSparseConfig.lambda1)
    parser.add_argument("--strength", default=ProxSparseConfig.strength)
    parser.add_argument("--lambda2", type=float, default=0.0)
    parser.add_argument("--train", default="targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--eval-seqlen", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a shared 2-core machine)")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--skip-magnitude", action="store_true", help="only the ProxSparse run (magnitude is deterministic)")
    parser.add_argument("--json", type=Path, default=None, help="write the results (and the per-step log) here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = ProxSparseConfig(
        samples=args.samples, seqlen=args.seqlen, lr=args.lr, lambda1=args.lambda1, strength=args.strength,
        lambda2=args.lambda2, train=args.train, seed=args.seed,
    )
    results: dict = {"command": " ".join(sys.argv), "config": config.to_dict(), "model": DEFAULT_MODEL_LABEL,
                     "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    model, tokenizer = load_model()
    calibration = calibration_tokens(config, tokenizer)
    eval_ids = tokenize_text(tokenizer, load_text(None, "evaluation"))
    results["calibration_shape"] = list(calibration.shape)

    def ppl(m) -> float:
        start = time.perf_counter()
        value = perplexity(m, eval_ids, args.eval_seqlen, max_tokens=args.eval_tokens).ppl
        print(f"  perplexity {value:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
        return value

    rows = []
    print("proxsparse: learning", flush=True)
    last = [time.perf_counter()]

    def progress(stats) -> None:
        if stats.step == 1 or stats.step % 8 == 0 or stats.step == stats.total_steps:
            now = time.perf_counter()
            print(f"  step {stats.step}/{stats.total_steps} loss {stats.loss:.3f} 2:4 {stats.fraction_24:.3f} "
                  f"changed {stats.changed_vs_magnitude:.3f} ({now - last[0]:.0f} s)", flush=True)
            last[0] = now

    start = time.perf_counter()
    try:
        result = learn(model, config, calibration=calibration, callback=progress)
        apply_masks(model, result.masks, config)
        check_pruned(model, result.masks)
        seconds = time.perf_counter() - start
        rows.append({"method": "proxsparse", "ppl": ppl(model), "seconds": round(seconds, 1), "peak_rss_gib": round(peak_rss_gib(), 2),
                     "changed_vs_magnitude": round(result.changed_vs_magnitude, 4), "stopped": result.stopped,
                     "final_ce": result.history[-1]["ce"] if result.history else None})
        results["history"] = result.history
    except Exception as err:  # record failures too
        rows.append({"method": "proxsparse", "error": f"{type(err).__name__}: {err}", "seconds": round(time.perf_counter() - start, 1)})

    model, _ = load_model() if not (args.skip_dense and args.skip_magnitude) else (None, None)
    if not args.skip_dense:
        print("dense", flush=True)
        rows.append({"method": "dense", "ppl": ppl(model), "seconds": 0.0, "peak_rss_gib": round(peak_rss_gib(), 2)})
    if not args.skip_magnitude:
        print("magnitude", flush=True)
        start = time.perf_counter()
        layers = select_targets(model, config.targets, config.ignore).layers
        masks = {name: magnitude_mask(layer.weight) for name, layer in layers.items()}
        apply_masks(model, masks, config)
        check_pruned(model, masks)
        seconds = time.perf_counter() - start
        rows.append({"method": "magnitude", "ppl": ppl(model), "seconds": round(seconds, 1),
                     "peak_rss_gib": round(peak_rss_gib(), 2)})

    results["rows"] = rows
    print(json.dumps(rows, indent=1))
    if args.json:
        history = results.pop("history", [])
        write_history(args.json, history, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
