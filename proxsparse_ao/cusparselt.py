"""cuSPARSELt 2:4 matmul with the plan kept per shape: out[M, N] = x[M, K] @ W[N, K].T.

torch's `_cslt_sparse_mm` (torch 2.11) builds and destroys every cuSPARSELt descriptor and the
matmul plan on each call, with the library's default algorithm: 0.5-2.3 ms per call on an H200
whatever the shape, slower than dense bf16 everywhere (benchmarks/RESULTS.md). This module calls
the library torch loaded through ctypes, keeps one plan per (device, dtype, M, N, K), searches
its fastest algorithm once, and reads the weight `torch._cslt_compress` packed: the packed layout
depends only on the sparse descriptor, built here exactly as torch builds it (rows N, cols K,
leading dimension K, row order, 16-byte alignment). The other descriptors mirror torch's
`transpose_result=True` call: B = x.T read through a transpose, D column-major [N, M], which is
x @ W.T row-major.

Set PROXSPARSE_CUSPARSELT=torch to use torch's per-call wrapper instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

ENV_VAR = "PROXSPARSE_CUSPARSELT"
MAX_PLANS = 512
SEARCH_MIN_FEATURES = 1024
"""Weights with fewer rows or columns keep the default algorithm, without a search. On an H200
the search succeeded at every shape tried from 4096 x 4096 up, and failed (INTERNAL_ERROR) on
64 x 128. Small products are bound by host time, where the algorithm hardly matters."""

_CUDA_R_16F, _CUDA_R_16BF = 2, 14  # cudaDataType
_ORDER_ROW, _ORDER_COL = 2, 1  # cusparseOrder_t
_OP_N, _OP_T = 0, 1  # cusparseOperation_t
_COMPUTE_32F = 2  # cusparseComputeType (cuSPARSELt >= 0.5.2: 32I, 16F, 32F)
_SPARSITY_50 = 0
_ALG_DEFAULT = 0
_DTYPES = {torch.float16: _CUDA_R_16F, torch.bfloat16: _CUDA_R_16BF}
_OPAQUE_BYTES = 1024  # handle/descriptor/plan structs are 512 bytes in cuSPARSELt 0.8-0.10: room to spare
_STATUS = {
    1: "NOT_INITIALIZED", 2: "ALLOC_FAILED", 3: "INVALID_VALUE", 4: "ARCH_MISMATCH", 5: "MAPPING_ERROR",
    6: "EXECUTION_FAILED", 7: "INTERNAL_ERROR", 8: "MATRIX_TYPE_NOT_SUPPORTED", 10: "NOT_SUPPORTED",
    11: "INSUFFICIENT_RESOURCES",
}


class CusparseLtError(RuntimeError):
    """A cuSPARSELt call returned an error status."""


class _Opaque:
    """One of cuSPARSELt's opaque structs: 16-byte aligned storage that never moves (plans point into descriptors)."""

    def __init__(self) -> None:
        self._buffer = ctypes.create_string_buffer(_OPAQUE_BYTES + 16)
        address = ctypes.addressof(self._buffer)
        self.ptr = ctypes.c_void_p(address + (-address) % 16)


def _check(status: int, call: str) -> None:
    if status != 0:
        raise CusparseLtError(f"cuSPARSELt {call} failed: CUSPARSE_STATUS_{_STATUS.get(status, status)}")


