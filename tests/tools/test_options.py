"""Numeric options are checked the same way in every command."""

from __future__ import annotations

import argparse

import pytest

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.tools.options import require_at_least


def test_values_at_or_above_the_minimum_and_unset_options_pass():
    require_at_least(argparse.Namespace(seqlen=2, limit=None), {"seqlen": 2, "limit": 1})


def test_the_error_names_the_flag_as_typed_and_the_value():
    with pytest.raises(ProxSparseError, match=r"^--batch-size must be at least 1, got 0$"):
        require_at_least(argparse.Namespace(batch_size=0), {"batch_size": 1})
