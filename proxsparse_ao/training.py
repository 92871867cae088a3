"""ProxSparse mask learning: proximal gradient descent end to end, then top-2 of the learned weights.

    s = per-channel input norms of each target (one dense pass), or 1 without activation_aware
    for each batch of calibration tokens (one pass, seeded order):
        loss = CE + lambda2 * F(W; W0)                # FrozenWeightTerm; CE over real tokens, not padding
        CE.backward(); W.grad += lambda2 dF/dW        # F's gradient in closed form, layer by layer
        clip_grad_norm(max_grad_norm)
        AdamW step (linear warmup, then linear decay)  # + ProxStep hook: W <- prox(W*s) / s per target
    mask = top-2 |W_learned * s| per group of 4 (lower index wins ties)
    the model is given back exactly as it came in; `apply_masks` then sets W0 * mask.

Learning runs in train mode (dropout on, as the reference) on torch's global RNG seeded with
config.seed inside `fork_rng`: the same config gives the same masks whatever the caller's RNG
state, which is left as it was. A checkpoint saves the RNG state, so a resumed run continues it.

Library code reports through `callback(StepStats)`; it never prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .activations import activation_scales, check_layers_called
from .cache import check_writable_folder
from .calibration import PAD_ID, cropped, forward_takes, lengths, model_inputs
from .config import ProxSparseConfig, check_batch_size, learning_dtype
from .context import check_context
from .errors import ProxSparseError, warn_caller
from .hooks import FrozenWeightTerm, ProxStep, absolute_strengths, prox_space, relative_strengths
from .masks import learned_mask, mask_codes, top2_of_4
from .memory import peak_memory_bytes
from .modes import restore_train_modes, train_modes

STATS_PASSES = 64  # mask-statistics passes a run makes by default (see learn_masks)


class NonFiniteLossWarning(RuntimeWarning):
    """Learning stopped at a NaN/Inf loss or gradient; the masks come from the last good state."""


@dataclass
class StepStats:
    """One step's statistics (fraction_24 / changed_* are None on steps without a stats pass).

    changed_vs_start: fraction of groups whose top-2 (in the prox's space) differs from the
    starting mask (Wanda's when activation-aware, else magnitude's)."""

    step: int
    total_steps: int
    loss: float
    ce: float
    frozen: float
    lr: float
    grad_norm: float
    fraction_24: float | None
    changed_vs_magnitude: float | None
    changed_vs_start: float | None
    seconds: float


@dataclass
class LearnResult:
    """Learned masks (bool, CPU, per target name) and how the run went."""

    masks: dict[str, torch.Tensor]
    strengths: dict[str, float]
    history: list[dict[str, Any]]
    steps_done: int
    total_steps: int
    resumed_from: int | None = None
    stopped: str | None = None
    changed_vs_magnitude: float = 0.0
    changed_vs_start: float = 0.0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[StepStats], None]


def check_calibration(calibration: Any, model: nn.Module | None = None) -> torch.Tensor:
    """Calibration must be a non-empty integer tensor [N, L] of token ids with L >= 2 (any integer dtype, such as
    the uint16 of compact token files; returned as int64), each row at least 2 real tokens then only PAD_ID
    (right padding of a short sample), holding values (not on the meta device); given the model, every id
    must index its input embeddings (else the first forward fails deep inside torch) and L must fit its
    maximum context."""
    if not isinstance(calibration, torch.Tensor):
        raise ProxSparseError(f"calibration must be a tensor of token ids [N, L], got {type(calibration).__name__}")
    if calibration.is_meta:
        raise ProxSparseError(
            f"calibration is a meta tensor {tuple(calibration.shape)}: it has a shape but no token ids; pass the ids on cpu or cuda"
        )
    integer = not (calibration.dtype.is_floating_point or calibration.dtype.is_complex or calibration.dtype == torch.bool)
    if calibration.dim() != 2 or not integer:
        raise ProxSparseError(f"calibration must be an integer tensor [N, L], got {calibration.dtype} of shape {tuple(calibration.shape)}")
    calibration = calibration.long()
    if calibration.shape[0] == 0 or calibration.shape[1] < 2:
        raise ProxSparseError(f"calibration is empty: {tuple(calibration.shape)} (need at least one sample of 2+ tokens)")
    padding = calibration == PAD_ID
    if bool((padding[:, :-1] & ~padding[:, 1:]).any()):
        raise ProxSparseError(f"calibration has padding ({PAD_ID}) before a token: pad only at the end of a row")
    if bool((lengths(calibration) < 2).any()):
        raise ProxSparseError("calibration has a row of fewer than 2 tokens before its padding: each sample needs 2+ tokens")
    ids = calibration[~padding]
    vocabulary = _vocabulary_size(model)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocabulary is not None and high >= vocabulary):
        allowed = f"0..{vocabulary - 1}" if vocabulary is not None else "non-negative"
        raise ProxSparseError(f"calibration has token ids {low}..{high}; the model's vocabulary is {allowed}")
    if model is not None:
        check_context(model, calibration.shape[1], "the calibration sample length")
    return calibration


def _vocabulary_size(model: nn.Module | None) -> int | None:
    try:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except (NotImplementedError, AttributeError):
        return None
    return embeddings.num_embeddings if isinstance(embeddings, nn.Embedding) else None


def _lr_factor(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _causal_lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE over the batch's real tokens: padded positions are masked out of attention
    and ignored as targets (PAD_ID is the CE's ignore index), so a padded row counts as its trimmed self."""
    kwargs = {"use_cache": False} if hasattr(model, "generation_config") else {}
    inputs = model_inputs(batch)
    if "attention_mask" in inputs and not forward_takes(model, "attention_mask"):
        del inputs["attention_mask"]  # right padding: a causal model's real positions never see it anyway
    output = model(**inputs, **kwargs)
    logits = output.logits if hasattr(output, "logits") else output[0] if isinstance(output, tuple) else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        got = type(logits).__name__ if not isinstance(logits, torch.Tensor) else f"a tensor of shape {tuple(logits.shape)}"
        raise ProxSparseError(
            f"{type(model).__name__} returns no logits [batch, tokens, vocabulary] (got {got}): mask learning needs a causal "
            "language model with its LM head (a Hugging Face ...ForCausalLM, not the base model inside it)"
        )
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), ignore_index=PAD_ID)


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on torch's global RNG seeded with `seed` (CPU, and `device` when it is a GPU), then
    put the caller's RNG state back: dropout in train mode draws from it, so `config.seed` makes
    learning reproducible without disturbing the caller's random stream."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for gpu in cuda:
            with torch.cuda.device(gpu):
                torch.cuda.manual_seed(seed)
        yield


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG state learning draws from (CPU, and `device` when it is a GPU), for a checkpoint."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor] | torch.Tensor, device: torch.device) -> None:
    """Restore what `rng_state` saved (a bare tensor: an older checkpoint's CPU state)."""
    if isinstance(state, torch.Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def stats_interval(stats_every: int | None, total_steps: int) -> int:
    """Steps between two mask-statistics passes: `stats_every`, or None for about STATS_PASSES a run."""
    if stats_every is None:
        return max(1, math.ceil(total_steps / STATS_PASSES))
    return max(1, stats_every)


def check_reporting(callback: Any, stats_every: Any) -> None:
    """Refuse, before any work, a `callback` that cannot be called or a `stats_every` that is no
    int: either would otherwise fail at the end of the first step, after the statistics pass."""
    if callback is not None and not callable(callback):
        raise ProxSparseError(f"callback must be a function taking StepStats, got {type(callback).__name__} {callback!r}")
    if stats_every is not None and (isinstance(stats_every, bool) or not isinstance(stats_every, int)):
        raise ProxSparseError(f"stats_every must be an int (steps between statistics passes) or None, got {type(stats_every).__name__} {stats_every!r}")


def _check_causal_lm(model: nn.Module) -> None:
    """Learning runs `model(input_ids=...)` for a next-token loss: refuse a model whose forward takes no input_ids."""
    if not forward_takes(model, "input_ids"):
        raise ProxSparseError(
            f"{type(model).__name__}.forward takes no input_ids: mask learning needs a causal language model "
            "(a Hugging Face ...ForCausalLM, or a module whose forward(input_ids=...) returns logits)"
        )


def _checkpointing(model: nn.Module) -> bool:
    """Whether a Hugging Face model has gradient checkpointing on (the attribute was renamed in v5)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if name in dir(type(model)):
            return bool(getattr(model, name))
    return False


class _ModelState:
    """Everything learning changes on the model, saved once and put back exactly (always, even on error)."""

    def __init__(self, model: nn.Module, config: ProxSparseConfig, layers: dict[str, nn.Linear]) -> None:
        self.model = model
        self.modes = train_modes(model)
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self.checkpointing = _checkpointing(model)
        first = next(iter(layers.values())).weight
        self.device = first.device
        store = self.device if config.w0_device == "model" else torch.device("cpu")
        dtype = learning_dtype(config, first.dtype)
        self.cast = dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point())
        whole = self.cast or config.train == "all"
        # originals of every parameter and buffer only when the run changes them; else targets only
        self.saved: dict[str, torch.Tensor] = {}
        if whole:
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                self.saved[name] = tensor.detach().to(store, copy=True)
        target_names = {id(m.weight): name for name, m in layers.items()}
        self.originals = {}
        for pname, param in model.named_parameters():
            if id(param) in target_names:
                key = target_names[id(param)]
                self.originals[key] = self.saved[pname] if whole else param.detach().to(store, copy=True)
        if self.cast:
            model.to(dtype)

    def restore(self) -> None:
        model = self.model
        with torch.no_grad():
            named = dict([*model.named_parameters(), *model.named_buffers()])
            if self.saved:
                for name, saved in self.saved.items():
                    if self.cast:
                        named[name].data = saved.to(self.device, copy=True)
                    else:
                        named[name].data.copy_(saved)
            else:
                for layer_name, original in self.originals.items():
                    model.get_submodule(layer_name).weight.data.copy_(original)
        for name, param in model.named_parameters():
            param.grad = None
            param.requires_grad_(self.requires_grad.get(name, param.requires_grad))
        if not self.checkpointing and _checkpointing(model):
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        restore_train_modes(model, self.modes)


def learn_masks(
    model: nn.Module,
    calibration: torch.Tensor,
    config: ProxSparseConfig,
    layers: dict[str, nn.Linear],
    *,
    callback: Callback | None = None,
    stats_every: int | None = None,
) -> LearnResult:
    """Learn a 2:4 mask for every layer in `layers` from calibration tokens [N, L].

    The model comes back exactly as it was (weights, dtypes, requires_grad, each module's train
    mode); the masks are returned. Gradients are on while it learns, even under the caller's
    no_grad or inference_mode. With `config.checkpoint_dir` the run saves its state every
    `checkpoint_every` steps and at the end, and resumes from it when called again.
    The mask statistics of `StepStats` (a pass over every target weight) are computed every
    `stats_every` steps and at the last; None: every step up to STATS_PASSES steps, then
    about STATS_PASSES times a run. A layer that no calibration token reaches is refused by name
    before any learning: nothing would inform its mask."""
    check_reporting(callback, stats_every)
    calibration = check_calibration(calibration, model)
    check_batch_size(config, calibration.shape[0])
    _check_causal_lm(model)
    if not layers:
        raise ProxSparseError("learn_masks: no target layers")
    started = time.perf_counter()
    total_steps = math.ceil(calibration.shape[0] / config.batch_size)
    with _gradients_on():
        state = _ModelState(model, config, layers)
        try:
            with seeded_rng(config.seed, state.device):
                return _learn(model, calibration, config, layers, state, total_steps, callback,
                              stats_interval(stats_every, total_steps), started)
        finally:
            state.restore()


@contextmanager
def _gradients_on() -> Iterator[None]:
    """Gradients on for the block, whatever the caller's `torch.no_grad()` or `torch.inference_mode()`
    (pruning code often runs under one): learning backpropagates its loss; the caller's mode comes back after."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _learn(
    model: nn.Module,
    calibration: torch.Tensor,
    config: ProxSparseConfig,
    layers: dict[str, nn.Linear],
    state: _ModelState,
    total_steps: int,
    callback: Callback | None,
    stats_every: int,
    started: float,
) -> LearnResult:
    weights = {name: layer.weight for name, layer in layers.items()}
    originals = state.originals
    fingerprint, saved = "", None
    if config.checkpoint_dir:  # before the statistics pass: a wrong folder fails in seconds, not minutes
        check_writable_folder(config.checkpoint_dir, f"checkpoint_dir {config.checkpoint_dir}")
        fingerprints = checkpoint.run_fingerprints(config.to_dict(), calibration, originals)
        saved = checkpoint.load_state(config.checkpoint_dir, fingerprints)
        fingerprint = fingerprints[0]
    if not config.activation_aware:  # else the statistics pass below refuses a layer no token reaches
        check_layers_called(model, layers, calibration)
    tick = time.perf_counter()
    scales = activation_scales(model, layers, calibration) if config.activation_aware else None
    scales_seconds = time.perf_counter() - tick
    strengths: dict[str, float] = {}
    magnitude_codes: dict[str, torch.Tensor] = {}
    start_codes: dict[str, torch.Tensor] = {}
    for name, w0 in originals.items():  # one layer in the prox's space at a time
        space = prox_space(w0, None if scales is None else scales[name].to(w0.device))
        strengths[name] = prox_strength(name, space, config)
        magnitude_codes[name] = top2_codes(w0).to(state.device)
        start_codes[name] = top2_codes(space).to(state.device)
    total_groups = sum(c.numel() for c in magnitude_codes.values())
    codes = _Codes(weights, scales or {}, magnitude_codes, start_codes, total_groups)

    for param in model.parameters():
        param.requires_grad_(config.train == "all")
    for weight in weights.values():
        weight.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            raise ProxSparseError(f"gradient checkpointing needs a Hugging Face model; {type(model).__name__} has none")
    model.train()

    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(warmup, total_steps))
    ProxStep(weights, strengths, scales, follow_lr=config.strength_schedule == "lr").attach(optimizer)
    frozen = FrozenWeightTerm(weights, originals, config.lambda2, config.epsilon) if config.lambda2 > 0 else None
    order = torch.randperm(calibration.shape[0], generator=torch.Generator().manual_seed(config.seed))

    history: list[dict[str, Any]] = []
    start_step, resumed_from = 0, None
    if saved is not None:
        history, start_step = _resume(model, optimizer, scheduler, saved, state.device)
        resumed_from = start_step

    stopped = None
    step = start_step
    for step in range(start_step, total_steps):
        tick = time.perf_counter()
        rows = order[step * config.batch_size : (step + 1) * config.batch_size]
        batch = cropped(calibration[rows]).to(state.device)
        ce = _causal_lm_loss(model, batch)
        ce.backward()
        # lambda2 * dF/dW layer by layer, the gradient backpropagating ce + penalty would give
        penalty = frozen.add_grad_() if frozen is not None else torch.zeros((), device=ce.device)
        loss = ce.detach() + penalty
        if not torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            stopped = f"non-finite loss ({float(loss)}) at step {step + 1}; kept the state after step {step}"
            break
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm if config.max_grad_norm > 0 else math.inf)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            stopped = f"non-finite gradient at step {step + 1}; kept the state after step {step}"
            break
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()  # the ProxStep hook applies the prox here
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        fraction, changed, moved = None, None, None
        if (step + 1) % stats_every == 0 or step + 1 == total_steps:
            fraction, changed, moved = codes.pattern_stats()
        stats = StepStats(
            step=step + 1,
            total_steps=total_steps,
            loss=float(loss.detach()),
            ce=float(ce.detach()),
            frozen=float(penalty.detach()),
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
            _save(config.checkpoint_dir, fingerprint, step + 1, model, optimizer, scheduler, history, state.device)
    else:
        step = total_steps
    if stopped:
        warn_caller(f"ProxSparse learning stopped: {stopped}", NonFiniteLossWarning)

    with torch.no_grad():
        masks = {
            name: learned_mask(prox_space(weight, codes.scales.get(name)).abs(), originals[name]).cpu()
            for name, weight in weights.items()
        }
    changed, moved = codes.final_changes(masks)
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
        peak_memory_bytes=peak_memory_bytes(state.device),
        extra={"activation_pass_seconds": round(scales_seconds, 2)} if scales is not None else {},
    )


