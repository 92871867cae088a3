"""Shared fixtures: tiny random Llama models for plumbing tests (dims multiples of 64)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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


@pytest.fixture
def unprivileged() -> tuple[str, ...]:
    """A command prefix under which permission bits apply: none for a normal user, `unshare -U` for root."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode:
        pytest.skip("running as root without `unshare -U`: permission bits cannot be tested")
    return ("unshare", "-U")


@pytest.fixture
def open_tmp():
    """A temporary folder others may enter (pytest's own is private to its owner, out of reach under unshare -U)."""
    with tempfile.TemporaryDirectory(prefix="perm-") as name:
        root = Path(name)
        root.chmod(0o755)
        yield root
