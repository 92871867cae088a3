"""Time prox_2to4 against the literal reference EnumALM and a plain copy, side by side.

    python benchmarks/prox_speed.py [--size 4096] [--lams 0.1 1 10] [--repeats 5]

All three run in this one process on the same 4096x4096 fp32 matrix (randn, seed 0); the
operator and the copy report the best of --repeats runs, the reference one run (it takes
seconds to a minute). The copy's best of a few runs swings between 1.3 and 4 ms on a shared
2-core machine, so operator / copy is also given as the ratio of medians over --rounds
interleaved pairs (operator, copy, then copy, operator, ...), which one lucky copy cannot
move. Targets on the 2-core CPU: >= 100x faster than the reference and within 10x of the
copy (the memory-bandwidth floor). On CUDA (--device cuda) the reference
is skipped unless --with-reference, and the result is checked against the CPU operator.
The last two columns compare objectives (1/2 ||w - z||^2 + lam R(w) per group), not values: two
minimisers may differ where a group has several, and the reference's coordinate search can stop
short of the minimum. "obj op-ref" is the operator's worst excess over the reference, relative
to the group's 1/2 ||z||^2 (at most rounding, ~1e-16, when the operator is exact); "op lower" the
fraction of groups where the operator found a lower objective than the reference.
Bad input (a size that is not a positive multiple of 4, a negative or non-finite lam, no such
device, a size whose matrices do not fit in the memory available) is one line and exit status 2:
the memory a size needs is checked before anything is allocated, and an allocation that still
fails (other processes took the memory meanwhile) is reported the same way.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from reference_enumalm import reference_prox_2to4  # noqa: E402
from script_input import OneLineParser, at_least, finite, run_script  # noqa: E402

from proxsparse_ao.quiet import quiet_libraries  # noqa: E402

quiet_libraries()  # before anything imports torchao, which logs its failures at import time

from proxsparse_ao.errors import ProxSparseError  # noqa: E402
from proxsparse_ao.masks import fraction_nm  # noqa: E402
from proxsparse_ao.prox import backend, prox_2to4  # noqa: E402
from proxsparse_ao.regularizers import r_2to4_groups  # noqa: E402
from proxsparse_ao.speed import interleaved_seconds  # noqa: E402
from proxsparse_ao.tools.options import parse_device  # noqa: E402


# Peak memory per matrix element, measured (ru_maxrss, sizes 512 to 2048) with a margin: the reference holds
# about a dozen float64 copies of the matrix (155 B); the operator, the copy and the float64 objective
# comparison about 46 B on the host; on CUDA the operator's input, output and result about 12 B.
REFERENCE_BYTES = 160
HOST_BYTES = 48
DEVICE_BYTES = 16


def memory_needed(size: int, device: torch.device, reference: bool) -> dict[str, int]:
    """The bytes a run on a size x size matrix needs at its peak, by where: "cpu" (host memory) and, on
    another device, that device; the reference runs where the operator runs."""
    elements = size * size
    if device.type == "cpu":
        return {"cpu": (REFERENCE_BYTES if reference else HOST_BYTES) * elements}
    return {"cpu": HOST_BYTES * elements, str(device): (REFERENCE_BYTES if reference else DEVICE_BYTES) * elements}


def available_bytes(where: str) -> int | None:
    """Memory free for this run: MemAvailable for "cpu", the CUDA allocator's free memory for a CUDA
    device; None where it cannot be told (no /proc, another device), which skips the check."""
    if where == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    if where.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(where))[0])
    return None


def check_memory(size: int, device: torch.device, reference: bool) -> None:
    """Refuse a --size whose matrices do not fit in the memory available, before allocating them, naming
    the largest size that does: an allocation that fails mid-run is a traceback, and on Linux one that
    the system overcommits gets the process killed instead."""
    for where, needed in memory_needed(size, device, reference).items():
        available = available_bytes(where)
        if available is None or needed <= available:
            continue
        per_element = needed // (size * size)
        largest = math.isqrt(available // per_element) // 4 * 4
        advice = f"use --size {largest} or less" if largest >= 4 else "free some memory first"
        raise ProxSparseError(f"--size {size} needs about {needed / 2**30:,.1f} GiB of {where} memory, "
                              f"{available / 2**30:,.1f} GiB is available: {advice}")


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is a failed allocation (torch's CPU allocator raises a plain RuntimeError)."""
    return (isinstance(err, (torch.OutOfMemoryError, MemoryError))
            or (isinstance(err, RuntimeError) and "can't allocate memory" in str(err)))


