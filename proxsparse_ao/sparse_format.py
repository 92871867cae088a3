"""The compressed 2:4 weight format the sparse kernels read: CUTLASS (values, metadata).

A dense `[out, in]` weight whose every group of 4 along `in` holds at most 2 non-zeros is
stored as `values` (`[out, in / 2]`, same dtype) and `meta` (`[out, in / 16]` int16 for
fp16/bf16). The conversion is torch's own pure-Python CUTLASS packing, which also runs on
CPU; it does not check the pattern and silently drops values of a non-2:4 input, so
`compress_24` checks it first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from .errors import ProxSparseError
from .masks import check_nm, nonzeros_per_group

SPARSE_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
ROW_MULTIPLE = 32
COL_MULTIPLE = 64


class UnsupportedWeightError(ProxSparseError, ValueError):
    """A weight whose dtype or shape the 2:4 kernels cannot run."""


class Compressed24(NamedTuple):
    """A 2:4 weight in CUTLASS layout: kept values `[out, in/2]` and their index metadata."""

    values: torch.Tensor
    meta: torch.Tensor


def layout_reason(weight: torch.Tensor) -> str | None:
    """Why the 2:4 kernels cannot take this weight's dtype or shape, or None when they can."""
    if weight.dtype not in SPARSE_DTYPES:
        return f"dtype {str(weight.dtype).removeprefix('torch.')}: 2:4 kernels need float16 or bfloat16"
    if weight.dim() != 2:
        return f"shape {tuple(weight.shape)}: a 2:4 weight must be 2-D [out, in]"
    rows, cols = weight.shape
    if rows % ROW_MULTIPLE or cols % COL_MULTIPLE:
        return (
            f"shape {rows}x{cols}: 2:4 kernels need out_features % {ROW_MULTIPLE} == 0 "
            f"and in_features % {COL_MULTIPLE} == 0"
        )
    return None


def unsupported_reason(weight: torch.Tensor) -> str | None:
    """Why this weight cannot run as 2:4 (dtype, shape, or not 2:4), or None when it can."""
    reason = layout_reason(weight)
    if reason is not None:
        return reason
    per_group = nonzeros_per_group(weight.detach())
    bad = int((per_group > 2).sum())
    if bad:
        return f"not 2:4: {bad} of {per_group.numel()} groups of 4 have more than 2 non-zeros"
    return None


def compress_24(weight: torch.Tensor, name: str = "weight") -> Compressed24:
    """Compress an exactly-2:4 fp16/bf16 weight into CUTLASS (values, meta).

    Raises UnsupportedWeightError for a dtype or shape the kernels cannot run and
    SparsityPatternError (naming `name`) when a group of 4 has more than 2 non-zeros.
    """
    reason = layout_reason(weight)
    if reason is not None:
        raise UnsupportedWeightError(f"{name}: {reason}")
    weight = weight.detach()
    check_nm(weight, name)
    values, meta = sparse_semi_structured_from_dense_cutlass(weight.contiguous())
    return Compressed24(values, meta)


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense `[out, in]` weight (zeros where pruned) of a CUTLASS 2:4 pair."""
    return sparse_semi_structured_to_dense_cutlass(values, meta)
