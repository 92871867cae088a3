"""Model loading: local folders, hub ids (offline here) and the embedded default's cached conversion."""

from __future__ import annotations

import json
import re

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


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No hub (the probe says so) and an empty local Hugging Face cache; returns the cache folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)  # the message names huggingface_hub's default endpoint
    return tmp_path / "hf-cache"


def test_a_hub_id_offline_fails_at_once_naming_the_offline_alternatives(offline_hub):
    with pytest.raises(ProxSparseError, match=r"could not load 'HuggingFaceTB/SmolLM2-135M' offline: the Hugging Face hub "
                       r"\(https://huggingface.co\) did not answer and it is not in the local Hugging Face cache\. "
                       r"Offline, use the embedded default"):
        load_model("HuggingFaceTB/SmolLM2-135M")


def test_a_hub_id_in_the_local_hub_cache_loads_offline(offline_hub, tiny_model_dir, tiny_llama):
    import shutil

    snapshot = offline_hub / "models--someone--tiny-llama" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    model, tokenizer = load_model("someone/tiny-llama")
    assert torch.equal(model.lm_head.weight, tiny_llama.lm_head.weight) and tokenizer is not None


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


def test_a_cache_the_default_model_cannot_be_built_in_is_one_error_naming_it(fake_conversion, tmp_path, monkeypatch):
    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder")
    monkeypatch.setenv("PROXSPARSE_CACHE", str(taken))
    with pytest.raises(ProxSparseError, match=rf"^cannot build the default model in the cache folder {taken} \({taken / 'models'}: Not a directory\)"):
        load_model()
    assert fake_conversion == []


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


def test_an_error_that_is_not_a_damaged_cache_is_raised_without_a_rebuild(fake_conversion, monkeypatch):
    default_model_dir()

    def out_of_memory(where, dtype):
        raise MemoryError("out of memory")

    monkeypatch.setattr(models, "_pretrained_model", out_of_memory)
    with pytest.raises(MemoryError, match="out of memory"):
        load_model()
    assert len(fake_conversion) == 1


def test_embedded_default_is_smollm2_135m():
    model, tokenizer = load_model()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.vocab_size == 49152


