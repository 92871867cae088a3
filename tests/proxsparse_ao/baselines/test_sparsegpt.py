"""SparseGPT: reconstruction error below magnitude's on a small layer, exactly 2:4, the Hessian's scale."""

import pytest
import torch

from proxsparse_ao.baselines import Hessian, sparsegpt_prune
from proxsparse_ao.masks import apply_mask, magnitude_mask


def _layer(seed: int = 0, out: int = 32, columns: int = 64, tokens: int = 512):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, columns, generator=generator)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    inputs = torch.randn(tokens, columns, generator=generator) @ mixing + 0.5 * torch.randn(columns, generator=generator)
    return weight, inputs


def _error(inputs, weight, pruned):
    return float((inputs @ (weight - pruned).t()).square().sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_error_below_magnitude(seed):
    weight, inputs = _layer(seed)
    hessian = Hessian(weight.shape[1])
    hessian.add(inputs)
    updated, keep = sparsegpt_prune(weight, hessian.matrix, blocksize=16)
    magnitude = apply_mask(weight, magnitude_mask(weight))
    assert _error(inputs, weight, updated) < 0.8 * _error(inputs, weight, magnitude)
    assert bool((keep.reshape(-1, 4).sum(1) == 2).all())
    assert bool((updated[~keep] == 0).all()) and not bool(torch.signbit(updated[~keep]).any())


def test_hessian_is_two_over_samples_times_xtx():
    _, inputs = _layer(tokens=24)
    batches = inputs.view(3, 8, -1)  # three samples of 8 tokens, added one at a time
    hessian = Hessian(inputs.shape[1])
    for sample in batches:
        hessian.add(sample.unsqueeze(0))
    assert hessian.samples == 3
    assert torch.allclose(hessian.matrix, 2.0 / 3 * inputs.t() @ inputs, rtol=1e-5, atol=1e-5)


def test_dead_inputs_and_blocksize_do_not_break_it():
    weight, inputs = _layer(columns=32)
    inputs[:, 5] = 0.0
    hessian = Hessian(32)
    hessian.add(inputs)
    first, keep_first = sparsegpt_prune(weight, hessian.matrix, blocksize=8)
    second, keep_second = sparsegpt_prune(weight, hessian.matrix, blocksize=32)
    assert torch.isfinite(first).all() and torch.allclose(first, second, atol=1e-4)
    assert torch.equal(keep_first, keep_second)


def test_bad_input():
    with pytest.raises(ValueError, match="do not fit"):
        sparsegpt_prune(torch.randn(4, 8), torch.eye(4))
    with pytest.raises(ValueError, match="do not fit"):
        sparsegpt_prune(torch.randn(4, 6), torch.eye(6))
