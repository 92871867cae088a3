"""Calibration samples: N x L token ids (short documents right-padded), seeded, in the paper's mode and the SparseGPT/Wanda mode."""

from __future__ import annotations

import random
import re

import pytest
import torch

from proxsparse_ao.calibration import (
    PAD_ID, calibration_samples, cropped, is_padded, lengths, model_inputs, target_count, trimmed,
)
from proxsparse_ao.errors import ProxSparseError

DOCS = [f"document {i}: " + "lorem ipsum dolor sit amet " * (i + 1) for i in range(12)]


@pytest.mark.parametrize("mode", ["documents", "windows"])
def test_returns_a_long_tensor_of_n_samples_of_l_tokens(byte_tokenizer, mode):
    samples = calibration_samples(byte_tokenizer, DOCS, 5, 40, mode=mode, seed=0)
    assert samples.dtype == torch.long and samples.shape == (5, 40)


@pytest.mark.parametrize("mode", ["documents", "windows"])
def test_same_seed_same_samples_other_seed_other_samples(byte_tokenizer, mode):
    first = calibration_samples(byte_tokenizer, DOCS, 4, 30, mode=mode, seed=1)
    again = calibration_samples(byte_tokenizer, DOCS, 4, 30, mode=mode, seed=1)
    other = calibration_samples(byte_tokenizer, DOCS, 4, 30, mode=mode, seed=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def _seeded_order(documents, seed):
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    return [documents[i] for i in order]


def test_document_mode_takes_the_first_n_documents_of_the_seeded_order_skipping_empty_ones(byte_tokenizer):
    documents = ["", "x", *DOCS]  # no token, one token: nothing to predict, skipped
    seqlen = 100
    samples = calibration_samples(byte_tokenizer, documents, 6, seqlen, mode="documents", seed=3)
    usable = [d for d in _seeded_order(documents, 3) if len(d) >= 2]  # the byte tokenizer: one token per character
    expected = [byte_tokenizer(d, add_special_tokens=False).input_ids[:seqlen] for d in usable[:6]]
    assert [row[row != PAD_ID].tolist() for row in samples] == expected


def test_document_mode_keeps_short_documents_at_their_length_right_padded(byte_tokenizer):
    samples = calibration_samples(byte_tokenizer, DOCS, 12, 200, mode="documents", seed=0)
    assert samples.shape == (12, 200) and samples.dtype == torch.long
    assert sorted(lengths(samples).tolist()) == sorted(min(len(d), 200) for d in DOCS)  # all 12 kept, half of them short
    for row, length in zip(samples, lengths(samples).tolist()):
        assert bool((row[:length] >= 0).all()) and bool((row[length:] == PAD_ID).all())


def test_document_mode_adds_the_tokenizers_bos_as_sftrainer_does_and_window_mode_does_not(byte_tokenizer):
    from tokenizers.processors import TemplateProcessing

    bos = byte_tokenizer.convert_tokens_to_ids("Ċ")  # any id will do as the BOS of this test
    byte_tokenizer.bos_token = "Ċ"
    byte_tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="Ċ $A", special_tokens=[("Ċ", bos)])
    documents = calibration_samples(byte_tokenizer, DOCS, 4, 30, mode="documents", seed=0)
    assert documents[:, 0].tolist() == [bos] * 4
    assert lengths(documents).tolist() == [30] * 4  # the BOS counts in the context length, as in SFTTrainer
    windows = calibration_samples(byte_tokenizer, ["abcdefgh" * 50], 4, 30, mode="windows", seed=0)
    assert bos not in windows.tolist()[0]


def test_document_mode_says_when_too_few_documents_have_tokens(byte_tokenizer):
    with pytest.raises(ProxSparseError, match="only 12 of the 14 documents have at least 2 tokens, 13 needed"):
        calibration_samples(byte_tokenizer, ["", "x", *DOCS], 13, 300, mode="documents")


