"""The cached-plan cuSPARSELt caller, against a host-memory stand-in for the library (tests/support/fake_cusparselt.c).

The stand-in keeps cuSPARSELt's C signatures and computes the product from what the descriptors
say, so these tests check the ctypes glue (argument types, descriptor shapes and orders, the
transpose that turns D into x @ W.T) and the plan cache. That the real library agrees with
torch's own wrapper is checked on a GPU by `benchmarks/gpu_check.sh` (its probe).
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from proxsparse_ao import cusparselt
from proxsparse_ao.cusparselt import CusparseLt, CusparseLtError
from proxsparse_ao.masks import apply_mask, magnitude_mask

SOURCE = Path(__file__).resolve().parents[1] / "support" / "fake_cusparselt.c"


@pytest.fixture(scope="module")
def fake_library(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build the cuSPARSELt stand-in")
    path = tmp_path_factory.mktemp("fake_cusparselt") / "libfake_cusparselt.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", str(SOURCE), "-o", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def fake(fake_library, monkeypatch):
    """A fresh load of the stand-in (zeroed counters), with the CUDA stream and device calls stubbed."""
    lib = ctypes.CDLL(str(fake_library), mode=ctypes.RTLD_LOCAL)
    for counter in ("plan_inits", "plan_destroys", "matmuls", "searches", "fail_search", "fail_plan_init",
                    "mat_destroys", "alg_destroys"):
        ctypes.c_int.in_dll(lib, f"fake_{counter}").value = 0
    monkeypatch.setattr(cusparselt, "current_stream", lambda device: 0x5EED)
    monkeypatch.setattr(cusparselt, "capturing", lambda: False)
    monkeypatch.setattr(cusparselt, "on_device", lambda device: contextlib.nullcontext())
    return cusparselt._declare(lib)


def count(lib, name: str) -> int:
    return ctypes.c_int.in_dll(lib, f"fake_{name}").value


def weight_24(n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)).to(dtype)
    return apply_mask(weight, magnitude_mask(weight))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, n, k", [(8, 64, 128), (24, 192, 64)])
def test_the_product_is_x_times_the_weight_transposed(fake, dtype, m, n, k):
    weight = weight_24(n, k, dtype)
    x = torch.randn(m, k).to(dtype)
    out = CusparseLt(fake).mm(weight, x, n)
    assert out.shape == (m, n) and out.dtype == dtype
    torch.testing.assert_close(out, F.linear(x, weight), atol=2e-2, rtol=2e-2)
    assert ctypes.c_int64.in_dll(fake, "fake_last_stream").value == 0x5EED


def test_a_plan_is_built_once_per_shape_and_reused(fake):
    library = CusparseLt(fake)
    weight = weight_24(64, 128, torch.bfloat16)
    for m in (8, 8, 16, 8):
        library.mm(weight, torch.randn(m, 128).to(torch.bfloat16), 64)
    assert count(fake, "plan_inits") == 2 and count(fake, "matmuls") == 4


def test_the_least_recently_used_plan_is_destroyed_past_the_limit(fake, monkeypatch):
    monkeypatch.setattr(cusparselt, "MAX_PLANS", 2)
    library = CusparseLt(fake)
    weight = weight_24(64, 128, torch.bfloat16)
    for m in (8, 16, 8, 24):  # 8 was used after 16: 16 goes
        library.mm(weight, torch.randn(m, 128).to(torch.bfloat16), 64)
    assert count(fake, "plan_destroys") == 1 and count(fake, "plan_inits") == 3
    library.mm(weight, torch.randn(8, 128).to(torch.bfloat16), 64)  # still kept
    assert count(fake, "plan_inits") == 3
    library.mm(weight, torch.randn(16, 128).to(torch.bfloat16), 64)
    assert count(fake, "plan_inits") == 4


def test_with_search_each_plan_is_searched_once_then_run(fake, monkeypatch):
    monkeypatch.setattr(cusparselt, "SEARCH_MIN_FEATURES", 64)
    library = CusparseLt(fake, search=True)
    weight, x = weight_24(64, 128, torch.bfloat16), torch.randn(8, 128).to(torch.bfloat16)
    first, second = library.mm(weight, x, 64), library.mm(weight, x, 64)
    assert count(fake, "searches") == 1 and count(fake, "matmuls") == 3  # the search's own product, then two runs
    assert library.plan_search(x.device, x.dtype, 8, 64, 128) == "searched"
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_small_weights_keep_the_default_algorithm(fake, monkeypatch):
    monkeypatch.setattr(cusparselt, "SEARCH_MIN_FEATURES", 128)
    library = CusparseLt(fake, search=True)
    x = torch.randn(8, 128).to(torch.bfloat16)
    library.mm(weight_24(64, 128, torch.bfloat16), x, 64)  # 64 rows: below the threshold
    assert count(fake, "searches") == 0 and library.plan_search(x.device, x.dtype, 8, 64, 128) is None
    library.mm(weight_24(128, 128, torch.bfloat16), x, 128)
    assert count(fake, "searches") == 1 and library.plan_search(x.device, x.dtype, 8, 128, 128) == "searched"


def test_a_failed_search_leaves_a_fresh_plan_with_the_default_algorithm(fake, monkeypatch):
    monkeypatch.setattr(cusparselt, "SEARCH_MIN_FEATURES", 64)
    ctypes.c_int.in_dll(fake, "fake_fail_search").value = 1
    library = CusparseLt(fake, search=True)
    weight, x = weight_24(64, 128, torch.bfloat16), torch.randn(8, 128).to(torch.bfloat16)
    torch.testing.assert_close(library.mm(weight, x, 64), F.linear(x, weight), atol=2e-2, rtol=2e-2)
    status = library.plan_search(x.device, x.dtype, 8, 64, 128)
    assert status.startswith("failed (cuSPARSELt MatmulSearch failed: CUSPARSE_STATUS_INTERNAL_ERROR)")
    assert count(fake, "plan_inits") == 2 and count(fake, "plan_destroys") == 1
    library.mm(weight, x, 64)
    assert count(fake, "plan_inits") == 2  # not searched again


def test_no_search_while_a_cuda_graph_is_recorded(fake, monkeypatch):
    monkeypatch.setattr(cusparselt, "SEARCH_MIN_FEATURES", 64)
    monkeypatch.setattr(cusparselt, "capturing", lambda: True)
    library = CusparseLt(fake, search=True)
    library.mm(weight_24(64, 128, torch.bfloat16), torch.randn(8, 128).to(torch.bfloat16), 64)
    assert count(fake, "searches") == 0
    assert library.plan_search(torch.device("cpu"), torch.bfloat16, 8, 64, 128) is None


def test_a_misaligned_input_is_copied_to_an_aligned_one(fake):
    weight = weight_24(64, 128, torch.bfloat16)
    storage = torch.randn(8 * 128 + 1).to(torch.bfloat16)
    x = storage[1:].view(8, 128)  # 2 bytes past an aligned address
    assert x.data_ptr() % 16
    torch.testing.assert_close(CusparseLt(fake).mm(weight, x, 64), F.linear(x, weight), atol=2e-2, rtol=2e-2)


def test_an_error_status_names_the_call(fake):
    weight, x = weight_24(64, 128, torch.bfloat16), torch.randn(8, 128).to(torch.bfloat16)
    ctypes.c_int.in_dll(fake, "fake_fail_plan_init").value = 1
    with pytest.raises(CusparseLtError, match="MatmulPlanInit failed: CUSPARSE_STATUS_INSUFFICIENT_RESOURCES"):
        CusparseLt(fake).mm(weight, x, 64)
    with pytest.raises(CusparseLtError, match="supports float16/bfloat16"):
        CusparseLt(fake).mm(weight.float(), x.float(), 64)


def test_a_plan_that_fails_half_way_destroys_what_it_built_and_nothing_else(fake):
    weight, x = weight_24(64, 128, torch.bfloat16), torch.randn(8, 128).to(torch.bfloat16)
    ctypes.c_int.in_dll(fake, "fake_fail_plan_init").value = 1
    with pytest.raises(CusparseLtError):
        CusparseLt(fake).mm(weight, x, 64)
    assert (count(fake, "mat_destroys"), count(fake, "alg_destroys"), count(fake, "plan_destroys")) == (3, 1, 0)


def test_a_destroyed_plan_releases_everything_once(fake):
    plan = CusparseLt(fake).plan(torch.device("cuda", 0), torch.bfloat16, 8, 64, 128)
    plan.destroy()
    plan.destroy()
    assert (count(fake, "mat_destroys"), count(fake, "alg_destroys"), count(fake, "plan_destroys")) == (3, 1, 1)


def test_linear24_on_cusparselt_gpus_runs_through_the_cached_plans(fake, monkeypatch):
    """The op's CUDA kernel, on an sm90 stand-in: pads rows to 8, adds the bias, reshapes back."""
    from proxsparse_ao import ops
    from proxsparse_ao.sparse_format import compress_24

    library = CusparseLt(fake)
    monkeypatch.setattr(ops, "direct_cusparselt", lambda: library)
    monkeypatch.setattr(ops, "_DEVICE_BACKENDS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch, "_cslt_compress", lambda dense: dense.clone(), raising=False)
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    weight = weight_24(64, 128, torch.bfloat16)
    values, meta = compress_24(weight)
    x, bias = torch.randn(3, 5, 128).to(torch.bfloat16), torch.randn(64).to(torch.bfloat16)
    out = ops._linear24_cuda(x, values, meta, bias)
    assert out.shape == (3, 5, 64)
    torch.testing.assert_close(out, F.linear(x, weight, bias), atol=3e-2, rtol=3e-2)
    assert count(fake, "plan_inits") == 1 and library.plan_search(x.device, x.dtype, 16, 64, 128) is None


def test_without_cuda_or_when_told_so_the_direct_caller_is_not_used(monkeypatch):
    monkeypatch.setattr(cusparselt, "_LOADED", [])
    monkeypatch.setenv(cusparselt.ENV_VAR, "torch")
    assert cusparselt.direct() is None
    monkeypatch.delenv(cusparselt.ENV_VAR)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cusparselt.direct() is None
