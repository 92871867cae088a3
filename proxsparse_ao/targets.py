"""Which linear layers ProxSparse prunes: `targets`/`ignore` patterns (llm-compressor convention).

A pattern is a module class name ("Linear": the class or any base class, so nn.Linear
subclasses such as Falcon's FalconLinear match it), a module name or dotted suffix of one
("q_proj", "layers.0.mlp.up_proj"), or "re:<regex>" matched against the full module name.
Only `nn.Linear` leaves are ever targets; the input/output embeddings and anything named
lm_head are excluded whatever the patterns say. Weight matrices held by other modules (the
fused expert tensors of transformers' MoE blocks, GPT-2's Conv1D) stay dense, with a warning
that names them (an error under `strict`). Each such warning is given once per model: a run that
selects again on the same model (sparsify_, then target_filter for quantize_) does not repeat it.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ProxSparseError, meta_weight_message, warn_caller
from .masks import check_nm

FilterFn = Callable[[nn.Module, str], bool]

# the selection warnings already given about each model: held by the model's life, so another model,
# even an identical one, is warned again
_WARNED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


class NoTargetsError(ProxSparseError, ValueError):
    """The patterns selected no prunable linear layer."""


def eager_model(model: nn.Module) -> nn.Module:
    """The module inside a `torch.compile` wrapper (OptimizedModule), else `model`: learning and
    calibration run it eagerly (compiling a training step costs minutes, and their hooks break
    graphs), and name layers as the model itself does, not under "_orig_mod.". Its weights are the
    wrapper's, so pruning it prunes what the wrapper runs."""
    from torch._dynamo.eval_frame import OptimizedModule

    while isinstance(model, OptimizedModule):
        model = model._orig_mod
    return model


@dataclass
class TargetSelection:
    """The chosen layers (name -> module, in model order) and the ones skipped, with why."""

    layers: dict[str, nn.Linear]
    skipped: dict[str, str] = field(default_factory=dict)


def matches(pattern: str, name: str, module: nn.Module) -> bool:
    """True when one targets/ignore pattern selects the module called `name`."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    classes = {cls.__name__ for cls in type(module).__mro__}
    return pattern in classes or name == pattern or name.endswith("." + pattern)


def protected_modules(model: nn.Module) -> set[int]:
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


def masked_modules(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """The module of each mask, after checking that the mask fits it: the module exists and has a 2-D
    weight, is not an embedding or lm_head, and the mask is a bool 2:4 mask of the weight's shape."""
    if not isinstance(masks, dict):
        raise ProxSparseError(f"masks must be a dict of layer name -> bool mask, got {type(masks).__name__}")
    protected = protected_modules(model)
    modules = {}
    for name, mask in masks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ProxSparseError(f"mask for {name}: the model has no such module") from None
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ProxSparseError(f"mask for {name}: {type(module).__name__} has no 2-D weight")
        if id(module) in protected or name.split(".")[-1] == "lm_head":
            raise ProxSparseError(f"mask for {name}: embeddings and lm_head are never pruned")
        if not isinstance(mask, torch.Tensor) or mask.shape != weight.shape or mask.dtype != torch.bool:
            described = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ProxSparseError(f"mask for {name} is {described}; the weight needs torch.bool {tuple(weight.shape)}")
        check_nm(mask, f"mask of {name}")
        modules[name] = module
    return modules


def select_targets(
    model: nn.Module,
    targets: Iterable[str],
    ignore: Iterable[str] = (),
    filter_fn: FilterFn | None = None,
    *,
    strict: bool = False,
    warn: bool = True,
) -> TargetSelection:
    """The linear layers to prune. Layers whose in_features is not a multiple of 4 are skipped
    with a warning that lists them, or raise under `strict`. No layer at all raises NoTargetsError.
    `warn=False` gives no warning and leaves the once-per-model record alone, so a later selection
    on the same model still warns (for callers that only look, such as verification)."""
    if not isinstance(model, nn.Module):
        raise ProxSparseError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    targets, ignore = _patterns(targets, "targets"), _patterns(ignore, "ignore")
    if filter_fn is not None and not callable(filter_fn):
        raise ProxSparseError(f"filter_fn must be a function (module, name) -> bool, got {type(filter_fn).__name__} {filter_fn!r}")
    protected = protected_modules(model)
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
        if warn:
            _warn_once(model, f"skipping {len(skipped)} layer(s) that cannot be made 2:4: {listing}")
    others, share = _matrices_outside_linears(model, protected)
    if not layers:
        raise NoTargetsError(
            f"no prunable linear layer matches targets={targets} ignore={ignore}"
            + (" and the filter_fn" if filter_fn is not None else "")
            + (f" ({len(skipped)} skipped)" if skipped else "")
            + (f"; the model's weight matrices are in other modules ({_listing(others)}): only nn.Linear layers "
               "are pruned (convert them to nn.Linear first)" if others else "")
        )
    if others:
        message = (f"{len(others)} weight matri{'x is' if len(others) == 1 else 'ces are'} not in nn.Linear layers and "
                   f"stay{'s' if len(others) == 1 else ''} dense ({share:.0%} of the weights outside the embeddings): "
                   f"{_listing(others)}; only nn.Linear layers are pruned")
        if strict:
            raise ProxSparseError(message)
        if warn:
            _warn_once(model, message)
    return TargetSelection(layers, skipped)


