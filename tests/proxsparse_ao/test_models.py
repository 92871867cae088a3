"""Model loading: local folders, hub ids (offline here) and the embedded default's cached conversion."""

from __future__ import annotations

import json

import pytest
import torch

from proxsparse_ao import models
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.models import default_model_dir, load_model


def test_local_folder_loads_in_eval_mode_with_its_weights(tiny_model_dir, tiny_llama, byte_tokenizer):
    model, tokenizer = load_model(tiny_model_dir)
    assert not model.training
    assert torch.equal(model.lm_head.weight, tiny_llama.lm_head.weight)
    assert tokenizer("some text").input_ids == byte_tokenizer("some text").input_ids


def test_dtype_is_applied(tiny_model_dir):
    model, _ = load_model(tiny_model_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_folder_without_weights_is_a_clear_error(tiny_model_dir):
    for weights in tiny_model_dir.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ProxSparseError, match="has no weights"):
        load_model(tiny_model_dir)


def test_missing_folder_and_folder_without_config_are_clear_errors(tmp_path):
    with pytest.raises(ProxSparseError, match="model folder not found"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ProxSparseError, match="no config.json"):
        load_model(tmp_path)


def test_hub_id_offline_names_the_offline_alternatives():
    with pytest.raises(ProxSparseError, match="from the Hugging Face hub.*embedded default"):
        load_model("HuggingFaceTB/SmolLM2-135M")


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch, tiny_llama_factory, byte_tokenizer):
    """An empty cache and a stand-in for the GGUF conversion that saves the tiny Llama; counts builds."""
    monkeypatch.setenv("PROXSPARSE_CACHE", str(tmp_path / "cache"))
    builds = []

    def convert(dest):
        builds.append(dest)
        tiny_llama_factory().save_pretrained(dest)
        byte_tokenizer.save_pretrained(dest)

    monkeypatch.setattr(models, "_convert", convert)
    return builds


def test_default_model_is_converted_once_then_reused(fake_conversion):
    folder = default_model_dir()
    assert default_model_dir() == folder
    load_model()
    assert len(fake_conversion) == 1
    manifest = json.loads((folder / "proxsparse-manifest.json").read_text())
    assert "model.safetensors" in manifest["files"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_truncated_weights_in_the_cache_are_detected_and_rebuilt(fake_conversion):
    folder = default_model_dir()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    model, _ = load_model()
    assert len(fake_conversion) == 2
    assert model.config.hidden_size == 64


def test_a_half_written_cache_without_manifest_is_rebuilt(fake_conversion):
    folder = default_model_dir()
    (folder / "proxsparse-manifest.json").unlink()
    assert default_model_dir() == folder
    assert len(fake_conversion) == 2


def test_a_cache_that_fails_to_load_is_rebuilt(fake_conversion):
    folder = default_model_dir()
    config = folder / "config.json"
    size = config.stat().st_size
    config.write_text("x" * size)
    model, _ = load_model()
    assert len(fake_conversion) == 2 and not model.training


def test_embedded_default_is_smollm2_135m():
    model, tokenizer = load_model()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.vocab_size == 49152
