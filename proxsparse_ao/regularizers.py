"""The two ProxSparse regularisers as values: R (2:4, enters through the prox) and F (frozen weights, enters the loss)."""

from __future__ import annotations

import torch


def r_2to4(weight: torch.Tensor) -> torch.Tensor:
    """sum over groups of 4 of R(w) = sum_{i<j<k} |wi wj wk|; zero exactly when the tensor is 2:4."""
    return r_2to4_groups(weight).sum()


def r_2to4_groups(weight: torch.Tensor) -> torch.Tensor:
    """R(w) of every group of 4 along the last dimension, flattened to [groups], in float64."""
    if weight.shape[-1] % 4:
        raise ValueError(f"r_2to4: the last dimension of shape {tuple(weight.shape)} is not a multiple of 4")
    a = weight.abs().reshape(-1, 4).double()
    return a[:, 0] * a[:, 1] * (a[:, 2] + a[:, 3]) + a[:, 2] * a[:, 3] * (a[:, 0] + a[:, 1])


def frozen_weight_penalty(weight: torch.Tensor, original: torch.Tensor, eps: float) -> torch.Tensor:
    """F(W; W0) = sum w^2 (w - w0)^2 / (|w0| + eps)^2: zero for a pruned or untouched weight. Differentiable in W."""
    if eps <= 0:
        raise ValueError(f"frozen_weight_penalty: eps must be > 0, got {eps}")
    if weight.shape != original.shape:
        raise ValueError(f"frozen_weight_penalty: shapes differ, {tuple(weight.shape)} vs {tuple(original.shape)}")
    w0 = original.to(weight.dtype)
    return (weight.square() * (weight - w0).square() / (w0.abs() + eps).square()).sum()


def frozen_weight_value_and_gradient(
    weight: torch.Tensor, original: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """F(W; W0) and dF/dW = 2 w (w - w0) (2w - w0) / (|w0| + eps)^2, both float32, from one read of W
    and W0: F's value and gradient without an autograd graph (which would hold several
    weight-sized tensors of every layer until the backward pass)."""
    if eps <= 0:
        raise ValueError(f"frozen_weight_value_and_gradient: eps must be > 0, got {eps}")
    if weight.shape != original.shape:
        raise ValueError(
            f"frozen_weight_value_and_gradient: shapes differ, {tuple(weight.shape)} vs {tuple(original.shape)}"
        )
    w, w0 = weight.detach().float(), original.to(device=weight.device, dtype=torch.float32)
    scale = (w0.abs() + eps).square()
    moved = w - w0
    value = (w.square() * moved.square() / scale).sum()
    return value, 2 * w * moved * (2 * w - w0) / scale
