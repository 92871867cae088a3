"""ProxSparseConfig: JSON-friendly, a torchao config, and clear errors for bad fields."""

from __future__ import annotations

import json

import pytest
from torchao.core.config import AOBaseConfig, config_to_dict

from proxsparse_ao import ConfigError, ProxSparseConfig
from proxsparse_ao.errors import ProxSparseError


def test_defaults_are_json_friendly_and_round_trip():
    config = ProxSparseConfig()
    assert isinstance(config, AOBaseConfig)
    text = json.dumps(config.to_dict())
    assert ProxSparseConfig.from_dict(json.loads(text)) == config
    assert config_to_dict(config)["_data"]["lambda1"] == config.lambda1


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"lambda1": 0.0}, "lambda1 must be > 0"),
        ({"lambda1": -1}, "lambda1 must be > 0"),
        ({"lr": "1e-3"}, "lr must be float"),
        ({"samples": 2.5}, "samples must be int"),
        ({"samples": True}, "samples must be int"),
        ({"targets": "Linear"}, "targets must be a list of str"),
        ({"targets": []}, "targets is empty"),
        ({"strength": "huge"}, "strength must be one of"),
        ({"train": "everything"}, "train must be one of"),
        ({"checkpoint_dir": 3}, "checkpoint_dir must be str or None"),
        ({"lambda2": float("nan")}, "lambda2 must be finite"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ],
)
def test_bad_fields_raise_clear_errors(fields, message):
    with pytest.raises(ConfigError, match=message) as info:
        ProxSparseConfig(**fields)
    assert isinstance(info.value, ProxSparseError)


def test_unknown_field_in_dict_is_an_error():
    with pytest.raises(ConfigError, match="unknown field"):
        ProxSparseConfig.from_dict({"lamda1": 1.0})


def test_ints_accepted_for_floats_and_tuples_become_lists():
    config = ProxSparseConfig(lr=1, targets=("q_proj",))
    assert config.targets == ["q_proj"]
