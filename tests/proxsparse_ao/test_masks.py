"""N:M masks, 2:4 checks and pattern statistics: deterministic, exact, +0.0 only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.masks import (
    SparsityPatternError,
    apply_mask,
    apply_mask_,
    check_nm,
    fraction_nm,
    is_nm,
    magnitude_mask,
    nm_mask,
    nonzeros_per_group,
    pattern_stats,
)


class TestTopN:
    def test_keeps_the_two_largest_magnitudes_of_every_group(self):
        weight = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]])
        assert magnitude_mask(weight).tolist() == [[False, True, True, False, True, False, False, True]]

    def test_ties_go_to_the_lower_index(self):
        weight = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, -2.0, 2.0, 2.0]])
        assert magnitude_mask(weight).tolist() == [[True, True, False, False, False, True, True, False]]

    def test_every_group_keeps_exactly_n_even_when_all_values_tie(self):
        scores = torch.zeros(16, 64)
        mask = nm_mask(scores)
        assert bool((mask.reshape(-1, 4).sum(1) == 2).all())

    @pytest.mark.parametrize("decimals", [None, 1, 0])  # none, some and many ties
    def test_2_of_4_keeps_the_first_two_of_a_stable_descending_sort(self, decimals):
        scores = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)).abs()
        scores = scores if decimals is None else scores.round(decimals=decimals)
        order = torch.argsort(-scores.reshape(-1, 4), dim=1, stable=True)[:, :2]
        expected = torch.zeros(scores.numel() // 4, 4, dtype=torch.bool).scatter_(1, order, True).reshape(scores.shape)
        assert torch.equal(nm_mask(scores), expected)

    @pytest.mark.parametrize("n, m", [(1, 4), (2, 4), (4, 8), (2, 8)])
    def test_general_n_of_m(self, n, m):
        scores = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
        mask = nm_mask(scores, n, m)
        assert bool((mask.reshape(-1, m).sum(1) == n).all())
        kept_min = torch.where(mask, scores, torch.inf).reshape(-1, m).min(1).values
        dropped_max = torch.where(mask, -torch.inf, scores).reshape(-1, m).max(1).values
        assert bool((kept_min >= dropped_max).all())

    def test_the_same_mask_on_any_device_order_or_dtype(self):
        scores = torch.randint(0, 3, (32, 64)).float()
        assert torch.equal(nm_mask(scores), nm_mask(scores.double()))
        assert torch.equal(nm_mask(scores), nm_mask(scores.t().contiguous().t().contiguous()))

    def test_bad_input_is_refused(self):
        with pytest.raises(ValueError, match="not a multiple of 4"):
            nm_mask(torch.randn(4, 6))
        with pytest.raises(ValueError, match="NaN"):
            nm_mask(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
        with pytest.raises(ValueError, match="0 <= n <= m"):
            nm_mask(torch.randn(4, 8), n=5)
        with pytest.raises(ValueError, match="m >= 1"):
            nm_mask(torch.randn(4, 8), n=0, m=0)

    def test_a_learned_mask_keeps_an_original_zero_only_where_the_group_has_fewer_than_two_non_zeros(self):
        from proxsparse_ao.masks import learned_mask

        original = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.0, 0.0, 0.0, 0.125, 0.0, 0.0, 0.0, 0.0]])
        learned = torch.tensor([[9.0, 0.1, 8.0, 0.2, 9.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
        mask = learned_mask(learned, original)
        assert mask.tolist() == [[False, True, False, True, True, False, False, True, True, True, False, False]]
        assert torch.equal(learned_mask(learned, torch.ones(1, 12)), nm_mask(learned))


class TestApply:
    def test_pruned_entries_are_positive_zero(self):
        weight = -torch.rand(8, 16) - 0.1
        mask = magnitude_mask(weight)
        for pruned in (apply_mask(weight, mask), apply_mask_(weight.clone(), mask)):
            zeros = pruned == 0
            assert int(zeros.sum()) == weight.numel() // 2
            assert not bool(torch.signbit(pruned[zeros]).any())
            assert torch.equal(pruned[mask], weight[mask])

    def test_in_place_form_keeps_the_storage(self):
        weight = torch.randn(8, 16)
        pointer = weight.data_ptr()
        assert apply_mask_(weight, magnitude_mask(weight)).data_ptr() == pointer

    @pytest.mark.parametrize("apply", [apply_mask, apply_mask_], ids=["apply_mask", "apply_mask_"])
    def test_a_mask_must_be_bool_and_of_the_weights_own_shape(self, apply):
        """A 0/1 float or int mask failed inside torch (where/masked_fill/~); a mask of another shape was
        broadcast: one row's mask pruned every row, and a larger mask gave a result of its own shape."""
        weight, mask = torch.randn(8, 16), magnitude_mask(torch.randn(8, 16))
        name = apply.__name__
        for wrong in (mask.float(), mask.to(torch.uint8)):
            with pytest.raises(ProxSparseError, match=rf"^{name}: the mask is {wrong.dtype} \(8, 16\); the weight needs "
                               r"torch.bool \(8, 16\) \(mask.bool\(\) makes one of a 0/1 mask\)$"):
                apply(weight.clone(), wrong)
        for wrong in (mask[:1], mask[0], torch.ones(2, 8, 16, dtype=torch.bool)):
            with pytest.raises(ProxSparseError, match=rf"^{name}: the mask is torch.bool .*; the weight needs torch.bool \(8, 16\)$"):
                apply(weight.clone(), wrong)
        with pytest.raises(ProxSparseError, match=rf"^{name}: the weight and the mask must be tensors, got list$"):
            apply(weight.clone(), mask.tolist())


