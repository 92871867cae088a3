"""The model's maximum context: token windows longer than `config.max_position_embeddings` are refused.

Past that length a model with learned position embeddings fails deep inside its forward pass,
and a rotary (RoPE) model runs on positions it was never trained on, so its loss and perplexity
mean nothing. Every place where a window length meets a model checks it here, first.
"""

from __future__ import annotations

from torch import nn

from .errors import ProxSparseError


def max_context(model: nn.Module) -> int | None:
    """The longest window the model takes, in tokens (`config.max_position_embeddings`); None when its config has none."""
    return config_max_context(getattr(model, "config", None))


def config_max_context(config: object) -> int | None:
    """`max_context` read from a model config (one loaded without the model, say)."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return None
    return limit


def check_context(model: nn.Module, length: int, name: str) -> None:
    """Refuse a window of `length` tokens longer than the model's maximum context; `name` is the
    option or field that set it (`--seqlen`, `ProxSparseConfig.seqlen`), so the message says what to change."""
    limit = max_context(model)
    if limit is not None and length > limit:
        raise ProxSparseError(
            f"{name} {length} is longer than the model's maximum context of {limit} tokens "
            f"(max_position_embeddings in its config): use at most {limit}"
        )
