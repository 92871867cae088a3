"""FSDP2 mask learning (gloo, 2 CPU processes) gives the single-process mask; resume, a killed rank and bad input."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from proxsparse_ao import ProxSparseConfig, learn_masks
from proxsparse_ao.calibration import PAD_ID
from proxsparse_ao.distributed import META_FILE, check_resume, exit_without_teardown
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

    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

    split = distribute_tensor(torch.zeros(8, 8), DeviceMesh("cpu", list(range(WORLD))), [Shard(1)])
    try:
        check_shard_layout("columns", split)
        layout_error = ""
    except ProxSparseError as err:
        layout_error = str(err)
    return {"result": result, "resumed": resumed, "layout_error": layout_error}


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


def test_resume_refuses_another_world_size_or_run(tmp_path):
    meta = {"format": 1, "fingerprint": "abc", "world_size": 8}
    check_resume(meta, "abc", 8, tmp_path)
    with pytest.raises(ProxSparseError, match="saved by 8 processes and this run has 4"):
        check_resume(meta, "abc", 4, tmp_path)
    with pytest.raises(ProxSparseError, match="belongs to another run"):
        check_resume(meta, "other", 8, tmp_path)


def test_torchrun_entry_writes_the_pruned_model_once(tiny_model_dir, tmp_path):
    from proxsparse_ao.export import load_pruned
    from proxsparse_ao.masks import is_nm

    output = tmp_path / "pruned"
    flags = ["--samples", "4", "--seqlen", "16", "--batch-size", "2", "--mixed-precision", "bfloat16", "--gradient-checkpointing"]
    _finished(_torchrun_command(tiny_model_dir, output, *flags), tmp_path / "torchrun.log")
    model, _, masks, metadata = load_pruned(output)
    assert len(masks) == 14 and all(is_nm(m.float()) for m in masks.values())
    assert metadata["statistics"]["world_size"] == WORLD and metadata["statistics"]["steps"] == 2
    log = json.loads((output / "learning_log.json").read_text())
    assert log["method"] == "proxsparse" and [entry["step"] for entry in log["steps"]] == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_entry_reports_bad_input_in_one_line_without_a_traceback(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    run = subprocess.run([sys.executable, "-m", "proxsparse_ao.distributed", "model", "--output", str(taken)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2  # one line, no traceback, and no library chatter (torchao logs at import time)
    assert run.stderr.splitlines() == [f"error: {taken} already exists: pass --overwrite to replace it"]
    assert taken.is_dir() and not any(taken.iterdir())


def test_torchrun_entry_refuses_a_timeout_that_is_not_positive(tmp_path, capsys):
    from proxsparse_ao.distributed import main

    with pytest.raises(SystemExit) as stopped:
        main(["model", "--output", str(tmp_path / "out"), "--timeout", "0"])
    assert stopped.value.code == 2 and "--timeout must be a positive number of minutes" in capsys.readouterr().err


def _torchrun_command(model_dir: Path, output: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "-m", "proxsparse_ao.distributed",
        str(model_dir), "--output", str(output), *flags,
    ]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the 4th field of /proc/N/stat, after the parenthesised name)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def _rank(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"RANK="):
                return entry[5:].decode()
    return None


@contextlib.contextmanager
def _launched(command: list[str], log: Path):
    """torchrun in its own session, its output in `log`; whatever is still running at the end is killed
    (the workers, each in a session of its own, then torchrun)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open(log, "w") as sink:
        run = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield run
    finally:
        if run.poll() is None:
            for pid in [*_children(run.pid), run.pid]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            run.wait()


def _finished(command: list[str], log: Path) -> None:
    with _launched(command, log) as run:
        assert run.wait(timeout=300) == 0, log.read_text()[-3000:]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the torchrun workers through /proc (Linux)")
def test_torchrun_rank_killed_fails_fast_writes_nothing_and_the_same_command_resumes(tiny_model_dir, tmp_path):
    """SIGKILL rank 1 after the first checkpoint: torchrun exits non-zero at once and writes no output; the same
    command then resumes from the last checkpoint to the masks (and loss) of an uninterrupted run."""
    from proxsparse_ao.export import load_pruned

    steps = 16
    learning = ["--samples", str(2 * steps), "--seqlen", "8", "--batch-size", "2", "--lr", "1e-2", "--lambda2", "0.01"]
    output, ckpt = tmp_path / "pruned", tmp_path / "ckpt"
    command = _torchrun_command(tiny_model_dir, output, *learning, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1",
                                "--timeout", "1")
    log = tmp_path / "killed.log"
    with _launched(command, log) as run:
        deadline = time.monotonic() + 300
        while not (ckpt / META_FILE).exists():  # written atomically after each complete checkpoint
            assert run.poll() is None, f"torchrun ended before its first checkpoint:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        victims = [pid for pid in _children(run.pid) if _rank(pid) == "1"]
        assert len(victims) == 1, _children(run.pid)
        os.kill(victims[0], signal.SIGKILL)
        code = run.wait(timeout=120)  # gloo sees the dead peer and torchrun stops the others: seconds, not a hang
    text = log.read_text()
    assert code != 0 and "SIGKILL" in text, text[-3000:]  # torchrun's summary names the root cause
    assert not output.exists()
    killed_at = json.loads((ckpt / META_FILE).read_text())["step"]
    assert 1 <= killed_at < steps, "the run ended before the kill: give it more steps"

    _finished(command, tmp_path / "resumed.log")  # the same command again
    reference = tmp_path / "reference"
    _finished(_torchrun_command(tiny_model_dir, reference, *learning), tmp_path / "reference.log")
    _, _, masks, metadata = load_pruned(output)
    _, _, expected, expected_metadata = load_pruned(reference)
    stats, expected_stats = metadata["statistics"], expected_metadata["statistics"]
    assert stats["resumed_from"] == killed_at and stats["steps"] == expected_stats["steps"] == steps
    assert masks.keys() == expected.keys() and all(torch.equal(masks[n], expected[n]) for n in expected)
    assert stats["final"]["loss"] == pytest.approx(expected_stats["final"]["loss"], rel=1e-6)
    assert expected_stats["changed_vs_start"] > 0.05  # the masks moved: the comparison means something
    assert sorted(p.name for p in ckpt.iterdir()) == [META_FILE, f"step-{steps:08d}"]  # no leftovers of the killed run
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
