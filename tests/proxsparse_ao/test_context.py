"""The model's maximum context: windows up to `config.max_position_embeddings` pass, longer ones are refused."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from torch import nn

from proxsparse_ao.context import check_context, max_context
from proxsparse_ao.errors import ProxSparseError


def test_the_maximum_context_is_max_position_embeddings_of_the_config(tiny_llama):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert max_context(tiny_llama) == tiny_llama.config.max_position_embeddings == 256
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=64, n_layer=1, n_head=2, n_positions=32))
    assert max_context(gpt2) == 32  # GPT-2 calls it n_positions; transformers maps the name


def test_a_window_up_to_the_maximum_context_passes_and_a_longer_one_is_refused(tiny_llama):
    check_context(tiny_llama, 256, "--seqlen")
    message = ("--seqlen 257 is longer than the model's maximum context of 256 tokens "
               "(max_position_embeddings in its config): use at most 256")
    with pytest.raises(ProxSparseError, match=f"^{re.escape(message)}$"):
        check_context(tiny_llama, 257, "--seqlen")


@pytest.mark.parametrize(
    "model",
    [
        nn.Linear(2, 2),
        SimpleNamespace(config=SimpleNamespace()),
        SimpleNamespace(config=SimpleNamespace(max_position_embeddings=None)),
    ],
    ids=["no config", "no max_position_embeddings", "max_position_embeddings None"],
)
def test_a_model_that_states_no_maximum_context_is_not_checked(model):
    assert max_context(model) is None
    check_context(model, 10**9, "seqlen")
