"""Compression of exact 2:4 weights into the CUTLASS layout, and its refusals."""

from __future__ import annotations

import pytest
import torch

from proxsparse_ao.masks import SparsityPatternError, apply_mask, magnitude_mask
from proxsparse_ao.sparse_format import (
    UnsupportedWeightError,
    compress_24,
    decompress_24,
    layout_reason,
    unsupported_reason,
)


def pruned(rows: int, cols: int, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> torch.Tensor:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return apply_mask(weight, magnitude_mask(weight))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_round_trip_is_exact(dtype):
    weight = pruned(64, 128, dtype)
    values, meta = compress_24(weight)
    assert values.shape == (64, 64) and values.dtype == dtype
    assert meta.shape == (64, 8) and meta.dtype == torch.int16
    assert torch.equal(decompress_24(values, meta), weight)


def test_groups_with_fewer_than_two_nonzeros_round_trip():
    weight = pruned(32, 64)
    weight[0, :8] = 0
    weight[5, 4:8] = torch.tensor([0.0, 0.0, 0.0, 1.5])
    values, meta = compress_24(weight)
    assert torch.equal(decompress_24(values, meta), weight)


def test_non_2to4_weight_is_rejected_with_its_name():
    weight = pruned(32, 64)
    weight[3, 9] = weight[3, 10] = 1.0
    weight[3, 8] = weight[3, 11] = 1.0
    with pytest.raises(SparsityPatternError, match=r"layers\.0\.q_proj: 1 of 512 groups .* \[3, 8\]"):
        compress_24(weight, "layers.0.q_proj")


@pytest.mark.parametrize(
    ("weight", "needle"),
    [
        (torch.zeros(32, 64), "dtype float32"),
        (torch.zeros(32, 64, dtype=torch.int8), "dtype int8"),
        (torch.zeros(48, 64, dtype=torch.bfloat16), "shape 48x64"),
        (torch.zeros(32, 96, dtype=torch.bfloat16), "shape 32x96"),
        (torch.zeros(64, dtype=torch.bfloat16), "2-D"),
    ],
)
def test_unsupported_dtypes_and_shapes_are_refused_with_a_reason(weight, needle):
    assert needle in layout_reason(weight)
    with pytest.raises(UnsupportedWeightError, match=needle):
        compress_24(weight, "w")


def test_unsupported_reason_covers_the_pattern():
    weight = pruned(32, 64)
    assert unsupported_reason(weight) is None
    assert unsupported_reason(torch.ones(32, 64, dtype=torch.bfloat16)) == (
        "not 2:4: 512 of 512 groups of 4 have more than 2 non-zeros"
    )


def test_a_single_group_with_three_nonzeros_makes_a_weight_not_2to4():
    weight = pruned(32, 64)
    weight[7, 12:16] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    assert unsupported_reason(weight) == "not 2:4: 1 of 512 groups of 4 have more than 2 non-zeros"
