"""Per-input-channel activation scales of the target layers, for the activation-aware prox.

s_j = ||X_j||_2, the L2 norm of input feature j of a layer over every calibration token
(Wanda's statistic), gathered in one no-grad dense pass over the same calibration tokens.
Padding is not a token: a batch holding padded samples runs them one by one, each cut to its
real tokens, so padded positions never reach the statistic.
Memory: one running sum of squares per input column of each target layer, never the
activations themselves. The scales are normalised to RMS 1 per layer, so the prox's strength
keeps the units of the weight; zero-input columns get a small floor instead of 0 (the prox
divides by s).

A target layer that no calibration token reaches (never called by the forward, or called on empty
inputs only: an unused head, an expert no token is routed to) has no statistic at all; it is refused, naming it, as Wanda and SparseGPT
refuse it, instead of being pruned without any information (`check_layers_called` makes the same
check without the statistics, for learning in the weights' own space).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .calibration import forward_takes, is_padded, trimmed
from .errors import ProxSparseError
from .modes import restore_train_modes, train_modes

_FLOOR = 1e-6  # smallest scale, relative to the layer's largest


class InputNorms:
    """Running sum over tokens of x_j^2 for each input column j (float64: many tokens are summed)."""

    def __init__(self, columns: int, device: torch.device | str = "cpu") -> None:
        self.sum_squares = torch.zeros(columns, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of layer inputs [..., columns]."""
        x = inputs.detach().reshape(-1, inputs.shape[-1])
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # squared in fp32 at least, summed in fp64 (one fp64 temporary, not two)
        self.sum_squares += x.square().sum(0, dtype=torch.float64)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        """||X_j||_2 over all tokens seen, per column."""
        return self.sum_squares.sqrt()


def unit_rms_scales(norms: torch.Tensor) -> torch.Tensor:
    """Column norms rescaled to RMS 1 (float32), floored at 1e-6 of the largest; all-zero norms give ones."""
    norms = norms.double()
    peak = float(norms.max()) if norms.numel() else 0.0
    if peak <= 0:
        return torch.ones_like(norms, dtype=torch.float32)
    floored = norms.clamp_min(_FLOOR * peak)
    return (floored / floored.square().mean().sqrt()).float()


@torch.no_grad()
def activation_scales(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    tokens: torch.Tensor,
    max_batch_tokens: int = 4096,
    all_reduce: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Unit-RMS input-channel scales s (float32, on each layer's device) of every layer, from one
    dense no-grad pass of the model over `tokens` [N, L], in batches of at most
    `max_batch_tokens` tokens (at least one sample), which bounds the pass's activation memory;
    a batch with padded samples (PAD_ID) runs sample by sample, each trimmed to its real tokens.
    A layer that no token reached raises ProxSparseError naming it.

    `all_reduce` (in place, summing) combines the sums of squares (and token counts) of several
    processes that each saw a part of the tokens, e.g. `torch.distributed.all_reduce`; every
    process then comes to the same verdict on a layer none of them reached."""
    stats = {name: InputNorms(layer.in_features, layer.weight.device) for name, layer in layers.items()}
    handles = [
        layer.register_forward_pre_hook(lambda module, args, stat=stats[name]: stat.add(args[0]))
        for name, layer in layers.items()
    ]
    try:
        _calibration_pass(model, layers, tokens, max_batch_tokens)
    finally:
        for handle in handles:
            handle.remove()
    counts = torch.tensor([float(stat.tokens) for stat in stats.values()], dtype=torch.float64,
                          device=next(iter(layers.values())).weight.device)
    if all_reduce is not None:
        for stat in stats.values():
            all_reduce(stat.sum_squares)
        all_reduce(counts)
    _refuse_unreached([name for name, count in zip(stats, counts.tolist()) if count == 0])
    return {name: unit_rms_scales(stat.norms()).to(layers[name].weight.device) for name, stat in stats.items()}


@torch.no_grad()
def check_layers_called(model: nn.Module, layers: dict[str, nn.Linear], tokens: torch.Tensor, max_batch_tokens: int = 4096) -> None:
    """Refuse (ProxSparseError naming them) target layers that no token of `tokens` reaches (never
    called by the model's forward, or called on empty inputs only), as `activation_scales` does,
    without gathering any statistic. The pass stops after the first batch that reaches every
    layer: one batch for a model whose forward runs every layer on every token."""
    called: set[str] = set()

    def reached(name: str, inputs: torch.Tensor) -> None:
        if inputs.numel():  # a call on an empty slice (an expert no token was routed to) reaches nothing
            called.add(name)

    handles = [
        layer.register_forward_pre_hook(lambda module, args, name=name: reached(name, args[0])) for name, layer in layers.items()
    ]
    try:
        _calibration_pass(model, layers, tokens, max_batch_tokens, done=lambda: len(called) == len(layers))
    finally:
        for handle in handles:
            handle.remove()
    _refuse_unreached([name for name in layers if name not in called])


def _refuse_unreached(names: list[str], shown: int = 5) -> None:
    """The one-line error for target layers no calibration token reached (nothing when `names` is empty)."""
    if names:
        listing = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
        raise ProxSparseError(
            f"{len(names)} target layer(s) that no calibration token reaches (never called by the model's forward, "
            f"or on empty inputs only): {listing}; "
            "with no inputs there is nothing to learn their masks from: add them to ignore, or calibrate on text that reaches them"
        )


def _calibration_pass(
    model: nn.Module, layers: dict[str, nn.Linear], tokens: torch.Tensor, max_batch_tokens: int,
    done: Callable[[], bool] = lambda: False,
) -> None:
    """The model's no-grad eval forward over `tokens` in batches of at most `max_batch_tokens` tokens
    (padded samples one by one, trimmed), until the tokens end or `done()`; the train mode is restored."""
    modes = train_modes(model)
    device = next(iter(layers.values())).weight.device
    kwargs = {"use_cache": False} if hasattr(model, "generation_config") else {}
    if forward_takes(model, "logits_to_keep", named=True):
        kwargs["logits_to_keep"] = 1  # the pass reads layer inputs only: no [tokens, vocab] logits
    try:
        model.eval()
        batch_size = max(1, max_batch_tokens // tokens.shape[1])
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size]
            pieces = [row.unsqueeze(0) for row in trimmed(batch)] if is_padded(batch) else [batch]
            for piece in pieces:
                model(input_ids=piece.to(device), **kwargs)
            if done():
                return
    finally:
        restore_train_modes(model, modes)
