"""Wanda: scores |W_ij| * ||X_j||_2 checked against a hand computation, top-2 per group of 4."""

import pytest
import torch

from proxsparse_ao.baselines import InputNorms, wanda_mask, wanda_scores

# Two calibration tokens; column norms by hand: sqrt(9+16)=5, sqrt(0+1)=1, sqrt(1+0)=1, sqrt(4+0)=2.
X = torch.tensor([[3.0, 0.0, 1.0, 2.0], [4.0, 1.0, 0.0, 0.0]])
W = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.1, 4.0, -1.0, 2.0]])


def test_input_norms_by_hand_and_across_batches():
    whole, split = InputNorms(4), InputNorms(4)
    whole.add(X)
    split.add(X[:1].unsqueeze(0))  # [batch, seq, columns] also accepted
    split.add(X[1:])
    expected = torch.tensor([5.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    assert torch.equal(whole.norms(), expected)
    assert torch.equal(split.norms(), expected)
    assert whole.tokens == split.tokens == 2


def test_scores_and_mask_by_hand():
    norms = torch.tensor([5.0, 1.0, 1.0, 2.0])
    # row 0: 1*5, 2*1, 3*1, 0.5*2 = 5, 2, 3, 1 -> keep columns 0 and 2 (magnitude would keep 1 and 2)
    # row 1: 0.1*5, 4*1, 1*1, 2*2 = 0.5, 4, 1, 4 -> keep 1 and 3 (a tie between them, both kept)
    expected = torch.tensor([[5.0, 2.0, 3.0, 1.0], [0.5, 4.0, 1.0, 4.0]], dtype=torch.float64)
    assert torch.allclose(wanda_scores(W, norms), expected)
    assert wanda_mask(W, norms).tolist() == [[True, False, True, False], [False, True, False, True]]


def test_ties_lower_index_wins():
    mask = wanda_mask(torch.ones(1, 4), torch.ones(4))
    assert mask.tolist() == [[True, True, False, False]]


def test_bad_input():
    with pytest.raises(ValueError, match="column norms"):
        wanda_scores(W, torch.ones(3))
    with pytest.raises(ValueError, match="multiple of 4"):
        wanda_mask(torch.ones(2, 6), torch.ones(6))
