"""`torchrun --nproc-per-node N -m proxsparse_ao.tools.distributed MODEL --output OUT`: ProxSparse masks
learned with FSDP2 on every rank (`proxsparse_ao.distributed`); rank 0 saves the pruned model in the
format of `proxsparse-tool prune`. This module owns the command's output; the library prints nothing."""

from __future__ import annotations

from proxsparse_ao.quiet import quiet_libraries

quiet_libraries()  # before anything imports torchao, which logs its failures at import time

import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import typing  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from datetime import timedelta  # noqa: E402

from proxsparse_ao.calibration import token_count  # noqa: E402
from proxsparse_ao.distributed import MIXED_PRECISION, exit_without_teardown, learn_masks_distributed  # noqa: E402
from proxsparse_ao.errors import ProxSparseError  # noqa: E402
from proxsparse_ao.models import check_model_name  # noqa: E402
from proxsparse_ao.training import StepStats  # noqa: E402

from .cli import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, OneLineParser  # noqa: E402
from .library_warnings import is_ours  # noqa: E402
from .options import check_checkpoint_dir, refuse_unused, typed_options  # noqa: E402
from .prune import (  # noqa: E402
    DTYPES, add_config_flags, calibration_record, check_calibration_not_in_output, check_model_not_in_patterns, config_from_args,
    source_label, versions,
)
from .signals import Terminated, on_sigterm, raise_terminated  # noqa: E402

PROG = "torchrun --nproc-per-node N -m proxsparse_ao.tools.distributed"
TIMEOUT_MINUTES = 30.0  # how long a collective waits for a rank that hangs (torchrun stops the run when one dies)
MAX_TIMEOUT_MINUTES = 525_600.0  # a year: torch's process-group timeout overflows far beyond
PROGRESS_LINES = 20  # rank 0 prints about this many progress lines a run

