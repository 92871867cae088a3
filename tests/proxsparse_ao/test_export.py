"""Saving a pruned model: HF folder + compact masks + metadata, atomic, and loading it back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from proxsparse_ao import apply_masks, load_pruned, magnitude_mask, save_pruned, select_targets
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.export import MASKS_FILE, METADATA_FILE, decode_masks, encode_masks, read_masks, read_metadata


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


def test_the_current_folder_and_the_model_being_pruned_never_hold_the_output(tiny_llama, tmp_path, monkeypatch):
    from proxsparse_ao.export import check_output

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path / "model")
    for output in (".", "..", str(tmp_path)):
        with pytest.raises(ProxSparseError, match="is the current folder or holds it"):
            check_output(output, overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProxSparseError, match="is the model being pruned"):
        check_output("model", overwrite=True, source=str(tmp_path / "model"))
    with pytest.raises(ProxSparseError, match="is inside the model folder being pruned"):
        check_output("model/pruned", overwrite=False, source=str(tmp_path / "model"))


def test_an_output_inside_a_file_is_refused_before_any_work(tmp_path):
    from proxsparse_ao.export import check_output

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ProxSparseError, match=f"{tmp_path / 'a_file'} is not a folder"):
        check_output(tmp_path / "a_file" / "out", overwrite=False)


def test_an_output_in_a_read_only_folder_is_refused_before_any_work(open_tmp, unprivileged):
    import subprocess
    import sys

    locked = open_tmp / "locked"
    locked.mkdir(mode=0o555)
    probe = f"from proxsparse_ao.export import check_output; check_output({str(locked / 'deeper' / 'out')!r}, overwrite=False)"
    done = subprocess.run([*unprivileged, sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and f"cannot create the folder {locked / 'deeper'} (Permission denied)" in done.stderr
    assert list(locked.iterdir()) == []


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


def test_read_metadata(tmp_path):
    assert read_metadata(tmp_path) is None
    (tmp_path / "proxsparse.json").write_text("[1, 2]")
    with pytest.raises(ProxSparseError, match="expected a JSON object"):
        read_metadata(tmp_path)
    (tmp_path / "proxsparse.json").write_text(json.dumps({"format": "other", "targets": []}))
    with pytest.raises(ProxSparseError, match="unknown format"):
        read_metadata(tmp_path)
    (tmp_path / "proxsparse.json").write_text(json.dumps({"format": "proxsparse-2:4/v1", "targets": ["a.b"]}))
    assert read_metadata(tmp_path)["targets"] == ["a.b"]


def save_codes(folder, masks: dict[str, torch.Tensor], change=None) -> dict:
    """Write masks as export does (uint8 codes) into `folder`, after `change` edits the codes; returns the metadata."""
    from safetensors.torch import save_file

    from proxsparse_ao.export import encode_masks

    codes = encode_masks(masks)
    if change is not None:
        change(codes)
    save_file(codes, str(folder / "masks.safetensors"))
    return {"targets": sorted(masks)}


def test_saved_masks_that_keep_2_of_every_4_are_read_back(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    read = read_masks(tmp_path, save_codes(tmp_path, masks))
    assert set(read) == set(masks) and all(torch.equal(read[name], masks[name]) for name in masks)


@pytest.mark.parametrize("code", [15, 1, 0, 0x13])
def test_a_saved_mask_that_does_not_keep_exactly_2_of_4_is_bad_input_naming_the_layer(tiny_llama, tmp_path, code):
    masks = _pruned(tiny_llama)
    layer = "model.layers.1.mlp.up_proj"

    def corrupt(codes):
        codes[layer][0, :5] = code

    metadata = save_codes(tmp_path, masks, corrupt)
    with pytest.raises(ProxSparseError, match=rf"not a 2:4 mask file: the saved mask of {layer} does not keep exactly "
                                              r"2 of every 4 weights \(5 of 2,048 groups\)$"):
        read_masks(tmp_path, metadata)


def test_several_bad_saved_masks_are_counted(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)

    def all_on(codes):
        for name in list(codes)[:3]:
            codes[name].fill_(15)

    with pytest.raises(ProxSparseError, match=r"\(and 2 more layers\)"):
        read_masks(tmp_path, save_codes(tmp_path, masks, all_on))


def test_saved_masks_that_are_not_uint8_codes_are_bad_input(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    layer = "model.layers.0.self_attn.q_proj"
    metadata = save_codes(tmp_path, masks, lambda codes: codes.update({layer: codes[layer].float()}))
    with pytest.raises(ProxSparseError, match=f"the mask of {layer} is float32 of shape"):
        read_masks(tmp_path, metadata)


def test_a_metadata_file_that_cannot_be_read_is_bad_input(tmp_path, monkeypatch):
    from pathlib import Path

    (tmp_path / "proxsparse.json").write_text("{}")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ProxSparseError, match="proxsparse.json cannot be read: Permission denied"):
        read_metadata(tmp_path)


def _edit_masks(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    codes = load_file(str(folder / MASKS_FILE))
    change(codes)
    save_file(codes, str(folder / MASKS_FILE))


def _edit_targets(folder, change) -> None:
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata["targets"] = change(metadata["targets"])
    (folder / METADATA_FILE).write_text(json.dumps(metadata))


def _rename_a_mask(folder) -> None:
    """Masks file and targets agree with each other, but name a layer the model does not have."""
    _edit_masks(folder, lambda codes: codes.update({"model.layers.9.mlp.up_proj": codes.pop("model.layers.1.mlp.up_proj")}))
    _edit_targets(folder, lambda targets: sorted({*targets} - {"model.layers.1.mlp.up_proj"} | {"model.layers.9.mlp.up_proj"}))


def _edit_weight(folder, name: str, change) -> None:
    """Rewrite one tensor of the folder's model.safetensors, as a tool that edits weights would."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    tensors[name] = change(tensors[name].clone())
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _off_mask_entry(folder, layer: str, value: float) -> None:
    """Move one kept weight of the first group to a position its saved mask has off: still 2 of 4, not the mask."""
    from proxsparse_ao.export import read_masks, read_metadata

    mask = read_masks(folder, read_metadata(folder))[layer]
    kept, off = mask[0, :4].nonzero().flatten().tolist(), (~mask[0, :4]).nonzero().flatten().tolist()

    def move(weight):
        weight[0, kept[0]] = 0.0
        weight[0, off[0]] = value
        return weight

    _edit_weight(folder, f"{layer}.weight", move)



