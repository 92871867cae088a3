"""Wanda 2:4 (Sun et al. 2023): score |W_ij| * ||X_j||_2, keep the top 2 per group of 4; weights unchanged.

X_j is input feature j of the layer over every calibration token, so the statistic is one
running sum of squares per input column.
"""

from __future__ import annotations

import torch

from ..masks import nm_mask


class InputNorms:
    """Running sum over tokens of x_j^2 for each input column j (float64: many tokens are summed)."""

    def __init__(self, columns: int, device: torch.device | str = "cpu") -> None:
        self.sum_squares = torch.zeros(columns, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of layer inputs [..., columns]."""
        x = inputs.detach().reshape(-1, inputs.shape[-1])
        self.sum_squares += x.double().square().sum(0)
        self.tokens += x.shape[0]

    def norms(self) -> torch.Tensor:
        """||X_j||_2 over all tokens seen, per column."""
        return self.sum_squares.sqrt()


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2, in float64."""
    if column_norms.shape != weight.shape[-1:]:
        raise ValueError(f"wanda_scores: {column_norms.numel()} column norms for a weight of shape {tuple(weight.shape)}")
    return weight.detach().double().abs() * column_norms.to(weight.device, torch.float64)


def wanda_mask(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """Keep the 2 highest Wanda scores in every group of 4 input weights (lower index wins ties)."""
    return nm_mask(wanda_scores(weight, column_norms), 2, 4)
