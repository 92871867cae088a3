"""FSDP2 mask learning (gloo, 2 CPU processes) gives the single-process mask, also after a resume.

The torchrun command (proxsparse_ao.tools.distributed) is tested in tests/tools/test_distributed.py."""

from __future__ import annotations

import faulthandler
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from proxsparse_ao import ProxSparseConfig, learn_masks
from proxsparse_ao.calibration import PAD_ID
from proxsparse_ao.distributed import check_resume, exit_without_teardown
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.targets import select_targets

from tiny_models import make_tiny_llama, make_tiny_opt

SETTINGS = dict(samples=8, seqlen=16, lr=1e-2, batch_size=2, lambda2=0.01)
WORLD = 2
# the defaults (activation-aware, constant strength), then magnitude space with the lr-following strength,
# then short documents right-padded (each rank's slice of a batch holds a different number of real tokens)
VARIANTS = {"default": {}, "magnitude-lr": dict(activation_aware=False, strength_schedule="lr"), "padded": {}}
LENGTHS = {"padded": [16, 5, 9, 16, 2, 16, 12, 7]}


def _tokens(variant: str = "default") -> torch.Tensor:
    tokens = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))
    for row, length in zip(tokens, LENGTHS.get(variant, [])):
        row[length:] = PAD_ID
    return tokens


def _layers(model, config):
    return select_targets(model, config.targets, config.ignore).layers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, checkpoint_dir: str, variant: str, resume: bool) -> None:
    import torch.distributed as dist

    faulthandler.enable()  # a native abort prints every thread's Python stack into the test's output
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        saved = _learn(checkpoint_dir, variant, resume)
        if rank == 0:
            torch.save(saved, out)
    finally:
        dist.destroy_process_group()
    exit_without_teardown(0)  # its abort in interpreter shutdown failed this test once in CI


def _learn(checkpoint_dir: str, variant: str, resume: bool) -> dict[str, object]:
    """One run; with `resume`, also a run killed in step 2 then resumed, and the column-split check."""
    from proxsparse_ao.distributed import check_shard_layout, learn_masks_distributed

    if variant == "unreached":
        return _refusal_of_an_unreached_target()
    overrides, tokens = VARIANTS.get(variant, {}), _tokens(variant)
    make_model = make_tiny_opt if variant == "dropout" else make_tiny_llama
    config = ProxSparseConfig(**SETTINGS, **overrides)
    model = make_model()
    torch.manual_seed(7 + torch.distributed.get_rank())  # the callers' RNG states matter to no run
    result = learn_masks_distributed(model, tokens, config, _layers(model, config))
    if not resume:
        return {"result": result}

    resumable = ProxSparseConfig(**SETTINGS, **overrides, checkpoint_dir=checkpoint_dir, checkpoint_every=1)
    model = make_model()

    def die(stats):
        if stats.step == 2:
            raise KeyboardInterrupt

    try:
        learn_masks_distributed(model, tokens, resumable, _layers(model, resumable), callback=die)
    except KeyboardInterrupt:
        pass
    model = make_model()
    resumed = learn_masks_distributed(model, tokens, resumable, _layers(model, resumable))
    model = make_model()
    try:  # the same settings in another FSDP2 precision: another run
        learn_masks_distributed(model, tokens, resumable, _layers(model, resumable), mixed_precision="bfloat16")
        precision_error = ""
    except ProxSparseError as err:
        precision_error = str(err)

    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

    split = distribute_tensor(torch.zeros(8, 8), DeviceMesh("cpu", list(range(WORLD))), [Shard(1)])
    try:
        check_shard_layout("columns", split)
        layout_error = ""
    except ProxSparseError as err:
        layout_error = str(err)
    return {"result": result, "resumed": resumed, "layout_error": layout_error, "precision_error": precision_error}


def _refusal_of_an_unreached_target() -> dict[str, str]:
    """In weight space (no statistics pass), with a target the forward never calls: the error, or "" if none."""
    from proxsparse_ao.distributed import learn_masks_distributed

    config = ProxSparseConfig(**SETTINGS, activation_aware=False)
    model = make_tiny_llama()
    model.model.layers[0].mlp.unused = torch.nn.Linear(64, 64)
    try:
        learn_masks_distributed(model, _tokens(), config, _layers(model, config))
    except ProxSparseError as err:
        return {"error": str(err)}
    return {"error": ""}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_gloo_ranks_learn_the_single_process_mask(tmp_path, variant):
    overrides = VARIANTS[variant]
    resume = variant == "default"  # resume and the layout check once; the variant only checks the learning
    config = ProxSparseConfig(**SETTINGS, **overrides)
    model = make_tiny_llama()
    single = learn_masks(model, _tokens(variant), config, _layers(model, config))

    out = tmp_path / "rank0.pt"
    args = (_free_port(), str(out), str(tmp_path / "ckpt"), variant, resume)
    mp.start_processes(_worker, args=args, nprocs=WORLD, start_method="spawn")
    saved = torch.load(out, weights_only=False)
    for key in ("result", "resumed") if resume else ("result",):
        result = saved[key]
        assert result.masks.keys() == single.masks.keys() and result.steps_done == single.steps_done == 4
        assert all(torch.equal(result.masks[n], single.masks[n]) for n in single.masks)
        assert result.strengths == pytest.approx(single.strengths, rel=1e-6)
        for mine, theirs in zip(result.history, single.history):
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
            assert mine["frozen"] == pytest.approx(theirs["frozen"], rel=1e-3)
            for stat in ("fraction_24", "changed_vs_magnitude", "changed_vs_start"):
                assert mine[stat] == pytest.approx(theirs[stat], abs=1e-9)
        assert result.changed_vs_magnitude == pytest.approx(single.changed_vs_magnitude)
        assert result.changed_vs_start == pytest.approx(single.changed_vs_start)
    assert single.changed_vs_start > 0.1  # the masks moved away from their start: the comparison means something
    if resume:
        assert saved["resumed"].resumed_from == 1  # killed inside step 2, before its checkpoint
        assert "splits the input dimension" in saved["layout_error"]
        assert "belongs to another run" in saved["precision_error"]


