"""sparsify_ end to end, and the torchao handler through plain quantize_."""

from __future__ import annotations

import pytest
import torch
from torchao.quantization import quantize_

from proxsparse_ao import (
    ConfigError,
    MagnitudeConfig,
    ProxSparseConfig,
    WandaConfig,
    attach_masks,
    is_nm,
    magnitude_mask,
    sparsify_,
    stored_masks,
    target_filter,
)
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.targets import select_targets

FAST = dict(samples=4, seqlen=16, lr=1e-2)


def _tokens(n=4):
    return torch.randint(0, 256, (n, 16), generator=torch.Generator().manual_seed(0))


def test_sparsify_prunes_targets_exactly_and_leaves_the_rest(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    model = sparsify_(tiny_llama, ProxSparseConfig(**FAST), calibration=_tokens())
    assert model is tiny_llama
    targets = set(select_targets(model, ["Linear"], ["re:.*lm_head"]).layers)
    for name, module in model.named_modules():
        if name in targets:
            weight, original = module.weight.detach(), before[name + ".weight"]
            kept = module.proxsparse_mask
            assert is_nm(weight) and int(kept.sum()) * 2 == kept.numel()
            assert torch.equal(weight[kept], original[kept])  # the ORIGINAL weights under the mask
            assert not bool(torch.signbit(weight[~kept]).any()) and bool((weight[~kept] == 0).all())
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] not in targets:
            assert torch.equal(value, before[key]), key


def test_filter_fn_limits_pruning(tiny_llama):
    sparsify_(tiny_llama, ProxSparseConfig(**FAST), lambda m, name: name.endswith("q_proj"), calibration=_tokens())
    assert is_nm(tiny_llama.model.layers[0].self_attn.q_proj.weight)
    assert not is_nm(tiny_llama.model.layers[0].mlp.up_proj.weight)


def test_handler_applies_stored_masks_through_plain_quantize(tiny_llama):
    layer = tiny_llama.model.layers[1].mlp.down_proj
    original = layer.weight.detach().clone()
    mask = magnitude_mask(original)
    attach_masks(tiny_llama, {"model.layers.1.mlp.down_proj": mask})
    quantize_(tiny_llama, ProxSparseConfig())  # torchao's own entry point, default filter (all linears)
    assert torch.equal(layer.weight.detach(), torch.where(mask, original, torch.zeros(())))
    assert not is_nm(tiny_llama.model.layers[0].mlp.down_proj.weight)  # no stored mask: untouched


def test_sparsify_without_tokenizer_or_calibration_is_a_clear_error(tiny_llama):
    with pytest.raises(Exception, match="no calibration tokens"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST))


def test_a_seqlen_longer_than_the_models_context_is_refused_before_the_text_is_read(tiny_llama, byte_tokenizer, monkeypatch):
    import proxsparse_ao.data

    def unread(*args, **kwargs):
        raise AssertionError("the calibration text was read")

    monkeypatch.setattr(proxsparse_ao.data, "load_documents", unread)
    tiny_llama.config.max_position_embeddings = 8
    with pytest.raises(ProxSparseError, match="^ProxSparseConfig.seqlen 16 is longer than the model's maximum context of 8 tokens"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST), tokenizer=byte_tokenizer)
    with pytest.raises(ProxSparseError, match="^the calibration sample length 16 is longer than the model's maximum context of 8"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST), calibration=_tokens())


def test_wrong_config_type_is_rejected(tiny_llama):
    with pytest.raises(ConfigError, match="expected a ProxSparseConfig"):
        sparsify_(tiny_llama, {"lambda1": 1.0}, calibration=_tokens())
    config = ProxSparseConfig(**FAST)
    config.lambda1 = -1.0  # reassigned after construction: still caught
    with pytest.raises(ConfigError, match="lambda1"):
        sparsify_(tiny_llama, config, calibration=_tokens())


@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), MagnitudeConfig(), WandaConfig(samples=4, seqlen=16)])
def test_a_non_finite_target_weight_is_named_before_any_work(tiny_llama, config):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    tiny_llama.model.layers[1].mlp.down_proj.weight.data[3, 5] = float("nan")
    with pytest.raises(ProxSparseError, match=r"model.layers.1.mlp.down_proj: the weight has a non-finite value \(nan\) at \[3, 5\]"):
        sparsify_(tiny_llama, config, calibration=_tokens())
    for key, value in tiny_llama.state_dict().items():
        assert key == "model.layers.1.mlp.down_proj.weight" or torch.equal(value, before[key]), key


def test_a_model_whose_weights_are_not_loaded_is_refused(tiny_llama_factory):
    model = tiny_llama_factory().to("meta")
    with pytest.raises(ProxSparseError, match="the weight is on the meta device"):
        sparsify_(model, MagnitudeConfig())


def test_stored_masks_are_what_save_pruned_needs_after_sparsify(tiny_llama, tmp_path):
    from proxsparse_ao import load_pruned, save_pruned

    sparsify_(tiny_llama, ProxSparseConfig(**FAST), calibration=_tokens())
    masks = stored_masks(tiny_llama)
    assert sorted(masks) == sorted(select_targets(tiny_llama, ["Linear"], ["re:.*lm_head"]).layers)
    assert all(torch.equal(tiny_llama.get_submodule(n).weight.detach() != 0, m) for n, m in masks.items())
    _, _, loaded, _ = load_pruned(save_pruned(tiny_llama, tmp_path / "pruned", masks))
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)


def test_plain_quantize_with_target_filter_prunes_what_sparsify_would(tiny_llama_factory):
    """torchao's default filter is every nn.Linear, lm_head included; target_filter applies the config's rules."""
    config = MagnitudeConfig(ignore=["re:.*lm_head", "re:.*mlp.*"])
    model = tiny_llama_factory()
    head = model.lm_head.weight.detach().clone()
    quantize_(model, config, filter_fn=target_filter(model, config))
    assert is_nm(model.model.layers[0].self_attn.q_proj.weight)
    assert not is_nm(model.model.layers[0].mlp.up_proj.weight) and torch.equal(model.lm_head.weight, head)


def test_magnitude_prunes_by_magnitude_even_where_another_method_left_a_mask(tiny_llama_factory):
    model = tiny_llama_factory()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    sparsify_(model, WandaConfig(samples=4, seqlen=16), calibration=_tokens())
    model.load_state_dict(dense)  # dense again; Wanda's masks stay on the modules (non-persistent buffers)
    layer = model.model.layers[0].self_attn.q_proj
    expected = magnitude_mask(layer.weight)
    assert not torch.equal(layer.proxsparse_mask, expected)
    sparsify_(model, MagnitudeConfig())
    assert torch.equal(layer.weight.detach() != 0, expected)


def test_documents_mode_learns_from_short_documents_and_counts_their_real_tokens(tiny_llama, byte_tokenizer, tmp_path):
    from proxsparse_ao.api import learn

    text = tmp_path / "short.txt"
    text.write_text("\n\n".join(f"document {i}: " + "lorem ipsum " * i for i in range(1, 9)))
    config = ProxSparseConfig(samples=8, seqlen=64, lr=1e-2, batch_size=2, calibration=str(text), calibration_mode="documents")
    result = learn(tiny_llama, config, tokenizer=byte_tokenizer)
    assert result.extra["calibration_shape"] == [8, 64]
    assert result.extra["calibration_tokens"] == sum(min(64, len(f"document {i}: " + "lorem ipsum " * i)) for i in range(1, 9))
    assert result.steps_done == 4 and all(is_nm(m.float()) for m in result.masks.values())
