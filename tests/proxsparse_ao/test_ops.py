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


def _emulated_cusparselt(monkeypatch) -> list:
    """CPU stand-ins for cuSPARSELt's compress and matmul; returns the list of compressed weights."""
    packed_weights = []

    def compress(dense):
        assert dense.shape[0] % 16 == 0 and dense.shape[1] % 16 == 0
        packed_weights.append(dense)
        return dense.clone()

    def sparse_mm(packed, dense, bias=None, transpose_result=False):
        assert dense.shape[1] % 8 == 0, "rows of x must be padded to a multiple of 8"
        out = packed @ dense if bias is None else bias[:, None] + packed @ dense
        return out.t().contiguous() if transpose_result else out

    monkeypatch.setattr(torch, "_cslt_compress", compress, raising=False)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm, raising=False)
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    return packed_weights


@pytest.mark.parametrize(
    "kernel, capability", [("mm-addmm", (8, 0)), ("linear-fallback", (8, 6)), ("cusparselt", (9, 0))]
)
@pytest.mark.parametrize("shape", [(1, 128), (3, 5, 128), (16, 128)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cuda_kernel_glue_pads_transposes_and_reshapes(monkeypatch, weight, packed, kernel, capability, shape, with_bias):
    from proxsparse_ao import ops
    from proxsparse_ao.ops import _linear24_cuda

    monkeypatch.setattr(ops, "_DEVICE_BACKENDS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    if kernel == "cusparselt":
        _emulated_cusparselt(monkeypatch)
    else:
        _emulated_cutlass(monkeypatch, use_linear=kernel == "linear-fallback")
    x = torch.randn(*shape).to(torch.bfloat16)
    bias = torch.randn(64).to(torch.bfloat16) if with_bias else None
    out = _linear24_cuda(x, packed.values, packed.meta, bias)
    assert out.shape == (*shape[:-1], 64) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), atol=2e-2, rtol=2e-2)  # bias rounds separately


def test_the_cuda_kernel_looks_up_the_gpu_generation_once_per_device(monkeypatch, packed):
    """It runs on every call of a compiled model, so the capability is read on the first call only;
    a GPU without a 2:4 matmul is named on every call."""
    from proxsparse_ao import ops

    reads = []
    monkeypatch.setattr(ops, "_DEVICE_BACKENDS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: reads.append(device) or (8, 0))
    _emulated_cutlass(monkeypatch, use_linear=False)
    x = torch.randn(4, 128).to(torch.bfloat16)
    for _ in range(3):
        ops._linear24_cuda(x, packed.values, packed.meta)
    assert len(reads) == 1
    monkeypatch.setattr(ops, "_DEVICE_BACKENDS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="linear24: no 2:4 matmul for sm75 in this torch build"):
            ops._linear24_cuda(x, packed.values, packed.meta)


def test_the_kernels_check_their_arguments_as_the_fake_does(packed):
    from proxsparse_ao.ops import _check_args, _require

    x, bad_bias = torch.randn(2, 128).to(torch.bfloat16), torch.randn(63).to(torch.bfloat16)
    for require in (torch._check, _require):
        with pytest.raises(RuntimeError, match=r"linear24: bias must be torch.bfloat16 of shape \[64\]; got torch.bfloat16 \[63\]"):
            _check_args(x, packed.values, packed.meta, bad_bias, require)
        with pytest.raises(RuntimeError, match=r"meta must be int16 \[64, 8\] for values \[64, 64\] .*; got torch.int16 \[32, 8\]"):
            _check_args(x, packed.values, packed.meta[:32], None, require)
        _check_args(x, packed.values, packed.meta, None, require)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, v, m, b: (x, v, m.to("meta"), b), "must be on one device; got cpu, cpu, meta, cpu"),
        (lambda x, v, m, b: (x, v.to("meta"), m, b), "must be on one device; got cpu, meta, cpu, cpu"),
        (lambda x, v, m, b: (x, v, m, b.to("meta")), "must be on one device; got cpu, cpu, cpu, meta"),
        (lambda x, v, m, b: (x, v, m.int(), b), r"meta must be int16 \[64, 8\] .*; got torch.int32 \[64, 8\]"),
        (lambda x, v, m, b: (x, v, m, b.float()), "bias must be torch.bfloat16 of shape \\[64\\]; got torch.float32"),
        (lambda x, v, m, b: (x[:, :64].contiguous(), v, m, b), "input has 64 features, the 2:4 weight expects 128"),
        (lambda x, v, m, b: (x.sum(), v, m, b), "the input at least 1-D"),
        (lambda x, v, m, b: (x.float(), v.float(), m, b.float()), "the 2:4 weight must be torch.float16 or torch.bfloat16, got torch.float32"),
        (lambda x, v, m, b: (x, v.t().contiguous().t(), m, b), "values and meta must be contiguous"),
        (lambda x, v, m, b: (x, v, m.t().contiguous().t(), b), "values and meta must be contiguous"),
    ],
)
def test_inputs_the_kernels_would_misread_are_refused_naming_the_problem(packed, change, message):
    """Tensors on other devices gave NaNs on CPU, not an error; other mismatches failed deep inside."""
    x, bias = torch.randn(2, 128).to(torch.bfloat16), torch.randn(64).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.proxsparse.linear24(*change(x, packed.values, packed.meta, bias))


