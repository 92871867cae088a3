"""`MagnitudeConfig`, `WandaConfig`, `SparseGPTConfig`: the 2:4 baselines as torchao configs.

They share `ProxSparseConfig`'s conventions: `targets`/`ignore` patterns ("re:<regex>" on the
full module name), `strict`, and the calibration fields (`samples` x `seqlen` tokens of
`calibration` in `calibration_mode`, seeded), so every method can see the same tokens.
Each class, and any subclass of one, is registered with torchao's `register_quantize_module_handler`
as it is created (torchao looks handlers up by exact type): magnitude prunes a module on its own; Wanda and
SparseGPT need calibration, done block by block by `prune`, and their handler applies the
mask that `prune` stored on the module (a module without one is left unchanged).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._torchao import AOBaseConfig, register_quantize_module_handler
from ..config import (
    CALIBRATION_MODES,
    DEFAULT_IGNORE,
    DEFAULT_TARGETS,
    MASK_BUFFER,
    ConfigError,
    apply_stored_mask,
    check_seed_and_patterns,
    paths_as_str,
)
from ..masks import apply_mask_, check_nm, magnitude_mask


def _apply_baseline(module: nn.Module, config: _BaselineConfig) -> nn.Module:
    """The torchao handler of the baselines: magnitude prunes the module itself; Wanda and SparseGPT
    need calibration, so `prune` stores their masks on the modules first and this applies them."""
    if isinstance(config, MagnitudeConfig):
        return _magnitude(module)
    return apply_stored_mask(module, config)


def _magnitude(module: nn.Module) -> nn.Module:
    """weight <- the 2 largest |w| per group of 4, +0.0 elsewhere, and that mask stored on the module
    (what `stored_masks` and `save_pruned` read). Always from the weight itself: a mask another
    method left on the module is not magnitude's."""
    weight = module.weight
    mask = magnitude_mask(weight)
    with torch.no_grad():
        apply_mask_(weight.data, mask)
    check_nm(weight, f"{type(module).__name__} weight")
    module.register_buffer(MASK_BUFFER, mask, persistent=False)
    return module


@dataclass
class _BaselineConfig(AOBaseConfig):
    """targets/ignore/strict: as in ProxSparseConfig."""

    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE))
    strict: bool = False

    def __post_init__(self) -> None:
        validate(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """torchao finds a config's handler by its exact class: every method's class, and any subclass
        of one, gets `_apply_baseline` (a subclass may register a handler of its own afterwards)."""
        super().__init_subclass__(**kwargs)
        register_quantize_module_handler(cls)(_apply_baseline)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-friendly dict."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass
class MagnitudeConfig(_BaselineConfig):
    """Keep the 2 largest |W| of every group of 4 input weights; needs no data."""


@dataclass
class _CalibratedConfig(_BaselineConfig):
    """Fields shared by the methods that read calibration data (same meaning as in ProxSparseConfig)."""

    samples: int = 64
    seqlen: int = 512
    seed: int = 0
    calibration: str = "default"
    calibration_mode: str = "windows"


@dataclass
class WandaConfig(_CalibratedConfig):
    """Wanda (Sun et al. 2023): keep the top 2 of |W_ij| * ||X_j||_2 per group of 4, no weight update."""


@dataclass
class SparseGPTConfig(_CalibratedConfig):
    """SparseGPT (Frantar & Alistarh 2023): OBS pruning column block by column block with weight updates.

    blocksize: columns per lazy-update block. dampening: fraction of mean(diag H) added to H.
    update_weights: False is the mask-only variant, its mask on the ORIGINAL weights."""

    blocksize: int = 128
    dampening: float = 0.01
    update_weights: bool = True


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def validate(config: _BaselineConfig) -> None:
    """Raise ConfigError naming the first bad field."""
    paths_as_str(config)
    name = type(config).__name__
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("targets", "ignore"):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}.{f.name} must be a list of str, got {value!r}")
            object.__setattr__(config, f.name, list(value))
        elif isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}.{f.name} must be bool, got {type(value).__name__} {value!r}")
        elif isinstance(f.default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{name}.{f.name} must be int, got {type(value).__name__} {value!r}")
        elif isinstance(f.default, float) and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise ConfigError(f"{name}.{f.name} must be a finite float, got {value!r}")
        elif isinstance(f.default, str) and not isinstance(value, str):
            raise ConfigError(f"{name}.{f.name} must be str, got {type(value).__name__} {value!r}")
    if not config.targets:
        raise ConfigError(f"{name}.targets is empty: nothing would be pruned")
    check_seed_and_patterns(config)
    if isinstance(config, _CalibratedConfig):
        if config.samples < 1:
            raise ConfigError(f"{name}.samples must be >= 1, got {config.samples}")
        if config.seqlen < 2:
            raise ConfigError(f"{name}.seqlen must be >= 2, got {config.seqlen}")
        if config.calibration_mode not in CALIBRATION_MODES:
            raise ConfigError(f"{name}.calibration_mode must be one of {', '.join(CALIBRATION_MODES)}; got {config.calibration_mode!r}")
        if not config.calibration:
            raise ConfigError(f"{name}.calibration is empty: name a text source")
    if isinstance(config, SparseGPTConfig):
        if config.blocksize < 4 or config.blocksize % 4:
            raise ConfigError(f"SparseGPTConfig.blocksize must be a positive multiple of 4, got {config.blocksize}")
        if not 0 <= config.dampening < 1:
            raise ConfigError(f"SparseGPTConfig.dampening must be in [0, 1), got {config.dampening}")
