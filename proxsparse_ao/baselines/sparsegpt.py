"""SparseGPT 2:4 (Frantar & Alistarh 2023): OBS pruning with weight updates, column block by column block.

With H = 2 X^T X / N over the calibration inputs (dampened by a fraction of its mean
diagonal) and U the upper Cholesky factor of H^-1, columns are visited left to right. At
the start of every group of 4 columns the 2 entries of each row with the lowest OBS error
w^2 / U_cc^2 (w: the current, already-updated weights) are chosen for pruning; each column
is then quantised to its pruned values and the error (w - q) / U_cc is spread over the
remaining columns: inside the block at once, to later blocks lazily (one matmul per block).
"""

from __future__ import annotations

import torch

from ..masks import apply_mask, nm_mask


class Hessian:
    """Running H = 2/N * sum over tokens of x x^T for one layer's inputs (N: calibration samples)."""

    def __init__(self, columns: int, device: torch.device | str = "cpu") -> None:
        self.matrix = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Add the inputs of one or more samples [batch, ..., columns], as the reference does per batch."""
        batch = inputs.shape[0] if inputs.dim() > 2 else 1
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.matrix *= self.samples / (self.samples + batch)
        self.samples += batch
        self.matrix.addmm_(x.t(), x, alpha=2.0 / self.samples)


def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, *, blocksize: int = 128, dampening: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """(updated 2:4 weight in weight's dtype, bool keep-mask) for an [out, in] weight and its [in, in] Hessian."""
    rows, columns = weight.shape
    if columns % 4 or hessian.shape != (columns, columns):
        raise ValueError(f"sparsegpt_prune: weight {tuple(weight.shape)} and Hessian {tuple(hessian.shape)} do not fit 2:4")
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone().to(W.device)
    dead = torch.diag(H) == 0  # inputs that are always zero: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(dampening * torch.mean(torch.diag(H)))
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    keep = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        errors = torch.zeros_like(W1)
        d = torch.diag(U1)
        for i in range(i2 - i1):
            if i % 4 == 0:
                saliency = W1[:, i : i + 4].square() / d[i : i + 4].square()
                keep[:, i1 + i : i1 + i + 4] = nm_mask(saliency, 2, 4)
            w = W1[:, i]
            q = torch.where(keep[:, i1 + i], w, torch.zeros((), dtype=w.dtype))
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i] = q
            errors[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    return apply_mask(W, keep).to(weight.dtype), keep
