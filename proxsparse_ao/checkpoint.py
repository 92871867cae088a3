"""Training state for resuming mask learning: saved atomically, refused if it belongs to another run."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import ProxSparseError

STATE_FILE = "proxsparse_state.pt"
DISTRIBUTED_META_FILE = "proxsparse_distributed.json"  # what a torchrun (FSDP2) run keeps instead
FORMAT = 1


def run_fingerprints(
    config: Mapping[str, Any], calibration: torch.Tensor, originals: Mapping[str, torch.Tensor]
) -> tuple[str, str]:
    """Digests of what determines the run: the settings, the calibration tokens, the targets and their
    weights. The first, which states are saved with, leaves out where checkpoints go and the calibration
    source's name (its tokens are in the digest, so the same file named by another path is the same run);
    the second is what earlier versions saved with, which hashed the name as typed: their states still resume."""
    data = [calibration.detach().cpu().contiguous().numpy().tobytes()]
    for name, weight in originals.items():
        w = weight.detach().double()
        # position-weighted sums too: a weight whose rows or columns were reordered is another run
        rows = torch.arange(1, w.shape[0] + 1, dtype=w.dtype, device=w.device)
        columns = torch.arange(1, w.shape[-1] + 1, dtype=w.dtype, device=w.device)
        summary = [w.sum(), w.square().sum(), rows @ w.reshape(w.shape[0], -1).sum(1), w.reshape(-1, w.shape[-1]).sum(0) @ columns]
        data.append(f"{name}{tuple(weight.shape)}{weight.dtype}{[float(v) for v in summary]!r}".encode())

    def digest(left_out: tuple[str, ...]) -> str:
        hashed = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k not in left_out}, sort_keys=True).encode())
        for part in data:
            hashed.update(part)
        return hashed.hexdigest()

    where_checkpoints_go = ("checkpoint_dir", "checkpoint_every")
    return digest((*where_checkpoints_go, "calibration")), digest(where_checkpoints_go)


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write the state through a temporary file and a rename: a killed save leaves the previous state intact."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception) and _is_interruption(err.__context__):
            raise err.__context__ from None  # torch's zip writer fails while closing after Ctrl-C / SIGTERM
        raise
    return path


def _is_interruption(error: BaseException | None) -> bool:
    """Ctrl-C or another signal raised as an exception that is not an error (e.g. the CLI's SIGTERM)."""
    return error is not None and not isinstance(error, Exception)


def load_state(directory: str | Path, fingerprint: str | tuple[str, ...]) -> dict[str, Any] | None:
    """The saved state of this run (saved with `fingerprint`, or one of them), None when there is none;
    a state of another run is an error."""
    if (Path(directory) / DISTRIBUTED_META_FILE).exists():
        raise ProxSparseError(
            f"{directory} holds the training state of a distributed run (torchrun); resume it with "
            "`torchrun ... -m proxsparse_ao.tools.distributed` or use another checkpoint directory"
        )
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ProxSparseError(f"cannot read the training state {path}: {err}; delete it to start over") from err
    accepted = (fingerprint,) if isinstance(fingerprint, str) else fingerprint
    if state.get("format") != FORMAT or state.get("fingerprint") not in accepted:
        raise ProxSparseError(
            f"{path} belongs to another run (different model, calibration or settings); "
            "use another checkpoint directory or delete it to start over"
        )
    return state
