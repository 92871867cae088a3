"""Calibration samples: N sequences of L tokens drawn from documents, seeded and deterministic.

Two modes, both common in the field:
* "documents" (the ProxSparse reference): whole documents with at least L tokens, each
  truncated to its first L tokens, chosen in a seeded random order; no packing.
* "windows" (SparseGPT / Wanda style): documents packed into one stream in a seeded random
  order (EOS between them), then N windows of L tokens at seeded random offsets.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from .errors import ProxSparseError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Mode = Literal["documents", "windows"]
MODES = ("documents", "windows")
_TOKENIZE_BATCH = 64
_PACK_FACTOR = 4


def _shuffled_token_ids(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], seed: int) -> Iterator[list[int]]:
    """Token ids of the documents (no special tokens) in a seeded random order, tokenised lazily in batches."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    for start in range(0, len(order), _TOKENIZE_BATCH):
        batch = [documents[i] for i in order[start : start + _TOKENIZE_BATCH]]
        yield from tokenizer(batch, add_special_tokens=False).input_ids


def _from_documents(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], n: int, seqlen: int, seed: int) -> torch.Tensor:
    rows = []
    for ids in _shuffled_token_ids(tokenizer, documents, seed):
        if len(ids) >= seqlen:
            rows.append(ids[:seqlen])
            if len(rows) == n:
                return torch.tensor(rows, dtype=torch.long)
    raise ProxSparseError(
        f"only {len(rows)} of the {len(documents)} documents have at least {seqlen} tokens, "
        f"{n} needed: use fewer samples, a shorter length or the 'windows' mode"
    )


def _from_windows(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], n: int, seqlen: int, seed: int) -> torch.Tensor:
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    budget = _PACK_FACTOR * n * seqlen
    for ids in _shuffled_token_ids(tokenizer, documents, seed):
        stream.extend(ids + separator)
        if len(stream) >= budget:
            break
    if len(stream) < seqlen:
        raise ProxSparseError(
            f"the calibration text has {len(stream)} tokens, fewer than one sample of {seqlen}: "
            "use a longer text or a shorter length"
        )
    if len(stream) < n * seqlen:
        warnings.warn(
            f"the calibration text has {len(stream)} tokens, fewer than the {n} x {seqlen} asked for: the windows "
            f"overlap, each token is seen about {n * seqlen / len(stream):.1f} times; a longer text gives more to learn from",
            stacklevel=3,
        )
    packed = torch.tensor(stream, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, packed.numel() - seqlen + 1, (n,), generator=generator)
    return torch.stack([packed[s : s + seqlen] for s in starts.tolist()])


def calibration_samples(
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[str],
    n: int,
    seqlen: int,
    *,
    mode: Mode = "windows",
    seed: int = 0,
) -> torch.Tensor:
    """A LongTensor [n, seqlen] of calibration token ids; the same arguments always give the same tensor.

    "windows" packs at most 4 * n * seqlen tokens (documents in seeded order), so a large
    corpus such as C4 is not tokenised whole; a text shorter than n * seqlen gives overlapping
    windows, with a warning.
    """
    if mode not in MODES:
        raise ProxSparseError(f"unknown calibration mode '{mode}': use one of {', '.join(MODES)}")
    if n < 1 or seqlen < 2:
        raise ProxSparseError(f"need at least 1 sample of at least 2 tokens, got {n} x {seqlen}")
    if not documents:
        raise ProxSparseError("no calibration documents")
    sample = _from_documents if mode == "documents" else _from_windows
    return sample(tokenizer, documents, n, seqlen, seed)