def _patterns(patterns: Any, what: str) -> list[str]:
    """`patterns` as a list of pattern strings. A single str is refused: iterated, "q_proj" would be the
    patterns "q", "_", "p", ... (an ignore list that silently ignores nothing). So are items that are not
    str and "re:" patterns that do not compile, which would fail deep inside the selection."""
    if isinstance(patterns, str):
        raise ProxSparseError(f"{what} must be a list of patterns, got the str {patterns!r}: write [{patterns!r}]")
    if not isinstance(patterns, Iterable):
        raise ProxSparseError(f"{what} must be a list of patterns, got {type(patterns).__name__} {patterns!r}")
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ProxSparseError(f"{what} patterns must be str, got {type(pattern).__name__} {pattern!r}")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as err:
                raise ProxSparseError(f"{what}: {pattern!r} is not a valid regular expression ({err})") from None
    return patterns


def _warn_once(model: nn.Module, message: str) -> None:
    """Warn (at the user's call into the library) unless this model was already warned so."""
    try:
        given = _WARNED.setdefault(model, set())
    except TypeError:  # a model that cannot be referenced weakly: warned every time
        given = set()
    if message not in given:
        given.add(message)
        warn_caller(message)


def _matrices_outside_linears(model: nn.Module, protected: set[int]) -> tuple[list[str], float]:
    """Parameters of 2+ dimensions held by modules that are neither nn.Linear nor embeddings (fused MoE
    expert tensors, routers, GPT-2's Conv1D), as "name [shape] (Class)", and their share of the
    parameters outside the embeddings."""
    found, outside, total = [], 0, 0
    for module_name, module in model.named_modules():
        if id(module) in protected or isinstance(module, nn.Embedding):
            continue
        for name, parameter in module.named_parameters(recurse=False):
            total += parameter.numel()
            if parameter.dim() >= 2 and not isinstance(module, nn.Linear):
                found.append(f"{module_name + '.' if module_name else ''}{name} {list(parameter.shape)} ({type(module).__name__})")
                outside += parameter.numel()
    return found, outside / max(total, 1)


def _listing(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def target_filter(model: nn.Module, config: Any, filter_fn: FilterFn | None = None) -> FilterFn:
    """A `quantize_` filter_fn that selects exactly the layers `sparsify_` prunes under `config` (its
    targets/ignore/strict; never embeddings or lm_head). torchao's own default selects every
    nn.Linear, lm_head included, which on a tied model would prune the input embeddings too."""
    names = set(select_targets(model, config.targets, config.ignore, filter_fn, strict=config.strict).layers)
    return lambda module, fqn: fqn in names


def pruned_layers(names: Iterable[str]) -> dict[str, int | str]:
    """Which layers a method pruned, in a few bytes for a result file: their count and the first 12 hex
    digits of the SHA-256 of their sorted names, one per line. Runs whose `ignore` patterns differ
    only by patterns that matched nothing pruned the same layers, and have the same record."""
    ordered = sorted(names)
    return {"count": len(ordered), "sha256": hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:12]}


def check_target_weights(layers: dict[str, nn.Linear]) -> None:
    """Refuse, before any work, target weights that cannot be pruned: not loaded (meta device),
    holding NaN/Inf (the error names the layer and the first bad entry), or one weight tensor held
    by two targets (a tied weight gets one mask, so only one of its layers may be a target)."""
    holders: dict[int, str] = {}
    for name, layer in layers.items():
        other = holders.setdefault(id(layer.weight), name)
        if other != name:
            raise ProxSparseError(
                f"{other} and {name} share one weight tensor: it gets one mask, so make only one of them a target "
                "(add the other to ignore)"
            )
    for name, layer in layers.items():
        weight = layer.weight.detach()
        if weight.is_meta:
            raise ProxSparseError(meta_weight_message(name))
        bad = ~torch.isfinite(weight)
        if bool(bad.any()):
            index = [int(i) for i in bad.nonzero()[0]]
            raise ProxSparseError(f"{name}: the weight has a non-finite value ({float(weight[tuple(index)])}) at {index}")


def weight_rms(weight: torch.Tensor) -> float:
    """Root mean square of a weight, in float64 (the scale the relative strength refers to)."""
    return float(weight.detach().double().square().mean().sqrt())
