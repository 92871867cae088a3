"""What `proxsparse-tool verify` checks before a pruned model is deployed: structure, accuracy, deployment.

* Structure (no data, no GPU): every target linear is exactly 2:4, and zero (+0.0) wherever
  the saved mask is off. Targets come from `proxsparse.json` when the folder has one, else
  from the default target patterns.
* Accuracy: perplexity (and zero-shot accuracy) of the sparse model and of its dense source;
  the CLI drives `evaluation.perplexity` and `zeroshot.zero_shot`, this module finds the source.
* Deployment: `proxsparse_ao.compile` with the rewrite forced, so the check also runs on CPU:
  every eligible linear must become `linear24` and the logits must match the eager dense
  masked model (within twice the error the low-precision dtype itself causes). Speed (sparse vs dense, per layer and end to end) is measured only on CUDA
  sm80+; anywhere else it is skipped with the reason, never estimated.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ProxSparseError
from .masks import nonzeros_per_group, pattern_stats

SPEED_SKIP = "skipped: needs CUDA sm80+"
DEPLOY_DTYPES = (torch.bfloat16, torch.float16)
MATCH_FACTOR, MATCH_FLOOR = 2.0, 1e-3  # see Deployment


@dataclass
class LayerStructure:
    """One target linear: its bad groups (more than 2 non-zeros of 4), entries set where its mask is
    off, and NaN/Inf entries (a damaged weight can still be 2:4)."""

    name: str
    shape: tuple[int, ...]
    groups: int
    bad_groups: int
    off_mask_nonzeros: int | None
    pattern: dict[int, float]
    non_finite: int = 0

    @property
    def ok(self) -> bool:
        return self.bad_groups == 0 and not self.off_mask_nonzeros and not self.non_finite

    def problem(self) -> str | None:
        """One phrase saying what is wrong, or None."""
        parts = []
        if self.bad_groups:
            parts.append(f"{self.bad_groups} of {self.groups} groups of 4 have more than 2 non-zeros")
        if self.off_mask_nonzeros:
            parts.append(f"{self.off_mask_nonzeros} entries are not +0.0 where the mask is off")
        if self.non_finite:
            parts.append(f"{self.non_finite} entries are NaN or Inf")
        return "; ".join(parts) or None


@dataclass
class Structure:
    """The structure check over all target layers; `targets_from` says where the target list came from."""

    layers: list[LayerStructure]
    targets_from: str
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def pattern_ok(self) -> bool:
        return all(layer.ok for layer in self.layers)

    @property
    def bad_groups(self) -> int:
        return sum(layer.bad_groups for layer in self.layers)

    @property
    def groups(self) -> int:
        return sum(layer.groups for layer in self.layers)

    @property
    def failing(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.ok]

    def pattern(self) -> dict[int, float]:
        """Fraction of all target groups with exactly k non-zeros, k = 0..4."""
        total = max(self.groups, 1)
        return {k: sum(layer.pattern[k] * layer.groups for layer in self.layers) / total for k in range(5)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern_ok": self.pattern_ok,
            "bad_groups": self.bad_groups,
            "groups": self.groups,
            "target_layers": len(self.layers),
            "targets_from": self.targets_from,
            "failing_layers": {layer.name: layer.problem() for layer in self.layers if not layer.ok},
            "pattern": {str(k): v for k, v in self.pattern().items()},
            "skipped_layers": self.skipped,
        }


def target_layers(model: nn.Module, metadata: dict[str, Any] | None) -> tuple[dict[str, nn.Linear], str, dict[str, str]]:
    """(name -> linear, where the list came from, skipped layers with why): the metadata's targets,
    else the default target patterns. No target at all is a ProxSparseError."""
    if metadata is not None:
        names = metadata["targets"]
        if not names:
            raise ProxSparseError("proxsparse.json lists no target layers: nothing to verify")
        layers = {}
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ProxSparseError(f"proxsparse.json names target {name!r}, which the model does not have") from None
            if not isinstance(module, nn.Linear):
                raise ProxSparseError(f"proxsparse.json names target {name!r}, which is a {type(module).__name__}, not a Linear")
            layers[name] = module
        return layers, "proxsparse.json", {}
    from .config import DEFAULT_IGNORE, DEFAULT_TARGETS
    from .targets import NoTargetsError, select_targets

    try:
        selection = select_targets(model, DEFAULT_TARGETS, DEFAULT_IGNORE, warn=False)
    except NoTargetsError as err:
        raise ProxSparseError(f"the model has no target layers to verify ({err})") from None
    return selection.layers, "default targets (no proxsparse.json)", selection.skipped


@torch.no_grad()
def check_structure(
    layers: dict[str, nn.Linear], masks: dict[str, torch.Tensor] | None = None, skipped: dict[str, str] | None = None,
    targets_from: str = "",
) -> Structure:
    """Count, per target layer, the groups of 4 with more than 2 non-zeros, the NaN/Inf entries and (with
    masks) the entries that are not +0.0 where the mask is off. A mask whose name or shape does not fit is
    a ProxSparseError."""
    if masks is not None and set(masks) != set(layers):
        extra, missing = sorted(set(masks) - set(layers)), sorted(set(layers) - set(masks))
        raise ProxSparseError(f"the masks file does not match the targets (extra: {extra}, missing: {missing})")
    checks = []
    for name, layer in layers.items():
        weight = layer.weight.detach()
        per_group = nonzeros_per_group(weight)
        off = None
        if masks is not None:
            mask = masks[name]
            if mask.shape != weight.shape:
                raise ProxSparseError(f"the mask of {name} is {tuple(mask.shape)}, its weight is {tuple(weight.shape)}")
            outside = weight[~mask.to(weight.device)]
            off = int(((outside != 0) | torch.signbit(outside)).sum())
        checks.append(LayerStructure(
            name, tuple(weight.shape), per_group.numel(), int((per_group > 2).sum()), off, pattern_stats(weight),
            int((~torch.isfinite(weight)).sum()),
        ))
    return Structure(checks, targets_from, dict(skipped or {}))


def baseline_source(metadata: dict[str, Any] | None, baseline: str | None) -> tuple[str | None, str | None]:
    """(source for `load_model`, label) of the dense model to compare with: --baseline, else the metadata's
    `source_model`; (None, None) when neither names one. The embedded default loads as source None."""
    from .models import DEFAULT_MODEL_LABEL, is_default

    name = baseline if baseline is not None else (metadata or {}).get("source_model")
    if name is None:
        return None, None
    if name == DEFAULT_MODEL_LABEL or is_default(name):
        return "default", DEFAULT_MODEL_LABEL
    return str(name), str(name)


def speed_skip_reason(device: torch.device) -> str | None:
    """Why sparse-vs-dense speed cannot be measured on `device` (the 2:4 kernel needs CUDA sm80+), or None."""
    from .compiler import kernel_missing

    if device.type != "cuda":
        return f"{SPEED_SKIP} (this run is on {device.type}, where linear24 decompresses to dense: any timing would be meaningless)"
    reason = kernel_missing(device)
    return f"{SPEED_SKIP} ({reason})" if reason else None


@dataclass
class Deployment:
    """The compile check: which linears were eligible and rewritten, and how close the compiled logits are.

    Both the compiled 2:4 model and the eager masked model in the deployment dtype are compared
    with the eager masked model in float32 (relative error of the logits). Low precision alone
    moves the logits a lot (pruned SmolLM2-135M, bf16: compiled and eager differ by up to 4.3 at
    a largest logit of 36.8), so a fixed threshold would be arbitrary: the rewrite passes when its
    error is at most MATCH_FACTOR times the error the dtype itself causes, plus MATCH_FLOOR. A
    wrong kernel or weight layout gives errors of order 1.
    """

    dtype: str
    eligible: list[str]
    rewritten: list[str]
    not_rewritten: dict[str, str]
    targets_not_eligible: dict[str, str]
    error: float
    eager_error: float
    top1_agreement: float
    summary: str
    compile_seconds: float

    @property
    def tolerance(self) -> float:
        return MATCH_FACTOR * self.eager_error + MATCH_FLOOR

    @property
    def all_rewritten(self) -> bool:
        return set(self.eligible) <= set(self.rewritten)

    @property
    def outputs_match(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance

    @property
    def ok(self) -> bool:
        return bool(self.eligible) and self.all_rewritten and self.outputs_match

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(tolerance=self.tolerance, all_rewritten=self.all_rewritten, outputs_match=self.outputs_match, ok=self.ok)
        data["eligible_not_rewritten"] = {n: r for n, r in self.not_rewritten.items() if n in self.eligible}
        return data


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """||output - reference|| / ||reference|| in float64 (inf when the output is not finite)."""
    output, reference = output.double(), reference.double()
    if not bool(torch.isfinite(output).all()):
        return math.inf
    return float((output - reference).norm() / reference.norm().clamp_min(1e-30))


def deployment_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model in `dtype`: a cast copy, or the model itself when it already is."""
    if next(model.parameters()).dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype).eval()


