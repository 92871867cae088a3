"""Memory of a run or of one region of it: the device allocator's peak on CUDA, resident memory on CPU.

`peak_memory_bytes` is what a learning run reports; `PeakMemory` measures one region on its own
(a pruning method in `compare` and the benchmarks), without what earlier work left behind.
"""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path

import torch


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory: the device allocator's peak on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakMemory:
    """Memory a code region adds at its peak over what was resident when it started.

    CPU (Linux): peak RSS, reset through /proc/self/clear_refs, minus the RSS at the start. CUDA: the
    allocator's peak minus what it had allocated at the start (host memory not counted). Freed
    memory is handed back to the system first, so that the region neither counts what earlier work
    left behind nor reuses it unseen. `added` is None where the peak cannot be reset (no /proc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start = int(torch.cuda.memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            self.exact = True
        else:
            self.start = _rss()
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.exact = self.start > 0
            except OSError:
                self.exact = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = _status_kib("VmHWM") * 1024 if self.exact else peak_memory_bytes(self.device)
        self.added = self.peak - self.start if self.exact else None


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's malloc_trim; a no-op
    elsewhere), so resident memory is what is still in use."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss() -> int:
    """The process's resident memory now, bytes (0 where /proc cannot be read)."""
    return _status_kib("VmRSS") * 1024
