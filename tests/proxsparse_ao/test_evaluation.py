"""Perplexity follows the paper's protocol: non-overlapping windows, exp of the mean window loss."""

from __future__ import annotations

import math

import pytest
import torch

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.evaluation import perplexity, tokenize_text, windows


def stream(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed))


def naive_perplexity(model, ids: torch.Tensor, seqlen: int) -> float:
    """The reference loop: one window at a time, the model's own shifted loss, exp of the mean."""
    losses = []
    for start in range(0, ids.numel() - seqlen + 1, seqlen):
        window = ids[start : start + seqlen].unsqueeze(0)
        with torch.no_grad():
            losses.append(model(window, labels=window).loss.item())
    return math.exp(sum(losses) / len(losses))


def test_batched_perplexity_equals_a_naive_per_window_loop(tiny_llama):
    ids = stream(64 * 7 + 13)
    result = perplexity(tiny_llama, ids, 64, batch_size=3)
    assert result.ppl == pytest.approx(naive_perplexity(tiny_llama, ids, 64), rel=1e-5)
    assert result.mean_loss == pytest.approx(math.log(result.ppl))


def test_batch_size_does_not_change_the_result(tiny_llama):
    ids = stream(500)
    one = perplexity(tiny_llama, ids, 50, batch_size=1)
    many = perplexity(tiny_llama, ids, 50, batch_size=4)
    assert many.ppl == pytest.approx(one.ppl, rel=1e-5)


def test_result_counts_the_tokens_in_whole_windows_only(tiny_llama):
    result = perplexity(tiny_llama, stream(64 * 5 + 40), 64)
    assert (result.windows, result.tokens, result.seqlen) == (5, 320, 64)
    assert set(result.to_dict()) >= {"ppl", "tokens", "windows", "seqlen", "mean_loss"}


def test_max_tokens_evaluates_only_the_first_tokens(tiny_llama):
    ids = stream(640)
    capped = perplexity(tiny_llama, ids, 64, max_tokens=200)
    assert (capped.windows, capped.tokens) == (3, 192)
    assert capped.ppl == pytest.approx(perplexity(tiny_llama, ids[:192], 64).ppl, rel=1e-6)


def test_progress_is_reported_after_each_batch(tiny_llama):
    calls = []
    perplexity(tiny_llama, stream(64 * 5), 64, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_runs_without_autograd_even_when_grad_is_enabled(tiny_llama):
    seen = []
    tiny_llama.model.layers[0].register_forward_hook(lambda *args: seen.append(torch.is_grad_enabled()))
    with torch.enable_grad():
        perplexity(tiny_llama, stream(128), 64)
    assert seen and not any(seen)
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_low_precision_models_are_scored_in_fp32(tiny_llama_factory):
    ids = stream(256)
    full = perplexity(tiny_llama_factory(dtype=torch.float32), ids, 64).ppl
    half = perplexity(tiny_llama_factory(dtype=torch.bfloat16), ids, 64).ppl
    assert half == pytest.approx(full, rel=0.05)


def test_text_shorter_than_one_window_is_a_clear_error(tiny_llama):
    with pytest.raises(ProxSparseError, match="fewer than one window of 64"):
        perplexity(tiny_llama, stream(63), 64)


def test_a_token_limit_below_one_window_is_named_as_the_limit_not_the_text(tiny_llama):
    with pytest.raises(ProxSparseError, match="max_tokens 100 is fewer than one window of 128 tokens"):
        perplexity(tiny_llama, stream(2000), 128, max_tokens=100)


def test_a_window_longer_than_the_models_context_is_refused_before_the_model_runs(tiny_llama):
    tiny_llama.config.max_position_embeddings = 32
    calls = []
    tiny_llama.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ProxSparseError, match="^seqlen 64 is longer than the model's maximum context of 32 tokens"):
        perplexity(tiny_llama, stream(256), 64)
    assert calls == []
    assert perplexity(tiny_llama, stream(256), 32).windows == 8


def test_a_model_with_learned_positions_is_refused_instead_of_failing_inside_its_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=64, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ProxSparseError, match="^seqlen 64 is longer than the model's maximum context of 32 tokens"):
        perplexity(gpt2, stream(256), 64)
    assert math.isfinite(perplexity(gpt2, stream(256), 32).ppl)


def test_windows_are_consecutive_non_overlapping_slices():
    ids = torch.arange(10)
    assert windows(ids, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_tokenize_text_gives_one_long_stream(byte_tokenizer):
    ids = tokenize_text(byte_tokenizer, "abc\n\ndef")
    assert ids.dtype == torch.long and ids.dim() == 1 and ids.numel() == 8


def test_default_model_on_default_text_is_realistic():
    """The real SmolLM2 on the first 2048 tokens of the embedded evaluation text (the paper's protocol)."""
    from proxsparse_ao.data import load_text
    from proxsparse_ao.models import load_model

    model, tokenizer = load_model()
    result = perplexity(model, tokenize_text(tokenizer, load_text()), 1024, max_tokens=2048)
    assert result.tokens == 2048
    assert 10 < result.ppl < 40


def test_a_token_limit_of_whole_windows_evaluates_exactly_those_windows(tiny_llama):
    ids = stream(640)
    capped = perplexity(tiny_llama, ids, 64, max_tokens=192)
    assert (capped.windows, capped.tokens) == (3, 192)
    assert perplexity(tiny_llama, ids, 64, max_tokens=64).windows == 1


def test_a_token_limit_one_short_of_a_window_is_named_as_the_limit(tiny_llama):
    with pytest.raises(ProxSparseError, match="max_tokens 63 is fewer than one window of 64 tokens"):
        perplexity(tiny_llama, stream(640), 64, max_tokens=63)


@pytest.mark.parametrize("seqlen", [0, 1])
def test_a_window_shorter_than_two_tokens_is_refused(seqlen):
    with pytest.raises(ProxSparseError, match=f"the window length must be at least 2 tokens, got {seqlen}"):
        windows(torch.arange(10), seqlen)


def test_a_batch_size_below_one_is_a_clear_error(tiny_llama):
    with pytest.raises(ProxSparseError, match="batch size must be at least 1, got 0"):
        perplexity(tiny_llama, stream(128), 64, batch_size=0)


def test_the_model_is_scored_in_eval_mode(tiny_llama):
    seen = []
    tiny_llama.model.layers[0].register_forward_hook(lambda module, *args: seen.append(module.training))
    tiny_llama.train()
    perplexity(tiny_llama, stream(128), 64)
    assert seen and not any(seen) and not tiny_llama.training
