"""`proxsparse::linear24(x, values, meta, bias)`: y = x @ W.T + bias for a CUTLASS-compressed 2:4 W.

Owning the op keeps compiled graphs, exports and tests independent of torch-private op names.
CUDA runs torch's CUTLASS semi-structured matmul. Every other device runs a reference
kernel (decompress, then dense `F.linear`): exact, but slower than dense, so it exists for
correctness, tests and export, not for speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sparse_format import decompress_24

OP_NAME = "proxsparse::linear24"
CUTLASS_M_MULTIPLE = 8


def _check_args(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None) -> None:
    torch._check(values.dim() == 2 and meta.dim() == 2, lambda: "linear24: values and meta must be 2-D")
    torch._check(
        x.shape[-1] == 2 * values.shape[1],
        lambda: f"linear24: input has {x.shape[-1]} features, the 2:4 weight expects {2 * values.shape[1]}",
    )
    torch._check(x.dtype == values.dtype, lambda: f"linear24: input is {x.dtype}, weight is {values.dtype}")
    torch._check(meta.shape[0] == values.shape[0], lambda: "linear24: meta and values have different row counts")
    if bias is not None:
        torch._check(
            bias.dim() == 1 and bias.shape[0] == values.shape[0],
            lambda: f"linear24: bias must have shape [{values.shape[0]}]",
        )


def cuda_kernel_available() -> bool:
    """True when this torch build has a CUTLASS 2:4 matmul the CUDA kernel can call."""
    return hasattr(torch, "_sparse_semi_structured_mm") or hasattr(torch, "_sparse_semi_structured_linear")


@torch.library.custom_op(OP_NAME, mutates_args=())
def linear24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference kernel (any device without a dedicated one): decompress, then dense linear."""
    _check_args(x, values, meta, bias)
    return F.linear(x, decompress_24(values, meta), bias)


@linear24.register_kernel("cuda")
def _linear24_cuda(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """CUTLASS kernel: out^T = W @ x^T with W the sparse operand; rows of x padded to a multiple of 8."""
    _check_args(x, values, meta, bias)
    out_features, in_features = values.shape[0], 2 * values.shape[1]
    x2 = x.reshape(-1, in_features).contiguous()
    rows = x2.shape[0]
    pad = (-rows) % CUTLASS_M_MULTIPLE
    if pad:
        x2 = F.pad(x2, (0, 0, 0, pad))
    if hasattr(torch, "_sparse_semi_structured_mm"):
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
