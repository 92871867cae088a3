"""torchao, imported without the log lines its import prints about kernels this package never calls.

On a machine without torchao's CUDA extensions (any CPU machine, or a CUDA build they were not
compiled for) importing torchao logs one "Failed to load ..." line per extension, and torch
logs a deprecation about an Enum torchao registers. The config and handler registry used here
need none of those kernels (the 2:4 kernels are torch's own), so the lines are silenced for this
one import; the loggers' levels are put back afterwards, so the user's own torchao use logs as usual.
"""

from __future__ import annotations

import logging

_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")

_levels = {name: logging.getLogger(name).level for name in _IMPORT_LOGGERS}
try:
    for _name in _IMPORT_LOGGERS:
        logging.getLogger(_name).setLevel(logging.ERROR)
    from torchao.core.config import AOBaseConfig
    from torchao.quantization import quantize_
    from torchao.quantization.transform_module import register_quantize_module_handler
finally:
    for _name, _level in _levels.items():
        logging.getLogger(_name).setLevel(_level)

__all__ = ["AOBaseConfig", "quantize_", "register_quantize_module_handler"]
