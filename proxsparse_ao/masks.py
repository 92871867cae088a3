"""N:M masks and 2:4 pattern checks: the format core shared by learning, baselines and the pass.

Groups are M consecutive entries along the last dimension (the input dimension of an
`[out, in]` weight). Every selection breaks ties the same way, the lower index wins,
because de-quantised checkpoints tie often and masks must not depend on the kernel.
"""

from __future__ import annotations

import numbers

import torch

from .errors import ProxSparseError


class SparsityPatternError(ProxSparseError, ValueError):
    """A tensor that should be N:M sparse is not."""


class MaskArgumentError(ProxSparseError, ValueError):
    """An argument the mask utilities cannot work with: not a tensor, a group size that is no int >= 1, a
    last dimension that is no multiple of it."""


def _check_arguments(tensor: torch.Tensor, m: int, what: str) -> None:
    """Refuse what would fail deep inside (a numpy array: AttributeError; m = 0: ZeroDivisionError) or
    pass silently (a float m)."""
    if not isinstance(tensor, torch.Tensor):
        raise MaskArgumentError(f"{what}: expected a torch.Tensor, got {type(tensor).__name__}")
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
        raise MaskArgumentError(f"{what}: need m >= 1 (an int, the group size), got m={m!r}")


def _groups(tensor: torch.Tensor, m: int, what: str) -> torch.Tensor:
    _check_arguments(tensor, m, what)
    if tensor.dim() < 1 or tensor.shape[-1] % m:
        raise MaskArgumentError(f"{what}: the last dimension of shape {tuple(tensor.shape)} is not a multiple of {m}")
    return tensor.reshape(-1, m)


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the n largest scores in every group of m (lower index wins ties)."""
    _check_arguments(scores, m, "nm_mask")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n <= m:
        raise MaskArgumentError(f"nm_mask: need 0 <= n <= m and m >= 1 (ints), got n={n!r}, m={m!r}")
    groups = _groups(scores, m, "nm_mask")
    if groups.is_floating_point() and bool(torch.isnan(groups).any()):
        raise MaskArgumentError("nm_mask: scores contain NaN")
    if (n, m) == (2, 4):
        return top2_of_4(groups).reshape(scores.shape)
    greater = groups.unsqueeze(1) > groups.unsqueeze(2)  # [g, i, j]: score_j > score_i
    tied_before = (groups.unsqueeze(1) == groups.unsqueeze(2)) & torch.ones(
        m, m, dtype=torch.bool, device=groups.device
    ).tril(-1)
    rank = (greater | tied_before).sum(2)
    return (rank < n).reshape(scores.shape)


def top2_of_4(groups: torch.Tensor) -> torch.Tensor:
    """`nm_mask(groups, 2, 4)` for scores already shaped [groups, 4] with no NaN (not checked), from the
    6 pairwise comparisons of each group (a fraction of the time and memory of the general rank count):
    entry i beats j when its score is larger, or equal with i < j; the 2 entries that beat 2 others win."""
    a0, a1, a2, a3 = groups.unbind(1)
    b01, b02, b03, b12, b13, b23 = a0 >= a1, a0 >= a2, a0 >= a3, a1 >= a2, a1 >= a3, a2 >= a3
    wins = (
        b01.to(torch.uint8) + b02 + b03,
        (~b01).to(torch.uint8) + b12 + b13,
        (~b02).to(torch.uint8) + ~b12 + b23,
        (~b03).to(torch.uint8) + ~b13 + ~b23,
    )
    return torch.stack([w >= 2 for w in wins], 1)


def magnitude_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """The n:m mask of the largest |weight| per group."""
    return nm_mask(weight.detach().abs(), n, m)


def learned_mask(scores: torch.Tensor, original: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """The n:m mask of the largest scores (>= 0) among the entries whose ORIGINAL weight is non-zero;
    an original zero is kept only in a group with fewer than n non-zeros. Learning can grow a weight
    that was 0 (a model pruned before, zeros a checkpoint already had), and a kept slot there would
    keep nothing once the mask is applied to the original weights."""
    original = original.to(scores.device)
    below = torch.full((), -1.0, dtype=scores.dtype, device=scores.device)
    return nm_mask(torch.where(original != 0, scores, below), n, m)


def check_mask_fits(weight: torch.Tensor, mask: torch.Tensor, what: str = "apply_mask") -> None:
    """Refuse a mask that is not a bool tensor of the weight's own shape: a 0/1 float or int mask failed
    deep inside torch, and a mask of another shape was broadcast (one row's mask applied to every row,
    or a result of the mask's shape rather than the weight's)."""
    if not isinstance(weight, torch.Tensor) or not isinstance(mask, torch.Tensor):
        got = type(weight if not isinstance(weight, torch.Tensor) else mask).__name__
        raise MaskArgumentError(f"{what}: the weight and the mask must be tensors, got {got}")
    if mask.dtype != torch.bool or mask.shape != weight.shape:
        raise MaskArgumentError(
            f"{what}: the mask is {mask.dtype} {tuple(mask.shape)}; the weight needs torch.bool {tuple(weight.shape)}"
            + (" (mask.bool() makes one of a 0/1 mask)" if mask.dtype != torch.bool and mask.shape == weight.shape else "")
        )


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """weight where mask, +0.0 elsewhere (never -0.0, which `weight * mask` gives for negatives). The mask is
    a bool tensor of the weight's shape."""
    check_mask_fits(weight, mask)
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def apply_mask_(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """In-place `apply_mask`."""
    check_mask_fits(weight, mask, "apply_mask_")
    return weight.masked_fill_(~mask, 0.0)


def nonzeros_per_group(tensor: torch.Tensor, m: int = 4) -> torch.Tensor:
    """Number of non-zero entries in every group of m, flattened to [groups]."""
    return (_groups(tensor, m, "nonzeros_per_group") != 0).sum(1)


def pattern_stats(tensor: torch.Tensor, m: int = 4) -> dict[int, float]:
    """Fraction of groups with exactly k non-zeros, for k = 0..m."""
    counts = torch.bincount(nonzeros_per_group(tensor, m), minlength=m + 1).double()
    total = max(float(counts.sum()), 1.0)
    return {k: float(counts[k]) / total for k in range(m + 1)}


def fraction_nm(tensor: torch.Tensor, n: int = 2, m: int = 4) -> float:
    """Fraction of groups that already have at most n non-zeros."""
    per_group = nonzeros_per_group(tensor, m)
    return float((per_group <= n).double().mean()) if per_group.numel() else 1.0


def check_nm(tensor: torch.Tensor, name: str = "tensor", n: int = 2, m: int = 4) -> None:
    """Raise SparsityPatternError naming the tensor, its bad-group count and first bad index."""
    _check_arguments(tensor, m, f"check_nm of {name}")
    if tensor.dim() < 1 or tensor.shape[-1] % m:
        raise SparsityPatternError(f"{name}: last dimension of shape {tuple(tensor.shape)} is not a multiple of {m}")
    per_group = nonzeros_per_group(tensor, m)
    bad = (per_group > n).nonzero()
    if bad.numel():
        first = int(bad[0]) * m
        index = list(torch.unravel_index(torch.tensor(first), tensor.shape))
        where = ", ".join(str(int(i)) for i in index)
        raise SparsityPatternError(
            f"{name}: {bad.numel()} of {per_group.numel()} groups of {m} have more than {n} non-zeros "
            f"(first bad group starts at [{where}])"
        )


def is_nm(tensor: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of m has at most n non-zeros."""
    _check_arguments(tensor, m, "is_nm")
    return tensor.dim() >= 1 and tensor.shape[-1] % m == 0 and bool((nonzeros_per_group(tensor, m) <= n).all())


def mask_codes(mask: torch.Tensor) -> torch.Tensor:
    """One uint8 code per group of 4 from a boolean mask (bit k = position k kept): 1/16 of an fp32 weight.
    The bit weights are made on the mask's device (a copy from the host would wait for the GPU)."""
    groups = mask.reshape(-1, 4).to(torch.uint8)
    bits = torch.arange(4, dtype=torch.uint8, device=groups.device)
    return (groups << bits).sum(1, dtype=torch.uint8)
