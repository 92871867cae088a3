"""Silence the libraries' chatter for a command-line entry point (never called by the library itself)."""

from __future__ import annotations

import logging
import os

NOISY_LOGGERS = (
    "torchao", "transformers", "datasets", "lm_eval", "accelerate", "huggingface_hub",
    "torch._dynamo", "torch._inductor", "torch.utils._pytree", "torch.utils.cpp_extension",
)


def quiet_libraries() -> None:
    """torchao's CUDA-extension load failures on CPU, torch's pytree deprecation notes, a CUDA build's
    "No CUDA runtime is found" on a machine without one, HF warnings.
    Call it before the libraries are imported: torchao logs its failures at import time."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
