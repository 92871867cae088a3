"""The torchrun command `python -m proxsparse_ao.tools.distributed`: its flags are prune's, the pruned
model it writes (metadata included), bad input in one line, a killed rank and the resume.

The learning itself (`proxsparse_ao.distributed`) is tested in tests/proxsparse_ao/test_distributed.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from proxsparse_ao import ProxSparseConfig
from proxsparse_ao.distributed import META_FILE
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.tools import distributed, prune

WORLD = 2
MODULE = "proxsparse_ao.tools.distributed"


def _config_actions(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    return {a.dest: (tuple(a.option_strings), a.help, a.choices, a.type, a.nargs, a.metavar, a.default, type(a))
            for a in parser._actions if a.dest.startswith("cfg_") or a.dest == "preset"}


def test_config_flags_are_prunes_with_help_choices_and_types():
    commands = argparse.ArgumentParser().add_subparsers()
    prune.add_parser(commands)
    mine, prunes = _config_actions(distributed.build_parser()), _config_actions(commands.choices["prune"])
    assert mine == prunes and len(mine) == len(ProxSparseConfig.__dataclass_fields__) + 1  # + --preset
    assert all(help_text for _, help_text, *_ in mine.values())
    assert mine["cfg_calibration_mode"][2] == ("windows", "documents")


def test_preset_and_flags_build_the_config_as_prune_does():
    args = distributed.build_parser().parse_args(["--output", "x", "--preset", "paper", "--samples", "8", "--no-strict"])
    assert prune.config_from_args(args) == ProxSparseConfig.preset("paper", samples=8, strict=False)
    with pytest.raises(ProxSparseError, match=r"^--samples must be > 0"):  # the flag, not ProxSparseConfig.samples
        prune.config_from_args(distributed.build_parser().parse_args(["--output", "x", "--samples", "0"]))


def test_help_runs_from_the_installed_package_quietly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-m", MODULE, "--help"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)  # outside the checkout: the installed proxsparse_ao.tools
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert f"-m {MODULE}" in done.stdout and "examples:" in done.stdout
    assert "--calibration-mode {windows,documents}" in done.stdout and "--preset {default,paper}" in done.stdout


def test_torchrun_entry_writes_the_pruned_model_once(tiny_model_dir, tmp_path):
    from proxsparse_ao.export import load_pruned
    from proxsparse_ao.masks import is_nm

    output = tmp_path / "pruned"
    flags = ["--samples", "4", "--seqlen", "16", "--batch-size", "2", "--mixed-precision", "bfloat16", "--gradient-checkpointing"]
    _finished(_torchrun_command(tiny_model_dir, output, *flags), tmp_path / "torchrun.log")
    model, _, masks, metadata = load_pruned(output)
    assert len(masks) == 14 and all(is_nm(m.float()) for m in masks.values())
    assert metadata["statistics"]["world_size"] == WORLD and metadata["statistics"]["steps"] == 2
    assert metadata["data"] == {"calibration": "default", "mode": "windows", "shape": [4, 16], "tokens": 64, "seed": 0}  # as prune's
    assert metadata["versions"] == prune.versions() and "torch" in metadata["versions"]
    assert metadata["source_model"] == str(tiny_model_dir.resolve())
    printed = (tmp_path / "torchrun.log").read_text()  # rank 0's progress and result, once
    assert printed.count("step 2/2: loss ") == 1 and printed.count(f"saved {output}: 14 layers 2:4, 2 of 2 steps on 2 processes") == 1
    log = json.loads((output / "learning_log.json").read_text())
    assert log["method"] == "proxsparse" and [entry["step"] for entry in log["steps"]] == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_entry_reports_bad_input_in_one_line_without_a_traceback(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    run = subprocess.run([sys.executable, "-m", MODULE, "model", "--output", str(taken)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "RANK": "0", "WORLD_SIZE": "1"})
    assert run.returncode == 2  # one line, no traceback, and no library chatter (torchao logs at import time)
    assert run.stderr.splitlines() == [f"error: {taken} already exists: pass --overwrite to replace it"]
    assert taken.is_dir() and not any(taken.iterdir())


STOPPED_RANK = """import os, signal, sys
from proxsparse_ao.tools import distributed

def main(argv):
    if sys.argv[1] == "SIGTERM":
        os.kill(os.getpid(), signal.SIGTERM)
    raise KeyboardInterrupt

distributed.main = main
distributed.entry([])
"""


@pytest.mark.parametrize("how, code, said", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_rank_stopped_by_sigterm_or_ctrl_c_says_so_in_one_line(how, code, said):
    """torchrun forwards SIGTERM and Ctrl-C to every rank: each ends with one word and the shell's status."""
    run = subprocess.run([sys.executable, "-c", STOPPED_RANK, how], capture_output=True, text=True, timeout=300)
    assert run.returncode == code and run.stderr.splitlines() == [said], run.stderr


