"""`proxsparse::linear24(x, values, meta, bias)`: y = x @ W.T + bias for a CUTLASS-compressed 2:4 W.

Owning the op keeps compiled graphs, exports and tests independent of torch-private op names.
CUDA runs torch's CUTLASS semi-structured matmul on sm8x and cuSPARSELt on newer GPUs, where
torch's CUTLASS kernel refuses to run (sm90: "Supported only on GPUs with compute capability
8.x"); cuSPARSELt is called with plans kept per shape (`cusparselt.py`) where that loads, else
through torch's wrapper. Every other device runs a reference kernel (decompress, then dense
`F.linear`): exact, but slower than dense, so it exists for correctness, tests and export.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from .cusparselt import direct as direct_cusparselt
from .sparse_format import SPARSE_DTYPES, decompress_24

OP_NAME = "proxsparse::linear24"
CUTLASS_M_MULTIPLE = 8


def _check_args(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    require: Callable[[bool, Callable[[], str]], None] = torch._check,
) -> None:
    require(x.dim() >= 1 and values.dim() == 2 and meta.dim() == 2, lambda: "linear24: values and meta must be 2-D, the input at least 1-D")
    require(
        values.device == x.device and meta.device == x.device and (bias is None or bias.device == x.device),
        lambda: f"linear24: input, values, meta and bias must be on one device; got {x.device}, {values.device}, "
        f"{meta.device}, {None if bias is None else bias.device}",
    )
    require(
        values.dtype in SPARSE_DTYPES,
        lambda: f"linear24: the 2:4 weight must be torch.float16 or torch.bfloat16, got {values.dtype} "
        "(a SparseLinear24 cannot be cast to other dtypes)",
    )
    require(
        values.is_contiguous() and meta.is_contiguous(),
        lambda: "linear24: values and meta must be contiguous, as compress_24 makes them",
    )
    require(
        x.shape[-1] == 2 * values.shape[1],
        lambda: f"linear24: input has {x.shape[-1]} features, the 2:4 weight expects {2 * values.shape[1]}",
    )
    require(x.dtype == values.dtype, lambda: f"linear24: input is {x.dtype}, weight is {values.dtype}")
    require(
        meta.dtype == torch.int16 and meta.shape[0] == values.shape[0] and 8 * meta.shape[1] == values.shape[1],
        lambda: f"linear24: meta must be int16 [{values.shape[0]}, {values.shape[1] // 8}] for values "
        f"{list(values.shape)} (compress_24's layout); got {meta.dtype} {list(meta.shape)}",
    )
    if bias is not None:
        require(
            bias.dim() == 1 and bias.shape[0] == values.shape[0] and bias.dtype == x.dtype,
            lambda: f"linear24: bias must be {x.dtype} of shape [{values.shape[0]}]; got {bias.dtype} {list(bias.shape)}",
        )


def _require(condition: bool, message: Callable[[], str]) -> None:
    """torch._check for concrete shapes at a fraction of its cost (0.2 against 1-1.7 us a check
    here): the kernels run it on every call, the fake keeps torch._check for symbolic shapes."""
    if not condition:
        raise RuntimeError(message())


def cuda_kernel_available() -> bool:
    """True when this torch build has a 2:4 matmul the CUDA kernel can call (CUTLASS or cuSPARSELt)."""
    return _has_cutlass() or _has_cusparselt()


def _has_cutlass() -> bool:
    return hasattr(torch, "_sparse_semi_structured_mm") or hasattr(torch, "_sparse_semi_structured_linear")


def _has_cusparselt() -> bool:
    return hasattr(torch, "_cslt_sparse_mm") and torch.backends.cusparselt.is_available()


def cuda_backend(capability: tuple[int, int]) -> str | None:
    """The 2:4 matmul the CUDA kernel runs on a GPU of this compute capability: "cutlass" on sm8x,
    "cusparselt" on sm90 and newer (torch's CUTLASS kernel runs on sm8x only), or None."""
    major = capability[0]
    if major == 8 and _has_cutlass():
        return "cutlass"
    if major >= 8 and _has_cusparselt():
        return "cusparselt"
    return None


_DEVICE_BACKENDS: dict[int | None, str | None] = {}


def _device_backend(device: torch.device) -> str:
    """`cuda_backend` of the GPU `device` names, looked up once per device: the kernel runs on every call."""
    if device.index not in _DEVICE_BACKENDS:
        _DEVICE_BACKENDS[device.index] = cuda_backend(torch.cuda.get_device_capability(device))
    backend = _DEVICE_BACKENDS[device.index]
    if backend is None:
        major, minor = torch.cuda.get_device_capability(device)
        raise RuntimeError(f"linear24: no 2:4 matmul for sm{major}{minor} in this torch build")
    return backend


_CUSPARSELT_WEIGHTS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place write counter (-1 for an inference tensor, which keeps none)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def cusparselt_weight(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """W in cuSPARSELt's packed layout, made from the CUTLASS pair on first use and kept while
    `values` lives (a deployed weight is the same tensor at every call); made again if either
    tensor was written in place since."""
    stamp = (_version(values), _version(meta))
    entry = _CUSPARSELT_WEIGHTS.get(values)
    if entry is None or entry[0] is not meta or entry[1] != stamp:
        entry = (meta, stamp, torch._cslt_compress(decompress_24(values, meta)))
        _CUSPARSELT_WEIGHTS[values] = entry
    return entry[2]


@torch.library.custom_op(OP_NAME, mutates_args=())
def linear24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference kernel (any device without a dedicated one): decompress, then dense linear."""
    _check_args(x, values, meta, bias, _require)
    return F.linear(x, decompress_24(values, meta), bias)


@linear24.register_kernel("cuda")
def _linear24_cuda(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """out^T = W @ x^T with W the sparse operand (CUTLASS or cuSPARSELt, see `cuda_backend`);
    rows of x padded to a multiple of 8."""
    _check_args(x, values, meta, bias, _require)
    out_features, in_features = values.shape[0], 2 * values.shape[1]
    x2 = x.reshape(-1, in_features).contiguous()
    rows = x2.shape[0]
    pad = (-rows) % CUTLASS_M_MULTIPLE
    if pad:
        x2 = F.pad(x2, (0, 0, 0, pad))
    if _device_backend(x.device) == "cusparselt":
        library = direct_cusparselt()
        if library is None:
            out = torch._cslt_sparse_mm(cusparselt_weight(values, meta), x2.t(), bias=bias, transpose_result=True)[:rows]
        else:
            out = library.mm(cusparselt_weight(values, meta), x2, out_features)[:rows]
            if bias is not None:
                out = out + bias
    elif hasattr(torch, "_sparse_semi_structured_mm"):
        if bias is None:
            out_t = torch._sparse_semi_structured_mm(values, meta, x2.t())
        else:
            out_t = torch._sparse_semi_structured_addmm(bias, values, meta, x2.t())
        out = out_t[:, :rows].t()
    else:
        out = torch._sparse_semi_structured_linear(x2, values, meta, bias=bias)[:rows]
    return out.contiguous().reshape(*x.shape[:-1], out_features)


@linear24.register_fake
def _linear24_fake(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    _check_args(x, values, meta, bias)
    return x.new_empty((*x.shape[:-1], values.shape[0]))


LINEAR24 = torch.ops.proxsparse.linear24.default
"""The op overload as it appears in FX graphs and generated code."""
