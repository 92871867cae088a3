"""The library's warnings name the caller's line, however deep its own calls go, in any installed layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import proxsparse_ao
from proxsparse_ao import ProxSparseConfig, sparsify_
from proxsparse_ao.api import learn
from proxsparse_ao.targets import select_targets
from proxsparse_ao.tools.library_warnings import is_ours
from proxsparse_ao.training import NonFiniteLossWarning


def _next_line() -> int:
    return sys._getframe(1).f_lineno + 1


def _tokens(n: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, 16), generator=torch.Generator().manual_seed(0))


def _with_odd_layer() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 8))  # in_features 6: skipped, with a warning


def test_a_warning_from_one_call_deep_names_the_callers_line():
    with pytest.warns(UserWarning, match="skipping 1 layer") as caught:
        line = _next_line()
        select_targets(_with_odd_layer(), ["Linear"])
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_a_warning_from_several_calls_deep_names_the_callers_line_too(tiny_llama):
    """sparsify_ -> learn -> select_targets -> the warning: still the line that called sparsify_."""
    tiny_llama.model.layers[0].mlp.odd = nn.Linear(6, 8)
    with pytest.warns(UserWarning, match=r"skipping 1 layer.*odd") as caught:
        line = _next_line()
        sparsify_(tiny_llama, ProxSparseConfig(samples=2, seqlen=16, batch_size=2), calibration=_tokens())
    assert [(w.filename, w.lineno) for w in caught if "skipping" in str(w.message)] == [(__file__, line)]


def test_a_learning_stop_and_a_short_calibration_text_name_the_line_that_called_learn(tiny_llama, byte_tokenizer, tmp_path):
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += module.training
        return output * float("nan") if calls["n"] == 2 else output

    handle = tiny_llama.model.norm.register_forward_hook(poison)
    try:
        with pytest.warns(NonFiniteLossWarning, match="non-finite loss") as stopped:
            line = _next_line()
            learn(tiny_llama, ProxSparseConfig(samples=4, seqlen=16, batch_size=1), calibration=_tokens(4))
    finally:
        handle.remove()
    assert [(w.filename, w.lineno) for w in stopped if w.category is NonFiniteLossWarning] == [(__file__, line)]

    text = tmp_path / "short.txt"
    text.write_text("x" * 40)
    config = ProxSparseConfig(samples=4, seqlen=16, batch_size=4, calibration=str(text), calibration_mode="windows")
    with pytest.warns(UserWarning, match="the calibration text has 41 tokens, fewer than the 4 x 16") as short:
        line = _next_line()
        learn(tiny_llama, config, tokenizer=byte_tokenizer)
    assert [(w.filename, w.lineno) for w in short if "calibration text" in str(w.message)] == [(__file__, line)]


def _run_as(module: str, filename: str) -> list:
    """Select targets from code that Python takes for `module`, compiled as `filename`; the warnings caught."""
    code = compile("select_targets(_with_odd_layer(), ['Linear'])", filename, "exec")
    with pytest.warns(UserWarning, match="skipping 1 layer") as caught:
        exec(code, {"__name__": module, "select_targets": select_targets, "_with_odd_layer": _with_odd_layer})
    return list(caught)


def test_the_commands_are_callers_even_installed_inside_the_package_and_show_the_warning():
    """A wheel puts tools/ at proxsparse_ao/tools/: the CLI's frames are still the caller's, and its
    filter (`is_ours`) shows what is attributed to them."""
    inside = str(Path(proxsparse_ao.__file__).parent / "tools" / "prune.py")
    (caught,) = _run_as("proxsparse_ao.tools.prune", inside)
    assert caught.filename == inside and is_ours(caught)


def test_library_frames_are_passed_over_wherever_their_files_are():
    caught = _run_as("proxsparse_ao.anything", "/elsewhere/module.py")
    assert caught[0].filename == __file__