def test_without_torchrun_the_command_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    run = subprocess.run([sys.executable, "-m", MODULE, "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2 and not (tmp_path / "out").exists()
    assert run.stderr.splitlines() == [f"error: run this command under torchrun (RANK and WORLD_SIZE are not set): {distributed.PROG} ..."]


@pytest.mark.parametrize("flags, message", [
    (["--timeout", "0"], "--timeout must be a positive number of minutes"),
    (["--timeout", "inf"], "--timeout must be a positive number of minutes up to 525600 (a year); got inf"),
    (["--timeout", "1e12"], "--timeout must be a positive number of minutes up to 525600 (a year); got 1e+12"),
    (["--calibration-mode", "pages"], "argument --calibration-mode: invalid choice: 'pages'"),
])
def test_torchrun_entry_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stopped:
        distributed.main(["model", "--output", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_torchrun_entry_refuses_a_batch_larger_than_the_samples_as_prune_does(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ProxSparseError, match=r"^--batch-size \(8\) is larger than --samples \(4\): "):
        distributed.main(["model", "--output", str(tmp_path / "out"), "--samples", "4", "--batch-size", "8"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--ignore", "--targets"])
def test_torchrun_entry_refuses_a_model_folder_given_after_a_pattern_flag_as_prune_does(flag, tmp_path, monkeypatch):
    """The flag takes every word after it: the folder would be a pattern and the embedded model pruned."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    (tmp_path / "model").mkdir()
    with pytest.raises(ProxSparseError, match=rf"^{flag} '{tmp_path / 'model'}' is a folder, not a module pattern: give MODEL before {flag}"):
        distributed.main(["--output", str(tmp_path / "out"), flag, "lm_head", str(tmp_path / "model")])
    assert not (tmp_path / "out").exists()


def test_torchrun_entry_calls_an_empty_model_name_empty_as_prune_does(tmp_path, monkeypatch):
    """It said "OUT is inside the model folder being pruned ()": the empty name was read as the current folder."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProxSparseError, match=r"^the model name is empty: omit it for the embedded default"):
        distributed.main(["", "--output", "out"])
    assert not (tmp_path / "out").exists()


def test_torchrun_entry_refuses_a_calibration_file_inside_the_output_folder_as_prune_does(tmp_path, monkeypatch):
    """With --overwrite the save replaced the folder and deleted the text the run was calibrated on."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "proxsparse.json").write_text("{}")  # an earlier pruned model
    (out / "calib.txt").write_text("text")
    with pytest.raises(ProxSparseError, match=r"^--calibration .*calib.txt is inside the --output folder, which the save replaces,"):
        distributed.main(["--output", str(out), "--overwrite", "--calibration", str(out / "calib.txt")])
    assert (out / "calib.txt").read_text() == "text"


def _torchrun_command(model_dir: Path, output: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "-m", MODULE,
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



def test_the_torchrun_command_says_once_which_weights_stay_dense(tmp_path):
    """Every rank selects the targets; rank 0 alone says what stays dense, once, in the command's own format."""
    from tiny_models import make_byte_tokenizer, make_tiny_mixtral

    model_dir, output, log = tmp_path / "tiny-mixtral", tmp_path / "pruned", tmp_path / "torchrun.log"
    make_tiny_mixtral().save_pretrained(model_dir)
    make_byte_tokenizer().save_pretrained(model_dir)
    _finished(_torchrun_command(model_dir, output, "--samples", "4", "--seqlen", "16", "--batch-size", "2"), log)
    printed = log.read_text()
    assert printed.count("stay dense") == 1 and "UserWarning" not in printed, printed[-3000:]
    assert "warning: 6 weight matrices are not in nn.Linear layers and stay dense (89% of the weights" in printed


SLOW_SAVE = """import sys, time
from pathlib import Path

import proxsparse_ao.export as export
from proxsparse_ao.tools import distributed

marker = Path(sys.argv.pop(1))
save = export.save_pruned


def slow_save(*args, **kwargs):
    marker.write_text("saving")
    time.sleep(3)
    return save(*args, **kwargs)


export.save_pruned = slow_save
distributed.entry(sys.argv[1:])
"""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the torchrun workers through /proc (Linux)")
def test_no_other_rank_is_left_to_fail_while_rank_0_saves(tiny_model_dir, tmp_path):
    """Once the masks are gathered the other ranks end with status 0: a failure among them while rank 0 writes
    the output (here: SIGKILL of any that still runs) cannot have torchrun stop rank 0 mid-save."""
    from proxsparse_ao.export import load_pruned

    script, marker, output = tmp_path / "slow_save.py", tmp_path / "saving", tmp_path / "pruned"
    script.write_text(SLOW_SAVE)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), str(script), str(marker),
               str(tiny_model_dir), "--output", str(output), "--samples", "4", "--seqlen", "16", "--batch-size", "2"]
    log = tmp_path / "torchrun.log"
    with _launched(command, log) as run:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert run.poll() is None, f"torchrun ended before rank 0 saved:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "rank 0 did not start saving within 300 s"
            time.sleep(0.05)
        others = [pid for pid in _children(run.pid) if _rank(pid) not in (None, "0")]
        for pid in others:
            os.kill(pid, signal.SIGKILL)
        code = run.wait(timeout=120)
    assert code == 0 and not others, f"still running while rank 0 saved: {others}\n{log.read_text()[-3000:]}"
    _, _, masks, metadata = load_pruned(output)
    assert len(masks) == 14 and metadata["statistics"]["world_size"] == WORLD


@pytest.mark.parametrize("name, message", [("glo", "--backend glo: unknown process-group backend"),
                                           ("nccl", "--backend nccl: this torch build")])
def test_a_backend_this_torch_lacks_is_named(name, message):
    import torch.distributed as dist

    if name == "nccl" and dist.is_nccl_available():
        pytest.skip("this torch has NCCL")
    with pytest.raises(ProxSparseError, match=message):
        distributed._backend(name, cuda=False)
