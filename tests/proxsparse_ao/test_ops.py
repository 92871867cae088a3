"""The proxsparse::linear24 custom op on CPU: exact reference kernel, fake impl, opcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from proxsparse_ao.masks import apply_mask, magnitude_mask
from proxsparse_ao.ops import linear24
from proxsparse_ao.sparse_format import compress_24, decompress_24


@pytest.fixture(scope="module")
def weight():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    return apply_mask(w, magnitude_mask(w))


@pytest.fixture(scope="module")
def packed(weight):
    return compress_24(weight)


@pytest.mark.parametrize("shape", [(5, 128), (2, 3, 128), (1, 128)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cpu_kernel_equals_dense_linear_exactly(weight, packed, shape, with_bias):
    x = torch.randn(*shape).to(torch.bfloat16)
    bias = torch.randn(64).to(torch.bfloat16) if with_bias else None
    out = torch.ops.proxsparse.linear24(x, packed.values, packed.meta, bias)
    assert out.shape == (*shape[:-1], 64)
    assert torch.equal(out, F.linear(x, weight, bias))


def test_python_entry_point_is_the_registered_op(packed):
    x = torch.randn(3, 128).to(torch.bfloat16)
    assert torch.equal(linear24(x, packed.values, packed.meta), torch.ops.proxsparse.linear24.default(x, *packed, None))


@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck(packed, with_bias):
    x = torch.randn(2, 4, 128).to(torch.bfloat16)
    bias = torch.randn(64).to(torch.bfloat16) if with_bias else None
    torch.library.opcheck(torch.ops.proxsparse.linear24.default, (x, packed.values, packed.meta, bias))


def test_fake_impl_gives_output_shape_without_computing(packed):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        x = torch.empty(7, 3, 128, dtype=torch.bfloat16)
        values, meta = mode.from_tensor(packed.values), mode.from_tensor(packed.meta)
        out = torch.ops.proxsparse.linear24(x, values, meta)
    assert out.shape == (7, 3, 64) and out.dtype == torch.bfloat16


def test_mismatched_input_features_raise(packed):
    with pytest.raises(RuntimeError, match="input has 64 features, the 2:4 weight expects 128"):
        torch.ops.proxsparse.linear24(torch.randn(2, 64).to(torch.bfloat16), packed.values, packed.meta)
    with pytest.raises(RuntimeError, match="input is torch.float32"):
        torch.ops.proxsparse.linear24(torch.randn(2, 128), packed.values, packed.meta)


def _emulated_cutlass(monkeypatch, use_linear: bool):
    """CPU stand-ins for torch's CUDA-only CUTLASS 2:4 ops, checking the shapes the CUDA glue feeds them."""

    def mm(values, meta, mat2):
        assert mat2.shape[1] % 8 == 0, "rows of x must be padded to a multiple of 8"
        return decompress_24(values, meta) @ mat2

    def addmm(bias, values, meta, mat2):
        return bias[:, None] + mm(values, meta, mat2)

    def linear(x, values, meta, bias=None):
        assert x.dim() == 2 and x.shape[0] % 8 == 0
        out = mm(values, meta, x.t())
        return (out if bias is None else out + bias[:, None]).t()

    if use_linear:
        monkeypatch.delattr(torch, "_sparse_semi_structured_mm", raising=False)
        monkeypatch.setattr(torch, "_sparse_semi_structured_linear", linear, raising=False)
    else:
        monkeypatch.setattr(torch, "_sparse_semi_structured_mm", mm, raising=False)
        monkeypatch.setattr(torch, "_sparse_semi_structured_addmm", addmm, raising=False)


@pytest.mark.parametrize("use_linear", [False, True], ids=["mm-addmm", "linear-fallback"])
@pytest.mark.parametrize("shape", [(1, 128), (3, 5, 128), (16, 128)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cuda_kernel_glue_pads_transposes_and_reshapes(monkeypatch, weight, packed, use_linear, shape, with_bias):
    from proxsparse_ao.ops import _linear24_cuda

    _emulated_cutlass(monkeypatch, use_linear)
    x = torch.randn(*shape).to(torch.bfloat16)
    bias = torch.randn(64).to(torch.bfloat16) if with_bias else None
    out = _linear24_cuda(x, packed.values, packed.meta, bias)
    assert out.shape == (*shape[:-1], 64) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), atol=2e-2, rtol=2e-2)  # bias rounds separately