def rewrite_weights(folder, change) -> None:
    """Apply `change` (a function of the name -> tensor dict) to the folder's model.safetensors."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    change(weights)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def rewrite_config(folder, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_checkpoint_missing_a_tensor_the_config_needs_is_refused_naming_it(tiny_model_dir):
    rewrite_weights(tiny_model_dir, lambda weights: weights.pop("model.layers.1.input_layernorm.weight"))
    with pytest.raises(ProxSparseError, match=r"model.safetensors lacks 1 tensor the config needs: "
                                              r"model.layers.1.input_layernorm.weight$"):
        load_model(tiny_model_dir)


def test_a_missing_target_weight_is_refused_rather_than_initialised_at_random(tiny_model_dir):
    rewrite_weights(tiny_model_dir, lambda weights: weights.pop("model.layers.0.self_attn.q_proj.weight"))
    with pytest.raises(ProxSparseError, match="lacks 1 tensor the config needs: model.layers.0.self_attn.q_proj.weight"):
        load_model(tiny_model_dir)


def test_a_config_with_more_layers_than_the_weights_is_refused_with_a_count_and_the_first_keys(tiny_model_dir):
    rewrite_config(tiny_model_dir, num_hidden_layers=4)
    with pytest.raises(ProxSparseError, match=r"lacks 18 tensors the config needs: model.layers.2.input_layernorm.weight, "
                                              r"model.layers.2.mlp.down_proj.weight, .* and 15 more"):
        load_model(tiny_model_dir)


def test_a_tensor_of_the_wrong_shape_is_refused_naming_both_shapes(tiny_model_dir):
    rewrite_weights(tiny_model_dir, lambda weights: weights.update({"model.norm.weight": torch.ones(32)}))
    with pytest.raises(ProxSparseError, match=r"1 tensor of the wrong shape: model.norm.weight is \(32,\), the config needs \(64,\)"):
        load_model(tiny_model_dir)


def test_a_tensor_the_config_has_no_place_for_is_refused(tiny_model_dir):
    rewrite_config(tiny_model_dir, num_hidden_layers=1)
    with pytest.raises(ProxSparseError, match="has 9 tensors the config has no place for: model.layers.1.input_layernorm.weight"):
        load_model(tiny_model_dir)


def test_tied_embeddings_and_rotary_buffers_do_not_count_as_missing(tmp_path, byte_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
    byte_tokenizer.save_pretrained(tmp_path / "tied")
    model, _ = load_model(tmp_path / "tied")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_load_causal_lm_gives_the_checked_model_without_a_tokenizer(tiny_model_dir, tiny_llama):
    model = models.load_causal_lm(tiny_model_dir, dtype=torch.float32)
    assert not model.training and torch.equal(model.lm_head.weight, tiny_llama.lm_head.weight)
    rewrite_weights(tiny_model_dir, lambda weights: weights.pop("model.norm.weight"))
    with pytest.raises(ProxSparseError, match="lacks 1 tensor the config needs: model.norm.weight"):
        models.load_causal_lm(tiny_model_dir)


def test_the_masks_file_of_a_pruned_folder_does_not_count_as_weights(tiny_model_dir):
    (tiny_model_dir / "model.safetensors").rename(tiny_model_dir / "masks.safetensors")
    with pytest.raises(ProxSparseError, match="has no weights"):
        load_model(tiny_model_dir)


def test_a_config_transformers_rejects_is_one_line_naming_the_reason(tiny_model_dir):
    rewrite_config(tiny_model_dir, num_attention_heads=3)
    with pytest.raises(ProxSparseError, match=r"^could not load the model in .*: The hidden size \(64\) is not a multiple") as caught:
        load_model(tiny_model_dir)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content", [b"\x00garbage" * 100, b"PK\x03\x04" + b"\x00" * 200])
def test_a_corrupt_pytorch_bin_is_a_clear_error(tiny_model_dir, content):
    (tiny_model_dir / "model.safetensors").unlink()
    (tiny_model_dir / "pytorch_model.bin").write_bytes(content)
    with pytest.raises(ProxSparseError, match="^could not load the model in ") as caught:
        load_model(tiny_model_dir)
    assert "\n" not in str(caught.value)


def test_a_file_given_as_the_model_folder_is_called_not_a_folder(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("not a model")
    with pytest.raises(ProxSparseError, match="is not a folder"):
        load_model(path)


def test_check_source_refuses_unusable_local_folders_and_lets_hub_ids_and_the_default_pass(tmp_path, tiny_model_dir):
    with pytest.raises(ProxSparseError, match="model folder not found"):
        models.check_source(tmp_path / "nowhere")
    with pytest.raises(ProxSparseError, match="no config.json"):
        models.check_source(tmp_path)
    models.check_source(tiny_model_dir)
    models.check_source("HuggingFaceTB/SmolLM2-135M")
    models.check_source(None)
    models.check_source("default")


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def shard(folder) -> list:
    """Save the weights again as several shards and an index; the shard files, in order."""
    from tiny_models import make_tiny_llama

    (folder / "model.safetensors").unlink()
    make_tiny_llama().save_pretrained(folder, max_shard_size="100KB")
    return sorted(folder.glob("model-*-of-*.safetensors"))


UNLOADABLE_FOLDERS = {
    "config.json that is not JSON": (lambda f: (f / "config.json").write_text('{"model_type": "llama",'),
                                     "is not a valid JSON file"),
    "config.json transformers refuses": (lambda f: rewrite_config(f, num_attention_heads=3),
                                         "is not a multiple of the number of attention heads"),
    "no weight files": (lambda f: (f / "model.safetensors").unlink(), "has no weights"),
    "a truncated weight file": (lambda f: truncate(f / "model.safetensors"), "could not load the model in"),
    "a missing shard": (lambda f: shard(f)[1].unlink(), "No such file or directory"),
    "a truncated shard": (lambda f: truncate(shard(f)[-1]), "could not load the model in"),
    "a missing tensor": (lambda f: rewrite_weights(f, lambda w: w.pop("model.layers.1.input_layernorm.weight")),
                         "lacks 1 tensor the config needs: model.layers.1.input_layernorm.weight"),
    "a config that does not fit the weights": (lambda f: rewrite_config(f, intermediate_size=256), "of the wrong shape"),
    "no tokenizer": (lambda f: [(f / name).unlink() for name in ("tokenizer.json", "tokenizer_config.json")],
                     "could not load the tokenizer in"),
}


@pytest.mark.parametrize("damage", list(UNLOADABLE_FOLDERS))
def test_check_loadable_refuses_what_load_model_would_in_one_line(tiny_model_dir, damage):
    change, problem = UNLOADABLE_FOLDERS[damage]
    change(tiny_model_dir)
    with pytest.raises(ProxSparseError) as refused:
        models.check_loadable(str(tiny_model_dir))
    assert problem in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ProxSparseError, match=re.escape(problem)):
        load_model(tiny_model_dir)


def test_check_loadable_passes_intact_folders_sharded_or_not_hub_ids_and_the_default(tiny_model_dir):
    models.check_loadable(str(tiny_model_dir))
    assert len(shard(tiny_model_dir)) > 1
    models.check_loadable(str(tiny_model_dir))
    models.check_loadable("HuggingFaceTB/SmolLM2-135M")  # the hub may be reachable where it runs: loading decides
    models.check_loadable("default")


def test_check_loadable_returns_a_local_folders_config_for_early_checks_and_none_otherwise(tiny_model_dir):
    config = models.check_loadable(str(tiny_model_dir))
    assert config.max_position_embeddings == 256 and config.model_type == "llama"
    assert models.check_loadable("HuggingFaceTB/SmolLM2-135M") is None
    assert models.check_loadable("default") is None


def test_a_dtype_or_device_that_cannot_hold_the_model_is_refused_before_loading(tiny_model_dir):
    with pytest.raises(ProxSparseError, match="dtype must be a floating torch dtype such as torch.bfloat16, got 'float8'"):
        load_model(tiny_model_dir, dtype="float8")
    with pytest.raises(ProxSparseError, match="dtype must be a floating torch dtype .* got torch.int64"):
        load_model(tiny_model_dir, dtype=torch.int64)
    with pytest.raises(ProxSparseError, match="device meta: the meta device holds no weights"):
        load_model(tiny_model_dir, device="meta")
