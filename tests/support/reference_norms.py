"""Input-channel norms of every layer from one plain forward, computed independently of the library's pass."""

from __future__ import annotations

import torch
from torch import nn

from proxsparse_ao.activations import InputNorms


def input_norms_by_hand(model: nn.Module, layers: dict[str, nn.Linear], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """||X_j||_2 per input column of each layer over every token of `tokens` (one batch, no grad)."""
    stats = {name: InputNorms(layer.in_features) for name, layer in layers.items()}
    handles = [layer.register_forward_pre_hook(lambda m, a, s=stats[n]: s.add(a[0])) for n, layer in layers.items()]
    try:
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: stat.norms() for name, stat in stats.items()}