class TestChecks:
    @pytest.mark.parametrize(
        ("call", "message"),
        [
            (lambda: pattern_stats(torch.ones(3, 4), m=0), r"^nonzeros_per_group: need m >= 1 \(an int, the group size\), got m=0$"),
            (lambda: fraction_nm(torch.ones(3, 4), m=0), r"^nonzeros_per_group: need m >= 1 .*got m=0$"),
            (lambda: check_nm(torch.ones(3, 4), "layer", m=0), r"^check_nm of layer: need m >= 1 .*got m=0$"),
            (lambda: is_nm(torch.ones(3, 4), m=0), r"^is_nm: need m >= 1 .*got m=0$"),
            (lambda: check_nm(np.zeros((4, 4)), "layer"), r"^check_nm of layer: expected a torch.Tensor, got ndarray$"),
            (lambda: nm_mask(np.zeros((4, 4))), r"^nm_mask: expected a torch.Tensor, got ndarray$"),
            (lambda: nm_mask(torch.randn(4, 4), n=2.5), r"^nm_mask: need 0 <= n <= m and m >= 1 \(ints\), got n=2.5, m=4$"),
            (lambda: pattern_stats(torch.ones(3, 5)), r"^nonzeros_per_group: the last dimension of shape \(3, 5\) is not a multiple of 4$"),
        ],
    )
    def test_arguments_the_utilities_cannot_use_are_user_errors(self, call, message):
        """m=0 raised ZeroDivisionError, a numpy array AttributeError, and n=2.5 kept 3 of 4 silently;
        the rest were plain ValueErrors (they stay ValueErrors)."""
        with pytest.raises(ProxSparseError, match=message) as raised:
            call()
        assert isinstance(raised.value, ValueError)

    def test_a_two_of_four_tensor_passes(self):
        weight = apply_mask(torch.randn(8, 16), magnitude_mask(torch.randn(8, 16)))
        check_nm(weight, "layer")
        assert is_nm(weight)
        assert fraction_nm(weight) == 1.0

    def test_the_error_names_the_tensor_the_count_and_the_first_bad_group(self):
        weight = torch.zeros(4, 8)
        weight[2, 4:8] = torch.tensor([1.0, 2.0, 3.0, 0.0])
        weight[3, 0:4] = 1.0
        with pytest.raises(SparsityPatternError, match=r"model.q_proj: 2 of 8 groups .*first bad group starts at \[2, 4\]"):
            check_nm(weight, "model.q_proj")
        assert not is_nm(weight)
        assert fraction_nm(weight) == 6 / 8

    def test_pattern_errors_are_user_errors(self):
        assert issubclass(SparsityPatternError, ProxSparseError)
        with pytest.raises(SparsityPatternError, match="not a multiple of 4"):
            check_nm(torch.zeros(4, 6), "odd")

    def test_pattern_statistics_count_groups_by_non_zeros(self):
        weight = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
        assert nonzeros_per_group(weight).tolist() == [0, 1, 3, 4]
        assert pattern_stats(weight) == {0: 0.25, 1: 0.25, 2: 0.0, 3: 0.25, 4: 0.25}


def test_mask_codes_are_one_byte_per_group_bit_k_for_position_k():
    from proxsparse_ao.masks import mask_codes

    mask = torch.tensor([[True, True, False, False, False, True, False, True]])
    assert mask_codes(mask).tolist() == [0b0011, 0b1010]
    assert mask_codes(mask).dtype == torch.uint8
