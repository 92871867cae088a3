"""Activation scales: per-channel input norms of every target from one dense pass, unit RMS, mergeable across processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proxsparse_ao.activations import activation_scales, check_layers_called, unit_rms_scales
from proxsparse_ao.calibration import PAD_ID
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.targets import select_targets
from reference_norms import input_norms_by_hand
from tiny_models import EmptySliceExpert


def _tokens(n=4, length=16, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _layers(model):
    return select_targets(model, ["Linear"], ["re:.*lm_head"]).layers


def test_unit_rms_scales_have_rms_one_and_keep_ratios():
    scales = unit_rms_scales(torch.tensor([1.0, 2.0, 2.0, 4.0], dtype=torch.float64))
    assert scales.dtype == torch.float32
    assert float(scales.square().mean().sqrt()) == pytest.approx(1.0)
    assert torch.allclose(scales / scales[0], torch.tensor([1.0, 2.0, 2.0, 4.0]))


def test_zero_input_columns_get_a_small_positive_floor_and_all_zero_gives_ones():
    scales = unit_rms_scales(torch.tensor([0.0, 3.0, 4.0, 0.0]))
    assert bool((scales > 0).all()) and float(scales[0] / scales[2]) == pytest.approx(1e-6)
    assert torch.equal(unit_rms_scales(torch.zeros(8)), torch.ones(8))


def test_scales_are_the_input_norms_each_layer_saw(tiny_llama):
    layers = _layers(tiny_llama)
    tokens = _tokens()
    expected = input_norms_by_hand(tiny_llama, layers, tokens)
    tiny_llama.train()
    scales = activation_scales(tiny_llama, layers, tokens, max_batch_tokens=48)  # 3 samples a batch
    assert scales.keys() == layers.keys()
    for name, norms in expected.items():
        torch.testing.assert_close(scales[name], unit_rms_scales(norms), rtol=1e-5, atol=0)
    assert tiny_llama.training  # mode restored
    assert all(not layer._forward_pre_hooks for layer in layers.values())  # nothing left behind


def test_processes_that_each_saw_half_the_tokens_agree_with_one_that_saw_all(tiny_llama):
    layers = _layers(tiny_llama)
    tokens = _tokens(6)
    whole = activation_scales(tiny_llama, layers, tokens)
    sums_of_other_half: dict[int, torch.Tensor] = {}

    def remember(tensor: torch.Tensor) -> None:
        sums_of_other_half[len(sums_of_other_half)] = tensor.clone()

    activation_scales(tiny_llama, layers, tokens[3:], all_reduce=remember)
    pending = iter(sums_of_other_half.values())
    merged = activation_scales(tiny_llama, layers, tokens[:3], all_reduce=lambda t: t.add_(next(pending)))
    for name in layers:
        torch.testing.assert_close(merged[name], whole[name], rtol=1e-5, atol=0)


def test_a_failing_forward_still_removes_the_hooks():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, input_ids):
            self.proj(torch.ones(1, 8))
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        activation_scales(model, {"proj": model.proj}, _tokens(1))
    assert not model.proj._forward_pre_hooks


def test_padding_adds_nothing_the_scales_are_those_of_the_trimmed_samples(tiny_llama):
    layers = _layers(tiny_llama)
    tokens = _tokens(4)
    lengths = [16, 7, 16, 12]
    padded = tokens.clone()
    for row, length in zip(padded, lengths):
        row[length:] = PAD_ID
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}
    for row, length in zip(tokens, lengths):  # each sample alone, cut to its real tokens
        for name, norms in input_norms_by_hand(tiny_llama, layers, row[None, :length]).items():
            sums[name] += norms.square()
    scales = activation_scales(tiny_llama, layers, padded, max_batch_tokens=32)  # 2 samples a batch, both padded ones
    for name, total in sums.items():
        torch.testing.assert_close(scales[name], unit_rms_scales(total.sqrt()), rtol=1e-5, atol=0)


def test_the_pass_runs_at_most_max_batch_tokens_per_forward_4096_by_default_and_at_least_one_sample(tiny_llama):
    layers = _layers(tiny_llama)
    shapes = []
    handle = tiny_llama.model.embed_tokens.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    try:
        activation_scales(tiny_llama, layers, _tokens(17, 256))  # 4096 // 256 = 16 samples a forward
        assert shapes == [(16, 256), (1, 256)]
        shapes.clear()
        activation_scales(tiny_llama, layers, _tokens(5, 16), max_batch_tokens=48)
        assert shapes == [(3, 16), (2, 16)]
        shapes.clear()
        activation_scales(tiny_llama, layers, _tokens(2, 32), max_batch_tokens=8)  # a sample longer than the cap runs alone
        assert shapes == [(1, 32), (1, 32)]
    finally:
        handle.remove()


def test_the_statistics_are_those_of_the_model_in_eval_mode_even_when_it_comes_in_training_mode():
    """Dropout off (OPT has 0.1): the scales are the deterministic statistic, and train mode comes back after."""
    from tiny_models import make_tiny_opt

    model = make_tiny_opt()
    layers = _layers(model)
    tokens = _tokens(4)
    expected = input_norms_by_hand(model.eval(), layers, tokens)  # eval mode, one batch
    model.train()
    torch.manual_seed(0)
    scales = activation_scales(model, layers, tokens)
    assert model.training and all(module.training for module in model.modules())
    for name, norms in expected.items():
        torch.testing.assert_close(scales[name], unit_rms_scales(norms), rtol=1e-5, atol=0)


def test_the_pass_asks_the_model_for_no_logits_beyond_the_last_token(tiny_llama):
    seen = []
    tiny_llama.lm_head.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    activation_scales(tiny_llama, _layers(tiny_llama), _tokens())
    assert seen and set(seen) == {1}  # lm_head ran on one position per sample, not on every token


def test_bfloat16_inputs_are_squared_and_summed_as_in_float64(tiny_llama_factory):
    model = tiny_llama_factory(dtype=torch.bfloat16)
    layers = _layers(model)
    inputs = {name: [] for name in layers}
    handles = [layer.register_forward_pre_hook(lambda m, a, n=name: inputs[n].append(a[0].detach()))
               for name, layer in layers.items()]
    with torch.no_grad():
        model(input_ids=_tokens(), use_cache=False)
    for handle in handles:
        handle.remove()
    scales = activation_scales(model, layers, _tokens(), max_batch_tokens=10**6)  # the same single batch
    for name, seen in inputs.items():
        x = torch.cat(seen).reshape(-1, layers[name].in_features).double()
        torch.testing.assert_close(scales[name], unit_rms_scales(x.square().sum(0).sqrt()), rtol=1e-6, atol=0)


def _with_an_unused_linear(model):
    """The tiny Llama with a target nn.Linear that its forward never calls (a leftover head, say)."""
    model.model.layers[0].mlp.unused = nn.Linear(64, 64)
    return model


def test_a_target_the_forward_never_calls_is_refused_by_name(tiny_llama):
    model = _with_an_unused_linear(tiny_llama)
    message = (r"^1 target layer\(s\) that no calibration token reaches \(never called by the model's forward, or on empty inputs only\): "
               r"model.layers.0.mlp.unused; "
               r"with no inputs there is nothing to learn their masks from: add them to ignore, or calibrate on text that reaches them$")
    with pytest.raises(ProxSparseError, match=message):
        activation_scales(model, _layers(model), _tokens())
    with pytest.raises(ProxSparseError, match=message):
        check_layers_called(model, _layers(model), _tokens())
    assert all(not layer._forward_pre_hooks for layer in _layers(model).values())
    check_layers_called(tiny_llama, {n: m for n, m in _layers(model).items() if not n.endswith("unused")}, _tokens())


def test_an_expert_called_only_on_empty_slices_is_refused_like_one_never_called(tiny_llama):
    tiny_llama.model.layers[0].mlp = EmptySliceExpert(tiny_llama.model.layers[0].mlp)
    layers = _layers(tiny_llama)
    assert "model.layers.0.mlp.expert" in layers
    for check in (activation_scales, check_layers_called):
        with pytest.raises(ProxSparseError, match=r"no calibration token reaches .*: model\.layers\.0\.mlp\.expert; "):
            check(tiny_llama, layers, _tokens())


def test_a_layer_only_another_process_reached_is_no_error_every_process_decides_on_the_summed_counts(tiny_llama):
    model = _with_an_unused_linear(tiny_llama)
    scales = activation_scales(model, _layers(model), _tokens(), all_reduce=lambda t: t.add_(1))  # the others saw 1 of each
    assert "model.layers.0.mlp.unused" in scales


def test_the_called_check_stops_after_the_first_batch_that_reached_every_layer(tiny_llama):
    forwards = []
    tiny_llama.model.embed_tokens.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    check_layers_called(tiny_llama, _layers(tiny_llama), _tokens(8), max_batch_tokens=32)  # 2 samples a batch
    assert forwards == [2]
    forwards.clear()
    model = _with_an_unused_linear(tiny_llama)
    with pytest.raises(ProxSparseError, match="no calibration token reaches"):
        check_layers_called(model, _layers(model), _tokens(8), max_batch_tokens=32)
    assert forwards == [2, 2, 2, 2]  # refused only after every calibration token
