"""Weight swap before compile: nn.Linear layers with 2:4 weights become SparseLinear24 modules.

The simpler path next to the graph pass: no freezing needed, works eagerly, under any
torch.compile backend and in torch.export, and ends in the same `proxsparse::linear24` op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from proxsparse_ao.errors import ProxSparseError, meta_weight_message
from proxsparse_ao.ops import linear24
from proxsparse_ao.sparse_format import SPARSE_DTYPES, compress_24

from .select import DEFAULT_EXCLUDE, linear_status


class SparseLinear24(nn.Module):
    """A linear layer holding its weight compressed (CUTLASS 2:4 values and metadata)."""

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features = values.shape[0]
        self.in_features = 2 * values.shape[1]
        self.register_buffer("values", values)
        self.register_buffer("meta", meta)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str = "weight") -> SparseLinear24:
        """Compress `linear`'s exactly-2:4 weight (raises with `name` when it is not 2:4 or unsupported)."""
        if not isinstance(linear, nn.Linear):
            raise ProxSparseError(f"SparseLinear24.from_linear takes an nn.Linear, got {type(linear).__name__}")
        values, meta = compress_24(linear.weight, name)
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(values, meta, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear24(x, self.values, self.meta, self.bias)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> SparseLinear24:
        """`.to()`, `.float()`, `.cuda()` and the like; a cast to a dtype the 2:4 kernels cannot run
        (anything but float16/bfloat16) is refused before this layer's tensors change (a model cast
        as a whole has cast the modules visited before this one by then)."""
        dtype = fn(torch.empty(0, dtype=self.values.dtype, device=self.values.device)).dtype
        if dtype not in SPARSE_DTYPES:
            raise ProxSparseError(
                f"SparseLinear24 cannot be cast to {dtype}: 2:4 weights are float16 or bfloat16 "
                "(cast the dense model before swap_linears, or keep the swapped model in float16/bfloat16)"
            )
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, 2:4"


def swap_linears(model: nn.Module, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> dict[str, str]:
    """Replace, in place, every eligible nn.Linear by a SparseLinear24.

    Returns every linear's name with "swapped" or the reason it was kept dense
    (excluded, dtype, shape, not 2:4). Exclusion patterns that are not strings or valid
    regexes, and weights on the meta device (whose values cannot be read), are a ProxSparseError.
    A `torch.compile`d model is swapped through the model it wraps, its layers named as that model names them.
    """
    if not isinstance(model, nn.Module):
        raise ProxSparseError(f"swap_linears takes a torch.nn.Module, got {type(model).__name__}")
    from torch._dynamo.eval_frame import OptimizedModule

    while isinstance(model, OptimizedModule):  # what targets.eager_model does; passes/ keeps to the op and format core
        model = model._orig_mod
    meta = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module.weight.is_meta]
    if meta:
        raise ProxSparseError(meta_weight_message(meta[0], "swapping compresses the weights, so load them into memory first"))
    try:
        status = linear_status(model, exclude)
    except ValueError as err:
        raise ProxSparseError(str(err)) from None
    result: dict[str, str] = {}
    for name, reason in status.items():
        if reason is None and not name:
            reason = "the root module cannot be swapped in place: wrap it or use SparseLinear24.from_linear"
        if reason is not None:
            result[name] = reason
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, SparseLinear24.from_linear(getattr(parent, child), f"{name}.weight"))
        result[name] = "swapped"
    return result
