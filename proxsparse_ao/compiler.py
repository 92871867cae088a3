"""`proxsparse_ao.compile` (this module is `proxsparse_ao.compiler`, as `torch.compile` lives in
`torch.compiler`): torch.compile with the 2:4 post-grad pass, and a report of what it did.

The pass reads weight values, which Inductor exposes only with freezing on under no_grad,
and those settings must hold when Dynamo traces (the first call and every recompile), so
the returned module enters them on every call. Its `generate` runs transformers' generation
with every forward pass (prefill and each decode step) through the compiled model. Each
linear ends up sparse or dense:

* `sparse="auto"` (default): sparse only where it is faster. On CUDA each (M range, N, K)
  is timed once against dense (`SpeedTable`). Elsewhere (CPU) `linear24` is a
  decompress-then-dense reference kernel, always slower than dense, so nothing is rewritten.
* `sparse="always"`: rewrite every eligible linear whatever the speed (tests, CPU checks of
  the rewrite, export).
* `sparse="never"`: the same compile settings with no rewrite (the dense baseline).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._inductor.config
from torch import nn

from proxsparse_ao.passes import DEFAULT_EXCLUDE, LinearWeights, PassRecord, Sparse24Pass, SparseLinear24, linear_status
from proxsparse_ao.passes.select import exclude_patterns
from proxsparse_ao.passes.sparse24 import Decide

from .errors import ProxSparseError, meta_weight_message
from .ops import cuda_backend, cuda_kernel_available
from .speed import SpeedTable
from .targets import eager_model

SPARSE_MODES = ("auto", "always", "never")
PASS_SETTINGS = ("freezing", "post_grad_custom_post_pass", "cpp.weight_prepack")
"""The Inductor settings `compile` sets for the pass; an `options` entry for one would switch it off."""


_ENTRIES = itertools.count()


@functools.cache
def shared_timings() -> SpeedTable:
    """The process-wide in-memory SpeedTable `compile` uses when given none: each shape is timed once per process."""
    return SpeedTable()


def kernel_missing(device: torch.device) -> str | None:
    """Why linear24 cannot run on this CUDA device at all, or None (other devices run the reference kernel)."""
    if device.type != "cuda":
        return None
    if not cuda_kernel_available():
        return "this torch build has no 2:4 matmul (CUTLASS or cuSPARSELt)"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"GPU sm{major}{minor} has no 2:4 sparse tensor cores (needs sm80 or newer)"
    if cuda_backend((major, minor)) is None:
        return f"this torch build has no 2:4 matmul for sm{major}{minor} (torch's CUTLASS one runs on sm8x only; newer GPUs need cuSPARSELt)"
    return None


def never_faster(device: torch.device) -> str | None:
    """Why 2:4 cannot beat dense on this device at any shape, or None when per-shape timing decides."""
    if device.type != "cuda":
        return f"slower than dense on {device.type}: its linear24 kernel decompresses the weight, then runs dense"
    return kernel_missing(device)


@dataclass
class CompileReport:
    """What the pass did: every linear's static eligibility and, per compiled graph, each decision.

    `graphs` fills in as the model is called: torch.compile traces lazily, once per graph and
    recompile, and a layer may be sparse in one graph (long prompts) and dense in another
    (decode, where sparse is slower). `swapped` names the layers already swapped to
    SparseLinear24 (`swap_linears`) before compiling: they run linear24 in every graph.
    """

    sparse: str
    linears: dict[str, str | None]
    graphs: list[list[PassRecord]] = field(default_factory=list)
    swapped: list[str] = field(default_factory=list)

    @property
    def eligible(self) -> list[str]:
        """Linears that can run as 2:4 (not excluded, fp16/bf16, kernel shape, exactly 2:4)."""
        return [name for name, reason in self.linears.items() if reason is None]

    @property
    def rewritten(self) -> list[str]:
        """Linears rewritten into linear24 in at least one compiled graph (model order)."""
        done = {r.name for graph in self.graphs for r in graph if r.rewritten}
        return [name for name in self.linears if name in done]

    @property
    def not_rewritten(self) -> dict[str, str]:
        """Every linear never rewritten, with the (latest) reason."""
        latest = {r.name: r.reason for graph in self.graphs for r in graph if not r.rewritten}
        rewritten = set(self.rewritten)
        reasons: dict[str, str] = {}
        for name, reason in self.linears.items():
            if name in rewritten:
                continue
            reasons[name] = reason or latest.get(name, "not seen in a compiled graph yet (call the model first)")
        return reasons

    def summary(self) -> str:
        """A few lines: counts per graph and per reason."""
        lines = [
            f"2:4 compile (sparse={self.sparse!r}): {len(self.rewritten)} of {len(self.linears)} linears rewritten "
            f"in at least one graph; {len(self.eligible)} eligible; compiled graphs so far: {len(self.graphs)}"
        ]
        if self.swapped:
            lines.append(f"  swapped to SparseLinear24 before compiling: {len(self.swapped)} (linear24 in every graph)")
        for index, graph in enumerate(self.graphs):
            ranges = sorted({r.m_range for r in graph}, key=lambda r: r[0])
            lines.append(
                f"  graph {index}: {sum(r.rewritten for r in graph)} of {len(graph)} linears rewritten, M ranges {ranges}"
            )
        counts: dict[str, int] = {}
        for reason in self.not_rewritten.values():
            counts[reason] = counts.get(reason, 0) + 1
        lines += [f"  kept dense x{count}: {reason}" for reason, count in sorted(counts.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


class Sparse24Compiled(nn.Module):
    """The compiled model; every call runs under no_grad with the settings the 2:4 pass needs."""

    def __init__(self, model: nn.Module, compiled: Any, inductor_config: dict[str, Any], report: CompileReport) -> None:
        super().__init__()
        self.model = model
        self.report = report
        self.__dict__["compiled"] = compiled
        self.__dict__["inductor_config"] = inductor_config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's call with its forward compiled: hooks registered on the model itself run around it
        (eagerly), as they do around the model's own forward and in `generate`."""
        if not _has_call_hooks(self.model):
            return self._run(*args, **kwargs)
        with torch.no_grad(), self._routed():
            return self.model(*args, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        """The compiled forward, under the settings the 2:4 pass needs."""
        with torch.no_grad(), torch._inductor.config.patch(self.inductor_config):
            return self.compiled(*args, **kwargs)

    @contextlib.contextmanager
    def _routed(self) -> Iterator[None]:
        """The model's `forward` set to the compiled one for the duration, so that calling the model
        runs its own hooks around the compiled forward; the model's forward is put back after."""
        model = self.model
        own_forward = model.__dict__.get("forward")

        @functools.wraps(model.forward)  # generate reads the forward's signature to choose its inputs
        def through_compiled(*call_args: Any, **call_kwargs: Any) -> Any:
            return self._run(*call_args, **call_kwargs)

        model.forward = through_compiled
        try:
            yield
        finally:
            if own_forward is None:
                del model.forward
            else:
                model.forward = own_forward

    def __getattr__(self, name: str) -> Any:
        """What the compiled object lacks is read from the model (`config`, `device`, `dtype`,
        `generation_config`, ...), so code written for the model works with it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None:
                raise
            return getattr(model, name)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Sparse24Compiled:
        """`.to()`, `.half()`, `.cuda()` and the like: refused, because the compiled graphs hold the weights
        and the 2:4 choices made for the dtype and device at compile time."""
        raise ProxSparseError(
            "a compiled model cannot be cast or moved (its graphs hold the weights it was compiled with): "
            "cast or move the model first, then call proxsparse_ao.compile on it"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> Sparse24Compiled:
        """Refused: a copy would share the compiled graphs, so it would run the original model's
        weights and fill in the original's report."""
        raise ProxSparseError(
            "a compiled model cannot be deep-copied (the copy would run the original's graphs and weights): "
            "copy the model, then call proxsparse_ao.compile on the copy"
        )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The model's own `generate` (transformers), with every forward pass it makes going through
        this compiled model. Transformers' compile-at-generate is off by default here
        (`disable_compile=True`): the model is compiled already, with the 2:4 pass."""
        model = self.model
        if not callable(getattr(model, "generate", None)):
            raise ProxSparseError(f"{type(model).__name__} has no generate(): only a transformers generative model can generate")
        with self._routed():
            return model.generate(*args, **{"disable_compile": True, **kwargs})


def _has_call_hooks(module: nn.Module) -> bool:
    """Whether calling `module` runs hooks besides its forward (its own or global ones), as nn.Module checks."""
    hooks = torch.nn.modules.module
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks
        or hooks._global_backward_pre_hooks
    )


def _own_entry(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward` called from a function with a code object of its own, for torch.compile.

    Dynamo keeps compiled graphs, and its recompile limit, on the code object it is given, and
    its guards do not see the Inductor settings each compiled object enters. Compiling the
    model's `forward` itself would let a second compile of the model (or of another model of its
    class) serve graphs built with the first one's settings, and models of one class would share
    one recompile limit. The bound forward, not the module, is what runs: `generate` can then
    route the model's own calls here (by setting model.forward) without Dynamo tracing back into
    that route."""

    def entry(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    entry.__code__ = entry.__code__.replace(co_name=f"proxsparse_compiled_{next(_ENTRIES)}")
    return entry


def _decider(sparse: str, status: dict[str, str | None], timings: SpeedTable) -> Decide:
    def decide(names: list[str], weight: torch.Tensor, m_range: tuple[int, int | None]) -> tuple[bool, str]:
        if any(name not in status for name in names):
            return False, "not the weight of an nn.Linear of this model as it was at compile() (weights replaced since? compile again)"
        blocked = [(name, status[name]) for name in names if status[name] is not None]
        if blocked:
            if len(names) == 1:
                return False, blocked[0][1]
            return False, "fused by Inductor with " + ", ".join(f"{name} ({why})" for name, why in blocked)
        if sparse == "never":
            return False, "sparse='never'"
        reason = kernel_missing(weight.device) if sparse == "always" else never_faster(weight.device)
        if reason is not None:
            return False, reason
        if sparse == "always":
            return True, "forced (sparse='always')"
        return timings.choose(weight.device, weight.dtype, weight.shape[0], weight.shape[1], m_range)

    return decide


def _check_model(model: Any) -> None:
    """Refuse a model the pass cannot work on: not a module; one `compile` returned already (its graphs,
    traced inside the new one, were left as they were: nothing was rewritten, and nothing said so); linear
    weights on the meta device (not loaded, or offloaded by accelerate: the pass reads their values)."""
    if isinstance(model, Sparse24Compiled):
        raise ProxSparseError("the model was compiled by proxsparse_ao.compile already: compile the model it wraps (`compiled.model`)")
    if not isinstance(model, nn.Module):
        raise ProxSparseError(f"proxsparse_ao.compile takes a torch.nn.Module, got {type(model).__name__}")
    meta = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module.weight.is_meta]
    if meta:
        raise ProxSparseError(meta_weight_message(meta[0], "the 2:4 pass reads the weights, so load them into memory first"))


def compile(
    model: nn.Module,
    *,
    sparse: str = "auto",
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    timings: SpeedTable | None = None,
    **torch_compile_kwargs: Any,
) -> tuple[Sparse24Compiled, CompileReport]:
    """torch.compile `model` (inference) with eligible 2:4 linears running `proxsparse::linear24`.

    `sparse` is "auto" (sparse only where measured faster; nothing on CPU), "always" or
    "never"; `exclude` lists module names, dotted suffixes or "re:" regexes kept dense;
    `timings` holds the per-shape sparse-vs-dense measurements (default: one in-memory table
    per process; `SpeedTable(path=...)` keeps them across runs). Other keyword arguments go
    to torch.compile (fullgraph, dynamic, mode, options; the backend must be inductor, and
    `options` may not set the pass's own settings, `PASS_SETTINGS`). The report
    fills in as graphs are compiled.

    Every call of `compile` is a compile of its own: compiling one model twice (say dense,
    then sparse) gives two objects that never run each other's graphs. A model `torch.compile`d
    already is compiled as the model it wraps: its layers keep their own names (not "_orig_mod."),
    which `exclude` patterns and the report use.
    """
    model = eager_model(model)
    _check_model(model)
    if sparse not in SPARSE_MODES:
        raise ProxSparseError(f"sparse={sparse!r}: choose one of {', '.join(SPARSE_MODES)}")
    backend = torch_compile_kwargs.get("backend", "inductor")
    if backend != "inductor":
        raise ProxSparseError(f"backend={backend!r}: the 2:4 pass is an Inductor pass, use backend='inductor'")
    options = torch_compile_kwargs.get("options")
    if options is not None and not isinstance(options, dict):
        raise ProxSparseError(f"options must be a dict of Inductor settings, got {type(options).__name__}")
    spelled = {key.replace("-", "_"): key for key in options if isinstance(key, str)} if isinstance(options, dict) else {}
    clashes = [spelled[key] for key in PASS_SETTINGS if key in spelled]  # Inductor reads "-" in a key as "_"
    if clashes:
        raise ProxSparseError(
            f"options {', '.join(map(repr, clashes))}: proxsparse_ao.compile sets {', '.join(PASS_SETTINGS)} itself (an override turns "
            "the 2:4 pass off); leave them out of options, and use sparse='never' for a dense compile"
        )
    if timings is not None and not isinstance(timings, SpeedTable):
        raise ProxSparseError(f"timings must be a SpeedTable, got {type(timings).__name__}")
    try:
        exclude = exclude_patterns(exclude)
    except ValueError as err:
        raise ProxSparseError(str(err)) from None
    status = linear_status(model, exclude)
    graph_pass = Sparse24Pass(_decider(sparse, status, timings or shared_timings()), LinearWeights(model))
    swapped = [name for name, module in model.named_modules() if isinstance(module, SparseLinear24)]
    report = CompileReport(sparse, status, graph_pass.records, swapped)
    inductor_config = {"freezing": True, "post_grad_custom_post_pass": graph_pass, "cpp.weight_prepack": False}
    compiled = torch.compile(_own_entry(model.forward), **torch_compile_kwargs)
    return Sparse24Compiled(model, compiled, inductor_config, report), report
