"""ProxSparse mask learning on many processes: the single-process loop under torchrun with FSDP2.

The library only: `learn_masks_distributed`, called on every rank of an initialised process group.
The command that loads a model, learns and saves it is `proxsparse_ao.tools.distributed`:

    torchrun --nproc-per-node 8 -m proxsparse_ao.tools.distributed MODEL --output OUT [--samples 400 ...]

Every rank loads the whole model. Before sharding, when activation-aware, each rank runs the
activation pass on its own share of the calibration rows and the input norms are summed over
the ranks, so every rank holds the global per-column scales s (a shard holds whole rows, so
it uses the whole s). Each rank then computes what needs the whole weights (per-layer prox
strengths from W0 * s, the run fingerprint), keeps its own rows of W0, and shards the model
with `torch.distributed.fsdp.fully_shard` (one unit per decoder layer, then the root):
parameters, gradients and AdamW state live as dim-0 shards. Dim 0 of a Linear weight is its
output rows, so every group of 4 (along the input dim) lies whole inside one shard;
`check_shard_layout` asserts it, and the prox W <- prox(W * s) / s runs on the local shards.
Each step takes the same global batch as the single-process run (same seeded order), each
rank reading its own contiguous slice of it; the loss is weighted by the rank's share of the
batch's next-token targets (padding excluded), so that FSDP's gradient average equals the
gradient of the global mean over real tokens. Every rank learns on torch's global RNG seeded
with config.seed (dropout) inside `fork_rng`; each rank's RNG state is saved with a checkpoint.
The frozen-weight term is computed on local shards and its gradient added locally.
Checkpoints use `torch.distributed.checkpoint`; the final masks (top-2 of |W * s| per local
shard) are gathered to rank 0; in the command, rank 0 alone then writes the pruned model (the
original weights reloaded from disk x masks) atomically through `export.save_pruned`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # the command's old place: say where it went instead of doing nothing, in one line
    # (before torch and the modules that import torchao, whose import-time chatter would come first)
    sys.stderr.write("error: the torchrun command moved: run `torchrun ... -m proxsparse_ao.tools.distributed ...`\n")
    sys.exit(2)

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from . import checkpoint
from .activations import activation_scales, check_layers_called
from .cache import check_writable_folder
from .calibration import cropped, target_count
from .config import ProxSparseConfig, check_batch_size, learning_dtype, validate
from .errors import ProxSparseError, warn_caller
from .hooks import ProxStep, prox_space
from .masks import learned_mask
from .memory import peak_memory_bytes
from .regularizers import frozen_weight_value_and_gradient
from .training import (
    Callback,
    LearnResult,
    NonFiniteLossWarning,
    StepStats,
    _causal_lm_loss,
    _checkpointing,
    _Codes,
    _lr_factor,
    check_calibration,
    check_reporting,
    prox_strength,
    rng_state,
    seeded_rng,
    set_rng_state,
    stats_interval,
    top2_codes,
)

META_FILE = checkpoint.DISTRIBUTED_META_FILE
META_FORMAT = 1
MIXED_PRECISION = ("none", "bfloat16")
_META_KEYS = ("format", "fingerprint", "world_size", "folder", "step", "history", "scheduler")


def check_shard_layout(name: str, param: torch.Tensor) -> None:
    """A sharded target weight must keep every group of 4 whole: shards along dim 0 (rows) only."""
    if not isinstance(param, DTensor):
        return
    for placement in param.placements:
        if isinstance(placement, Shard) and placement.dim % param.dim() != 0:
            raise ProxSparseError(
                f"{name}: the shard layout {param.placements} splits the input dimension, so groups of 4 "
                "would be cut across ranks; shard target weights along dim 0 (FSDP2's default)"
            )
        if not isinstance(placement, (Shard, Replicate)):
            raise ProxSparseError(f"{name}: unsupported placement {placement} for a target weight")
    local = param.to_local()
    if local.dim() != 2 or local.shape[-1] != param.shape[-1] or param.shape[-1] % 4:
        raise ProxSparseError(
            f"{name}: local shard {tuple(local.shape)} of {tuple(param.shape)} does not hold whole groups of 4"
        )


def check_resume(meta: dict[str, Any], fingerprints: tuple[str, ...], world_size: int, directory: str | Path) -> None:
    """A saved distributed state must come from this run (saved with one of its `fingerprints`) and this world size."""
    if meta.get("format") != META_FORMAT or meta.get("fingerprint") not in fingerprints:
        raise ProxSparseError(
            f"{directory} belongs to another run (different model, calibration or settings); "
            "use another checkpoint directory or delete it to start over"
        )
    if int(meta.get("world_size", -1)) != world_size:
        raise ProxSparseError(
            f"{directory} was saved by {meta.get('world_size')} processes and this run has {world_size}: "
            f"resume with --nproc-per-node {meta.get('world_size')} (or delete it to start over)"
        )


def _row_chunk(tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank's rows of a tensor as FSDP2 lays them out (torch.chunk along dim 0; may be empty)."""
    chunks = torch.chunk(tensor, world, dim=0)
    if rank < len(chunks):
        return chunks[rank].clone()
    return tensor.new_empty((0, *tensor.shape[1:]))


