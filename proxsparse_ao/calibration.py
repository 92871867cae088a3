"""Calibration samples: N sequences of at most L tokens drawn from documents, seeded and deterministic.

Two modes, both common in the field:
* "documents" (the ProxSparse reference, HF SFTTrainer without packing): the first N documents
  of a seeded random order that have at least 2 tokens, each tokenised with the tokenizer's
  special tokens (its BOS where it adds one, as SFTTrainer's `add_special_tokens=True`) and
  truncated to its first L tokens. Shorter documents are kept at their own length, so the samples follow
  the corpus's document lengths (C4: mostly far below 4096 tokens).
* "windows" (SparseGPT / Wanda style): documents packed into one stream in a seeded random
  order (EOS between them, no special tokens), then N windows of L tokens at seeded random
  offsets.

Every consumer takes one LongTensor [N, L]: a sample shorter than L is right-padded with
PAD_ID (-100), a value no embedding accepts, so a consumer that forgets the padding fails
loudly instead of learning on it. -100 is also cross-entropy's ignore index, so the tensor is
its own label tensor. `model_inputs`, `lengths` and `trimmed` are how consumers read it.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from .errors import ProxSparseError, warn_caller

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Mode = Literal["documents", "windows"]
MODES = ("documents", "windows")
PAD_ID = -100  # right padding of a short sample; F.cross_entropy's default ignore_index
_FILL_ID = 0  # what the model sees at padded positions (any valid id: they are masked and ignored)
_TOKENIZE_BATCH = 64
_PACK_FACTOR = 4


def check_tokenizer(tokenizer: object, caller: str = "", method: str | None = None) -> None:
    """Refuse what is not a tokenizer object (typically a model name passed as the tokenizer), before it
    is used deep inside a run: one that cannot be called to tokenize or, given `method` (such as
    "save_pretrained"), lacks that method. `caller` starts the message ("save_pruned")."""
    usable = callable(tokenizer) if method is None else callable(getattr(tokenizer, method, None))
    if not usable:
        raise ProxSparseError(
            f"{caller + ': ' if caller else ''}tokenizer must be a tokenizer object (e.g. AutoTokenizer.from_pretrained(...)), "
            f"got {type(tokenizer).__name__} {tokenizer!r:.60}"
        )


def lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Each row's number of real tokens (padding is at the right end)."""
    return (tokens != PAD_ID).sum(1)


def is_padded(tokens: torch.Tensor) -> bool:
    """Whether any row of `tokens` holds padding."""
    return bool((tokens == PAD_ID).any())


def trimmed(tokens: torch.Tensor) -> list[torch.Tensor]:
    """The rows of `tokens` [N, L] cut to their real tokens (views; full rows stay whole)."""
    return [row[:length] for row, length in zip(tokens, lengths(tokens).tolist())]


def cropped(tokens: torch.Tensor) -> torch.Tensor:
    """`tokens` [B, L] without the columns that are padding in every row (the longest row's length):
    a batch of short documents then costs what its tokens cost, as a collator padding to the batch's
    longest sample does. Unpadded tokens come back as they are."""
    longest = int(lengths(tokens).max()) if tokens.numel() else tokens.shape[1]
    return tokens if longest == tokens.shape[1] else tokens[:, :longest]


def token_count(tokens: torch.Tensor) -> int:
    """How many real tokens `tokens` holds (its size less the padding)."""
    return int(lengths(tokens).sum())


def target_count(tokens: torch.Tensor) -> int:
    """How many next-token targets the rows hold (a row of n real tokens has n - 1)."""
    return int((tokens[:, 1:] != PAD_ID).sum())


def model_inputs(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Keyword arguments for a causal LM's forward on `tokens` [B, L]: the tensor itself when no row
    is padded (as before padding existed), else input_ids with padding replaced by a valid id and
    the attention mask of the real tokens. The labels are `tokens` itself (PAD_ID is ignored)."""
    if not is_padded(tokens):
        return {"input_ids": tokens}
    real = tokens != PAD_ID
    return {"input_ids": tokens.masked_fill(~real, _FILL_ID), "attention_mask": real.long()}


def forward_takes(model: torch.nn.Module, argument: str, *, named: bool = False) -> bool:
    """Whether the model's forward accepts the keyword `argument`: by name, or (unless `named`)
    through **kwargs. A forward whose signature cannot be read is taken to accept it unless `named`."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return not named
    if argument in parameters:
        return True
    return not named and any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _shuffled_token_ids(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], seed: int, **tokenize: object
) -> Iterator[list[int]]:
    """Token ids of the documents in a seeded random order, tokenised lazily in batches (`tokenize`:
    the tokenizer call's options)."""
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    for start in range(0, len(order), _TOKENIZE_BATCH):
        batch = [documents[i] for i in order[start : start + _TOKENIZE_BATCH]]
        yield from tokenizer(batch, **tokenize).input_ids


def _from_documents(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], n: int, seqlen: int, seed: int) -> torch.Tensor:
    samples = torch.full((n, seqlen), PAD_ID, dtype=torch.long)
    taken = 0
    # as SFTTrainer tokenises: with special tokens, truncated to the context (special tokens kept)
    shuffled = _shuffled_token_ids(tokenizer, documents, seed, add_special_tokens=True, truncation=True, max_length=seqlen)
    for ids in shuffled:
        if len(ids) >= 2:
            ids = ids[:seqlen]
            samples[taken, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            taken += 1
            if taken == n:
                return samples
    raise ProxSparseError(
        (f"the calibration text has only {len(documents)} document{'s' if len(documents) != 1 else ''}, {n} needed"
         if len(documents) < n else
         f"only {taken} of the {len(documents)} documents have at least 2 tokens, {n} needed")
        + " (a document is one blank-line-separated paragraph of a .txt file, or one line of a .jsonl file)"
        + ": use fewer samples, a larger text or the 'windows' mode"
    )


def _from_windows(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], n: int, seqlen: int, seed: int) -> torch.Tensor:
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    budget = _PACK_FACTOR * n * seqlen
    for ids in _shuffled_token_ids(tokenizer, documents, seed, add_special_tokens=False):
        stream.extend(ids + separator)
        if len(stream) >= budget:
            break
    if len(stream) < seqlen:
        raise ProxSparseError(
            f"the calibration text has {len(stream)} tokens, fewer than one sample of {seqlen}: "
            "use a longer text or a shorter length"
        )
    if len(stream) < n * seqlen:
        warn_caller(
            f"the calibration text has {len(stream)} tokens, fewer than the {n} x {seqlen} asked for: the windows "
            f"overlap, each token is seen about {n * seqlen / len(stream):.1f} times; a longer text gives more to learn from"
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

    "documents" right-pads the samples of documents shorter than seqlen with PAD_ID.
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
