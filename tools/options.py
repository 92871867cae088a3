"""Checks on numeric command-line options shared by the commands: one-line errors before any work."""

from __future__ import annotations

import argparse

from proxsparse_ao.errors import ProxSparseError


def require_at_least(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Each named option must be at least its minimum; an option left unset (None) passes."""
    for name, low in minimums.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise ProxSparseError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
