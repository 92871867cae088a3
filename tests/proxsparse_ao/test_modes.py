"""Each module's train/eval mode, saved and put back one by one."""

from __future__ import annotations

from torch import nn

from proxsparse_ao.modes import restore_train_modes, train_modes


def test_mixed_modes_come_back_module_by_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Dropout(), nn.Linear(4, 4)))
    model.train()
    model[1].eval()
    before = [module.training for module in model.modules()]
    modes = train_modes(model)
    model.eval()
    restore_train_modes(model, modes)
    assert [module.training for module in model.modules()] == before == [True, True, False, False, False]
