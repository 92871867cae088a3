"""sparsify_ end to end, and the torchao handler through plain quantize_."""

from __future__ import annotations

import pytest
import torch
from torchao.quantization import quantize_

from proxsparse_ao import ConfigError, ProxSparseConfig, attach_masks, is_nm, magnitude_mask, sparsify_
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


def test_wrong_config_type_is_rejected(tiny_llama):
    with pytest.raises(ConfigError, match="expected a ProxSparseConfig"):
        sparsify_(tiny_llama, {"lambda1": 1.0}, calibration=_tokens())
    config = ProxSparseConfig(**FAST)
    config.lambda1 = -1.0  # reassigned after construction: still caught
    with pytest.raises(ConfigError, match="lambda1"):
        sparsify_(tiny_llama, config, calibration=_tokens())
