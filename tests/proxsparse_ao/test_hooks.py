"""The reusable pieces in a hand-written training loop: prox post-step hook and frozen-weight loss term."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proxsparse_ao import FrozenWeightTerm, ProxStep, fraction_nm, prox_2to4, relative_strengths
from proxsparse_ao.regularizers import frozen_weight_penalty


def test_relative_strength_formula():
    weight = torch.full((4, 8), 0.5)
    assert relative_strengths({"w": weight}, rho=3.0, lr=1e-3)["w"] == pytest.approx(3.0 * 1e-3 / (3 * 0.25))
    assert relative_strengths({"z": torch.zeros(4, 8)}, 3.0, 1e-3)["z"] == 0.0


def test_hook_runs_the_prox_after_every_step():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    prox = ProxStep({"w": layer.weight}, {"w": 5.0})
    handle = prox.attach(optimizer)
    x = torch.randn(32, 16)
    layer(x).square().mean().backward()
    expected = prox_2to4(layer.weight.detach() - 0.1 * layer.weight.grad, 5.0)
    optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=1e-7)
    handle.remove()
    before = layer.weight.detach().clone()
    optimizer.zero_grad()
    layer(x).square().mean().backward()
    optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), before - 0.1 * layer.weight.grad)


def test_hand_written_loop_drives_weights_to_2_4(tiny_llama):
    model = tiny_llama
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    originals = {n: w.detach().clone() for n, w in weights.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    optimizer = torch.optim.AdamW(weights.values(), lr=1e-2)
    ProxStep(weights, relative_strengths(originals, rho=3.0, lr=1e-2)).attach(optimizer)
    frozen = FrozenWeightTerm(weights, originals, lambda2=0.1, epsilon=0.5)
    assert float(frozen().detach()) == 0.0  # untouched weights
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    start = sum(fraction_nm(w.detach()) for w in weights.values()) / len(weights)
    for step in range(6):
        out = model(input_ids=tokens, labels=tokens)
        loss = out.loss + frozen()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    end = sum(fraction_nm(w.detach()) for w in weights.values()) / len(weights)
    assert end > start + 0.3
    assert float(frozen().detach()) > 0.0


def test_frozen_term_matches_regulariser_and_has_gradients():
    weight = nn.Parameter(torch.randn(4, 8))
    original = torch.randn(4, 8)
    term = FrozenWeightTerm({"w": weight}, {"w": original.to(torch.bfloat16)}, lambda2=0.5, epsilon=0.1)
    value = term()
    expected = 0.5 * frozen_weight_penalty(weight, original.to(torch.bfloat16), 0.1)
    torch.testing.assert_close(value, expected.float())
    value.backward()
    assert weight.grad is not None and bool(weight.grad.abs().sum() > 0)


def test_the_closed_form_gradient_is_the_one_backpropagation_gives():
    torch.manual_seed(0)
    weights = {"a": nn.Parameter(torch.randn(4, 8)), "b": nn.Parameter(torch.randn(8, 16))}
    originals = {name: (w.detach() + 0.3 * torch.randn_like(w)) for name, w in weights.items()}
    term = FrozenWeightTerm(weights, originals, lambda2=0.5, epsilon=0.1)
    term().backward()
    backpropagated = {name: w.grad.clone() for name, w in weights.items()}
    for w in weights.values():
        w.grad = torch.ones_like(w)  # added to what the rest of the loss left there
    value = term.add_grad_()
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(term().detach()))
    for name, w in weights.items():
        torch.testing.assert_close(w.grad, backpropagated[name] + 1, rtol=1e-5, atol=1e-6)


def test_prox_step_rejects_bad_weights():
    with pytest.raises(ValueError, match="in_features % 4"):
        ProxStep({"w": torch.zeros(4, 6)}, {"w": 1.0})
    with pytest.raises(ValueError, match="no strength"):
        ProxStep({"w": torch.zeros(4, 8)}, {})


def test_activation_aware_prox_works_on_the_scaled_weight():
    torch.manual_seed(1)
    weight = torch.randn(8, 16)
    scale = torch.rand(16) + 0.1
    prox = ProxStep({"w": weight}, {"w": 0.7}, scales={"w": scale})
    expected = prox_2to4(weight * scale, 0.7) / scale
    prox()
    torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-7)


def test_prox_threshold_can_follow_the_learning_rate_schedule():
    torch.manual_seed(2)
    start = torch.randn(8, 16)
    layer = nn.Linear(16, 8, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.25)  # lr is 1/4 of initial_lr
    assert scheduler.get_last_lr() == [0.025]
    with torch.no_grad():
        layer.weight.copy_(start)
    ProxStep({"w": layer.weight}, {"w": 4.0}, follow_lr=True)(optimizer)
    torch.testing.assert_close(layer.weight.detach(), prox_2to4(start, 1.0), rtol=0, atol=1e-7)
    with torch.no_grad():
        layer.weight.copy_(start)
    ProxStep({"w": layer.weight}, {"w": 4.0})(optimizer)  # constant: the threshold itself
    torch.testing.assert_close(layer.weight.detach(), prox_2to4(start, 4.0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("scales", [{"w": torch.ones(8)}, {"w": torch.zeros(16)}, {"other": torch.ones(16)}])
def test_scales_must_be_positive_and_one_per_column(scales):
    with pytest.raises(ValueError, match="16 positive column scales"):
        ProxStep({"w": torch.randn(4, 16)}, {"w": 1.0}, scales=scales)
