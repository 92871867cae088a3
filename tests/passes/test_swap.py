"""The weight-swap path: SparseLinear24 modules, eager equality, dynamo and torch.export graphs."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.masks import apply_mask, magnitude_mask
from proxsparse_ao.passes import SparseLinear24, swap_linears
from proxsparse_ao.sparse_format import UnsupportedWeightError

LINEAR24 = torch.ops.proxsparse.linear24.default


def prune_(module: nn.Module, skip: tuple[str, ...] = ()) -> None:
    with torch.no_grad():
        for name, child in module.named_modules():
            if isinstance(child, nn.Linear) and name not in skip:
                child.weight.copy_(apply_mask(child.weight, magnitude_mask(child.weight)))


@pytest.fixture(scope="module")
def swapped_llama(tiny_llama_factory):
    model = tiny_llama_factory(seed=3, dtype=torch.bfloat16, layers=1)
    prune_(model, skip=("model.layers.0.mlp.up_proj",))
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    result = swap_linears(model)
    return model, ids, reference, result


def test_swap_reports_every_linear(swapped_llama):
    _, _, _, result = swapped_llama
    assert sum(v == "swapped" for v in result.values()) == 6
    assert result["lm_head"] == "excluded (matches 'lm_head')"
    assert result["model.layers.0.mlp.up_proj"].startswith("not 2:4")


def test_swapped_model_is_exact_on_cpu(swapped_llama):
    model, ids, reference, _ = swapped_llama
    assert isinstance(model.model.layers[0].self_attn.q_proj, SparseLinear24)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference)


def test_dynamo_graph_of_swapped_model_holds_the_op(swapped_llama):
    model, ids, reference, _ = swapped_llama
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        out = torch.compile(model, backend=capture, fullgraph=True)(ids)
    assert sum(node.target is LINEAR24 for node in graphs[0].graph.nodes) == 6
    assert torch.equal(out.logits, reference)


def test_torch_export_of_swapped_model_holds_the_op(swapped_llama):
    model, ids, reference, _ = swapped_llama
    program = torch.export.export(model, (ids,), kwargs={"use_cache": False})
    assert sum(node.target is LINEAR24 for node in program.graph.nodes) == 6
    assert torch.equal(program.module()(ids, use_cache=False).logits, reference)


def test_a_saved_exported_program_loads_in_a_process_that_only_imported_proxsparse_ao(swapped_llama, tmp_path):
    import subprocess
    import sys

    model, ids, reference, _ = swapped_llama
    torch.export.save(torch.export.export(model, (ids,), kwargs={"use_cache": False}), tmp_path / "model.pt2")
    torch.save({"ids": ids, "reference": reference}, tmp_path / "check.pt")
    code = (
        "import sys, torch, transformers.modeling_outputs, proxsparse_ao\n"  # transformers: the output type
        "program = torch.export.load(sys.argv[1])\n"
        "check = torch.load(sys.argv[2])\n"
        "out = program.module()(check['ids'], use_cache=False).logits\n"
        "assert torch.equal(out, check['reference'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pt2"), str(tmp_path / "check.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_from_linear_keeps_bias_and_refuses_bad_weights():
    linear = nn.Linear(128, 64).to(torch.bfloat16)
    prune_(linear)
    sparse = SparseLinear24.from_linear(linear)
    x = torch.randn(3, 128).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(sparse(x), linear(x))
    assert "in_features=128, out_features=64, bias=True" in repr(sparse)
    with pytest.raises(UnsupportedWeightError, match="dtype float32"):
        SparseLinear24.from_linear(nn.Linear(128, 64), "fp32")


def test_a_torch_compiled_model_is_swapped_through_the_model_it_wraps_with_its_own_layer_names():
    """Its layers were named "_orig_mod.0", ..., so a full-name or regex exclusion excluded nothing."""
    model = nn.Sequential(nn.Linear(128, 64).to(torch.bfloat16), nn.Linear(64, 64).to(torch.bfloat16))
    prune_(model)
    result = swap_linears(torch.compile(model), exclude=["re:1"])
    assert result == {"0": "swapped", "1": "excluded (matches 're:1')"}
    assert isinstance(model[0], SparseLinear24) and isinstance(model[1], nn.Linear)


def test_what_is_no_module_or_no_linear_is_refused():
    """They failed with AttributeError ('str' object has no attribute 'named_modules'; 'ReLU' object has no attribute 'weight')."""
    with pytest.raises(ProxSparseError, match="^swap_linears takes a torch.nn.Module, got str$"):
        swap_linears("model")
    with pytest.raises(ProxSparseError, match="^SparseLinear24.from_linear takes an nn.Linear, got ReLU$"):
        SparseLinear24.from_linear(nn.ReLU())


def test_a_bare_linear_is_reported_as_a_root_that_cannot_be_swapped_in_place():
    linear = nn.Linear(128, 64, bias=False).to(torch.bfloat16)
    prune_(linear)
    result = swap_linears(linear)
    assert list(result) == [""]
    assert result[""].startswith("the root module cannot be swapped in place: wrap it or use SparseLinear24.from_linear")


def test_a_swapped_layer_refuses_casts_the_2to4_kernels_cannot_run():
    """`swapped.float()` cast the values and left int16 metadata, then failed at the next call
    with "Number of columns of sparse matrix ... different from ..."."""
    linear = nn.Linear(128, 64).to(torch.bfloat16)
    prune_(linear)
    model = nn.Sequential(SparseLinear24.from_linear(linear))
    for cast in (lambda m: m.float(), lambda m: m.to(torch.float64), lambda m: m.type(torch.float32)):
        with pytest.raises(ProxSparseError, match="cannot be cast to torch.float(32|64): 2:4 weights are float16 or bfloat16"):
            cast(model)
    assert model[0].values.dtype == torch.bfloat16 and model[0].meta.dtype == torch.int16
    half = model.half().to("cpu")
    assert half[0].values.dtype == torch.float16 and half[0].meta.dtype == torch.int16
    x = torch.randn(3, 128).to(torch.float16)
    with torch.no_grad():
        torch.testing.assert_close(half(x), linear.half()(x))


@pytest.mark.parametrize("exclude, problem", [
    (5, "exclude must be a pattern or a list of patterns, got int"),
    (["re:("], "exclude pattern 're:(' is not a valid regular expression"),
])
def test_exclusion_patterns_that_cannot_be_used_are_refused_as_compile_refuses_them(exclude, problem):
    """They raised a bare ValueError (proxsparse_ao.compile raised ProxSparseError for the same patterns)."""
    model = nn.Sequential(nn.Linear(128, 64).to(torch.bfloat16))
    prune_(model)
    with pytest.raises(ProxSparseError, match=re.escape(problem)):
        swap_linears(model, exclude=exclude)
    assert isinstance(model[0], nn.Linear)


def test_weights_on_the_meta_device_are_refused_naming_the_layer():
    """It raised "Tensor.item() cannot be called on meta tensors" from the 2:4 pattern check."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(128, 64).to(torch.bfloat16))
    with pytest.raises(ProxSparseError, match="0: the weight is on the meta device .*load them into memory first"):
        swap_linears(model)
    assert isinstance(model[0], nn.Linear)
