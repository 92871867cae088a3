"""Target selection: patterns, lm_head/embeddings never pruned, in_features % 4, no targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.targets import NoTargetsError, select_targets


def test_default_patterns_pick_the_projections(tiny_llama):
    layers = select_targets(tiny_llama, ["Linear"], ["re:.*lm_head"]).layers
    assert len(layers) == 14
    assert all(name.split(".")[-1].endswith("proj") for name in layers)


def test_the_configs_default_patterns_pick_only_attention_and_mlp_projections_on_opt():
    """OPT-350m-style models project the embeddings in and out of the blocks: not a target (ALGORITHM: q/k/v/out_proj, fc1/fc2)."""
    from transformers import OPTConfig, OPTForCausalLM

    from proxsparse_ao.baselines import WandaConfig
    from proxsparse_ao.config import ProxSparseConfig

    config = OPTConfig(vocab_size=128, hidden_size=64, word_embed_proj_dim=32, ffn_dim=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64)
    model = OPTForCausalLM(config)
    assert {"model.decoder.project_in", "model.decoder.project_out"} <= {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for defaults in (ProxSparseConfig(), WandaConfig()):
        layers = select_targets(model, defaults.targets, defaults.ignore).layers
        assert sorted({name.split(".")[-1] for name in layers}) == ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"]
        assert len(layers) == 12


def test_lm_head_and_embeddings_are_never_targets(tiny_llama):
    layers = select_targets(tiny_llama, ["re:.*"], []).layers
    assert "lm_head" not in layers and len(layers) == 14


def test_suffix_regex_and_ignore(tiny_llama):
    layers = select_targets(tiny_llama, ["re:.*mlp\\..*"], ["down_proj"]).layers
    assert sorted({n.split(".")[-1] for n in layers}) == ["gate_proj", "up_proj"]
    only = select_targets(tiny_llama, ["layers.0.self_attn.q_proj"]).layers
    assert list(only) == ["model.layers.0.self_attn.q_proj"]


def test_filter_fn_narrows(tiny_llama):
    layers = select_targets(tiny_llama, ["Linear"], [], lambda module, name: "layers.1." in name).layers
    assert len(layers) == 7 and all("layers.1." in n for n in layers)


def test_in_features_not_multiple_of_4_warns_or_fails():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 8))
    with pytest.warns(UserWarning, match=r"skipping 1 layer.*2 \(in_features=6"):
        selection = select_targets(model, ["Linear"])
    assert list(selection.layers) == ["0", "1"] and list(selection.skipped) == ["2"]
    with pytest.raises(ProxSparseError, match="cannot be made 2:4: 2"):
        select_targets(model, ["Linear"], strict=True)


def test_no_targets_is_a_clear_error(tiny_llama):
    with pytest.raises(NoTargetsError, match="no prunable linear layer"):
        select_targets(tiny_llama, ["re:.*does_not_exist"])


def test_patterns_that_select_only_layers_of_another_kind_say_so():
    """GPT-2's projections are Conv1D modules, not nn.Linear: the error names them instead of blaming the patterns."""

    class Conv1D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8, 8))

    model = nn.ModuleDict({"c_attn": Conv1D(), "c_fc": Conv1D()})
    with pytest.raises(NoTargetsError, match=r"only nn.Linear layers are pruned, and the patterns select c_attn \(Conv1D\)$"):
        select_targets(model, ["c_attn"])
