"""ProxSparseConfig: JSON-friendly, a torchao config, and clear errors for bad fields."""

from __future__ import annotations

import json

import pytest
from torchao.core.config import AOBaseConfig, config_to_dict

from proxsparse_ao import ConfigError, ProxSparseConfig
from proxsparse_ao.config import check_batch_size
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
        ({"lambda1": -1}, "lambda1 must be >= 0"),
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
        ({"precision": "float16"}, "precision 'float16' cannot learn: AdamW's state underflows in fp16"),
        ({"seed": 2**70}, "seed must fit in 64 bits"),
        ({"targets": ["re:["]}, r"targets: 're:\[' is not a valid regular expression"),
        ({"ignore": ["re:.*lm_head", "re:("]}, r"ignore: 're:\(' is not a valid regular expression"),
        ({"checkpoint_dir": ""}, "checkpoint_dir is empty: name a folder, or None"),
    ],
)
def test_bad_fields_raise_clear_errors(fields, message):
    with pytest.raises(ConfigError, match=message) as info:
        ProxSparseConfig(**fields)
    assert isinstance(info.value, ProxSparseError)


def test_a_batch_may_take_every_sample_but_no_more():
    check_batch_size(ProxSparseConfig(samples=4, batch_size=4))
    with pytest.raises(ConfigError, match=r"^ProxSparseConfig.batch_size \(401\) is larger than ProxSparseConfig.samples \(400\): "):
        check_batch_size(ProxSparseConfig.preset("paper", batch_size=401))  # the preset's 400 samples
    with pytest.raises(ConfigError, match=r"^ProxSparseConfig.batch_size \(8\) is larger than the 6 calibration samples: "):
        check_batch_size(ProxSparseConfig(samples=64, batch_size=8), rows=6)


def test_samples_do_not_bound_the_batch_of_calibration_tokens_given_the_rows_do():
    """With tokens given, `samples` is not used: 128 rows a step of 256 given rows is fine even at samples=64."""
    config = ProxSparseConfig(samples=64, batch_size=128)
    check_batch_size(config, rows=256)


def test_unknown_field_in_dict_is_an_error():
    with pytest.raises(ConfigError, match="unknown field"):
        ProxSparseConfig.from_dict({"lamda1": 1.0})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (None, r"^ProxSparseConfig.from_dict takes a dict of fields \(as to_dict gives\), got NoneType$"),
        (["lr"], r"^ProxSparseConfig.from_dict takes a dict of fields \(as to_dict gives\), got list$"),
        ({1: 2.0, "lamda1": 1.0}, r"^ProxSparseConfig: unknown field\(s\) 1, lamda1$"),
    ],
)
def test_from_dict_names_what_is_not_a_dict_of_fields(values, message):
    """A non-dict failed with TypeError ('NoneType' object is not iterable, argument after ** must be a
    mapping), and a key that is no str with a TypeError from joining the unknown names."""
    with pytest.raises(ConfigError, match=message):
        ProxSparseConfig.from_dict(values)


def test_ints_accepted_for_floats_and_tuples_become_lists():
    config = ProxSparseConfig(lr=1, targets=("q_proj",))
    assert config.targets == ["q_proj"]


def test_a_path_object_for_a_file_or_folder_field_is_kept_as_its_str(tmp_path):
    """pathlib is what users hold; the config stays JSON-friendly (it was refused: "must be str or None, got PosixPath")."""
    from proxsparse_ao.baselines import SparseGPTConfig, WandaConfig

    config = ProxSparseConfig(calibration=tmp_path / "calib.txt", checkpoint_dir=tmp_path / "ckpt")
    assert config.calibration == str(tmp_path / "calib.txt") and config.checkpoint_dir == str(tmp_path / "ckpt")
    json.dumps(config.to_dict())
    for baseline in (WandaConfig, SparseGPTConfig):
        assert baseline(calibration=tmp_path / "calib.txt").calibration == str(tmp_path / "calib.txt")
    with pytest.raises(ConfigError, match="ProxSparseConfig.precision must be"):
        ProxSparseConfig(precision=tmp_path)  # a path where no path belongs is still refused


def test_paper_preset_is_the_published_recipe_and_fields_override_it():
    paper = ProxSparseConfig.preset("paper")
    assert (paper.strength, paper.lambda1, paper.lr, paper.activation_aware, paper.train) == ("absolute", 0.25, 1e-4, False, "all")
    assert (paper.samples, paper.seqlen, paper.calibration, paper.calibration_mode) == (400, 4096, "c4", "documents")
    assert ProxSparseConfig.preset("paper", samples=64).samples == 64
    assert ProxSparseConfig.preset("default") == ProxSparseConfig()


def test_unknown_preset_or_schedule_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown ProxSparseConfig preset 'papr': use one of default, paper"):
        ProxSparseConfig.preset("papr")
    with pytest.raises(ConfigError, match="strength_schedule must be one of constant, lr"):
        ProxSparseConfig(strength_schedule="cosine")
