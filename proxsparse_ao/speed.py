"""Per-shape choice between the 2:4 kernel and dense: time each once per (M range, N, K), keep the verdict.

2:4 is not faster everywhere (small M pads to 8 rows; users report bf16 2:4 slower than dense
on H100 for some shapes), and a sparse model must never be slower than the dense one. The
row count M of a matmul is either static (a graph compiled for one shape: timed at that M)
or a range (dynamic shapes): then each of the `M_BUCKETS` it touches is timed at both ends,
and the layer goes sparse only when sparse beats dense by `MIN_SPEEDUP` at every probe.
Timings are cached in memory and, given a path, in a JSON file keyed by device, torch
version, dtype and shape.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .cache import atomic_write_bytes
from .cusparselt import direct as direct_cusparselt
from .errors import ProxSparseError
from .masks import apply_mask, magnitude_mask
from .ops import cuda_backend, linear24
from .sparse_format import compress_24

M_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (1, 1),
    (2, 16),
    (17, 128),
    (129, 512),
    (513, 2048),
    (2049, 8192),
    (8193, None),
)
OPEN_END_PROBE = 16384
MIN_SPEEDUP = 1.02

Timer = Callable[[torch.device, torch.dtype, int, int, int], tuple[float, float]]


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call of dense `F.linear` and of `linear24` for one (M, N, K)."""

    m: int
    dense_ms: float
    sparse_ms: float

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms if self.sparse_ms > 0 else float("inf")


def buckets_for(m_range: tuple[int, int | None]) -> list[tuple[int, int | None]]:
    """The buckets an M range [lo, hi] (hi None = unbounded) overlaps."""
    lo, hi = m_range
    return [(a, b) for a, b in M_BUCKETS if (b is None or b >= lo) and (hi is None or a <= hi)]


def probes(bucket: tuple[int, int | None]) -> tuple[int, ...]:
    """The M values a bucket is timed at: its two ends (an open end at OPEN_END_PROBE)."""
    lo, hi = bucket
    return tuple(dict.fromkeys((lo, OPEN_END_PROBE if hi is None else hi)))


