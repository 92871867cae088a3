"""The two ProxSparse learning pieces, usable in any training loop (ours, HF Trainer, accelerate).

* `ProxStep`: the 2:4 prox on every target weight, registered as an optimizer post-step
  hook (`Optimizer.register_step_post_hook`), so `optimizer.step()` becomes a proximal step.
  With per-column `scales` s it is activation-aware: W <- prox(W * diag(s)) / s, so the
  regulariser compares Wanda-style scores |W_ij| s_j instead of bare magnitudes.
* `FrozenWeightTerm`: lambda2 * sum F(W; W0), a differentiable term to add to the loss.

    prox = ProxStep(weights, strengths); prox.attach(optimizer)
    frozen = FrozenWeightTerm(weights, originals, lambda2=0.01, epsilon=0.5)
    loss = model(...).loss + frozen(); loss.backward(); optimizer.step()  # prox runs here
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .prox import prox_2to4_
from .regularizers import frozen_weight_penalty, frozen_weight_value_and_gradient
from .targets import weight_rms


def relative_strengths(weights: Mapping[str, torch.Tensor], rho: float, lr: float) -> dict[str, float]:
    """Per-layer prox thresholds for a fixed shrink-to-step ratio `rho`: rho * lr / (3 rms^2).

    A dense group shrinks by about lam * 3 * rms^2 per prox and an AdamW step moves a weight
    by about lr, so this keeps their ratio at rho whatever the layer's weight scale.
    An all-zero layer gets 0 (nothing to shrink)."""
    strengths = {}
    for name, weight in weights.items():
        rms = weight_rms(weight)
        strengths[name] = rho * lr / (3.0 * rms * rms) if rms > 0 else 0.0
    return strengths


def absolute_strengths(weights: Mapping[str, torch.Tensor], lambda1: float) -> dict[str, float]:
    """The paper's convention: the same threshold lambda1 for every layer."""
    return {name: float(lambda1) for name in weights}


def prox_space(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The tensor the prox and the final top-2 act on: W * diag(s), or W itself without scales."""
    return weight.detach() if scale is None else weight.detach() * scale


class ProxStep:
    """W <- prox_{lam R}(W * s) / s in place for every registered weight (s = 1 without `scales`).

    Call it or attach it to an optimizer. With `follow_lr` each threshold is multiplied by the
    optimizer's current lr / initial lr, so the shrink-to-step ratio holds through warmup and
    decay; otherwise the threshold is constant (the paper)."""

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        strengths: Mapping[str, float],
        scales: Mapping[str, torch.Tensor] | None = None,
        follow_lr: bool = False,
    ) -> None:
        missing = sorted(set(weights) - set(strengths))
        if missing:
            raise ValueError(f"ProxStep: no strength for {', '.join(missing)}")
        for name, weight in weights.items():
            if weight.dim() != 2 or weight.shape[-1] % 4 or not weight.is_contiguous():
                raise ValueError(f"ProxStep: {name} must be a contiguous 2-D weight with in_features % 4 == 0")
            scale = (scales or {}).get(name)
            if scales is not None and (scale is None or scale.shape != weight.shape[-1:] or not bool((scale > 0).all())):
                raise ValueError(f"ProxStep: {name} needs {weight.shape[-1]} positive column scales")
        self.weights = dict(weights)
        self.strengths = {name: float(strengths[name]) for name in weights}
        self.scales = {name: scales[name].to(weight.device, weight.dtype) for name, weight in weights.items()} if scales else {}
        self.follow_lr = follow_lr

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer | None = None, args: Any = (), kwargs: Any = None) -> None:
        factor = 1.0
        if self.follow_lr and optimizer is not None:
            group = optimizer.param_groups[0]
            factor = float(group["lr"]) / float(group.get("initial_lr", group["lr"]) or 1.0)
        for name, weight in self.weights.items():
            lam = self.strengths[name] * factor
            scale = self.scales.get(name)
            if scale is None:
                prox_2to4_(weight.data, lam)
            else:
                scaled = weight.data * scale
                prox_2to4_(scaled, lam)
                torch.div(scaled, scale, out=weight.data)

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Run after every `optimizer.step()`; remove with the returned handle."""
        return optimizer.register_step_post_hook(self)


class FrozenWeightTerm:
    """lambda2 * sum_layers F(W; W0): keeps surviving weights near their originals while masks move.

    `originals` may live on another device or in another dtype (cheaper memory); each call
    brings one layer at a time next to its weight."""

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        originals: Mapping[str, torch.Tensor],
        lambda2: float,
        epsilon: float,
    ) -> None:
        missing = sorted(set(weights) - set(originals))
        if missing:
            raise ValueError(f"FrozenWeightTerm: no original weight for {', '.join(missing)}")
        if epsilon <= 0 or lambda2 < 0:
            raise ValueError(f"FrozenWeightTerm: need lambda2 >= 0 and epsilon > 0, got {lambda2}, {epsilon}")
        self.weights = dict(weights)
        self.originals = {name: originals[name] for name in weights}
        self.lambda2, self.epsilon = float(lambda2), float(epsilon)

    @torch.no_grad()
    def add_grad_(self) -> torch.Tensor:
        """Add the term's gradient to each weight's `.grad` and return its value (float32 scalar),
        one layer at a time: what backpropagating `self()` adds, with no graph over every layer
        kept until the backward pass. Call it after the rest of the loss's `backward()`."""
        first = next(iter(self.weights.values()))
        total = torch.zeros((), dtype=torch.float32, device=first.device)
        if self.lambda2 == 0:
            return total
        for name, weight in self.weights.items():
            value, grad = frozen_weight_value_and_gradient(weight, self.originals[name], self.epsilon)
            total += value
            grad.mul_(self.lambda2)
            if weight.grad is None:
                weight.grad = grad.to(weight.dtype)
            else:
                weight.grad.add_(grad.to(weight.grad.dtype))
        return self.lambda2 * total

    def __call__(self) -> torch.Tensor:
        first = next(iter(self.weights.values()))
        total = torch.zeros((), dtype=torch.float32, device=first.device)
        if self.lambda2 == 0:
            return total
        for name, weight in self.weights.items():
            original = self.originals[name].to(device=weight.device, non_blocking=True)
            total = total + frozen_weight_penalty(weight, original, self.epsilon).float()
        return self.lambda2 * total
