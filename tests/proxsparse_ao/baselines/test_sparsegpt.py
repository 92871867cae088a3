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


def _correlated_inputs(seed: int, columns: int, tokens: int, dead: tuple[int, ...] = ()):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns**0.5
    inputs = torch.randn(tokens, columns, generator=generator) @ mixing + torch.randn(columns, generator=generator)
    inputs[:, list(dead)] = 0.0
    return inputs, torch.randn(12, columns, generator=generator)


@pytest.mark.parametrize(
    ("seed", "columns", "blocksize", "dead"),
    [(0, 32, 128, ()), (1, 32, 8, ()), (2, 48, 16, (5,)), (3, 64, 128, (0, 17, 62)), (4, 24, 12, (10,))],
)
def test_sparsegpt_2_4_is_the_reference_algorithm(seed, columns, blocksize, dead):
    """Dampening, the OBS saliency w^2 / [H^-1]_cc^2 on the updated weights, the lazy block updates and the
    dead inputs, against a step-by-step transcription of the paper's reference code (tests/support)."""
    from reference_sparsegpt import reference_hessian, reference_sparsegpt_24

    inputs, weight = _correlated_inputs(seed, columns, 96, dead)
    hessian = reference_hessian([inputs.unsqueeze(1)])  # 96 samples of one token: a diagonal of order 1
    expected, expected_keep = reference_sparsegpt_24(weight, hessian, blocksize=blocksize)
    updated, keep = sparsegpt_prune(weight, hessian, blocksize=blocksize)
    assert torch.equal(keep, expected_keep)
    torch.testing.assert_close(updated, expected, rtol=1e-5, atol=1e-6)
    assert not bool(updated[:, list(dead)].any())  # a dead input's weights are dropped, whatever their size
    assert not torch.equal(keep, magnitude_mask(weight))  # the Hessian decides, not the magnitudes alone


def test_the_hessian_is_the_references_running_average_over_batches_of_samples():
    from reference_sparsegpt import reference_hessian

    inputs, _ = _correlated_inputs(5, 16, 40)
    batches = [inputs[:24].reshape(3, 8, 16), inputs[24:32].reshape(1, 8, 16), inputs[32:]]  # 3 samples, 1, a 2-D one
    hessian = Hessian(16)
    for batch in batches:
        hessian.add(batch)
    assert hessian.samples == 5
    torch.testing.assert_close(hessian.matrix, reference_hessian(batches), rtol=1e-5, atol=1e-6)


def test_by_hand_a_diagonal_hessian_keeps_the_largest_w2_times_dampened_h_and_updates_nothing():
    """H = diag(16, 4, 1, 1): damp = 0.01 * mean = 0.055, H^-1's factor is diag(1 / sqrt(h + damp)), so the OBS
    error is w^2 (h + damp) = 16.055, 16.22, 9.495, 16.88: columns 1 and 3 stay (magnitude would keep 2 and 3).
    No off-diagonal term, so no error is spread and the kept weights are unchanged."""
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    updated, keep = sparsegpt_prune(weight, torch.diag(torch.tensor([16.0, 4.0, 1.0, 1.0])))
    assert keep.tolist() == [[False, True, False, True]]
    assert updated.tolist() == [[0.0, 2.0, 0.0, 4.0]]


def test_by_hand_a_weight_on_an_input_that_is_always_zero_goes_first_however_large():
    """H = diag(0, 4, 1, 1): input 0 is dead (its weight 5 is dropped, H_00 set to 1), damp = 0.01 * 7 / 4, errors
    0, 4.0175, 4.07, 1.0175: columns 1 and 2 stay."""
    weight = torch.tensor([[5.0, 1.0, 2.0, 1.0]])
    updated, keep = sparsegpt_prune(weight, torch.diag(torch.tensor([0.0, 4.0, 1.0, 1.0])))
    assert keep.tolist() == [[False, True, True, False]]
    assert updated.tolist() == [[0.0, 1.0, 2.0, 0.0]]
