"""SIGTERM raised like Ctrl-C, for every command: one `Terminated` class, whichever module runs as `__main__`."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn


class Terminated(BaseException):
    """SIGTERM (`timeout`, a scheduler, `docker stop`), raised like Ctrl-C so that every cleanup
    runs: a save cut short leaves no temporary folder behind."""


def raise_terminated(signum: int, frame: FrameType | None) -> NoReturn:
    """The SIGTERM handler: raise `Terminated` where the main thread is."""
    raise Terminated


def on_sigterm(handler: signal.Handlers | Callable | int | None) -> signal.Handlers | Callable | int | None:
    """Install a SIGTERM handler (main thread only, where Python delivers signals); the previous one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)
