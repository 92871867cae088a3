"""Which linears may run as 2:4: exclusion patterns and per-layer reasons."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proxsparse_ao.masks import apply_mask, magnitude_mask
from proxsparse_ao.passes import excluded_by, linear_status
from proxsparse_ao.passes.select import exclude_patterns


def test_exclusion_patterns_follow_the_llm_compressor_convention():
    assert excluded_by("lm_head", ["lm_head"]) == "lm_head"
    assert excluded_by("model.layers.0.mlp.down_proj", ["mlp.down_proj"]) == "mlp.down_proj"
    assert excluded_by("model.layers.3.self_attn.q_proj", ["re:.*layers\\.[0-3]\\..*"]) == "re:.*layers\\.[0-3]\\..*"
    assert excluded_by("model.layers.13.self_attn.q_proj", ["re:.*layers\\.[0-3]\\..*"]) is None
    assert excluded_by("my_lm_head", ["lm_head"]) is None


def test_linear_status_gives_a_reason_for_every_layer_kept_dense():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)).to(torch.bfloat16)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(apply_mask(layer.weight, magnitude_mask(layer.weight)))
    status = linear_status(model, exclude="2")
    assert status["0"] is None
    assert status["1"].startswith("not 2:4")
    assert status["2"] == "excluded (matches '2')"


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        (["re:(unclosed"], r"exclude pattern 're:\(unclosed' is not a valid regular expression"),
        (None, "exclude must be a pattern or a list of patterns, got NoneType"),
        ([3], "exclude patterns must be strings, got 3"),
    ],
)
def test_bad_exclude_patterns_are_named(exclude, message):
    with pytest.raises(ValueError, match=message):
        linear_status(nn.Sequential(nn.Linear(64, 64)), exclude)


def test_one_exclude_pattern_may_be_given_as_a_string():
    assert exclude_patterns("lm_head") == ["lm_head"]


def test_a_regex_pattern_must_match_the_whole_name_not_just_its_start():
    """"re:model.layers.1" names layer 1's module only; it must not keep layers 10-19 dense too."""
    assert excluded_by("model.layers.1", ["re:model\\.layers\\.1"]) == "re:model\\.layers\\.1"
    assert excluded_by("model.layers.10", ["re:model\\.layers\\.1"]) is None
    assert excluded_by("model.layers.1.mlp.up_proj", ["re:model\\.layers\\.1"]) is None