def test_document_mode_says_when_the_text_has_fewer_documents_than_samples(byte_tokenizer):
    with pytest.raises(ProxSparseError, match=f"the calibration text has only {len(DOCS)} documents, 50 needed"):
        calibration_samples(byte_tokenizer, DOCS, 50, 300, mode="documents")
    with pytest.raises(ProxSparseError, match="^the calibration text has only 1 document, 2 needed"):  # a .txt of one paragraph
        calibration_samples(byte_tokenizer, ["one long line " * 100], 2, 16, mode="documents")


@pytest.mark.parametrize(("documents", "n"), [(DOCS, 50), (["", "x", *DOCS], 13)], ids=["too-few-documents", "too-few-with-tokens"])
def test_document_mode_errors_say_what_a_document_is_so_the_file_can_be_fixed(byte_tokenizer, documents, n):
    """A .txt file of single lines is one document, not one per line: the message says how documents are told apart."""
    clause = " (a document is one blank-line-separated paragraph of a .txt file, or one line of a .jsonl file): "
    with pytest.raises(ProxSparseError, match=f", {n} needed{re.escape(clause)}use fewer samples, a larger text or the 'windows' mode$"):
        calibration_samples(byte_tokenizer, documents, n, 300, mode="documents")


def test_cropping_drops_only_the_columns_that_are_padding_in_every_row():
    tokens = torch.tensor([[1, 2, 3, PAD_ID, PAD_ID], [4, 5, PAD_ID, PAD_ID, PAD_ID]])
    assert torch.equal(cropped(tokens), tokens[:, :3])
    full = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert cropped(full) is full


def test_window_mode_never_pads(byte_tokenizer):
    samples = calibration_samples(byte_tokenizer, DOCS, 6, 64, mode="windows", seed=0)
    assert not is_padded(samples) and lengths(samples).tolist() == [64] * 6


def test_model_inputs_mask_padding_only_when_there_is_some():
    full = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert model_inputs(full).keys() == {"input_ids"} and model_inputs(full)["input_ids"] is full
    padded = torch.tensor([[5, 6, 7], [8, 9, PAD_ID]])
    inputs = model_inputs(padded)
    assert bool((inputs["input_ids"] >= 0).all()) and torch.equal(inputs["input_ids"][:, :2], padded[:, :2])
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert [row.tolist() for row in trimmed(padded)] == [[5, 6, 7], [8, 9]]
    assert target_count(padded) == 3


def test_window_mode_takes_contiguous_windows_of_the_packed_text(byte_tokenizer):
    text = "".join(chr(ord("a") + i % 26) for i in range(2000))
    stream = byte_tokenizer(text, add_special_tokens=False).input_ids
    samples = calibration_samples(byte_tokenizer, [text], 8, 50, mode="windows", seed=3)
    starts = []
    for row in samples.tolist():
        start = stream.index(row[0])
        while stream[start : start + 50] != row:
            start = stream.index(row[0], start + 1)
        starts.append(start)
    assert len(set(starts)) > 1


def test_window_mode_warns_when_the_text_is_shorter_than_the_samples_asked_for(byte_tokenizer):
    text = "x" * 100  # and the EOS after it
    with pytest.warns(UserWarning, match="the calibration text has 101 tokens, fewer than the 8 x 64 asked for") as caught:
        samples = calibration_samples(byte_tokenizer, [text], 8, 64, mode="windows")
    assert caught[0].filename == __file__
    assert samples.shape == (8, 64)


def test_window_mode_needs_at_least_one_window_of_text(byte_tokenizer):
    with pytest.raises(ProxSparseError, match="fewer than one sample of 5000"):
        calibration_samples(byte_tokenizer, DOCS, 2, 5000, mode="windows")


def test_bad_arguments_are_clear_errors(byte_tokenizer):
    with pytest.raises(ProxSparseError, match="unknown calibration mode"):
        calibration_samples(byte_tokenizer, DOCS, 2, 10, mode="packed")
    with pytest.raises(ProxSparseError, match="no calibration documents"):
        calibration_samples(byte_tokenizer, [], 2, 10)
    with pytest.raises(ProxSparseError, match="at least 1 sample"):
        calibration_samples(byte_tokenizer, DOCS, 0, 10)


def _start_of(stream: list[int], window: list[int]) -> int:
    starts = [s for s in range(len(stream) - len(window) + 1) if stream[s : s + len(window)] == window]
    assert starts, "the window is not a contiguous piece of the packed text"
    return starts[0]


