"""Which linear layers ProxSparse prunes: `targets`/`ignore` patterns (llm-compressor convention).

A pattern is a module class name ("Linear"), a module name or dotted suffix of one
("q_proj", "layers.0.mlp.up_proj"), or "re:<regex>" matched against the full module name.
Only `nn.Linear` leaves are ever targets; the input/output embeddings and anything named
lm_head are excluded whatever the patterns say.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ProxSparseError

FilterFn = Callable[[nn.Module, str], bool]


class NoTargetsError(ProxSparseError, ValueError):
    """The patterns selected no prunable linear layer."""


@dataclass
class TargetSelection:
    """The chosen layers (name -> module, in model order) and the ones skipped, with why."""

    layers: dict[str, nn.Linear]
    skipped: dict[str, str] = field(default_factory=dict)


def matches(pattern: str, name: str, module: nn.Module) -> bool:
    """True when one targets/ignore pattern selects the module called `name`."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == type(module).__name__ or name == pattern or name.endswith("." + pattern)


def _protected(model: nn.Module) -> set[int]:
    """ids of modules never pruned: input and output embeddings (tied or not)."""
    protected: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)() if hasattr(model, getter) else None
        except (NotImplementedError, AttributeError):
            module = None
        if isinstance(module, nn.Module):
            protected.add(id(module))
    return protected


def select_targets(
    model: nn.Module,
    targets: Iterable[str],
    ignore: Iterable[str] = (),
    filter_fn: FilterFn | None = None,
    *,
    strict: bool = False,
) -> TargetSelection:
    """The linear layers to prune. Layers whose in_features is not a multiple of 4 are skipped
    with a warning that lists them, or raise under `strict`. No layer at all raises NoTargetsError."""
    targets, ignore = list(targets), list(ignore)
    protected = _protected(model)
    layers: dict[str, nn.Linear] = {}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not name:
            continue
        if id(module) in protected or name.split(".")[-1] == "lm_head" or isinstance(module.weight, nn.UninitializedParameter):
            continue
        if not any(matches(p, name, module) for p in targets) or any(matches(p, name, module) for p in ignore):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        if module.weight.dim() != 2 or module.in_features % 4:
            skipped[name] = f"in_features={module.in_features} is not a multiple of 4"
            continue
        if not module.weight.is_floating_point():
            skipped[name] = f"weight dtype {module.weight.dtype} is not floating point"
            continue
        layers[name] = module
    if skipped:
        listing = "; ".join(f"{n} ({why})" for n, why in skipped.items())
        if strict:
            raise ProxSparseError(f"{len(skipped)} target layer(s) cannot be made 2:4: {listing}")
        warnings.warn(f"skipping {len(skipped)} layer(s) that cannot be made 2:4: {listing}", stacklevel=2)
    if not layers:
        raise NoTargetsError(
            f"no prunable linear layer matches targets={targets} ignore={ignore}"
            + (" and the filter_fn" if filter_fn is not None else "")
            + (f" ({len(skipped)} skipped)" if skipped else "")
            + _not_linear(model, targets, ignore)
        )
    return TargetSelection(layers, skipped)


def _not_linear(model: nn.Module, targets: list[str], ignore: list[str]) -> str:
    """The modules the patterns select that are not nn.Linear (GPT-2's Conv1D, say), for the error."""
    names = [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if name and not isinstance(module, nn.Linear) and not list(module.children())
        and any(matches(p, name, module) for p in targets) and not any(matches(p, name, module) for p in ignore)
    ]
    if not names:
        return ""
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"; only nn.Linear layers are pruned, and the patterns select {', '.join(names[:3])}{more}"


def target_filter(model: nn.Module, config: Any, filter_fn: FilterFn | None = None) -> FilterFn:
    """A `quantize_` filter_fn that selects exactly the layers `sparsify_` prunes under `config` (its
    targets/ignore/strict; never embeddings or lm_head). torchao's own default selects every
    nn.Linear, lm_head included, which on a tied model would prune the input embeddings too."""
    names = set(select_targets(model, config.targets, config.ignore, filter_fn, strict=config.strict).layers)
    return lambda module, fqn: fqn in names


def check_target_weights(layers: dict[str, nn.Linear]) -> None:
    """Refuse, before any work, target weights that cannot be pruned: not loaded (meta device) or
    holding NaN/Inf; the error names the layer and the first bad entry."""
    for name, layer in layers.items():
        weight = layer.weight.detach()
        if weight.is_meta:
            raise ProxSparseError(f"{name}: the weight is on the meta device (not loaded); load the model's weights first")
        bad = ~torch.isfinite(weight)
        if bool(bad.any()):
            index = [int(i) for i in bad.nonzero()[0]]
            raise ProxSparseError(f"{name}: the weight has a non-finite value ({float(weight[tuple(index)])}) at {index}")


def weight_rms(weight: torch.Tensor) -> float:
    """Root mean square of a weight, in float64 (the scale the relative strength refers to)."""
    return float(weight.detach().double().square().mean().sqrt())
