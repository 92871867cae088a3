"""The training-state file: written whole or not at all, and an interrupted save stays an interruption."""

from __future__ import annotations

import pytest
import torch

from proxsparse_ao import checkpoint
from proxsparse_ao.checkpoint import STATE_FILE, load_state, save_state
from proxsparse_ao.errors import ProxSparseError


def test_a_saved_state_loads_back_for_its_run_only(tmp_path):
    save_state(tmp_path, {"fingerprint": "run-a", "step": 3})
    assert load_state(tmp_path, "run-a")["step"] == 3
    assert load_state(tmp_path / "elsewhere", "run-a") is None


def interrupted_zip_writer(signal: type[BaseException]):
    """torch.save as it fails when Ctrl-C or SIGTERM lands inside its zip writer: closing the archive raises
    a RuntimeError while the interruption is being handled."""
    def save(obj, handle):
        handle.write(b"partial")
        try:
            raise signal
        except signal:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 177037760 vs 177037648")
    return save


@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_save_raises_the_interruption_and_keeps_the_previous_state(tmp_path, monkeypatch, signal):
    save_state(tmp_path, {"fingerprint": "run-a", "step": 2})
    monkeypatch.setattr(torch, "save", interrupted_zip_writer(signal))
    with pytest.raises(signal):
        save_state(tmp_path, {"fingerprint": "run-a", "step": 4})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
    assert load_state(tmp_path, "run-a")["step"] == 2


def test_a_failed_save_that_was_not_interrupted_raises_its_own_error(tmp_path, monkeypatch):
    def full_disk(obj, handle):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_state(tmp_path, {"fingerprint": "run-a", "step": 4})
    assert list(tmp_path.iterdir()) == []


def test_the_run_fingerprint_covers_settings_tokens_and_the_original_weights_but_not_where_checkpoints_go():
    from proxsparse_ao.checkpoint import run_fingerprints

    def run_fingerprint(*args):
        return run_fingerprints(*args)[0]

    config = {"lr": 3e-3, "seed": 0, "checkpoint_dir": "a", "checkpoint_every": 16}
    tokens = torch.arange(16).reshape(2, 8)
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    base = run_fingerprint(config, tokens, {"layer": weight})
    assert run_fingerprint({**config, "checkpoint_dir": "b", "checkpoint_every": 1}, tokens.clone(), {"layer": weight.clone()}) == base
    other_weight = weight.clone()
    other_weight[3, 5] += 0.25  # another model: same names, shapes and dtype, one weight differs
    assert run_fingerprint(config, tokens, {"layer": other_weight}) != base
    assert run_fingerprint(config, tokens, {"layer": weight[[1, 0, *range(2, 8)]]}) != base  # two rows swapped
    assert run_fingerprint(config, tokens, {"layer": weight[:, [1, 0, *range(2, 16)]]}) != base  # two columns swapped
    assert run_fingerprint(config, tokens, {"layer": weight.double()}) != base
    assert run_fingerprint(config, tokens, {"other": weight}) != base
    assert run_fingerprint({**config, "lr": 1e-3}, tokens, {"layer": weight}) != base
    assert run_fingerprint(config, tokens.flip(0), {"layer": weight}) != base


def test_the_same_tokens_from_a_calibration_file_named_another_way_are_the_same_run():
    """A run started with --calibration data/big.txt resumes from another folder with ../run/data/big.txt:
    the tokens are in the fingerprint, the name as typed is not."""
    from proxsparse_ao.checkpoint import run_fingerprints

    tokens, weights = torch.arange(16).reshape(2, 8), {"layer": torch.ones(8, 16)}
    here, there = ({"lr": 3e-3, "calibration": name} for name in ("data/big.txt", "../run/data/big.txt"))
    assert run_fingerprints(here, tokens, weights)[0] == run_fingerprints(there, tokens, weights)[0]
    assert run_fingerprints(here, tokens.flip(0), weights)[0] != run_fingerprints(here, tokens, weights)[0]


def test_a_state_saved_by_an_earlier_version_still_resumes(tmp_path):
    """Earlier versions hashed the calibration name as typed: the digest they saved (pinned here, as that code
    computed it for these inputs) is still this run's, and a run of other settings still refuses it."""
    from proxsparse_ao.checkpoint import run_fingerprints

    config = {"lr": 3e-3, "seed": 0, "calibration": "data/big.txt", "checkpoint_dir": "a", "checkpoint_every": 16}
    tokens = torch.arange(16).reshape(2, 8)
    weights = {"layer": torch.arange(128, dtype=torch.float32).reshape(8, 16) / 64}
    save_state(tmp_path, {"fingerprint": "37414b0b8590796e81d2b44c9d7e56a3ae62f49ede04de4624868b53cacf6c12", "step": 5})
    assert load_state(tmp_path, run_fingerprints(config, tokens, weights))["step"] == 5
    with pytest.raises(ProxSparseError, match="belongs to another run"):
        load_state(tmp_path, run_fingerprints({**config, "lr": 1e-3}, tokens, weights))
