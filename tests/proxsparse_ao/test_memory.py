"""Memory of a region: its own peak above what was resident when it began, not what came before it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from proxsparse_ao.memory import PeakMemory, peak_memory_bytes

MIB = 2**20


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak RSS is reset through /proc (Linux)")
def test_a_regions_peak_is_what_it_added_not_what_was_resident_before():
    before = b"b" * (128 * MIB)  # resident before the region, and still after it
    with PeakMemory(torch.device("cpu")) as memory:
        scratch = b"s" * (96 * MIB)
        del scratch
    assert 80 * MIB <= memory.added <= 120 * MIB, memory.added / MIB
    assert memory.start >= len(before)  # what was resident before the region is its starting level
    with PeakMemory(torch.device("cpu")) as idle:
        pass
    assert idle.added < 16 * MIB  # the first region's peak is not carried into the next
    del before


def test_a_runs_peak_on_cpu_is_the_processes_peak_rss():
    assert peak_memory_bytes(torch.device("cpu")) >= 64 * MIB  # torch alone is resident
