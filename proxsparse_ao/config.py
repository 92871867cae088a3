"""`ProxSparseConfig`: every setting of ProxSparse mask learning, as a torchao config.

Defaults, each with the evidence behind it (benchmarks/RESULTS.md, embedded SmolLM2-135M,
64 x 512 calibration tokens, perplexity on the embedded Wikipedia text and on a news text
that neither calibration nor tuning touched):

* `activation_aware=True`: the prox and the final top-2 work on W * diag(s), s = the
  calibration inputs' per-channel L2 norms (Wanda's statistic, one dense pass), so learning
  starts from Wanda's score (on the dense model's inputs) instead of magnitude's. Removing it
  is the largest loss measured (PPL ~2x worse on both texts).
* `strength="relative"`, `lambda1=3`: the prox threshold of each layer is
  `lambda1 * lr / (3 * rms^2)` (rms of W0 in the prox's space), i.e. lambda1 is the ratio
  between the prox's shrinkage of a dense group and an AdamW step. The paper's convention
  (`strength="absolute"`: lambda1 is the threshold itself) holds that ratio near 3 on a 7B
  Llama (weight RMS ~0.02) but makes it ~120x at SmolLM2-135M's scale (RMS ~0.19), which
  collapses the model (measured in the method brief, ALGORITHM.md; see the README). The
  threshold is constant over the run (`strength_schedule="constant"`, as in the paper; "lr"
  makes it follow the lr schedule).
* `lr=3e-3`: large by the paper's standards (1e-4 at 7B) because this model's weights are ten
  times larger; with lr 1e-4 no mask moves in 64 steps. It is an absolute learning rate: on a
  model with much smaller weights, start lower.
* `samples=64, seqlen=512`: ~10-12 minutes on 2 CPU cores (the paper: 400 x 2048-4096).
* `train="targets"` (only the target weights learn), `lambda2=0`: both measured better than
  the alternatives here.

Everything else follows the paper: AdamW, 10% linear warmup then linear decay, clip 1.0,
batch 1, one pass, the mask applied to the ORIGINAL weights. `ProxSparseConfig.preset("paper")`
is the published recipe (absolute lambda1 0.25, lr 1e-4, magnitude space, all parameters,
400 C4 documents of 4096 tokens), kept so the paper stays reproducible.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._torchao import AOBaseConfig, register_quantize_module_handler
from .errors import ProxSparseError
from .masks import apply_mask_, check_nm

STRENGTH_MODES = ("relative", "absolute")
STRENGTH_SCHEDULES = ("constant", "lr")
TRAIN_MODES = ("targets", "all")
PRECISIONS = ("auto", "float32", "bfloat16")
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
W0_DEVICES = ("cpu", "model")
CALIBRATION_MODES = ("windows", "documents")
DEFAULT_TARGETS = ("Linear",)
# Linears that are no attention or MLP projection: lm_head, OPT-350m's embedding projections, and
# the routers of mixture-of-experts blocks (Qwen2-MoE's mlp.gate and shared_expert_gate, JetMoe's router.layer)
DEFAULT_IGNORE = ("re:.*lm_head", "project_in", "project_out", "gate", "shared_expert_gate", r"re:.*\.router(\..*)?")
MASK_BUFFER = "proxsparse_mask"  # where a learned mask waits on its module for the handler


class ConfigError(ProxSparseError, ValueError):
    """A ProxSparseConfig field has the wrong type or an unusable value."""


@dataclass
class ProxSparseConfig(AOBaseConfig):
    """Settings of ProxSparse 2:4 mask learning (JSON-friendly fields only).

    lambda1: prox strength; with strength="relative" the shrink-to-step ratio rho, with
      "absolute" the paper's threshold. strength_schedule: "constant" (the paper: the same
      threshold every step) or "lr" (the threshold follows the lr schedule, warmup and decay).
    activation_aware: run the prox and the final top-2 on W * diag(s), s = the calibration
      inputs' per-channel L2 norms (Wanda's statistic, one dense pass), instead of on W.
    lambda2/epsilon: the frozen-weight term (0 = off).
    lr, warmup_ratio, max_grad_norm, weight_decay: AdamW with linear warmup then linear decay.
    samples x seqlen tokens of `calibration` text ("default" = the embedded calibration text,
      a dataset name or a file path) as random "windows" of the packed text (SparseGPT/Wanda
      style) or "documents" (the reference: the first `samples` documents in seeded order,
      with the tokenizer's BOS, each truncated to seqlen; shorter ones kept at their length,
      right-padded with -100, which the loss and statistics ignore); `batch_size` samples per
      step (at most `samples`, or the rows of calibration tokens given), one pass.
    targets/ignore: module class names, exact or dotted-suffix names, or "re:<regex>" on the
      full module name (llm-compressor convention); lm_head and embeddings are never pruned.
    strict: fail (instead of skipping with a warning) on targets whose in_features % 4 != 0.
    precision: dtype the learning runs in ("auto" = the model's own, but fp16 models learn in
      bf16: AdamW's state underflows in fp16, see `learning_dtype`).
    train: "targets" (only target weights get gradients and AdamW state) or "all".
    w0_device: where the exact original weights are kept during learning ("cpu" or "model").
    gradient_checkpointing: recompute activations in backward (less memory, ~30% more time).
    checkpoint_dir/checkpoint_every: periodic training state for resume (None = off).
    """

    lambda1: float = 3.0
    strength: str = "relative"
    strength_schedule: str = "constant"
    activation_aware: bool = True
    lambda2: float = 0.0
    epsilon: float = 0.5
    lr: float = 3e-3
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    samples: int = 64
    seqlen: int = 512
    batch_size: int = 1
    seed: int = 0
    calibration: str = "default"
    calibration_mode: str = "windows"
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE))
    strict: bool = False
    precision: str = "auto"
    train: str = "targets"
    w0_device: str = "cpu"
    gradient_checkpointing: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 16

    def __post_init__(self) -> None:
        validate(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """torchao finds a config's handler by its exact class: a subclass applies stored masks as
        this class does (and may register a handler of its own afterwards)."""
        super().__init_subclass__(**kwargs)
        register_quantize_module_handler(cls)(apply_stored_mask)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-friendly dict."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ProxSparseConfig:
        """A named setting (`PRESETS`), with any field overridden: `ProxSparseConfig.preset("paper", samples=64)`."""
        if name not in PRESETS:
            raise ConfigError(f"unknown ProxSparseConfig preset '{name}': use one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProxSparseConfig:
        """Build from `to_dict` output; unknown keys are an error (a typo must not pass silently)."""
        if not isinstance(values, dict):
            raise ConfigError(f"{cls.__name__}.from_dict takes a dict of fields (as to_dict gives), got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(key if isinstance(key, str) else repr(key) for key in set(values) - names)
        if unknown:
            raise ConfigError(f"ProxSparseConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**values)


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The published recipe (Llama-2-7B row of the paper, the reference's conventions): the
    # threshold lambda1 itself every step, magnitude space, every parameter trained, C4
    # documents truncated to 4096 tokens, 400 samples. Kept so the paper stays reproducible;
    # on the embedded model it collapses (the method brief ALGORITHM.md, benchmarks/RESULTS.md).
    "paper": {
        "lambda1": 0.25, "strength": "absolute", "strength_schedule": "constant", "activation_aware": False,
        "lr": 1e-4, "samples": 400, "seqlen": 4096, "calibration": "c4", "calibration_mode": "documents",
        "train": "all",
    },
}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def check_batch_size(config: ProxSparseConfig, rows: int | None = None) -> None:
    """A step cannot take more samples than the run has: `batch_size` against the `rows` of the
    calibration tokens, or against `samples` when the tokens are (to be) made from the config.
    Not part of `validate`: with calibration tokens given, `samples` is not used."""
    if rows is None and config.batch_size > config.samples:
        raise ConfigError(
            f"ProxSparseConfig.batch_size ({config.batch_size}) is larger than ProxSparseConfig.samples ({config.samples}): "
            "a step cannot take more samples than the run has; lower the one or raise the other"
        )
    if rows is not None and config.batch_size > rows:
        raise ConfigError(
            f"ProxSparseConfig.batch_size ({config.batch_size}) is larger than the {rows} calibration samples: "
            "a step cannot take more samples than the run has"
        )


PATH_FIELDS = ("calibration", "checkpoint_dir")


def paths_as_str(config: Any) -> None:
    """A `pathlib.Path` (any os.PathLike) given for a path field is kept as its str: the fields stay JSON-friendly."""
    for name in PATH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, os.PathLike):
            object.__setattr__(config, name, os.fspath(value))


def validate(config: ProxSparseConfig) -> None:
    """Raise ConfigError naming the first bad field: wrong type, out of range or unknown choice."""
    paths_as_str(config)
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _type_ok(value, hints[f.name]):
            raise ConfigError(
                f"ProxSparseConfig.{f.name} must be {_describe(hints[f.name])}, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, tuple):
            object.__setattr__(config, f.name, list(value))
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"ProxSparseConfig.{f.name} must be finite, got {value!r}")
    positive = ("epsilon", "lr", "samples", "seqlen", "batch_size", "checkpoint_every")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"ProxSparseConfig.{name} must be > 0, got {getattr(config, name)!r}")
    for name in ("lambda1", "lambda2", "max_grad_norm", "weight_decay"):
        if getattr(config, name) < 0:
            raise ConfigError(f"ProxSparseConfig.{name} must be >= 0, got {getattr(config, name)!r}")
    if not 0 <= config.warmup_ratio < 1:
        raise ConfigError(f"ProxSparseConfig.warmup_ratio must be in [0, 1), got {config.warmup_ratio!r}")
    if config.seqlen < 2:
        raise ConfigError(f"ProxSparseConfig.seqlen must be >= 2 (next-token loss), got {config.seqlen}")
    if config.precision == "float16":
        raise ConfigError(
            "ProxSparseConfig.precision 'float16' cannot learn: AdamW's state underflows in fp16 (a squared "
            "gradient below 6e-8 and eps 1e-8 round to 0, so the first step divides by zero); use 'bfloat16' "
            "(the same memory) or 'float32'"
        )
    check_seed_and_patterns(config)
    if config.checkpoint_dir == "":
        raise ConfigError("ProxSparseConfig.checkpoint_dir is empty: name a folder, or None to turn checkpointing off")
    for name, choices in (
        ("strength", STRENGTH_MODES),
        ("strength_schedule", STRENGTH_SCHEDULES),
        ("train", TRAIN_MODES),
        ("precision", PRECISIONS),
        ("w0_device", W0_DEVICES),
        ("calibration_mode", CALIBRATION_MODES),
    ):
        if getattr(config, name) not in choices:
            raise ConfigError(f"ProxSparseConfig.{name} must be one of {', '.join(choices)}; got {getattr(config, name)!r}")
    if not config.targets:
        raise ConfigError("ProxSparseConfig.targets is empty: nothing would be pruned")
    if not config.calibration:
        raise ConfigError("ProxSparseConfig.calibration is empty: name a text source")


def check_seed_and_patterns(config: Any) -> None:
    """The checks every config with `seed` (if any) and `targets`/`ignore` shares: the seed fits
    torch's generator, every "re:" pattern compiles (else they would fail only after data loading)."""
    name = type(config).__name__
    seed = getattr(config, "seed", 0)
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"{name}.seed must fit in 64 bits (torch's generator), got {seed}")
    for field_name in ("targets", "ignore"):
        for pattern in getattr(config, field_name):
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as err:
                    raise ConfigError(f"{name}.{field_name}: {pattern!r} is not a valid regular expression ({err})") from None


def learning_dtype(config: ProxSparseConfig, model_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype learning casts the model to, or None to leave it as it is: `precision`, and with
    "auto" bf16 for an fp16 model, whose AdamW state would underflow (the first step divides by
    zero; bf16 takes the same memory with fp32's range). The original weights come back either way."""
    if config.precision != "auto":
        return getattr(torch, config.precision)
    return torch.bfloat16 if model_dtype == torch.float16 else None


def _describe(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        return f"a list of {_describe(args[0])}"
    if args:
        return " or ".join(_describe(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))



@register_quantize_module_handler(ProxSparseConfig)
def apply_stored_mask(module: nn.Module, config: Any) -> nn.Module:
    """torchao handler (registered with the class, so `quantize_` always finds it; the mask-only
    baselines register it too): weight <- weight where the module's stored mask, +0.0 elsewhere;
    exactly 2:4 afterwards. No stored mask: unchanged."""
    mask = getattr(module, MASK_BUFFER, None)
    if mask is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
        return module
    with torch.no_grad():
        apply_mask_(module.weight.data, mask)
    check_nm(module.weight, f"{type(module).__name__} weight")
    return module