def prox_strength(name: str, space: torch.Tensor, config: ProxSparseConfig) -> float:
    """The prox threshold of one layer from its original weight in the prox's space."""
    if config.strength == "relative":
        return relative_strengths({name: space}, config.lambda1, config.lr)[name]
    return absolute_strengths({name: space}, config.lambda1)[name]


def _resume(model: nn.Module, optimizer, scheduler, saved: dict[str, Any], device: torch.device) -> tuple[list[dict[str, Any]], int]:
    """Load a saved training state into the model, optimizer and scheduler; (history, step)."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved["weights"].items():
            named[name].data.copy_(tensor)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"], device)
    return list(saved["history"]), int(saved["step"])


def _save(directory: str, fingerprint: str, step: int, model: nn.Module, optimizer, scheduler, history: list, device: torch.device) -> None:
    """Save what a resume needs: trained parameters, optimizer, scheduler, RNG, history."""
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "weights": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(device),
        "history": history,
    }
    checkpoint.save_state(directory, state)


@torch.no_grad()
def top2_codes(weight: torch.Tensor) -> torch.Tensor:
    """`mask_codes(magnitude_mask(weight))` without magnitude_mask's NaN check (a host sync): cheap
    enough for every step."""
    return mask_codes(top2_of_4(weight.detach().abs().reshape(-1, 4)))


class _Codes:
    """Per-group top-2 codes of the starting and magnitude masks, to count how far masks moved."""

    def __init__(self, weights, scales, magnitude_codes, start_codes, total_groups: int) -> None:
        self.weights, self.scales = weights, scales
        self.magnitude, self.start, self.total = magnitude_codes, start_codes, max(1, total_groups)

    @torch.no_grad()
    def pattern_stats(self) -> tuple[float, float, float]:
        """(fraction of groups with <= 2 non-zeros; fraction of the mask picked now, the top-2 in the
        prox's space, that differs from magnitude's; and from the starting mask). The counts stay on
        the weights' device until one read at the end (one host sync, not three per layer)."""
        per_device: dict[torch.device, torch.Tensor] = {}
        for name, weight in self.weights.items():
            current = top2_codes(prox_space(weight, self.scales.get(name)))
            counts = torch.stack([
                ((weight.detach().reshape(-1, 4) != 0).sum(1) <= 2).sum(),
                (current != self.magnitude[name]).sum(),
                (current != self.start[name]).sum(),
            ])
            per_device[counts.device] = per_device[counts.device] + counts if counts.device in per_device else counts
        sparse = changed = moved = 0
        for counts in per_device.values():
            a, b, c = counts.tolist()
            sparse, changed, moved = sparse + a, changed + b, moved + c
        return sparse / self.total, changed / self.total, moved / self.total

    def final_changes(self, masks: dict[str, torch.Tensor]) -> tuple[float, float]:
        """(fraction of groups of the final masks that differ from magnitude's, from the starting mask)."""
        changed = moved = 0
        for name, mask in masks.items():
            code = mask_codes(mask)
            changed += int((code != self.magnitude[name].cpu()).sum())
            moved += int((code != self.start[name].cpu()).sum())
        return changed / self.total, moved / self.total