@torch.no_grad()
def check_deployment(
    model: nn.Module, input_ids: torch.Tensor, targets: list[str], dtype: torch.dtype = torch.bfloat16,
    *, sparse: str = "always",
) -> tuple[Deployment, nn.Module, nn.Module]:
    """Compile `model` in `dtype` (a cast copy unless it already is) with the 2:4 rewrite, run `input_ids` [1, L] and compare the logits
    with the eager masked model (float32 and `dtype`). Returns (check, compiled, the `dtype` model) so the
    caller can time the same compile."""
    from .compiler import compile as compile_24

    if dtype not in DEPLOY_DTYPES:
        raise ProxSparseError(f"2:4 kernels run fp16/bf16 weights, not {dtype}")
    ids = input_ids.to(next(model.parameters()).device)
    reference = deployment_model(model, torch.float32)(ids).logits.float()
    deploy = deployment_model(model, dtype)
    eager = deploy(ids).logits.float()
    started = time.perf_counter()
    compiled, report = compile_24(deploy, sparse=sparse)
    output = compiled(ids).logits.float()
    seconds = time.perf_counter() - started
    eligible = set(report.eligible)
    deployment = Deployment(
        dtype=str(dtype).removeprefix("torch."),
        eligible=report.eligible,
        rewritten=report.rewritten,
        not_rewritten=report.not_rewritten,
        targets_not_eligible={n: report.linears.get(n) or "not an nn.Linear" for n in targets if n not in eligible},
        error=relative_error(output, reference),
        eager_error=relative_error(eager, reference),
        top1_agreement=float((output.argmax(-1) == reference.argmax(-1)).double().mean()),
        summary=report.summary(),
        compile_seconds=round(seconds, 2),
    )
    return deployment, compiled, deploy


