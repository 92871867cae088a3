"""The train/eval mode of every module of a model, saved and put back module by module.

`model.train(flag)` sets every submodule alike, so restoring only the top-level flag turns a model
whose modules were in mixed modes (a block kept in eval inside a model in training) into one of a
single mode. Learning and calibration switch modes; they put each module's own back with these.
"""

from __future__ import annotations

from torch import nn


def train_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """Each module's `training` flag, the model's own first."""
    return {module: module.training for module in model.modules()}


def restore_train_modes(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    """Put back what `train_modes` saved: `model.train(...)` with the model's own flag (so a module that
    overrides `train` sees it), then each module whose flag differs from it."""
    model.train(modes.get(model, model.training))
    for module, training in modes.items():
        if module.training != training:
            module.training = training