def _masks_file_outside(folder) -> None:
    """proxsparse.json points at a (valid) masks file next to the folder rather than in it."""
    (folder.parent / MASKS_FILE).write_bytes((folder / MASKS_FILE).read_bytes())
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata["masks_file"] = f"../{MASKS_FILE}"
    (folder / METADATA_FILE).write_text(json.dumps(metadata))


DAMAGED_PRUNED_FOLDERS = {
    "a target weight rewritten dense": (
        lambda f: _edit_weight(f, "model.layers.0.mlp.up_proj.weight", lambda w: torch.ones_like(w)),
        "model.layers.0.mlp.up_proj: 2048 of 2048 groups of 4 have more than 2 non-zeros"),
    "a weight set where its mask is off": (lambda f: _off_mask_entry(f, "model.layers.1.self_attn.o_proj", 0.5),
                                           "model.layers.1.self_attn.o_proj: the weight is not +0.0 everywhere its mask is off"),
    "a -0.0 where the mask is off": (lambda f: _off_mask_entry(f, "model.layers.1.self_attn.o_proj", -0.0),
                                     "model.layers.1.self_attn.o_proj: the weight is not +0.0 everywhere its mask is off"),
    "a mask missing from the masks file": (
        lambda f: _edit_masks(f, lambda codes: codes.pop("model.layers.1.mlp.up_proj")),
        "masks.safetensors does not match the targets in proxsparse.json: 1 listed target(s) without a mask "
        "(model.layers.1.mlp.up_proj)"),
    "targets that do not list a saved mask": (
        lambda f: _edit_targets(f, lambda targets: [t for t in targets if ".0." not in t]),
        "masks.safetensors does not match the targets in proxsparse.json: 7 mask(s) for layers it does not list "
        "(model.layers.0.mlp.down_proj, model.layers.0.mlp.gate_proj, model.layers.0.mlp.up_proj and 4 more)"),
    "targets naming a layer without a mask": (
        lambda f: _edit_targets(f, lambda targets: [*targets, "lm_head"]),
        "does not match the targets in proxsparse.json: 1 listed target(s) without a mask (lm_head)"),
    "proxsparse.json that is not JSON": (lambda f: (f / METADATA_FILE).write_text("{"), "proxsparse.json does not parse"),
    "proxsparse.json that is a list": (lambda f: (f / METADATA_FILE).write_text("[]"), "expected a JSON object, got list"),
    "no proxsparse.json": (lambda f: (f / METADATA_FILE).unlink(), "is not a pruned model folder (no proxsparse.json)"),
    "a truncated masks file": (lambda f: (f / MASKS_FILE).write_bytes((f / MASKS_FILE).read_bytes()[:100]),
                               "masks.safetensors cannot be read"),
    "no masks file": (lambda f: (f / MASKS_FILE).unlink(), "masks.safetensors is missing (proxsparse.json refers to it)"),
    "a masks file named outside the folder": (_masks_file_outside,
                                              "proxsparse.json: 'masks_file' must name a file in the folder, got '../masks.safetensors'"),
    "a mask for a layer the model lacks": (_rename_a_mask,
                                           "the saved masks name 1 layer(s) that are not linears of the model: model.layers.9"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_PRUNED_FOLDERS))