def objectives(w: torch.Tensor, z: torch.Tensor, lam: float) -> torch.Tensor:
    """1/2 ||w - z||^2 + lam R(w) of every group of 4, in float64: what the prox minimises."""
    return 0.5 * ((w.double() - z.double()).reshape(-1, 4) ** 2).sum(1) + lam * r_2to4_groups(w)


def compare_objectives(result: torch.Tensor, expected: torch.Tensor, z: torch.Tensor, lam: float) -> tuple[float, float]:
    """(the operator's worst objective excess over the other result, relative to 1/2 ||z||^2 of its group;
    the fraction of groups where the operator's objective is lower by more than 1e-9 of it)."""
    scale = 0.5 * (z.double().reshape(-1, 4) ** 2).sum(1).clamp_min(1e-300)
    excess = (objectives(result, z, lam) - objectives(expected, z, lam)) / scale
    return float(excess.max()), float((excess < -1e-9).double().mean())


def best_time(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=at_least(4), default=4096, help="rows and columns, a multiple of 4 (default 4096)")
    parser.add_argument("--lams", type=finite(0), nargs="+", default=[0.1, 1.0, 10.0], help="prox strengths (default 0.1 1 10)")
    parser.add_argument("--repeats", type=at_least(1), default=5)
    parser.add_argument("--rounds", type=at_least(1), default=20, help="interleaved operator/copy pairs for the median ratio")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--with-reference", action="store_true", help="also time the reference on CUDA")
    args = parser.parse_args(argv)
    if args.size % 4:
        parser.error(f"argument --size: must be a multiple of 4 (groups of 4 along a row), got {args.size}")

    device = parse_device(args.device)
    run_reference = device.type == "cpu" or args.with_reference
    check_memory(args.size, device, run_reference)
    try:
        return run(args, device, run_reference)
    except Exception as err:
        if not out_of_memory(err):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ProxSparseError(f"--size {args.size}: ran out of memory on {device} ({reason}): use a smaller --size") from None


def run(args: argparse.Namespace, device: torch.device, run_reference: bool) -> int:
    """Time the operator, the copy and (where asked) the reference for each lam, one table row each."""
    weight = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    out = torch.empty_like(weight)
    print(f"prox_2to4 on {args.size}x{args.size} fp32, {device}, solver: {backend(device)}, threads: {torch.get_num_threads()}")
    print(f"{'lam':>6} {'operator':>10} {'reference':>10} {'copy':>9} {'ref/op':>8} {'op/copy':>8} {'median':>7} {'2:4 groups':>10} "
          f"{'obj op-ref':>11} {'op lower':>9}")
    for lam in args.lams:
        prox_2to4(weight, lam, out=out)  # warm-up (builds the kernel on first use)
        t_op = best_time(lambda: prox_2to4(weight, lam, out=out), args.repeats, device)
        t_copy = best_time(lambda: out.copy_(weight), args.repeats, device)
        paired = interleaved_seconds(
            {"operator": lambda: prox_2to4(weight, lam, out=out), "copy": lambda: out.copy_(weight)},
            device, warmup=1, rounds=args.rounds, per_round=1,
        )
        median_ratio = statistics.median(paired["operator"]) / statistics.median(paired["copy"])
        result = prox_2to4(weight, lam)
        fraction = fraction_nm(result)
        if run_reference:
            start = time.perf_counter()
            expected = reference_prox_2to4(weight, lam)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_ref = time.perf_counter() - start
            ref_cols = f"{t_ref:9.2f}s {t_ref / t_op:7.0f}x"
        else:  # the same operator on the CPU stands in for the reference
            expected = prox_2to4(weight.cpu(), lam)
            ref_cols = f"{'-':>10} {'-':>8}"
        excess, lower = compare_objectives(result.cpu(), expected.cpu(), weight.cpu(), lam)
        print(f"{lam:6g} {t_op * 1e3:8.1f}ms {ref_cols.split()[0]:>10} {t_copy * 1e3:7.2f}ms "
              f"{ref_cols.split()[1]:>8} {t_op / t_copy:7.1f}x {median_ratio:6.1f}x {fraction:10.1%} {excess:11.1e} {lower:9.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, ProxSparseError))
