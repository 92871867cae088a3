"""`sparsify_(model, ProxSparseConfig())`: learn masks globally, then apply them through torchao.

Mask learning needs one loss over the whole model, which does not fit torchao's per-module
handlers, so the work is split: `learn` learns the masks, `attach_masks`
stores each on its module (a non-persistent bool buffer), and the handler registered for
`ProxSparseConfig` with torchao's `register_quantize_module_handler` (in config.py, next to
the class) applies a stored mask to its module's ORIGINAL weight.
`torchao.quantization.quantize_(model, config)` therefore applies stored masks too; modules
without a stored mask are left as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ._torchao import quantize_
from .calibration import check_tokenizer, token_count
from .config import MASK_BUFFER, ConfigError, ProxSparseConfig, check_batch_size, validate
from .context import check_context
from .errors import ProxSparseError
from .targets import FilterFn, check_target_weights, eager_model, masked_modules, select_targets
from .training import Callback, LearnResult, check_calibration, check_reporting, learn_masks

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .baselines import BaselineConfig


def _check_config(config: ProxSparseConfig) -> ProxSparseConfig:
    if not isinstance(config, ProxSparseConfig):
        raise ConfigError(f"expected a ProxSparseConfig, got {type(config).__name__}")
    validate(config)  # fields may have been reassigned since construction
    return config


def calibration_tokens(
    config: ProxSparseConfig, tokenizer: PreTrainedTokenizerBase, model: nn.Module | None = None
) -> torch.Tensor:
    """config.samples x config.seqlen token ids from config.calibration (seeded, deterministic; in
    "documents" mode short samples are right-padded with calibration.PAD_ID); given the model,
    config.seqlen must fit its maximum context, checked before any text is read."""
    if tokenizer is None:
        raise ProxSparseError("no calibration tokens were given and no tokenizer to make them: pass one of the two")
    check_tokenizer(tokenizer)
    if model is not None:
        check_context(model, config.seqlen, f"{type(config).__name__}.seqlen")
    from .calibration import calibration_samples
    from .data import load_documents

    source = None if config.calibration == "default" else config.calibration
    documents = load_documents(source, "calibration")
    return calibration_samples(
        tokenizer, documents, config.samples, config.seqlen, mode=config.calibration_mode, seed=config.seed
    )


def learn(
    model: nn.Module,
    config: ProxSparseConfig | None = None,
    filter_fn: FilterFn | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    calibration: torch.Tensor | None = None,
    callback: Callback | None = None,
    stats_every: int | None = None,
) -> LearnResult:
    """Learn the 2:4 masks of the target layers; the model itself is left unchanged. A target that no
    calibration token reaches is refused before any learning (as Wanda and SparseGPT refuse it): no
    data would inform its mask, so it would be a guess. A `torch.compile`d model learns eagerly, masks
    named by the model it wraps."""
    config = _check_config(config if config is not None else ProxSparseConfig())
    check_reporting(callback, stats_every)
    model = eager_model(model)
    selection = select_targets(model, config.targets, config.ignore, filter_fn, strict=config.strict)
    check_target_weights(selection.layers)
    if calibration is None:
        check_batch_size(config)
    tokens = check_calibration(calibration, model) if calibration is not None else calibration_tokens(config, tokenizer, model)
    check_batch_size(config, tokens.shape[0])
    result = learn_masks(model, tokens, config, selection.layers, callback=callback, stats_every=stats_every)
    result.extra["skipped"] = selection.skipped
    result.extra["calibration_shape"] = list(tokens.shape)
    result.extra["calibration_tokens"] = token_count(tokens)  # real tokens: documents mode pads short ones
    return result


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Store each mask on its module (non-persistent buffer, so checkpoints stay plain HF).

    Embeddings and lm_head are refused (they are never pruned). A mask stored earlier on another
    module whose weight no longer follows it (the weights were reloaded since) is dropped, so
    `stored_masks` and `save_pruned` see only masks the weights obey."""
    modules = masked_modules(model, masks)
    for name, module in model.named_modules():
        if name not in masks and not _follows_stored_mask(module):
            delattr(module, MASK_BUFFER)
    for name, mask in masks.items():
        modules[name].register_buffer(MASK_BUFFER, mask.to(modules[name].weight.device), persistent=False)


def _follows_stored_mask(module: nn.Module) -> bool:
    """True unless the module holds a stored mask that its weight no longer fits (another shape) or
    has non-zeros outside of. A weight that cannot be read as plain values (meta, a tensor subclass
    such as a quantized weight) is given the benefit of the doubt."""
    mask, weight = getattr(module, MASK_BUFFER, None), getattr(module, "weight", None)
    if not isinstance(mask, torch.Tensor) or not isinstance(weight, torch.Tensor) or weight.is_meta:
        return True
    if mask.shape != weight.shape:
        return False
    if type(weight.detach()) is not torch.Tensor:
        return True
    return not bool(weight.detach()[~mask.to(weight.device)].any())


def stored_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks `sparsify_` (or `attach_masks`) left on the model's modules, by layer name, on CPU:
    what `save_pruned` needs after `sparsify_`."""
    return {
        name: getattr(module, MASK_BUFFER).cpu()
        for name, module in model.named_modules()
        if isinstance(getattr(module, MASK_BUFFER, None), torch.Tensor)
    }


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor], config: ProxSparseConfig | None = None) -> nn.Module:
    """Attach the masks and apply them through `torchao.quantization.quantize_` (our handler)."""
    config = _check_config(config if config is not None else ProxSparseConfig())
    attach_masks(model, masks)
    quantize_(model, config, filter_fn=lambda module, fqn: fqn in masks)
    return model


def sparsify_(
    model: nn.Module,
    config: ProxSparseConfig | BaselineConfig | None = None,
    filter_fn: FilterFn | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    calibration: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> nn.Module:
    """Learn ProxSparse 2:4 masks and apply them in place to the original weights; returns the model.

    `calibration` is a LongTensor [N, L] of token ids (short rows right-padded with -100);
    without it, config.samples x config.seqlen tokens of config.calibration are made with
    `tokenizer`. `filter_fn(module, name)` narrows the targets further. Every non-target parameter stays bit-identical.
    A baseline config (MagnitudeConfig, WandaConfig, SparseGPTConfig) prunes with that method instead.
    A `torch.compile`d model is pruned through the model it wraps (eagerly) and returned as given."""
    from .baselines import BASELINE_CONFIGS, sparsify_ as baseline_sparsify_

    if config is not None and not isinstance(config, (ProxSparseConfig, *BASELINE_CONFIGS)):
        got = f"the class {config.__name__}: pass an instance, {config.__name__}()" if isinstance(config, type) else type(config).__name__
        raise ConfigError(
            f"expected a ProxSparseConfig or a baseline config ({', '.join(c.__name__ for c in BASELINE_CONFIGS)}), got {got}"
        )
    if isinstance(config, BASELINE_CONFIGS):
        if callback is not None:
            raise ConfigError(f"callback: {type(config).__name__} learns nothing step by step; it is for ProxSparse learning")
        return baseline_sparsify_(model, config, filter_fn, tokenizer=tokenizer, calibration=calibration)
    config = _check_config(config if config is not None else ProxSparseConfig())
    inner = eager_model(model)
    result = learn(inner, config, filter_fn, tokenizer=tokenizer, calibration=calibration, callback=callback)
    apply_masks(inner, result.masks, config)
    return model