def probes_for(m_range: tuple[int, int | None]) -> tuple[int, ...]:
    """The M values a range is timed at: the exact M when static, else both ends of every bucket it touches."""
    lo, hi = m_range
    if lo == hi:
        return (lo,)
    return tuple(dict.fromkeys(m for bucket in buckets_for(m_range) for m in probes(bucket)))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ms_per_call(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    for _ in range(3):
        fn()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3 / reps


def interleaved_seconds(
    steps: dict[str, Callable[[], object]], device: torch.device, *, warmup: int, rounds: int, per_round: int,
) -> dict[str, list[float]]:
    """Seconds of each timed call of every variant, timed in alternating blocks (A B, then B A, ...)
    so that a slow spell of a shared host or a clock change falls on every variant alike (timed one
    after the other, the same dense model drifted 1.3x between two variants on an H200)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    _synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            for _ in range(per_round):
                start = time.perf_counter()
                steps[name]()
                _synchronize(device)
                seconds[name].append(time.perf_counter() - start)
    return seconds


def time_linear(device: torch.device, dtype: torch.dtype, m: int, n: int, k: int, reps: int = 20) -> tuple[float, float]:
    """(dense ms, sparse ms) per call for x [m, k] times a random 2:4 weight [n, k], best of 2 rounds."""
    generator = torch.Generator(device=device).manual_seed(0)
    weight = torch.randn(n, k, device=device, dtype=dtype, generator=generator)
    weight = apply_mask(weight, magnitude_mask(weight))
    values, meta = compress_24(weight, "timing weight")
    x = torch.randn(m, k, device=device, dtype=dtype, generator=generator)
    with torch.no_grad():
        rounds = [
            (_ms_per_call(lambda: F.linear(x, weight), device, reps), _ms_per_call(lambda: linear24(x, values, meta), device, reps))
            for _ in range(2)
        ]
    return min(r[0] for r in rounds), min(r[1] for r in rounds)


def device_key(device: torch.device) -> str:
    """What timings depend on besides the shape: the device model, the torch version and, on CUDA,
    the 2:4 kernel (CUTLASS, or cuSPARSELt through cached plans or through torch's wrapper)."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        kernel = cuda_backend(capability) or "no 2:4 kernel"
        if kernel == "cusparselt":
            kernel += " cached plans" if direct_cusparselt() is not None else " torch wrapper"
        return f"{torch.cuda.get_device_name(device)} sm{capability[0]}{capability[1]} torch {torch.__version__} {kernel}"
    return f"{device.type} torch {torch.__version__}"


def _read_timings(path: Path) -> dict[str, tuple[float, float]]:
    """The timings saved at `path` ({} when there is no file yet, and its folder is made); a file
    that is not saved timings, or a place that cannot be written, is a ProxSparseError naming it,
    before any compile starts."""
    try:
        if path.is_dir():
            raise ProxSparseError(f"SpeedTable path {path} is a folder: name a file")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise ProxSparseError(f"SpeedTable path {path}: its folder is not writable")
            return {}
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise ProxSparseError(f"{path} cannot be read as saved 2:4 timings ({reason}): fix or delete it") from None

    def timing_pair(value: object) -> bool:
        return (isinstance(value, list) and len(value) == 2
                and all(not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < math.inf for v in value))

    if not isinstance(data, dict) or not all(isinstance(key, str) and timing_pair(value) for key, value in data.items()):
        raise ProxSparseError(
            f"{path} is not a file of saved 2:4 timings ({{shape: [dense_ms, sparse_ms]}}, positive times): fix or delete it"
        )
    return {key: (float(dense), float(sparse)) for key, (dense, sparse) in data.items()}


class SpeedTable:
    """Cached sparse-vs-dense timings and the per-shape decisions drawn from them."""

    def __init__(self, timer: Timer = time_linear, path: Path | None = None, min_speedup: float = MIN_SPEEDUP) -> None:
        if isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)) or not 0 < min_speedup < math.inf:
            raise ProxSparseError(f"SpeedTable: min_speedup must be a positive number, got {min_speedup!r}")
        self.timer = timer
        self.path = Path(path).expanduser() if path is not None else None
        self.min_speedup = float(min_speedup)
        self._timings: dict[str, tuple[float, float]] = {}
        if self.path is not None:
            self._timings = _read_timings(self.path)

    def _save(self) -> None:
        """Write the timings to `path`; a failed write keeps them in memory and warns (a compile is under way)."""
        try:
            atomic_write_bytes(self.path, json.dumps(self._timings, indent=1, sort_keys=True).encode())
        except OSError as err:
            warnings.warn(f"2:4 timings not saved to {self.path}: {err.strerror or err}", RuntimeWarning, stacklevel=2)

    def timing(self, device: torch.device, dtype: torch.dtype, m: int, n: int, k: int) -> Timing:
        """The timing of one (M, N, K), measured on first use."""
        key = f"{device_key(device)} | {str(dtype).removeprefix('torch.')} | m={m} n={n} k={k}"
        if key not in self._timings:
            self._timings[key] = tuple(self.timer(device, dtype, m, n, k))
            if self.path is not None:
                self._save()
        dense_ms, sparse_ms = self._timings[key]
        return Timing(m, dense_ms, sparse_ms)

    def choose(
        self, device: torch.device, dtype: torch.dtype, n: int, k: int, m_range: tuple[int, int | None]
    ) -> tuple[bool, str]:
        """(use sparse, why) for a weight [n, k] multiplied by inputs whose M lies in m_range."""
        try:
            timings = [self.timing(device, dtype, m, n, k) for m in probes_for(m_range)]
        except RuntimeError as err:  # a kernel that cannot run here keeps the layer dense
            message = str(err).strip()
            return False, f"the 2:4 kernel failed: {message.splitlines()[0] if message else type(err).__name__}"
        if not timings:
            return False, f"no M bucket for range {m_range}"
        worst = min(timings, key=lambda t: t.speedup)
        if worst.speedup < self.min_speedup:
            return False, (
                f"slower than dense at M={worst.m} ({worst.sparse_ms:.4f} ms sparse vs {worst.dense_ms:.4f} ms dense, "
                f"needs {self.min_speedup:.2f}x)"
            )
        return True, f"faster than dense (at least {worst.speedup:.2f}x, at M={worst.m})"
