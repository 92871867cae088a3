"""Which nn.Linear layers may run as 2:4, and why the others may not.

Exclusion patterns follow the llm-compressor convention: a module name, a dotted suffix of
one ("lm_head", "mlp.down_proj"), or "re:<regex>" matched against the full name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from proxsparse_ao.sparse_format import unsupported_reason

DEFAULT_EXCLUDE: tuple[str, ...] = ("lm_head",)


def excluded_by(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that excludes module `name`, or None."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return pattern
        elif name == pattern or name.endswith("." + pattern):
            return pattern
    return None


def exclude_patterns(exclude: str | Iterable[str]) -> list[str]:
    """`exclude` as a list of patterns; anything but strings, or a "re:" pattern that does not
    compile, is a ValueError naming it (rather than a TypeError or re.error from deep inside)."""
    if isinstance(exclude, str):
        exclude = [exclude]
    elif not isinstance(exclude, Iterable):
        raise ValueError(f"exclude must be a pattern or a list of patterns, got {type(exclude).__name__}")
    patterns = list(exclude)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"exclude patterns must be strings, got {pattern!r}")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as err:
                raise ValueError(f"exclude pattern {pattern!r} is not a valid regular expression ({err})") from None
    return patterns


def linear_status(model: nn.Module, exclude: str | Iterable[str] = DEFAULT_EXCLUDE) -> dict[str, str | None]:
    """For every nn.Linear (model order): None when it can run as 2:4, else the reason it cannot."""
    patterns = exclude_patterns(exclude)
    status: dict[str, str | None] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        pattern = excluded_by(name, patterns)
        status[name] = f"excluded (matches {pattern!r})" if pattern is not None else unsupported_reason(module.weight)
    return status


class LinearWeights:
    """Names the constants a compiled graph multiplies by (the pass's `resolve`).

    A constant is either an nn.Linear weight itself (same storage) or, on CUDA, a
    concatenation Inductor made of several (rows of q/k/v, gate/up): parts are matched
    row block by row block against the model's weights, by value.
    """

    PREFIX = 8

    def __init__(self, model: nn.Module) -> None:
        self._by_ptr: dict[tuple[int, tuple[int, ...]], str] = {}
        self._by_row: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.weight.dim() == 2 and module.weight.numel():
                weight = module.weight.detach()
                self._by_ptr[(weight.data_ptr(), tuple(weight.shape))] = name
                self._by_row.setdefault(self._row_key(weight, 0), []).append((name, weight))

    def _row_key(self, weight: torch.Tensor, row: int) -> tuple:
        return weight.shape[1], weight.dtype, weight.device, tuple(weight[row, : self.PREFIX].tolist())

    def __call__(self, weight: torch.Tensor) -> list[tuple[str, int]] | None:
        """[(layer name, rows)] covering `weight`'s rows in order, or None when they are not all known."""
        name = self._by_ptr.get((weight.data_ptr(), tuple(weight.shape)))
        if name is not None:
            return [(name, weight.shape[0])]
        parts: list[tuple[str, int]] = []
        row = 0
        while row < weight.shape[0]:
            for name, candidate in self._by_row.get(self._row_key(weight, row), []):
                rows = candidate.shape[0]
                if row + rows <= weight.shape[0] and torch.equal(weight[row : row + rows], candidate):
                    parts.append((name, rows))
                    row += rows
                    break
            else:
                return None
        return parts
