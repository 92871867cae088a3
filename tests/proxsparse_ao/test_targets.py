"""Target selection: patterns, lm_head/embeddings never pruned, in_features % 4, no targets."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
from torch import nn

from proxsparse_ao.config import DEFAULT_IGNORE, DEFAULT_TARGETS
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.targets import NoTargetsError, pruned_layers, select_targets


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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((["Linear"], "q_proj"), r"^ignore must be a list of patterns, got the str 'q_proj': write \['q_proj'\]$"),
        (("Linear", []), r"^targets must be a list of patterns, got the str 'Linear': write \['Linear'\]$"),
        ((None, []), r"^targets must be a list of patterns, got NoneType None$"),
        ((["Linear", 3], []), r"^targets patterns must be str, got int 3$"),
        ((["Linear"], ["re:("]), r"^ignore: 're:\(' is not a valid regular expression \(missing \), unterminated subpattern"),
        ((["Linear"], [], "layers.1."), r"^filter_fn must be a function \(module, name\) -> bool, got str 'layers.1.'$"),
    ],
)
def test_patterns_and_filters_that_cannot_select_are_refused(tiny_llama, arguments, message):
    """A str was iterated into one-letter patterns (ignore="q_proj" silently ignored nothing); the others
    failed with a TypeError, AttributeError or re.error from inside the selection."""
    with pytest.raises(ProxSparseError, match=message):
        select_targets(tiny_llama, *arguments)


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


def test_a_model_whose_matrices_are_not_linears_says_so():
    """GPT-2's projections are Conv1D modules, not nn.Linear: the error names them instead of blaming the patterns."""

    class Conv1D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8, 8))

    model = nn.ModuleDict({"c_attn": Conv1D(), "c_fc": Conv1D()})
    message = (r"the model's weight matrices are in other modules \(c_attn.weight \[8, 8\] \(Conv1D\), "
               r"c_fc.weight \[8, 8\] \(Conv1D\)\): only nn.Linear layers are pruned \(convert them to nn.Linear first\)$")
    with pytest.raises(NoTargetsError, match=message):
        select_targets(model, ["Linear"])


def test_a_class_pattern_matches_subclasses_too():
    """Falcon's projections are FalconLinear(nn.Linear): "Linear" selects them."""

    class FalconLinear(nn.Linear):
        pass

    model = nn.Sequential(FalconLinear(8, 8), nn.Linear(8, 8))
    assert list(select_targets(model, ["Linear"]).layers) == ["0", "1"]
    assert list(select_targets(model, ["FalconLinear"]).layers) == ["0"]


class _MoE(nn.Module):
    """A transformers-5-style mixture-of-experts MLP: a router Linear and the experts fused in one 3-D tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(64, 4, bias=False)
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(torch.zeros(4, 128, 64))


def _moe_model() -> nn.Module:
    layer = nn.Module()
    layer.self_attn = nn.Module()
    layer.self_attn.q_proj = nn.Linear(64, 64)
    layer.mlp = _MoE()
    return nn.ModuleDict({"layers": nn.ModuleList([layer])})


def test_matrices_outside_linears_stay_dense_with_a_warning_or_an_error_under_strict():
    with pytest.warns(UserWarning, match=r"1 weight matrix is not in nn.Linear layers and stays dense \(88% of the weights "
                                         r"outside the embeddings\): layers.0.mlp.experts.gate_up_proj \[4, 128, 64\] \(Module\)"):
        layers = select_targets(_moe_model(), DEFAULT_TARGETS, DEFAULT_IGNORE).layers
    assert list(layers) == ["layers.0.self_attn.q_proj"]  # the router (mlp.gate) is not a projection: ignored
    with pytest.raises(ProxSparseError, match="stays dense"):
        select_targets(_moe_model(), DEFAULT_TARGETS, DEFAULT_IGNORE, strict=True)


def test_a_model_of_linears_selects_without_a_warning(tiny_llama):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(select_targets(tiny_llama, DEFAULT_TARGETS, DEFAULT_IGNORE).layers) == 14


def test_pruned_layers_are_recorded_as_their_count_and_a_fingerprint_of_their_sorted_names():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"]
    recorded = pruned_layers(names)
    digest = hashlib.sha256(b"model.layers.0.mlp.up_proj\nmodel.layers.0.self_attn.q_proj").hexdigest()
    assert recorded == {"count": 2, "sha256": digest[:12]} == pruned_layers(reversed(names))
    assert pruned_layers(names[:1]) != recorded and pruned_layers(names[:1] + ["model.layers.1.mlp.up_proj"])["count"] == 2
    assert pruned_layers(names[:1] + ["model.layers.1.mlp.up_proj"]) != recorded
