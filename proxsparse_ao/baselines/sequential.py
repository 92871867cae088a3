"""Sequential block-by-block calibration, as SparseGPT and Wanda run it.

The first decoder block's hidden states, and the keyword arguments the model passes to each
block (rotary position embeddings, the attention mask, ...), are captured in one forward per
sample, each cut to its real tokens (a padded calibration row loses its padding, so padding
never reaches a statistic). The blocks' own computation is skipped there: models compute these
arguments before their loop over the blocks (one whose loop needs the blocks' real outputs is
captured again with them run). The arguments differ from block to block in models that mix
layer types (Gemma 2 and 3, Qwen2 with sliding-window layers: another attention mask; Gemma 3's
local layers: another rotary base), so each block is replayed with its own. Then for each
block in order: run it on the current inputs with hooks that accumulate each target layer's
input statistics, prune its target layers from them, run the now pruned block again and
make its outputs the next block's inputs. So block k is calibrated on what the already
pruned blocks < k produce, and memory holds one block's activations for the calibration set
plus that block's statistics, never every layer's. Layers whose inputs are the same tensor
(q/k/v, gate/up) share one statistic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from ..calibration import trimmed
from ..errors import ProxSparseError
from ..modes import restore_train_modes, train_modes


class Statistic(Protocol):
    def add(self, inputs: torch.Tensor) -> None: ...


MakeStatistic = Callable[[nn.Linear], Statistic]
PruneLayer = Callable[[str, nn.Linear, Statistic], torch.Tensor]
Progress = Callable[[int, int], None]


class _Stop(Exception):
    """Raised by a capture hook to end the model's forward (at the first block, or the last)."""


def decoder_blocks(model: nn.Module, layers: dict[str, nn.Linear]) -> tuple[nn.ModuleList, list[list[str]]]:
    """The model's decoder blocks (the ModuleList holding most target layers) and the target names of each block.

    Raises ProxSparseError when there is no such list or a target lies outside every block."""
    owner = {id(layer): name for name, layer in layers.items()}
    best, best_count = None, 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            count = sum(1 for block in module for sub in block.modules() if id(sub) in owner)
            if count > best_count:
                best, best_count = module, count
    if best is None:
        raise ProxSparseError("sequential calibration needs a model with a list of decoder blocks (HF Llama-style); none holds a target layer")
    per_block = [[owner[id(sub)] for sub in block.modules() if id(sub) in owner] for block in best]
    outside = sorted(set(layers) - {name for names in per_block for name in names})
    if outside:
        raise ProxSparseError(
            f"sequential calibration prunes layers inside the decoder blocks only; outside them: {', '.join(outside[:5])}"
            + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
            + " (narrow targets/ignore)"
        )
    return best, per_block


def _forward_each_sample(model: nn.Module, tokens: torch.Tensor) -> None:
    """One forward per calibration sample (batch 1, trimmed to its real tokens), each ended where a capture hook raises _Stop."""
    device = next(model.parameters()).device
    for row in trimmed(tokens):
        try:
            model(input_ids=row.unsqueeze(0).to(device), use_cache=False)
        except _Stop:
            pass