def test_two_gloo_ranks_under_dropout_resume_the_uninterrupted_run(tmp_path):
    """Dropout (tiny OPT, 0.1) draws from each rank's RNG, seeded with config.seed and saved with every checkpoint."""
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(_free_port(), str(out), str(tmp_path / "ckpt"), "dropout", True),
                       nprocs=WORLD, start_method="spawn")
    saved = torch.load(out, weights_only=False)
    result, resumed = saved["result"], saved["resumed"]
    assert resumed.resumed_from == 1
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in result.history]
    assert all(torch.equal(result.masks[n], resumed.masks[n]) for n in result.masks)


def test_a_layer_no_token_reaches_is_refused_by_name_in_weight_space_too(tmp_path):
    """Without the statistics pass (which refuses it on the summed counts) the reach check refuses it."""
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(_free_port(), str(out), "", "unreached", False), nprocs=WORLD, start_method="spawn")
    assert "no calibration token reaches (never called" in torch.load(out)["error"]
    assert "model.layers.0.mlp.unused" in torch.load(out)["error"]


def test_resume_refuses_another_world_size_or_run(tmp_path):
    meta = {"format": 1, "fingerprint": "abc", "world_size": 8}
    check_resume(meta, ("abc", "legacy"), 8, tmp_path)
    with pytest.raises(ProxSparseError, match="saved by 8 processes and this run has 4"):
        check_resume(meta, ("abc", "legacy"), 4, tmp_path)
    with pytest.raises(ProxSparseError, match="belongs to another run"):
        check_resume(meta, ("ab", "legacy"), 8, tmp_path)  # not a substring match


def test_the_library_module_has_no_command_line():
    """The torchrun command lives in proxsparse_ao.tools.distributed; the library prints nothing and imports no tools."""
    import ast
    import inspect

    import proxsparse_ao.distributed as library

    tree = ast.parse(inspect.getsource(library))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "print" not in calls and "argparse" not in imported and not any("tools" in name for name in imported)
    assert not hasattr(library, "main")


def test_the_commands_old_place_says_where_it_moved_instead_of_doing_nothing(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "proxsparse_ao.distributed", "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and not (tmp_path / "out").exists()
    # one line and nothing else: no torchao or torch chatter from imports before it (a CPU build of
    # torch makes torchao log its CUDA extensions' load failures at import time)
    assert run.stderr == (
        "error: the torchrun command moved: run `torchrun ... -m proxsparse_ao.tools.distributed ...`\n")
    assert run.stdout == ""


@pytest.mark.parametrize("meta, problem", [
    ("[1, 2]", "no format, fingerprint, world_size, folder, step, history, scheduler"),
    ('{"format": 1, "fingerprint": "x", "world_size": 2, "folder": "step-00000004", "step": 4, "history": []}', "no scheduler"),
    ("{", "Expecting property name"),
])
def test_a_damaged_checkpoint_description_is_one_line(tmp_path, meta, problem):
    from proxsparse_ao.distributed import META_FILE, _load_meta

    (tmp_path / META_FILE).write_text(meta)
    with pytest.raises(ProxSparseError, match=f"cannot read {tmp_path / META_FILE}: .*{problem}.*; delete the folder to start over"):
        _load_meta(tmp_path)


def test_a_damaged_checkpoint_step_is_one_line(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    from proxsparse_ao.distributed import _load

    def damaged(*args, **kwargs):
        raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory\nmore")

    monkeypatch.setattr(dcp, "load", damaged)
    (tmp_path / "step-00000004").mkdir()
    model = make_tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ProxSparseError, match=r"^cannot read the training state in .*step-00000004 \(PytorchStreamReader failed "
                       r"reading zip archive: failed finding central directory\); delete .* to start over$"):
        _load(str(tmp_path), {"folder": "step-00000004"}, model, optimizer, set(), 0, torch.device("cpu"))
