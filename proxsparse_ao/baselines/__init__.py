"""The 2:4 baselines in ProxSparse's API: magnitude, Wanda and SparseGPT (with a mask-only variant).

    sparsify_(model, WandaConfig(samples=64, seqlen=512), tokenizer=tok)   # or calibration=tokens [N, L]

`prune` selects the target layers with the same `targets`/`ignore` rules as ProxSparse, makes
the calibration tokens with the same pipeline (`api.calibration_tokens`), prunes (Wanda and
SparseGPT block by block, see sequential.py), stores each mask on its module and applies it
through `torchao.quantization.quantize_` with the handler registered for the config's class.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import ConfigError
from .config import MagnitudeConfig, SparseGPTConfig, WandaConfig, validate
from .magnitude import magnitude_masks
from .sequential import Progress, capture_block_inputs, decoder_blocks, sequential_prune
from .sparsegpt import Hessian, sparsegpt_prune
from .wanda import InputNorms, wanda_mask, wanda_scores

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..targets import FilterFn

BaselineConfig = MagnitudeConfig | WandaConfig | SparseGPTConfig
BASELINE_CONFIGS = (MagnitudeConfig, WandaConfig, SparseGPTConfig)
METHODS = {  # the baselines by the names the CLI uses: (config class, fixed fields)
    "magnitude": (MagnitudeConfig, {}),
    "wanda": (WandaConfig, {}),
    "sparsegpt": (SparseGPTConfig, {"update_weights": True}),
    "sparsegpt-mask": (SparseGPTConfig, {"update_weights": False}),
}

__all__ = [
    "BASELINE_CONFIGS",
    "BaselineResult",
    "Hessian",
    "InputNorms",
    "METHODS",
    "MagnitudeConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "capture_block_inputs",
    "config_fields",
    "config_for",
    "decoder_blocks",
    "magnitude_masks",
    "needs_calibration",
    "prune",
    "sequential_prune",
    "sparsegpt_prune",
    "sparsify_",
    "wanda_mask",
    "wanda_scores",
]


@dataclass
class BaselineResult:
    """The masks (bool, CPU, by layer name), the layers skipped (with why) and the pruning time."""

    masks: dict[str, torch.Tensor]
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def config_for(method: str, **fields: Any) -> BaselineConfig:
    """The config of the baseline `method` names (a METHODS key), with `fields` set: the one
    mapping from the CLI's method names to configs, for `prune` and `compare`."""
    if method not in METHODS:
        raise ConfigError(f"unknown baseline '{method}': use one of {', '.join(METHODS)}")
    config_class, fixed = METHODS[method]
    return config_class(**fields, **fixed)


def config_fields(method: str) -> set[str]:
    """The fields a caller may set for `method` (those `config_for` does not fix)."""
    config_class, fixed = METHODS[method]
    return {f.name for f in dataclasses.fields(config_class)} - set(fixed)


def needs_calibration(config: BaselineConfig) -> bool:
    """Whether the method reads calibration data (all but magnitude)."""
    return not isinstance(config, MagnitudeConfig)


def _check(config: object) -> BaselineConfig:
    if not isinstance(config, BASELINE_CONFIGS):
        raise ConfigError(f"expected one of {', '.join(c.__name__ for c in BASELINE_CONFIGS)}, got {type(config).__name__}")
    validate(config)
    return config


def _wanda(layer_name: str, layer: nn.Linear, stat: InputNorms) -> torch.Tensor:
    mask = wanda_mask(layer.weight, stat.norms())
    layer.weight.data.masked_fill_(~mask, 0.0)
    return mask


def _sparsegpt(config: SparseGPTConfig):
    def prune_layer(layer_name: str, layer: nn.Linear, stat: Hessian) -> torch.Tensor:
        updated, mask = sparsegpt_prune(layer.weight, stat.matrix, blocksize=config.blocksize, dampening=config.dampening)
        if config.update_weights:
            layer.weight.data.copy_(updated)
        else:
            layer.weight.data.masked_fill_(~mask, 0.0)
        return mask

    return prune_layer


def prune(
    model: nn.Module,
    config: BaselineConfig,
    filter_fn: FilterFn | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    calibration: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> BaselineResult:
    """Prune the target layers of `model` in place to exactly 2:4 with a baseline method.

    `calibration`: LongTensor [N, L] of token ids (short rows right-padded with -100); without it, config.samples x config.seqlen
    tokens of config.calibration are made with `tokenizer` (magnitude needs neither).
    `progress(done_blocks, total_blocks)` is called after each decoder block. A `torch.compile`d model
    is pruned through the model it wraps (eagerly), masks named by it."""
    from .._torchao import quantize_
    from ..api import attach_masks, calibration_tokens
    from ..targets import check_target_weights, eager_model, select_targets
    from ..training import check_calibration

    config = _check(config)
    model = eager_model(model)
    started = time.perf_counter()
    selection = select_targets(model, config.targets, config.ignore, filter_fn, strict=config.strict)
    layers = selection.layers
    check_target_weights(layers)
    if isinstance(config, MagnitudeConfig):
        masks = magnitude_masks(layers)
    else:
        # made tokens too: a tokenizer larger than the model's vocabulary must not fail deep inside its embedding
        tokens = check_calibration(calibration if calibration is not None else calibration_tokens(config, tokenizer, model), model)
        if isinstance(config, WandaConfig):
            make, prune_layer = (lambda layer: InputNorms(layer.in_features, layer.weight.device)), _wanda
        else:
            make, prune_layer = (lambda layer: Hessian(layer.in_features, layer.weight.device)), _sparsegpt(config)
        masks = sequential_prune(model, tokens, layers, make, prune_layer, progress=progress)
    attach_masks(model, masks)
    quantize_(model, config, filter_fn=lambda module, fqn: fqn in masks)
    return BaselineResult(masks, selection.skipped, time.perf_counter() - started)


def sparsify_(
    model: nn.Module,
    config: BaselineConfig,
    filter_fn: FilterFn | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    calibration: torch.Tensor | None = None,
) -> nn.Module:
    """`prune`, returning the model (the same call shape as `proxsparse_ao.api.sparsify_`)."""
    prune(model, config, filter_fn, tokenizer=tokenizer, calibration=calibration)
    return model