def test_load_pruned_refuses_a_damaged_folder_in_one_line(tiny_llama, tmp_path, damage):
    out = save_pruned(tiny_llama, tmp_path / "out", _pruned(tiny_llama))
    change, problem = DAMAGED_PRUNED_FOLDERS[damage]
    change(out)
    with pytest.raises(ProxSparseError) as refused:
        load_pruned(out)
    assert problem in str(refused.value) and "\n" not in str(refused.value)


def test_load_pruned_names_a_path_that_does_not_exist_or_is_a_file(tmp_path):
    """Both were "is not a pruned model folder (no proxsparse.json)", which sends the user looking for a file."""
    with pytest.raises(ProxSparseError, match=r"^\S+missing does not exist$"):
        load_pruned(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProxSparseError, match=r"^\S+file is a file: a pruned model is a folder$"):
        load_pruned(tmp_path / "file")


def test_save_pruned_refuses_a_minus_zero_where_the_mask_is_off_before_writing(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    layer = tiny_llama.model.layers[0].self_attn.q_proj
    off = (~masks["model.layers.0.self_attn.q_proj"][0, :4]).nonzero()[0, 0]
    with torch.no_grad():
        layer.weight[0, off] = -0.0  # still 2:4, equal to 0, but the sign bit is set (a kernel may copy it as is)
    with pytest.raises(ProxSparseError, match="^model.layers.0.self_attn.q_proj: the weight is not [+]0.0 everywhere its mask is off$"):
        save_pruned(tiny_llama, tmp_path / "out", masks)
    assert list(tmp_path.iterdir()) == []


def test_save_pruned_refuses_a_weight_that_is_2_4_but_not_on_its_mask(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    name = "model.layers.1.mlp.down_proj"
    mask = masks[name][0, :4]
    kept, off = mask.nonzero()[0, 0], (~mask).nonzero()[0, 0]
    with torch.no_grad():
        weight = tiny_llama.get_submodule(name).weight
        weight[0, off] = weight[0, kept].abs()  # positive: no sign bit, only the place is wrong
        weight[0, kept] = 0.0  # the group keeps 2 of 4, one of them where the mask is off
    with pytest.raises(ProxSparseError, match=f"^{name}: the weight is not [+]0.0 everywhere its mask is off$"):
        save_pruned(tiny_llama, tmp_path / "out", masks)
    assert list(tmp_path.iterdir()) == []


def test_save_pruned_refuses_a_mask_keeping_3_of_4_even_where_the_weight_holds_a_zero(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    name = "model.layers.0.mlp.gate_proj"
    off = (~masks[name][0, :4]).nonzero()[0, 0]
    masks[name][0, off] = True  # the weight there is +0.0: the weights pass, the mask itself is not 2:4
    with pytest.raises(ProxSparseError, match=f"^mask of {name}: 1 of 2048 groups of 4 have more than 2 non-zeros"):
        save_pruned(tiny_llama, tmp_path / "out", masks)
    assert list(tmp_path.iterdir()) == []


def test_save_pruned_refuses_a_mask_keeping_1_of_4_where_the_weight_kept_only_1(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    name = "model.layers.0.mlp.gate_proj"
    kept = masks[name][0, :4].nonzero()[0, 0]
    masks[name][0, kept] = False
    with torch.no_grad():
        tiny_llama.get_submodule(name).weight[0, kept] = 0.0  # the weights follow the mask: only the mask is wrong
    with pytest.raises(ProxSparseError, match="does not keep exactly 2 of every 4 weights \\(1 of 2,048 groups\\)$") as refused:
        save_pruned(tiny_llama, tmp_path / "out", masks)
    assert name in str(refused.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [MASKS_FILE, METADATA_FILE, "config.json", "model.safetensors", "generation_config.json",
                                  "tokenizer.json", "tokenizer_config.json"])
def test_an_extra_file_named_like_one_of_the_folders_own_files_is_refused_before_writing(tiny_llama, byte_tokenizer, tmp_path, name):
    masks = _pruned(tiny_llama)
    with pytest.raises(ProxSparseError) as refused:
        save_pruned(tiny_llama, tmp_path / "out", masks, tokenizer=byte_tokenizer, extra_files={"learning_log.json": b"{}", name: b"x"})
    assert str(refused.value) == (f"save_pruned: extra_files {name} would replace the pruned-model folder's own file: "
                                  "give it another name")
    assert list(tmp_path.iterdir()) == []


def test_an_extra_file_clashing_with_a_file_this_model_saves_is_refused_and_nothing_is_left(tiny_llama, tmp_path, monkeypatch):
    """A model with its own code saves more files than the usual ones; the clash is found once they are written
    (into the temporary folder, which goes)."""
    masks = _pruned(tiny_llama)
    save = tiny_llama.save_pretrained

    def with_code(folder, **kwargs):
        save(folder, **kwargs)
        (Path(folder) / "modeling_custom.py").write_text("# the model's code")

    monkeypatch.setattr(tiny_llama, "save_pretrained", with_code)
    with pytest.raises(ProxSparseError, match="^save_pruned: extra_files modeling_custom.py would replace"):
        save_pruned(tiny_llama, tmp_path / "out", masks, extra_files={"modeling_custom.py": b"print('mine')"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "..", "logs/learning_log.json", "../learning_log.json"])
def test_an_extra_file_name_that_is_not_a_plain_file_name_is_refused(tiny_llama, tmp_path, name):
    with pytest.raises(ProxSparseError, match="^save_pruned: extra_files names must be plain file names, got "):
        save_pruned(tiny_llama, tmp_path / "out", _pruned(tiny_llama), extra_files={name: b"{}"})
    assert list(tmp_path.iterdir()) == []


def test_extra_files_with_names_of_their_own_are_saved_and_the_folder_loads(tiny_llama, tmp_path):
    out = save_pruned(tiny_llama, tmp_path / "out", _pruned(tiny_llama), extra_files={"learning_log.json": b'{"steps": 1}'})
    assert (out / "learning_log.json").read_bytes() == b'{"steps": 1}'
    assert len(load_pruned(out)[2]) == 14


@pytest.mark.parametrize("change, problem", [
    (lambda masks, model: {**masks, "model.layers.0.mlp.up_proj": masks["model.layers.0.mlp.up_proj"].float()},
     r"mask for model.layers.0.mlp.up_proj is torch.float32 \(128, 64\); the weight needs torch.bool \(128, 64\)"),
    (lambda masks, model: {**masks, "model.layers.0.mlp.up_proj": masks["model.layers.0.mlp.up_proj"][:64]},
     r"mask for model.layers.0.mlp.up_proj is torch.bool \(64, 64\); the weight needs torch.bool \(128, 64\)"),
    (lambda masks, model: {**masks, "model.layers.7.mlp.up_proj": masks["model.layers.0.mlp.up_proj"]},
     "mask for model.layers.7.mlp.up_proj: the model has no such module"),
    (lambda masks, model: list(masks.values()), "masks must be a dict of layer name -> bool mask, got list"),
])
def test_masks_that_do_not_fit_the_model_are_named_before_writing(tiny_llama, tmp_path, change, problem):
    masks = _pruned(tiny_llama)
    with pytest.raises(ProxSparseError, match=problem):
        save_pruned(tiny_llama, tmp_path / "out", change(masks, tiny_llama))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("wrap", ["torch.compile", "proxsparse_ao.compile"])
def test_a_compiled_model_is_saved_as_the_model_it_wraps_and_the_folder_loads(tiny_llama, tmp_path, wrap):
    import proxsparse_ao
    from proxsparse_ao import stored_masks

    masks = _pruned(tiny_llama)
    compiled = torch.compile(tiny_llama) if wrap == "torch.compile" else proxsparse_ao.compile(tiny_llama)[0]
    for kind, given in (("through the wrapper", stored_masks(compiled)), ("of the model", masks)):
        out = save_pruned(compiled, tmp_path / kind, given)
        assert json.loads((out / METADATA_FILE).read_text())["targets"] == sorted(masks)
        loaded = load_pruned(out)[2]
        assert all(torch.equal(loaded[name], mask) for name, mask in masks.items())


@pytest.mark.parametrize("arguments, problem", [
    (dict(tokenizer="HuggingFaceTB/SmolLM2-135M"), r"tokenizer must be a tokenizer object .*got str 'HuggingFaceTB/SmolLM2-135M'$"),
    (dict(extra_files={"log.txt": "text", "ok.bin": b"bytes"}), r"extra_files contents must be bytes \(encode text first\), not for log.txt$"),
    (dict(metadata={("run", 1): "x"}), r"metadata cannot be written as JSON \(keys must be str, int, float, bool or None, not tuple\)$"),
], ids=["tokenizer-name", "text-extra-file", "tuple-metadata-key"])
def test_save_arguments_that_cannot_be_written_are_refused_before_writing(tiny_llama, tmp_path, arguments, problem):
    """Each failed with AttributeError or TypeError once the model was written to the temporary folder."""
    masks = _pruned(tiny_llama)
    with pytest.raises(ProxSparseError, match="^save_pruned: " + problem):
        save_pruned(tiny_llama, tmp_path / "out", masks, **arguments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arguments, problem", [
    (dict(output=None), r"output must be a folder path \(str or pathlib.Path\), got NoneType None$"),
    (dict(output=3), r"output must be a folder path \(str or pathlib.Path\), got int 3$"),
    (dict(overwrite="no"), r"overwrite must be True or False, got str 'no'$"),
    (dict(extra_files=[b"log"]), r"extra_files must be a dict of file name -> bytes, got list$"),
], ids=["output-none", "output-int", "overwrite-str", "extra-files-list"])
def test_save_arguments_of_the_wrong_kind_are_refused_and_an_existing_folder_is_kept(tiny_llama, tmp_path, arguments, problem):
    """A path of None or a number failed with pathlib's TypeError and a list of extra files with a ValueError
    from dict(); overwrite="no", being truthy, replaced the existing folder."""
    masks = _pruned(tiny_llama)
    earlier = save_pruned(tiny_llama, tmp_path / "out", masks, metadata={"run": 1})
    with pytest.raises(ProxSparseError, match="^save_pruned: " + problem):
        save_pruned(tiny_llama, **{"output": earlier, "masks": masks, **arguments})
    assert json.loads((earlier / METADATA_FILE).read_text())["run"] == 1


def test_load_pruned_refuses_a_folder_that_is_no_path():
    """It failed with pathlib's "expected str, bytes or os.PathLike object, not NoneType"."""
    with pytest.raises(ProxSparseError, match=r"^load_pruned: folder must be a folder path \(str or pathlib.Path\), got NoneType None$"):
        load_pruned(None)


def test_metadata_that_is_not_a_dict_is_refused(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    with pytest.raises(ProxSparseError, match="save_pruned: metadata must be a dict, got list"):
        save_pruned(tiny_llama, tmp_path / "out", masks, [("source_model", "tiny")])


def test_a_swapped_model_is_refused_naming_the_swapped_layer(tiny_llama, tmp_path):
    from proxsparse_ao.passes import swap_linears

    masks = _pruned(tiny_llama)
    swap_linears(tiny_llama.to(torch.bfloat16))
    with pytest.raises(ProxSparseError, match="mask for model.layers.0.self_attn.q_proj: SparseLinear24 has no 2-D weight"):
        save_pruned(tiny_llama, tmp_path / "out", masks)


@pytest.mark.parametrize("device, problem", [
    ("meta", "device meta: the meta device holds no weights"),
    ("cuda", "device cuda: CUDA is not available") if not torch.cuda.is_available() else ("cuda:99", "CUDA device"),
    ("gpu", "device 'gpu': "),
])
def test_load_pruned_refuses_a_device_it_cannot_load_onto_before_loading(tiny_llama, tmp_path, device, problem, monkeypatch):
    import proxsparse_ao.models as models

    out = save_pruned(tiny_llama, tmp_path / "out", _pruned(tiny_llama))
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ProxSparseError, match=problem):
        load_pruned(out, device=device)
    with pytest.raises(ProxSparseError, match="dtype must be a floating torch dtype such as torch.bfloat16, got 'float8'"):
        load_pruned(out, dtype="float8")


@pytest.mark.parametrize("targets", ["model.layers.0.mlp.up_proj", ["model.layers.0.mlp.up_proj", 3], None])
def test_metadata_whose_targets_are_not_a_list_of_names_is_bad_input(tmp_path, targets):
    (tmp_path / METADATA_FILE).write_text(json.dumps({"format": "proxsparse-2:4/v1", "targets": targets}))
    with pytest.raises(ProxSparseError, match="'targets' must be a list of layer names"):
        read_metadata(tmp_path)


def test_saved_mask_codes_that_are_not_one_row_per_weight_row_are_bad_input(tiny_llama, tmp_path):
    masks = _pruned(tiny_llama)
    layer = "model.layers.0.mlp.down_proj"
    metadata = save_codes(tmp_path, masks, lambda codes: codes.update({layer: codes[layer].flatten()}))
    with pytest.raises(ProxSparseError, match=rf"the mask of {layer} is uint8 of shape \(2048,\), expected 2-D uint8 codes"):
        read_masks(tmp_path, metadata)


def test_a_folder_without_a_tokenizer_loads_without_asking_transformers_for_one(tiny_llama, tmp_path, monkeypatch):
    import transformers

    def converters_missing(*args, **kwargs):  # transformers 5.0 on a folder without tokenizer files
        raise ImportError("requires the protobuf library but it was not found in your environment")

    save_pruned(tiny_llama, tmp_path / "out", _pruned(tiny_llama), {})
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", converters_missing)
    model, tokenizer, masks, _ = load_pruned(tmp_path / "out")
    assert tokenizer is None and len(masks) == 14


def test_a_saved_tokenizer_this_transformers_cannot_load_is_none(tiny_llama, byte_tokenizer, tmp_path, monkeypatch):
    import transformers

    save_pruned(tiny_llama, tmp_path / "out", _pruned(tiny_llama), {}, tokenizer=byte_tokenizer)
    assert load_pruned(tmp_path / "out")[1] is not None

    def converters_missing(*args, **kwargs):
        raise ImportError("You need to have sentencepiece or tiktoken installed to convert a slow tokenizer")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", converters_missing)
    assert load_pruned(tmp_path / "out")[1] is None
