"""The library's warnings name the user's line, however deep its own calls go."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from proxsparse_ao import ProxSparseConfig, sparsify_
from proxsparse_ao.targets import select_targets


def _next_line() -> int:
    return sys._getframe(1).f_lineno + 1


def test_a_warning_from_one_call_deep_names_the_callers_line():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 8))
    with pytest.warns(UserWarning, match="skipping 1 layer") as caught:
        line = _next_line()
        select_targets(model, ["Linear"])
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_a_warning_from_several_calls_deep_names_the_callers_line_too(tiny_llama):
    """sparsify_ -> learn -> select_targets -> the warning: still the line that called sparsify_."""
    tiny_llama.model.layers[0].mlp.odd = nn.Linear(6, 8)  # in_features not a multiple of 4: skipped, with a warning
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"skipping 1 layer.*odd") as caught:
        line = _next_line()
        sparsify_(tiny_llama, ProxSparseConfig(samples=2, seqlen=16, batch_size=2), calibration=tokens)
    said = [w for w in caught if "skipping" in str(w.message)]
    assert [(w.filename, w.lineno) for w in said] == [(__file__, line)]
