"""Perplexity with the paper's protocol: joined text, non-overlapping windows of L tokens, exp(mean window loss)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .context import check_context
from .errors import ProxSparseError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Perplexity:
    """Result of `perplexity`: `tokens` counts the tokens inside the evaluated windows."""

    ppl: float
    mean_loss: float
    tokens: int
    windows: int
    seqlen: int

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """The whole text tokenised once (as the reference does), as a 1-D LongTensor."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    return ids.to(torch.long)


def windows(input_ids: torch.Tensor, seqlen: int, max_tokens: int | None = None) -> torch.Tensor:
    """The non-overlapping [n, seqlen] windows of a 1-D token stream (the tail shorter than a window is dropped)."""
    if seqlen < 2:
        raise ProxSparseError(f"the window length must be at least 2 tokens, got {seqlen}")
    ids = input_ids.reshape(-1)
    if max_tokens is not None and max_tokens < ids.numel():
        ids = ids[:max_tokens]
        if ids.numel() < seqlen:
            raise ProxSparseError(
                f"max_tokens {max_tokens} is fewer than one window of {seqlen} tokens: "
                "raise the token limit (--max-tokens) or use a smaller window (--seqlen)"
            )
    count = ids.numel() // seqlen
    if count == 0:
        raise ProxSparseError(
            f"the text has {ids.numel()} tokens, fewer than one window of {seqlen}: "
            "use a longer text or a smaller window (--seqlen)"
        )
    return ids[: count * seqlen].view(count, seqlen)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_losses(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each row of `batch` [b, L], computed in fp32 whatever the model dtype."""
    logits = model(batch.to(_device_of(model))).logits
    shift = logits[:, :-1, :].float()
    labels = batch[:, 1:].to(shift.device)
    loss = F.cross_entropy(shift.reshape(-1, shift.size(-1)), labels.reshape(-1), reduction="none")
    return loss.view(batch.size(0), -1).mean(dim=1).double().cpu()


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    seqlen: int = 1024,
    *,
    batch_size: int = 1,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Perplexity:
    """Perplexity of `model` on a token stream, in non-overlapping windows of `seqlen` tokens.

    `max_tokens` keeps only the first tokens of the stream (None: all of it). `progress`
    is called as `progress(done_windows, total_windows)` after each batch. The model is
    put in eval mode; nothing is printed. A window longer than the model's maximum context
    (`config.max_position_embeddings`) is refused.
    """
    if batch_size < 1:
        raise ProxSparseError(f"batch size must be at least 1, got {batch_size}")
    check_context(model, seqlen, "seqlen")
    chunks = windows(input_ids, seqlen, max_tokens)
    model.eval()
    losses = []
    for start in range(0, chunks.size(0), batch_size):
        losses.append(window_losses(model, chunks[start : start + batch_size]))
        if progress is not None:
            progress(min(start + batch_size, chunks.size(0)), chunks.size(0))
    mean = torch.cat(losses).mean().item()
    return Perplexity(ppl=math.exp(mean), mean_loss=mean, tokens=chunks.numel(), windows=chunks.size(0), seqlen=seqlen)