def test_window_mode_draws_every_offset_up_to_the_last_window_that_fits(byte_tokenizer):
    text = "abcdefghijkl"  # 12 distinct tokens and the EOS: 13 tokens, windows of 10 start at 0, 1, 2 or 3
    stream = byte_tokenizer(text, add_special_tokens=False).input_ids + [byte_tokenizer.eos_token_id]
    with pytest.warns(UserWarning, match="windows overlap"):
        samples = calibration_samples(byte_tokenizer, [text], 64, 10, mode="windows", seed=0)
    starts = [_start_of(stream, row) for row in samples.tolist()]
    assert sorted(set(starts)) == [0, 1, 2, 3]  # the last window, ending on the EOS, is drawn too
    assert samples[starts.index(3)].tolist() == stream[3:]


class CountingTokenizer:
    """A tokenizer that counts the documents it is asked to tokenise."""

    def __init__(self, inner) -> None:
        self.inner, self.documents = inner, 0
        self.eos_token_id = inner.eos_token_id

    def __call__(self, texts, **options):
        self.documents += len(texts)
        return self.inner(texts, **options)


def test_window_mode_tokenises_only_about_4_n_l_tokens_of_a_large_corpus(byte_tokenizer):
    from proxsparse_ao.calibration import _TOKENIZE_BATCH

    corpus = [f"document {i:04d} says hello." for i in range(1000)]  # 25 characters, 26 tokens with the EOS
    counting = CountingTokenizer(byte_tokenizer)
    n, seqlen = 2, 16
    samples = calibration_samples(counting, corpus, n, seqlen, mode="windows", seed=4)
    assert counting.documents <= _TOKENIZE_BATCH  # one batch of documents, not the 1000
    stream, eos = [], [byte_tokenizer.eos_token_id]
    for document in _seeded_order(corpus, 4):  # the documents needed for 4 * n * seqlen tokens, in seeded order
        stream += byte_tokenizer(document, add_special_tokens=False).input_ids + eos
        if len(stream) >= 4 * n * seqlen:
            break
    assert len(stream) == 5 * 26  # 128 tokens asked for: 5 documents
    for row in samples.tolist():
        _start_of(stream, row)  # every window lies in those first documents


def test_target_count_counts_next_token_targets_not_tokens():
    tokens = torch.tensor([[5, 6, 7, PAD_ID], [1, 2, 3, 4]])
    assert target_count(tokens) == 2 + 3  # a row of n real tokens predicts n - 1 of them


def test_window_mode_seed_also_moves_the_windows_within_one_document(byte_tokenizer):
    text = "".join(chr(ord("a") + i % 26) for i in range(2000))  # one document: the order cannot differ
    first = calibration_samples(byte_tokenizer, [text], 4, 50, mode="windows", seed=1)
    other = calibration_samples(byte_tokenizer, [text], 4, 50, mode="windows", seed=2)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("mode", ["documents", "windows"])
def test_a_sample_of_one_token_is_refused(byte_tokenizer, mode):
    with pytest.raises(ProxSparseError, match="need at least 1 sample of at least 2 tokens, got 2 x 1"):
        calibration_samples(byte_tokenizer, DOCS, 2, 1, mode=mode)


def test_window_mode_draws_from_about_4_n_l_tokens_not_only_n_l(byte_tokenizer):
    corpus = [f"document {i:04d} says hello." for i in range(1000)]  # 26 tokens a document with the EOS
    n, seqlen = 8, 16
    samples = calibration_samples(byte_tokenizer, corpus, n, seqlen, mode="windows", seed=4)
    stream, eos = [], [byte_tokenizer.eos_token_id]
    for document in _seeded_order(corpus, 4):
        stream += byte_tokenizer(document, add_special_tokens=False).input_ids + eos
        if len(stream) >= 4 * n * seqlen:
            break
    starts = [_start_of(stream, row) for row in samples.tolist()]
    assert len(stream) == 20 * 26  # 512 tokens asked for: 20 documents
    assert max(starts) >= 5 * 26  # windows reach past the 5 documents that n * seqlen tokens would need