@torch.no_grad()
def measure_speed(
    model: nn.Module, compiled_sparse: nn.Module, input_ids: torch.Tensor, layers: list[str], reps: int = 20,
) -> dict[str, Any]:
    """Per-layer (each distinct target shape at M = the input's tokens, via `speed.time_linear`) and
    end-to-end (compiled sparse vs the same model compiled with sparse='never', `reps` calls each in
    alternating blocks, median) milliseconds and speedups. Meaningful on CUDA (see speed_skip_reason)."""
    from .compiler import compile as compile_24
    from .speed import interleaved_seconds, time_linear

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = input_ids.to(device)
    tokens = int(ids.numel())
    by_shape: dict[tuple[int, int], tuple[float, float]] = {}
    per_layer = {}
    for name in layers:
        weight = model.get_submodule(name).weight
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        if shape not in by_shape:
            by_shape[shape] = time_linear(device, dtype, tokens, *shape, reps=reps)
        dense_ms, sparse_ms = by_shape[shape]
        per_layer[name] = {"m": tokens, "n": shape[0], "k": shape[1], "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                           "speedup": dense_ms / sparse_ms}
    dense_compiled, _ = compile_24(model, sparse="never")
    rounds = 4 if reps >= 4 else reps
    seconds = interleaved_seconds({"sparse": lambda: compiled_sparse(ids), "dense": lambda: dense_compiled(ids)},
                                  device, warmup=3, rounds=rounds, per_round=max(1, reps // rounds))
    sparse_ms, dense_ms = (statistics.median(seconds[name]) * 1e3 for name in ("sparse", "dense"))
    return {"tokens": tokens, "dense_ms": dense_ms, "sparse_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
            "per_layer": per_layer}
