"""Wanda 2:4 (Sun et al. 2023): score |W_ij| * ||X_j||_2, keep the top 2 per group of 4; weights unchanged.

X_j is input feature j of the layer over every calibration token, so the statistic is one
running sum of squares per input column.
"""

from __future__ import annotations

import torch

from ..activations import InputNorms
from ..masks import nm_mask

__all__ = ["InputNorms", "wanda_mask", "wanda_scores"]


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2, in float64."""
    if column_norms.shape != weight.shape[-1:]:
        raise ValueError(f"wanda_scores: {column_norms.numel()} column norms for a weight of shape {tuple(weight.shape)}")
    return weight.detach().double().abs() * column_norms.to(weight.device, torch.float64)


def wanda_mask(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """Keep the 2 highest Wanda scores in every group of 4 input weights (lower index wins ties)."""
    return nm_mask(wanda_scores(weight, column_norms), 2, 4)