def test_each_gpu_generation_gets_the_2to4_matmul_that_runs_on_it(monkeypatch):
    """torch's CUTLASS 2:4 kernel refuses anything but sm8x ("Supported only on GPUs with compute
    capability 8.x", seen on an H200), so sm90 and newer run cuSPARSELt."""
    from proxsparse_ao.ops import cuda_backend

    monkeypatch.setattr(torch, "_sparse_semi_structured_mm", lambda *args: None, raising=False)
    _emulated_cusparselt(monkeypatch)
    assert cuda_backend((8, 0)) == "cutlass" and cuda_backend((8, 9)) == "cutlass"
    assert cuda_backend((9, 0)) == "cusparselt" and cuda_backend((10, 0)) == "cusparselt"
    assert cuda_backend((7, 5)) is None
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: False)
    assert cuda_backend((9, 0)) is None


def test_a_weight_is_packed_for_cusparselt_once_and_again_after_an_in_place_write(monkeypatch, packed):
    from proxsparse_ao.ops import cusparselt_weight

    packed_weights = _emulated_cusparselt(monkeypatch)
    values, meta = packed.values.clone(), packed.meta.clone()
    first = cusparselt_weight(values, meta)
    assert cusparselt_weight(values, meta) is first and len(packed_weights) == 1
    torch.testing.assert_close(first, decompress_24(values, meta), rtol=0, atol=0)
    values.mul_(2)
    assert cusparselt_weight(values, meta) is not first and len(packed_weights) == 2
    cusparselt_weight(values, meta.clone())  # another meta: packed again
    assert len(packed_weights) == 3


def test_a_single_input_vector_works_as_with_f_linear(weight, packed):
    x, bias = torch.randn(128).to(torch.bfloat16), torch.randn(64).to(torch.bfloat16)
    out = torch.ops.proxsparse.linear24(x, packed.values, packed.meta, bias)
    assert out.shape == (64,) and torch.equal(out, F.linear(x, weight, bias))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v, m, b: (v, m[:, :4].contiguous(), b), r"meta must be int16 \[64, 8\] for values \[64, 64\] .*; got torch.int16 \[64, 4\]"),
        (lambda v, m, b: (v, m, b[:, None].contiguous()), r"bias must be torch.bfloat16 of shape \[64\]; got torch.bfloat16 \[64, 1\]"),
    ],
)
def test_metadata_and_bias_of_another_layout_are_refused(packed, change, message):
    """Metadata with too few columns would be read past its end; a [N, 1] bias broadcasts into a wrong result."""
    x, bias = torch.randn(64, 128).to(torch.bfloat16), torch.randn(64).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.proxsparse.linear24(x, *change(packed.values, packed.meta, bias))