EXAMPLES = """examples:
  torchrun --nproc-per-node 8 -m proxsparse_ao.tools.distributed meta-llama/Llama-2-7b-hf --output pruned-7b/ \\
      --samples 400 --seqlen 4096 --batch-size 8 --mixed-precision bfloat16 --gradient-checkpointing \\
      --checkpoint-dir ckpt-7b/                  # rerun the same command to resume
  torchrun --nproc-per-node 8 -m proxsparse_ao.tools.distributed meta-llama/Llama-2-7b-hf --output paper-7b/ \\
      --preset paper --mixed-precision bfloat16  # the published recipe
  torchrun --nproc-per-node 2 -m proxsparse_ao.tools.distributed --output pruned/ --samples 8 --seqlen 64 \\
      --batch-size 2                             # embedded model, 2 gloo processes on CPU

Every rank loads the whole model and learns on its shards; rank 0 alone reloads the original
weights, applies the masks and writes the output folder (the format of `proxsparse-tool prune`),
after the other ranks have ended with status 0 (none can then fail and have torchrun stop the save).
A run resumes from --checkpoint-dir only with the same --nproc-per-node.
--preset sets every field first; the other flags then override it.
exit status: 0 success, 1 learning stopped early (a non-finite loss or gradient; the masks of the
last good step are saved; rank 0 alone says so), 2 the input could not be used (one line on stderr
from every rank); torchrun itself then exits 1 and names the failed ranks.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Learn ProxSparse 2:4 masks with FSDP2 on every rank; rank 0 saves the pruned model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model folder or hub id (default: embedded)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write the pruned model to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--backend", default=None, help="process group backend (default nccl on GPUs, else gloo)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_MINUTES, metavar="MINUTES",
                        help="fail the run when a rank waits longer than this for the others (a hung rank) "
                        f"during learning (default {TIMEOUT_MINUTES:g})")
    parser.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="none",
                        help="FSDP2 compute dtype (bfloat16: bf16 compute, fp32 gradient reduction; default none)")
    add_config_flags(parser.add_argument_group("ProxSparse settings (ProxSparseConfig fields)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run on every rank: learn, then rank 0 reloads the original weights, applies the masks and saves.

    0 when done, 1 when learning stopped early; a bad input raises ProxSparseError (see `entry`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.timeout > 0 and math.isfinite(args.timeout) and args.timeout <= MAX_TIMEOUT_MINUTES):
        parser.error(f"--timeout must be a positive number of minutes up to {MAX_TIMEOUT_MINUTES:g} (a year); got {args.timeout:g}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ProxSparseError(f"run this command under torchrun (RANK and WORLD_SIZE are not set): {PROG} ...")
    args.given = typed_options(build_parser, argv)
    check_model_name(args.model)
    check_model_not_in_patterns(args)
    config = config_from_args(args)  # as prune builds it: the preset, then the flags set
    refuse_unused(args, {"--checkpoint-every": None if config.checkpoint_dir else "without --checkpoint-dir"})
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    from proxsparse_ao.api import apply_masks, calibration_tokens
    from proxsparse_ao.context import check_context
    from proxsparse_ao.data import check_text
    from proxsparse_ao.export import check_output, save_pruned
    from proxsparse_ao.history import LOG_FILE, history_json
    from proxsparse_ao.models import DEFAULT_MODEL_LABEL, is_default, load_model
    from proxsparse_ao.targets import check_target_weights, select_targets

    hf_logging.disable_progress_bar()
    quiet_libraries()  # again: importing transformers puts the hub's logger back to WARNING
    output = check_output(args.output, args.overwrite, source=args.model, overwrite_flag="--overwrite")
    check_calibration_not_in_output(config, args.output)
    if config.checkpoint_dir:
        check_checkpoint_dir(config.checkpoint_dir, args.output, args.model)
    check_text(config.calibration)
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(_backend(args.backend, cuda), timeout=timedelta(minutes=args.timeout))
    try:
        rank0, world = dist.get_rank() == 0, dist.get_world_size()
        dtype = getattr(torch, args.dtype)
        model, tokenizer = load_model(args.model, dtype=dtype, device=str(device))
        check_context(model, config.seqlen, "--seqlen")
        with _library_warnings(rank0):  # every rank has them; rank 0 says them, once
            layers = select_targets(model, config.targets, config.ignore, strict=config.strict).layers
            check_target_weights(layers)
            tokens = calibration_tokens(config, tokenizer, model)
        with _library_warnings(rank0):
            result = learn_masks_distributed(model, tokens, config, layers, mixed_precision=args.mixed_precision,
                                             callback=_progress if rank0 else None)
        del model
    finally:
        # the masks are gathered on rank 0 and no collective is left: the other ranks end now, with
        # success, so that none of them can fail (a timeout, a kill) while rank 0 saves, which would
        # have torchrun stop rank 0 mid-save and lose the learning
        dist.destroy_process_group()
    if not rank0:
        return EXIT_OK
    original, _ = load_model(args.model, dtype=dtype, device="cpu")
    apply_masks(original, result.masks, config)
    label = DEFAULT_MODEL_LABEL if is_default(args.model) else source_label(args.model)
    metadata = {
        "method": "proxsparse",
        "source_model": label,
        "dtype": args.dtype,
        "config": config.to_dict(),
        "data": calibration_record(config, tokens.shape, token_count(tokens)),
        "statistics": {
            "steps": result.steps_done, "total_steps": result.total_steps, "resumed_from": result.resumed_from,
            "stopped": result.stopped, "changed_vs_magnitude": result.changed_vs_magnitude,
            "changed_vs_start": result.changed_vs_start, "learn_seconds": round(result.seconds, 2),
            "peak_memory_bytes": result.peak_memory_bytes, "world_size": world,
            "mixed_precision": args.mixed_precision, "final": result.history[-1] if result.history else None,
        },
        "versions": versions(),
    }
    check_output(output, args.overwrite, overwrite_flag="--overwrite")  # again: another run may have saved there since
    save_pruned(original, output, result.masks, metadata, tokenizer=tokenizer, overwrite=args.overwrite,
                extra_files={LOG_FILE: history_json(result.history, method="proxsparse")})
    print(f"saved {output}: {len(result.masks)} layers 2:4, {result.steps_done} of {result.total_steps} steps "
          f"on {world} processes in {result.seconds:.0f} s", flush=True)
    return EXIT_CHECK_FAILED if result.stopped else EXIT_OK  # rank 0 printed the warning that says why it stopped


@contextlib.contextmanager
def _library_warnings(say: bool) -> Iterator[None]:
    """The library's warnings raised inside, printed as prune prints them when `say` (rank 0), also when
    the block fails; none reaches Python's own warning output, which every rank would print."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                if say and is_ours(warning):
                    print(f"warning: {warning.message}", flush=True)


def _progress(stats: StepStats) -> None:
    """Rank 0's sign of life: about PROGRESS_LINES lines a run, and the last step."""
    every = math.ceil(stats.total_steps / PROGRESS_LINES)
    if stats.step % every == 0 or stats.step == stats.total_steps:
        print(f"step {stats.step}/{stats.total_steps}: loss {stats.loss:.4f} ({stats.seconds:.1f} s)", flush=True)


def _backend(name: str | None, cuda: bool) -> str:
    """--backend as a process-group backend this torch build has (default nccl with CUDA, else gloo)."""
    import torch
    import torch.distributed as dist

    backend = (name or ("nccl" if cuda else "gloo")).lower()
    available = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available,
                 "ucc": getattr(dist, "is_ucc_available", lambda: False)}
    if backend not in available:
        raise ProxSparseError(f"--backend {name}: unknown process-group backend; use one of {', '.join(available)}")
    if not available[backend]():
        raise ProxSparseError(f"--backend {backend}: this torch build ({torch.__version__}) has no {backend} support")
    return backend


def entry(argv: Sequence[str] | None = None) -> typing.NoReturn:
    """`python -m` / torchrun entry: a bad input is one line on stderr and exit status 2; the process
    then ends without interpreter teardown (`exit_without_teardown`: a used gloo group can abort it)."""
    on_sigterm(raise_terminated)  # raised like Ctrl-C, so a save cut short removes its temporary folder
    try:
        code = main(argv)
    except ProxSparseError as err:
        sys.stderr.write(f"error: {err}\n")  # one write: the lines of several ranks do not interleave
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except Terminated:
        sys.stderr.write("terminated\n")
        code = 128 + signal.SIGTERM
    exit_without_teardown(code)


if __name__ == "__main__":
    entry()
