"""Saving a pruned model: HF folder + compact masks + metadata, atomic, and loading it back."""

from __future__ import annotations

import json

import pytest
import torch

from proxsparse_ao import apply_masks, load_pruned, magnitude_mask, save_pruned, select_targets
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.export import MASKS_FILE, METADATA_FILE, decode_masks, encode_masks


def _pruned(model):
    masks = {n: magnitude_mask(m.weight) for n, m in select_targets(model, ["Linear"], ["re:.*lm_head"]).layers.items()}
    apply_masks(model, masks)
    return masks


def test_mask_codes_round_trip_and_are_compact():
    mask = magnitude_mask(torch.randn(8, 32))
    codes = encode_masks({"w": mask})["w"]
    assert codes.dtype == torch.uint8 and codes.shape == (8, 8)
    assert torch.equal(decode_masks({"w": codes})["w"], mask)


def test_save_and_load_round_trip(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    out = save_pruned(tiny_llama, tmp_path / "out", masks, {"source_model": "tiny"})
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["source_model"] == "tiny" and len(metadata["targets"]) == 14
    assert (out / MASKS_FILE).stat().st_size < 14 * 64 * 128  # far below the dense weights
    model, _, loaded_masks, _ = load_pruned(out)
    assert all(torch.equal(loaded_masks[n], masks[n].cpu()) for n in masks)
    for key, value in tiny_llama.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    assert not bool(torch.signbit(weight[weight == 0]).any())  # +0.0, never -0.0


def test_existing_output_needs_overwrite(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    save_pruned(tiny_llama, tmp_path / "out", masks, {})
    with pytest.raises(ProxSparseError, match="already exists"):
        save_pruned(tiny_llama, tmp_path / "out", masks, {})
    save_pruned(tiny_llama, tmp_path / "out", masks, {"again": True}, overwrite=True)
    assert json.loads((tmp_path / "out" / METADATA_FILE).read_text())["again"] is True


def test_an_interrupted_save_leaves_no_folder(tiny_llama, tmp_path, monkeypatch):
    masks = _pruned(tiny_llama)
    import safetensors.torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(tiny_llama, tmp_path / "out", masks, {})
    assert list(tmp_path.iterdir()) == []


def test_unpruned_weights_are_refused(tiny_llama, tmp_path):
    name = "model.layers.0.mlp.up_proj"
    mask = magnitude_mask(tiny_llama.get_submodule(name).weight)
    with pytest.raises(ProxSparseError, match="more than 2 non-zeros"):
        save_pruned(tiny_llama, tmp_path / "out", {name: mask}, {})