def _shard_units(model: nn.Module) -> list[nn.Module]:
    """Modules to shard one by one: the model's no-split blocks (decoder layers) when it names them."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def learn_masks_distributed(
    model: nn.Module,
    calibration: torch.Tensor,
    config: ProxSparseConfig,
    layers: dict[str, nn.Linear],
    *,
    mixed_precision: str = "none",
    callback: Callback | None = None,
    stats_every: int | None = None,
) -> LearnResult:
    """Learn 2:4 masks with every rank of the initialised process group; call it on every rank.

    The model is sharded in place (it does not come back unsharded). The masks (bool, CPU)
    are returned on rank 0 only; `callback` runs on every rank with the global statistics. A layer
    that no calibration token reaches is refused by name on every rank, before any learning."""
    if not dist.is_initialized():
        raise ProxSparseError("learn_masks_distributed needs an initialised process group (run it under torchrun)")
    if mixed_precision not in MIXED_PRECISION:
        raise ProxSparseError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}; got {mixed_precision!r}")
    validate(config)
    check_reporting(callback, stats_every)
    calibration = check_calibration(calibration, model)
    check_batch_size(config, calibration.shape[0])
    if not layers:
        raise ProxSparseError("learn_masks_distributed: no target layers")
    device = next(iter(layers.values())).weight.device
    with seeded_rng(config.seed, device):
        return _learn_distributed(model, calibration, config, layers, device, mixed_precision, callback, stats_every)


def _learn_distributed(
    model: nn.Module,
    calibration: torch.Tensor,
    config: ProxSparseConfig,
    layers: dict[str, nn.Linear],
    device: torch.device,
    mixed_precision: str,
    callback: Callback | None,
    stats_every: int | None,
) -> LearnResult:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    started = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    total_steps = math.ceil(calibration.shape[0] / config.batch_size)
    stats_every = stats_interval(stats_every, total_steps)

    full = {name: layer.weight.detach() for name, layer in layers.items()}
    dtype = learning_dtype(config, next(iter(full.values())).dtype)
    if dtype is not None:
        model.to(dtype)
    fingerprint, meta = "", None
    if config.checkpoint_dir:  # before the statistics pass: another run's state fails in seconds, not minutes
        check_writable_folder(config.checkpoint_dir, f"checkpoint_dir {config.checkpoint_dir}")
        fingerprints = checkpoint.run_fingerprints({**config.to_dict(), "mixed_precision": mixed_precision}, calibration, full)
        fingerprint = fingerprints[0]
        meta = _load_meta(config.checkpoint_dir)
        if meta is not None:
            check_resume(meta, fingerprints, world, config.checkpoint_dir)
    tick = time.perf_counter()
    scales: dict[str, torch.Tensor] | None = None
    if config.activation_aware:  # refuses a layer no token reaches, on the counts summed over ranks
        share = torch.tensor_split(calibration, world)[rank]
        scales = activation_scales(model, layers, share, all_reduce=dist.all_reduce)
    else:  # every rank checks all the rows: one verdict
        check_layers_called(model, layers, calibration)
    scales_seconds = time.perf_counter() - tick
    store = device if config.w0_device == "model" else torch.device("cpu")
    originals = {name: _row_chunk(w, rank, world).to(store) for name, w in full.items()}
    magnitude_codes = {name: top2_codes(w0).to(device) for name, w0 in originals.items()}
    strengths: dict[str, float] = {}
    start_codes: dict[str, torch.Tensor] = {}
    for name, w0 in full.items():
        space = prox_space(w0, None if scales is None else scales[name].to(w0.device))
        strengths[name] = prox_strength(name, space, config)
        start_codes[name] = top2_codes(_row_chunk(space, rank, world)).to(device)
        del space
    total_groups = sum(w.numel() // 4 for w in full.values())
    del full

    for param in model.parameters():
        param.requires_grad_(config.train == "all")
    for layer in layers.values():
        layer.weight.requires_grad_(True)
    if config.gradient_checkpointing and not _checkpointing(model):
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            raise ProxSparseError(f"gradient checkpointing needs a Hugging Face model; {type(model).__name__} has none")
    policy = MixedPrecisionPolicy()
    if mixed_precision == "bfloat16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in _shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)

    params = {name: layer.weight for name, layer in layers.items()}
    for name, param in params.items():
        check_shard_layout(name, param)
    with torch.no_grad():
        weights = {name: param.to_local() for name, param in params.items()}
    for name, weight in weights.items():
        if weight.shape != originals[name].shape:
            raise ProxSparseError(f"{name}: local shard {tuple(weight.shape)} is not rows {tuple(originals[name].shape)} of W0")
    held = {name: weight for name, weight in weights.items() if weight.numel()}  # a rank may hold no rows of a layer
    codes = _Codes(held, scales or {}, magnitude_codes, start_codes, total_groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    model.train()

    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(warmup, total_steps))
    order = torch.randperm(calibration.shape[0], generator=torch.Generator().manual_seed(config.seed))

    history: list[dict[str, Any]] = []
    start_step, resumed_from = 0, None
    if meta is not None:
        _load(config.checkpoint_dir, meta, model, optimizer, trainable_names, rank, device)
        scheduler.load_state_dict(meta["scheduler"])
        history, start_step = list(meta["history"]), int(meta["step"])
        resumed_from = start_step
    ProxStep(held, strengths, scales, follow_lr=config.strength_schedule == "lr").attach(optimizer)

    stopped = None
    step = start_step
    for step in range(start_step, total_steps):
        tick = time.perf_counter()
        rows = order[step * config.batch_size : (step + 1) * config.batch_size]
        mine = torch.tensor_split(rows, world)[rank]
        share = target_count(calibration[mine]) / target_count(calibration[rows])  # = rows' share without padding
        batch = cropped(calibration[mine if mine.numel() else rows[:1]]).to(device)
        ce_local = _causal_lm_loss(model, batch)
        (ce_local * (share * world)).backward()
        penalty_local = _add_frozen_grad(params, weights, originals, config) if config.lambda2 > 0 else 0.0
        ce, penalty = _all_sum([float(ce_local.detach()) * share, penalty_local], device)
        loss = ce + penalty
        if not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            stopped = f"non-finite loss ({loss}) at step {step + 1}; kept the state after step {step}"
            break
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm if config.max_grad_norm > 0 else math.inf)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            stopped = f"non-finite gradient at step {step + 1}; kept the state after step {step}"
            break
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()  # the ProxStep hook applies the prox to the local shards here
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        fraction, changed, moved = None, None, None
        if (step + 1) % stats_every == 0 or step + 1 == total_steps:
            fraction, changed, moved = _all_sum(list(codes.pattern_stats()), device)
        stats = StepStats(
            step=step + 1,
            total_steps=total_steps,
            loss=loss,
            ce=ce,
            frozen=penalty,
            lr=lr,
            grad_norm=float(grad_norm),
            fraction_24=fraction,
            changed_vs_magnitude=changed,
            changed_vs_start=moved,
            seconds=time.perf_counter() - tick,
        )
        history.append(asdict(stats))
        if callback is not None:
            callback(stats)
        if config.checkpoint_dir and ((step + 1) % config.checkpoint_every == 0 or step + 1 == total_steps):
            _save(config.checkpoint_dir, fingerprint, step + 1, model, optimizer, scheduler, history, trainable_names, device)
    else:
        step = total_steps
    if stopped:
        warn_caller(f"ProxSparse learning stopped: {stopped}", NonFiniteLossWarning)

    masks, local_masks = _gather_masks(params, codes.scales, originals, mesh, rank)
    changed, moved = _all_sum(list(codes.final_changes(local_masks)), device)
    extra: dict[str, Any] = {"world_size": world, "mixed_precision": mixed_precision}
    if scales is not None:
        extra["activation_pass_seconds"] = round(scales_seconds, 2)
    return LearnResult(
        masks=masks,
        strengths=strengths,
        history=history,
        steps_done=step,
        total_steps=total_steps,
        resumed_from=resumed_from,
        stopped=stopped,
        changed_vs_magnitude=changed,
        changed_vs_start=moved,
        seconds=time.perf_counter() - started,
        peak_memory_bytes=peak_memory_bytes(device),
        extra=extra,
    )


def _add_frozen_grad(
    params: dict[str, DTensor], weights: dict[str, torch.Tensor], originals: dict[str, torch.Tensor], config: ProxSparseConfig
) -> float:
    """Add the frozen-weight term's gradient shard by shard (it is separable, so local = exact) and
    return this rank's share of its value."""
    values = []
    with torch.no_grad():
        for name, param in params.items():
            value, grad = frozen_weight_value_and_gradient(weights[name], originals[name], config.epsilon)
            values.append(value)
            if param.grad is None:
                zeros = torch.zeros_like(weights[name])
                param.grad = DTensor.from_local(zeros, param.device_mesh, param.placements, shape=param.shape, stride=param.stride())
            param.grad.to_local().add_(grad.mul_(config.lambda2).to(param.grad.dtype))
    return config.lambda2 * float(torch.stack(values).sum()) if values else 0.0


