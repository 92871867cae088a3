"""A literal, slow transcription of the ProxSparse reference code's EnumALM prox, kept as ground truth.

Whole-tensor passes exactly as the reference runs them: sort every group, coordinate
minimisation from w = 0 in the order 4,3,2,1 (3,2,1 for the 3-support) for up to 100 sweeps
or until the whole tensor changed by less than 1e-8 in L1, then the best candidate.
"""

from __future__ import annotations

import torch


def _objective(w: torch.Tensor, a: torch.Tensor, lam: float) -> torch.Tensor:
    r = w[:, 0] * w[:, 1] * w[:, 2] + w[:, 0] * w[:, 1] * w[:, 3] + w[:, 0] * w[:, 2] * w[:, 3] + w[:, 1] * w[:, 2] * w[:, 3]
    return 0.5 * ((w - a) ** 2).sum(1) + lam * r


def _alm(a: torch.Tensor, lam: float, support: int, sweeps: int = 100, tol: float = 1e-8) -> torch.Tensor:
    w = torch.zeros_like(a)
    for _ in range(sweeps):
        before = w.clone()
        for k in reversed(range(support)):
            others = [i for i in range(support) if i != k]
            s = torch.zeros_like(a[:, 0])
            for x in range(len(others)):
                for y in range(x + 1, len(others)):
                    s = s + w[:, others[x]] * w[:, others[y]]
            w[:, k] = torch.clamp(a[:, k] - lam * s, min=0)
        if (w - before).abs().sum() < tol:
            break
    return w


def reference_prox_2to4(weight: torch.Tensor, lam: float) -> torch.Tensor:
    z = weight.reshape(-1, 4).double()
    a, perm = torch.sort(z.abs(), dim=1, descending=True, stable=True)
    signs = torch.sign(torch.gather(z, 1, perm))

    two = torch.zeros_like(a)
    two[:, :2] = a[:, :2]
    three = _alm(a, lam, 3)
    four = _alm(a, lam, 4)
    candidates = torch.stack([two, three, four])
    objectives = torch.stack([_objective(c, a, lam) for c in candidates])
    choice = objectives.argmin(0)
    best = candidates[choice, torch.arange(a.shape[0])]

    out = torch.zeros_like(z)
    out.scatter_(1, perm, best * signs)
    return out.reshape(weight.shape).to(weight.dtype)
