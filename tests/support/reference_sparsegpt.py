"""SparseGPT 2:4 as the paper's reference implementation runs it, written out step by step for comparison.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"; the
reference code is IST-DASLab/sparsegpt, `SparseGPT.add_batch` and `SparseGPT.fasterprune(sparsity,
prunen=2, prunem=4, blocksize, percdamp=0.01)` on an nn.Linear without a quantizer. Everything runs in
float32 as there. Independent of `proxsparse_ao.baselines.sparsegpt`: nothing is imported from it.
"""

from __future__ import annotations

import torch


def reference_hessian(batches: list[torch.Tensor]) -> torch.Tensor:
    """H = (2 / nsamples) * sum of x x^T over every token, kept as a running average as batches arrive.

    A batch [b, tokens, columns] counts b samples, a 2-D one [tokens, columns] one sample."""
    columns = batches[0].shape[-1]
    H = torch.zeros(columns, columns)
    nsamples = 0
    for inp in batches:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        batch = inp.shape[0]
        X = inp.reshape(-1, columns).t().float()  # [columns, tokens]
        H *= nsamples / (nsamples + batch)
        nsamples += batch
        X = (2 / nsamples) ** 0.5 * X
        H += X @ X.t()
    return H


def reference_sparsegpt_24(
    weight: torch.Tensor, hessian: torch.Tensor, blocksize: int = 128, percdamp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the pruned and updated weight [rows, columns], the bool mask of the weights kept) of SparseGPT 2:4."""
    W = weight.clone().float()
    H = hessian.clone().float()
    rows, columns = W.shape

    # 1. Inputs that are zero on every token have a zero Hessian row and column: give them H_jj = 1
    #    (so H stays invertible) and drop their weights, which cannot change the output.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    # 2. Dampening: add percdamp times the mean of the diagonal to the diagonal.
    damp = percdamp * torch.mean(torch.diag(H))
    diagonal = torch.arange(columns)
    H[diagonal, diagonal] += damp

    # 3. Hinv: the upper Cholesky factor of H^-1 (the OBS quantities of the column-by-column order).
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    pruned = torch.zeros(rows, columns, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()  # this block's weights, updated in place as columns are pruned
        Q1 = torch.zeros_like(W1)  # the block's final weights
        Err1 = torch.zeros_like(W1)  # the scaled errors, to update the later blocks in one product
        Hinv1 = Hinv[i1:i2, i1:i2]
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if i % 4 == 0:
                # 4. At the first column of each group of 4: the OBS error w^2 / [Hinv]_cc^2 of removing each of
                #    the group's weights, from the weights as updated so far; the 2 smallest of every row go.
                error = W1[:, i : i + 4] ** 2 / torch.diag(Hinv1)[i : i + 4].reshape(1, -1) ** 2
                prune1.scatter_(1, i + torch.topk(error, 2, dim=1, largest=False)[1], True)
            q = w.clone()
            q[prune1[:, i]] = 0
            Q1[:, i] = q
            # 5. Spread the removed part over the columns still to come (OBS update, row by row).
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])  # the same update, for every later block at once
        pruned[:, i1:i2] = prune1
    return W, ~pruned
