"""Calibration samples: N x L token ids, seeded, in the paper's mode and the SparseGPT/Wanda mode."""

from __future__ import annotations

import pytest
import torch

from proxsparse_ao.calibration import calibration_samples
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


def test_document_mode_truncates_whole_documents_and_skips_short_ones(byte_tokenizer):
    seqlen = 100
    samples = calibration_samples(byte_tokenizer, DOCS, 6, seqlen, mode="documents", seed=0)
    prefixes = {
        tuple(ids[:seqlen]) for ids in byte_tokenizer(DOCS, add_special_tokens=False).input_ids if len(ids) >= seqlen
    }
    rows = [tuple(row) for row in samples.tolist()]
    assert set(rows) <= prefixes and len(set(rows)) == 6


def test_document_mode_says_when_too_few_documents_are_long_enough(byte_tokenizer):
    with pytest.raises(ProxSparseError, match="have at least 300 tokens"):
        calibration_samples(byte_tokenizer, DOCS, 10, 300, mode="documents")


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
    with pytest.warns(UserWarning, match="the calibration text has 101 tokens, fewer than the 8 x 64 asked for"):
        samples = calibration_samples(byte_tokenizer, [text], 8, 64, mode="windows")
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