def library_path() -> str | None:
    """The libcusparseLt this process already loaded (torch's), so the packed layout matches torch's."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if "libcusparseLt.so" in Path(path).name:
            return path
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Argument types of the calls used here (int64_t sizes must not be passed as C ints)."""
    ptr, i64, i32, u32, enum = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32, ctypes.c_int
    signatures = {
        "cusparseLtInit": [ptr],
        "cusparseLtGetVersion": [ptr, ptr],
        "cusparseLtStructuredDescriptorInit": [ptr, ptr, i64, i64, i64, u32, enum, enum, enum],
        "cusparseLtDenseDescriptorInit": [ptr, ptr, i64, i64, i64, u32, enum, enum],
        "cusparseLtMatDescriptorDestroy": [ptr],
        "cusparseLtMatmulDescriptorInit": [ptr, ptr, enum, enum, ptr, ptr, ptr, ptr, enum],
        "cusparseLtMatmulAlgSelectionInit": [ptr, ptr, ptr, enum],
        "cusparseLtMatmulAlgSelectionDestroy": [ptr],
        "cusparseLtMatmulPlanInit": [ptr, ptr, ptr, ptr],
        "cusparseLtMatmulPlanDestroy": [ptr],
        "cusparseLtMatmulGetWorkspace": [ptr, ptr, ptr],
        "cusparseLtMatmul": [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32],
        "cusparseLtMatmulSearch": [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return lib


class _Plan:
    """Descriptors, algorithm and plan for one (dtype, M, N, K), and the workspace size it needs."""

    def __init__(self, lib: ctypes.CDLL, handle: _Opaque, dtype: int, m: int, n: int, k: int) -> None:
        self.lib, self.handle = lib, handle
        self.sparse, self.dense, self.out = _Opaque(), _Opaque(), _Opaque()
        self.matmul, self.algorithm, self.plan = _Opaque(), _Opaque(), _Opaque()
        self.search: str | None = None  # "searched", or why the search failed; None before any
        self._teardown: list = []  # what destroy() undoes, in build order: only what was built
        h = handle.ptr
        try:
            _check(lib.cusparseLtStructuredDescriptorInit(h, self.sparse.ptr, n, k, k, 16, dtype, _ORDER_ROW, _SPARSITY_50),
                   "StructuredDescriptorInit")
            self._teardown.append(lambda: lib.cusparseLtMatDescriptorDestroy(self.sparse.ptr))
            _check(lib.cusparseLtDenseDescriptorInit(h, self.dense.ptr, m, k, k, 16, dtype, _ORDER_ROW), "DenseDescriptorInit")
            self._teardown.append(lambda: lib.cusparseLtMatDescriptorDestroy(self.dense.ptr))
            _check(lib.cusparseLtDenseDescriptorInit(h, self.out.ptr, n, m, n, 16, dtype, _ORDER_COL), "DenseDescriptorInit")
            self._teardown.append(lambda: lib.cusparseLtMatDescriptorDestroy(self.out.ptr))
            _check(lib.cusparseLtMatmulDescriptorInit(h, self.matmul.ptr, _OP_N, _OP_T, self.sparse.ptr, self.dense.ptr,
                                                      self.out.ptr, self.out.ptr, _COMPUTE_32F), "MatmulDescriptorInit")
            _check(lib.cusparseLtMatmulAlgSelectionInit(h, self.algorithm.ptr, self.matmul.ptr, _ALG_DEFAULT),
                   "MatmulAlgSelectionInit")
            self._teardown.append(lambda: lib.cusparseLtMatmulAlgSelectionDestroy(self.algorithm.ptr))
            _check(lib.cusparseLtMatmulPlanInit(h, self.plan.ptr, self.matmul.ptr, self.algorithm.ptr), "MatmulPlanInit")
            self._teardown.append(lambda: lib.cusparseLtMatmulPlanDestroy(self.plan.ptr))
            self.workspace_bytes = self._workspace_bytes()
        except CusparseLtError:
            self.destroy()  # a plan that failed half-way leaks nothing it built
            raise

    def _workspace_bytes(self) -> int:
        size = ctypes.c_size_t(0)
        _check(self.lib.cusparseLtMatmulGetWorkspace(self.handle.ptr, self.plan.ptr, ctypes.byref(size)), "MatmulGetWorkspace")
        return size.value

    def _launch(self, function, packed: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> int:
        """Call cusparseLtMatmul or cusparseLtMatmulSearch on torch's current stream, with a fresh workspace."""
        workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=x.device) if self.workspace_bytes else None
        stream = ctypes.c_void_p(current_stream(x.device))
        return function(self.handle.ptr, self.plan.ptr, ctypes.byref(_ONE), ctypes.c_void_p(packed.data_ptr()),
                        ctypes.c_void_p(x.data_ptr()), ctypes.byref(_ZERO), ctypes.c_void_p(out.data_ptr()),
                        ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(0 if workspace is None else workspace.data_ptr()),
                        ctypes.byref(stream), 1)

    def run(self, packed: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        _check(self._launch(self.lib.cusparseLtMatmul, packed, x, out), "Matmul")

    def run_search(self, packed: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """Time every algorithm on these operands and keep the fastest in the plan (raises on failure)."""
        _check(self._launch(self.lib.cusparseLtMatmulSearch, packed, x, out), "MatmulSearch")
        self.workspace_bytes = self._workspace_bytes()  # the algorithm found may need another size
        self.search = "searched"

    def destroy(self) -> None:
        """Release what was built, the plan first (it points into the descriptors); a second call does nothing."""
        while self._teardown:
            self._teardown.pop()()


_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


def current_stream(device: torch.device) -> int:
    """The cudaStream_t torch is issuing work on for `device`."""
    return torch.cuda.current_stream(device).cuda_stream


def capturing() -> bool:
    """True while the current stream records a CUDA graph (no algorithm search then: it times kernels)."""
    return torch.cuda.is_current_stream_capturing()


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Context in which cuSPARSELt calls bind to `device`."""
    return torch.cuda.device(device)


def _key(device: torch.device, dtype: torch.dtype, m: int, n: int, k: int) -> tuple:
    return (device.index, dtype, m, n, k)


class CusparseLt:
    """The loaded library, a handle per device, and the plans kept per (device, dtype, M, N, K).

    With `search`, a plan's first call (outside CUDA graph capture) times every algorithm
    cuSPARSELt has for the shape and keeps the fastest: up to 2x faster than the default one on
    an H200 (benchmarks/RESULTS.md). Only weights of at least SEARCH_MIN_FEATURES rows and
    columns are searched; where the search fails the plan keeps the default algorithm.
    """

    def __init__(self, lib: ctypes.CDLL, search: bool = False) -> None:
        self.lib, self.search = lib, search
        self._handles: dict[int, _Opaque] = {}
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self._lock = threading.Lock()  # ctypes drops the GIL; cuSPARSELt handles are not thread-safe

    def handle(self, device: torch.device) -> _Opaque:
        index = device.index if device.index is not None else 0
        if index not in self._handles:
            handle = _Opaque()
            with on_device(device):
                _check(self.lib.cusparseLtInit(handle.ptr), "Init")
            self._handles[index] = handle
        return self._handles[index]

    def version(self, device: torch.device) -> int:
        value = ctypes.c_int(0)
        _check(self.lib.cusparseLtGetVersion(self.handle(device).ptr, ctypes.byref(value)), "GetVersion")
        return value.value

    def plan(self, device: torch.device, dtype: torch.dtype, m: int, n: int, k: int) -> _Plan:
        """The plan for this shape, built on first use (the least recently used is dropped past MAX_PLANS)."""
        key = _key(device, dtype, m, n, k)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        else:
            with on_device(device):
                plan = _Plan(self.lib, self.handle(device), _DTYPES[dtype], m, n, k)
            if len(self._plans) >= MAX_PLANS:
                self._plans.popitem(last=False)[1].destroy()
            self._plans[key] = plan
        return plan

    def plan_search(self, device: torch.device, dtype: torch.dtype, m: int, n: int, k: int) -> str | None:
        """How the kept plan for this shape chose its algorithm: "searched", why the search failed,
        or None (no plan yet, or not searched)."""
        plan = self._plans.get(_key(device, dtype, m, n, k))
        return None if plan is None else plan.search

    def mm(self, packed: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
        """x [M, K] (M a multiple of 8) times the packed weight [out_features, K], transposed: [M, out_features]."""
        if x.dtype not in _DTYPES:
            raise CusparseLtError(f"cuSPARSELt 2:4 matmul supports float16/bfloat16, got {x.dtype}")
        x = x.contiguous()
        if x.data_ptr() % 16:
            x = x.clone()
        m, k = x.shape
        out = torch.empty(m, out_features, dtype=x.dtype, device=x.device)
        with self._lock, on_device(x.device):
            plan = self.plan(x.device, x.dtype, m, out_features, k)
            wanted = self.search and min(out_features, k) >= SEARCH_MIN_FEATURES
            if wanted and plan.search is None and not capturing():
                try:
                    plan.run_search(packed, x, out)
                except CusparseLtError as err:  # some shapes fail it: rebuild the plan, keep the default algorithm
                    plan.destroy()
                    del self._plans[_key(x.device, x.dtype, m, out_features, k)]
                    plan = self.plan(x.device, x.dtype, m, out_features, k)
                    plan.search = f"failed ({err}); default algorithm"
            plan.run(packed, x, out)
        return out


_LOADED: list[CusparseLt | None] = []


def direct() -> CusparseLt | None:
    """The cached-plan cuSPARSELt caller, or None (no CUDA, library not loaded, or PROXSPARSE_CUSPARSELT=torch)."""
    if os.environ.get(ENV_VAR, "direct") == "torch":
        return None
    if not _LOADED:
        path = library_path() if torch.cuda.is_available() and torch.backends.cusparselt.is_available() else None
        try:
            _LOADED.append(CusparseLt(_declare(ctypes.CDLL(path)), search=True) if path else None)
        except (OSError, AttributeError):  # not loadable, or a version without these calls
            _LOADED.append(None)
    return _LOADED[0]