def _split_call(args: tuple, kw: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """(hidden states, everything else) of a block call, as `_run` replays it: extra positional arguments under "_extra_args"."""
    kw = dict(kw)
    states = args[0] if args else kw.pop("hidden_states")
    return states, ({**kw, "_extra_args": args[1:]} if len(args) > 1 else kw)


def capture_block_inputs(model: nn.Module, block: nn.Module, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """The hidden states and keyword arguments `block` receives for each calibration sample (batch 1 each,
    trimmed to its real tokens)."""
    hidden: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []

    def grab(module: nn.Module, args: tuple, kw: dict[str, Any]) -> None:
        states, rest = _split_call(args, kw)
        hidden.append(states)
        kwargs.append(rest)
        raise _Stop

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _forward_each_sample(model, tokens)
    finally:
        handle.remove()
    if len(hidden) != tokens.shape[0]:
        raise ProxSparseError("sequential calibration: the model's forward did not reach the decoder block")
    return hidden, kwargs


def capture_calibration_inputs(
    model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor
) -> tuple[list[torch.Tensor], list[list[dict[str, Any]]]]:
    """(the hidden states the first block receives, per sample; the keyword arguments each block
    receives, per block and sample), each sample batch 1 and trimmed to its real tokens.

    The blocks' own computation is skipped: each hands its hidden states on unchanged. A model whose
    loop needs what a block really returns (it unpacks a tuple, or feeds a block's output into the
    next block's arguments) fails that way and is captured again with its blocks run."""
    try:
        return _capture(model, blocks, tokens, run_blocks=False)
    except Exception:
        return _capture(model, blocks, tokens, run_blocks=True)


def _capture(
    model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor, run_blocks: bool
) -> tuple[list[torch.Tensor], list[list[dict[str, Any]]]]:
    """capture_calibration_inputs with the blocks run, or each block's forward replaced by one that hands its input on."""
    hidden: list[torch.Tensor] = []
    kwargs: list[list[dict[str, Any]]] = [[] for _ in blocks]

    def record(k: int) -> Callable[..., None]:
        def grab(module: nn.Module, args: tuple, kw: dict[str, Any]) -> None:
            states, rest = _split_call(args, kw)
            if k == 0:
                hidden.append(states)
            kwargs[k].append(rest)
            if k == len(blocks) - 1:
                raise _Stop

        return grab

    def hand_on(*args: Any, **kw: Any) -> torch.Tensor:
        return args[0] if args else kw["hidden_states"]

    own = [block.__dict__.get("forward") for block in blocks]
    handles = [block.register_forward_pre_hook(record(k), with_kwargs=True) for k, block in enumerate(blocks)]
    try:
        if not run_blocks:
            for block in blocks:
                block.forward = hand_on
        _forward_each_sample(model, tokens)
    finally:
        for handle in handles:
            handle.remove()
        for block, forward in zip(blocks, own):
            if forward is not None:
                block.forward = forward
            elif "forward" in block.__dict__:
                del block.forward
    if {len(hidden)} | {len(per_block) for per_block in kwargs} != {tokens.shape[0]}:
        raise ProxSparseError("sequential calibration: the model's forward did not call each of its decoder blocks once per sample")
    return hidden, kwargs


def _run(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    kw = dict(kwargs)
    extra = kw.pop("_extra_args", ())
    out = block(hidden, *extra, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out


def _collect(block: nn.Module, layers: dict[str, nn.Linear], make: MakeStatistic,
             hidden: list[torch.Tensor], kwargs: list[dict[str, Any]]) -> dict[str, Statistic]:
    """Run the block on every sample with hooks feeding each target layer's inputs to its statistic."""
    stats: dict[str, Statistic] = {}
    seen: dict[int, tuple[torch.Tensor, Statistic]] = {}  # this forward's inputs (kept alive so ids stay unique)

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if not x.numel():  # called on an empty slice (an expert no token was routed to): nothing reached it
                return
            if id(x) in seen:
                if name not in stats:
                    stats[name] = seen[id(x)][1]
                if stats[name] is seen[id(x)][1]:
                    return
            stat = stats.setdefault(name, make(module))
            stat.add(x)
            seen.setdefault(id(x), (x, stat))

        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        for h, kw in zip(hidden, kwargs):
            seen.clear()
            _run(block, h, kw)
    finally:
        seen.clear()
        for handle in handles:
            handle.remove()
    missing = sorted(set(layers) - set(stats))
    if missing:
        raise ProxSparseError(
            "sequential calibration: target layer(s) that no calibration token reaches in their block (never called, "
            f"or on empty inputs only): {', '.join(missing)}"
        )
    return stats


@torch.no_grad()
def sequential_prune(
    model: nn.Module,
    tokens: torch.Tensor,
    layers: dict[str, nn.Linear],
    make_statistic: MakeStatistic,
    prune_layer: PruneLayer,
    *,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Prune every target layer block by block; returns the bool masks (CPU) by layer name.

    `make_statistic(layer)` makes an accumulator with `.add(inputs)`; `prune_layer(name, layer,
    statistic)` prunes the layer's weight in place and returns its keep-mask. The model is
    modified in place (a failure part-way leaves it part-pruned) and put back in its train mode."""
    blocks, per_block = decoder_blocks(model, layers)
    modes = train_modes(model)
    model.eval()
    masks: dict[str, torch.Tensor] = {}
    try:
        hidden, kwargs = capture_calibration_inputs(model, blocks, tokens)
        for k, block in enumerate(blocks):
            if per_block[k]:
                block_layers = {name: layers[name] for name in per_block[k]}
                stats = _collect(block, block_layers, make_statistic, hidden, kwargs[k])
                for name, layer in block_layers.items():
                    masks[name] = prune_layer(name, layer, stats[name]).cpu()
                del stats
            if k + 1 < len(blocks):
                for j in range(len(hidden)):
                    hidden[j] = _run(block, hidden[j], kwargs[k][j])
            if progress is not None:
                progress(k + 1, len(blocks))
    finally:
        restore_train_modes(model, modes)
    return masks
