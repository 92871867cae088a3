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


def test_metadata_cannot_replace_the_keys_of_the_format_and_an_empty_mask_set_is_refused(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    with pytest.raises(ProxSparseError, match="metadata key[(]s[)] format, targets belong to the folder format"):
        save_pruned(tiny_llama, tmp_path / "out", masks, {"format": "mine", "targets": ["q_proj"]})
    with pytest.raises(ProxSparseError, match="no masks, so nothing was pruned"):
        save_pruned(tiny_llama, tmp_path / "out", {})
    assert list(tmp_path.iterdir()) == []


def _ended_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_save_are_removed_by_the_next_save(tiny_llama, tmp_path):
    import os

    from proxsparse_ao.export import _owner

    masks = _pruned(tiny_llama)
    host = _owner().split("-")[1]
    dead = tmp_path / f".out.tmp-{_ended_pid()}-{host}-abc123"
    replaced = tmp_path / f".out.stale-{_ended_pid()}-{host}"
    live = tmp_path / f".out.tmp-{os.getppid()}-{host}-def456"  # a save still running in another process
    other_host = tmp_path / f".out.tmp-{_ended_pid()}-0000beef-ghi789"
    for folder in (dead, replaced, live, other_host):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    save_pruned(tiny_llama, tmp_path / "out", masks)  # "out" was missing: the replaced folder may be all that is left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", replaced.name, live.name, other_host.name])
    save_pruned(tiny_llama, tmp_path / "out", masks, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other_host.name])


def test_overwrite_replaces_only_an_earlier_pruned_model_folder_or_an_empty_one(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProxSparseError, match="file is not a folder: refusing to replace it"):
        save_pruned(tiny_llama, tmp_path / "file", masks, overwrite=True)
    with pytest.raises(ProxSparseError, match="notes is not a pruned-model folder"):
        save_pruned(tiny_llama, tmp_path / "notes", masks, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and (tmp_path / "file").is_file()
    save_pruned(tiny_llama, tmp_path / "empty", masks, overwrite=True)
    save_pruned(tiny_llama, tmp_path / "empty", masks, overwrite=True)  # now an earlier output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "notes"]


def test_the_current_folder_and_the_model_being_pruned_are_never_the_output(tiny_llama, tmp_path, monkeypatch):
    from proxsparse_ao.export import check_output

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path / "model")
    for output in (".", "..", str(tmp_path)):
        with pytest.raises(ProxSparseError, match="is the current folder or holds it"):
            check_output(output, overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProxSparseError, match="is the model being pruned"):
        check_output("model", overwrite=True, source=str(tmp_path / "model"))


def test_a_save_that_fails_while_swapping_folders_puts_the_old_one_back(tiny_llama, tmp_path, monkeypatch):
    import os

    masks = _pruned(tiny_llama)
    save_pruned(tiny_llama, tmp_path / "out", masks, {"first": True})
    real_replace = os.replace

    def fail_on_the_new_folder(source, target):
        if ".tmp-" in str(source):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", fail_on_the_new_folder)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(tiny_llama, tmp_path / "out", masks, {"first": False}, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert json.loads((tmp_path / "out" / METADATA_FILE).read_text())["first"] is True


def test_the_saved_files_get_the_permissions_of_any_other_new_file(tiny_llama, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        out = save_pruned(tiny_llama, tmp_path / "out", _pruned(tiny_llama))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}
