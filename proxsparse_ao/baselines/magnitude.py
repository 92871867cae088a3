"""Magnitude 2:4 pruning: keep the 2 largest |W| in every group of 4 input weights (lower index wins ties)."""

from __future__ import annotations

import torch
from torch import nn

from ..masks import magnitude_mask


def magnitude_masks(layers: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """The magnitude 2:4 mask of every layer (bool, on the CPU); needs no data."""
    return {name: magnitude_mask(layer.weight).cpu() for name, layer in layers.items()}
