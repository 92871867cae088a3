"""Shared fixtures: tiny random Llama models for plumbing tests (dims multiples of 64)."""

from __future__ import annotations

import os

import pytest
from tiny_models import make_byte_tokenizer, make_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_llama_factory():
    """make_tiny_llama itself, for tests that need several models or another dtype."""
    return make_tiny_llama


@pytest.fixture
def byte_tokenizer():
    return make_byte_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A local HF folder (safetensors + tokenizer) holding the tiny Llama and the byte tokenizer."""
    folder = tmp_path / "tiny-llama"
    make_tiny_llama().save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    return folder