@torch.no_grad()
def _gather_masks(
    params: dict[str, DTensor], scales: dict[str, torch.Tensor], originals: dict[str, torch.Tensor], mesh, rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Top-2 of |W * s| per local shard (among the original non-zeros, `learned_mask`), gathered
    layer by layer to rank 0.

    Returns (the whole masks on rank 0, empty elsewhere; this rank's non-empty local masks, on CPU)."""
    masks: dict[str, torch.Tensor] = {}
    local_masks: dict[str, torch.Tensor] = {}
    for name, param in params.items():
        shard = param.to_local()
        if shard.numel():
            local = learned_mask(prox_space(shard, scales.get(name)).abs(), originals[name])
            local_masks[name] = local.cpu()
        else:
            local = torch.zeros(shard.shape, dtype=torch.bool, device=shard.device)
        whole = DTensor.from_local(local.to(torch.uint8), mesh, param.placements, shape=param.shape, stride=param.stride())
        gathered = whole.full_tensor()
        if rank == 0:
            masks[name] = gathered.bool().cpu()
    return masks, local_masks


def _load_meta(directory: str | Path) -> dict[str, Any] | None:
    directory = Path(directory)
    if (directory / checkpoint.STATE_FILE).exists():
        raise ProxSparseError(
            f"{directory} holds a single-process training state (world size 1); resume it without torchrun "
            "or use another checkpoint directory"
        )
    path = directory / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ProxSparseError(f"cannot read {path}: {err}; delete the folder to start over") from err
    missing = [key for key in _META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise ProxSparseError(f"cannot read {path}: no {', '.join(missing)}; delete the folder to start over")
    return meta


def _state_dicts(model: nn.Module, optimizer, trainable_names: set[str]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": {k: v for k, v in model_sd.items() if k in trainable_names}, "optim": optim_sd}


def _rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


def _save(directory: str, fingerprint: str, step: int, model, optimizer, scheduler, history, trainable_names,
          device: torch.device) -> None:
    """DCP save into a fresh folder, plus each rank's RNG state beside it; rank 0 then points the metadata
    at it (atomic rename) and drops the rest.

    A run killed at any moment leaves the metadata pointing at a complete folder; what else it left
    (a partial folder, the previous save, a metadata temporary) is removed by the next save."""
    import torch.distributed.checkpoint as dcp

    root = Path(directory)
    folder = root / f"step-{step:08d}"
    partial = root / f".step-{step:08d}.partial"
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    dcp.save(_state_dicts(model, optimizer, trainable_names), checkpoint_id=str(partial))
    partial.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(device), partial / _rng_file(dist.get_rank()))
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        meta = {
            "format": META_FORMAT,
            "fingerprint": fingerprint,
            "world_size": dist.get_world_size(),
            "step": step,
            "folder": folder.name,
            "scheduler": scheduler.state_dict(),
            "history": history,
        }
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{META_FILE}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(meta, handle)
        os.replace(tmp, root / META_FILE)
        for stale in (*root.glob("step-*"), *root.glob(".step-*.partial")):
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob(f".{META_FILE}.*.tmp"):
            stale.unlink(missing_ok=True)
    dist.barrier()


def _load(directory: str, meta: dict[str, Any], model, optimizer, trainable_names: set[str], rank: int,
          device: torch.device) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    folder = Path(directory) / str(meta["folder"])
    if not folder.is_dir():
        raise ProxSparseError(f"{folder} is missing: the checkpoint in {directory} is incomplete; delete it to start over")
    state = _state_dicts(model, optimizer, trainable_names)
    rng = folder / _rng_file(rank)
    try:
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=StateDictOptions(strict=False))
        if rng.exists():  # absent in a checkpoint saved before RNG states were kept
            set_rng_state(torch.load(rng, map_location="cpu", weights_only=True), device)
    except Exception as err:  # torch.distributed.checkpoint fails in many types on damaged files
        if isinstance(err, (torch.OutOfMemoryError, dist.DistError)):  # the machine's trouble, not the files'
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ProxSparseError(f"cannot read the training state in {folder} ({reason[:200]}); delete {directory} to start over") from None


def exit_without_teardown(code: int) -> typing.NoReturn:
    """End a process whose distributed work is done and saved, skipping interpreter teardown: a gloo group
    FSDP2 has used stays alive past destroy_process_group (torch keeps it referenced), and tearing its
    threads down during shutdown can abort the process ("terminate called without an active exception").
    For scripts that call `learn_masks_distributed` (the torchrun command ends with it); it prints nothing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

