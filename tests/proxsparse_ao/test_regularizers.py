"""R (the 2:4 regulariser) and F (the frozen-weight term) as the paper defines them."""

from __future__ import annotations

import itertools

import pytest
import torch

from proxsparse_ao.regularizers import frozen_weight_penalty, frozen_weight_value_and_gradient, r_2to4


def test_r_is_the_sum_of_triple_products_per_group():
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5, 1.0, 1.0, 0.0, 0.0]])
    group = [1.0, 2.0, 3.0, 0.5]
    expected = sum(group[i] * group[j] * group[k] for i, j, k in itertools.combinations(range(4), 3))
    assert float(r_2to4(weight)) == pytest.approx(expected)


def test_r_vanishes_exactly_on_two_of_four_tensors():
    weight = torch.randn(16, 32)
    weight.view(-1, 4)[:, 2:] = 0
    assert float(r_2to4(weight)) == 0.0
    weight.view(-1, 4)[0, 2] = 1e-3
    assert float(r_2to4(weight)) > 0.0


def test_f_vanishes_for_pruned_and_untouched_weights_and_grows_in_between():
    original = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    pruned_or_kept = torch.tensor([[0.0, -2.0, 0.0, 3.0]])
    assert float(frozen_weight_penalty(pruned_or_kept, original, eps=0.5)) == 0.0
    moved = torch.tensor([[0.25, -2.0, 0.0, 3.0]], requires_grad=True)
    value = frozen_weight_penalty(moved, original, eps=0.5)
    assert value.item() == pytest.approx(0.25**2 * 0.75**2 / 1.5**2)
    value.backward()
    assert moved.grad is not None and float(moved.grad[0, 0]) != 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        r_2to4(torch.randn(4, 6))
    with pytest.raises(ValueError, match="eps must be > 0"):
        frozen_weight_penalty(torch.randn(4), torch.randn(4), eps=0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        frozen_weight_penalty(torch.randn(4), torch.randn(8), eps=0.5)


def test_the_value_and_gradient_of_f_in_closed_form_are_autograds():
    weight = torch.randn(16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    original = torch.randn(16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    original[0, :4] = 0.0  # pruned originals: the eps keeps the denominator away from 0
    penalty = frozen_weight_penalty(weight, original, 0.5)
    (expected,) = torch.autograd.grad(penalty, weight)
    value, gradient = frozen_weight_value_and_gradient(weight, original, 0.5)
    assert value.dtype == gradient.dtype == torch.float32
    assert float(value) == pytest.approx(float(penalty.detach()), rel=1e-6)
    torch.testing.assert_close(gradient.double(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="eps must be > 0"):
        frozen_weight_value_and_gradient(weight, original, 0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        frozen_weight_value_and_gradient(weight, original[:, :8], 0.5)
