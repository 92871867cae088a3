"""Inductor post-grad pass: matmuls with a constant exactly-2:4 weight become `proxsparse::linear24`.

Inductor lowers `F.linear(x, W, b)` to `mm(x, W^T)` or `addmm(b, x, W^T)`. With freezing on
(`torch._inductor.config.freezing`, under `torch.no_grad()`) W^T is a constant `get_attr`
(freezing often folds the transpose into it), so its values can be read here. A weight that
is exactly 2:4 in a supported dtype/shape, and that `decide` accepts, is compressed and the
matmul is replaced by `linear24(x, values, meta, bias)`; the dense constant becomes dead.
Freezing hands every graph its own view of a model parameter, so one pass instance (one
compile) keeps the compressed pair per parameter and its graphs share it, rather than each
graph (prefill, decode steps, recompiles) holding a copy of its own. A weight Inductor
concatenated (below) is a new tensor in every graph, so each graph compresses its own.

On CUDA, freezing first concatenates the weights of matmuls sharing an input (q/k/v,
gate/up) into one constant; that constant is 2:4 when its parts are, and `resolve` names
the parts so decisions and records stay per layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sympy
import torch
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.utils.weak import WeakTensorKeyDictionary

from proxsparse_ao.ops import LINEAR24
from proxsparse_ao.sparse_format import Compressed24, compress_24, unsupported_reason

MRange = tuple[int, "int | None"]
Decide = Callable[[list[str], torch.Tensor, MRange], tuple[bool, str]]
Resolve = Callable[[torch.Tensor], "list[tuple[str, int]] | None"]

_ATEN = torch.ops.aten
_TRANSPOSES = {_ATEN.t.default, _ATEN.permute.default, _ATEN.transpose.int}


@dataclass(frozen=True)
class PassRecord:
    """One layer's part of a matmul on a constant weight the pass looked at, and what it did.

    `group` names every layer whose weight is in that constant (one unless Inductor fused them).
    """

    name: str
    shape: tuple[int, int]
    m_range: MRange
    rewritten: bool
    reason: str
    group: tuple[str, ...] = ()


def always(names: list[str], weight: torch.Tensor, m_range: MRange) -> tuple[bool, str]:
    """The default decision: rewrite every weight the kernels can take."""
    return True, "rewritten"


@contextlib.contextmanager
def _real_tensors() -> Iterator[None]:
    """Run real (not fake) tensor code inside a compile, where a fake mode may be active."""
    unset = getattr(torch._subclasses.fake_tensor, "unset_fake_temporarily", None)
    with unset() if unset is not None else contextlib.nullcontext():
        yield


def _is_transpose(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _TRANSPOSES:
        return False
    if node.target is _ATEN.permute.default:
        return list(node.args[1]) == [1, 0]
    if node.target is _ATEN.transpose.int:
        return sorted(int(d) % 2 for d in node.args[1:3]) == [0, 1]
    return True


def _constant_weight(gm: torch.fx.GraphModule, mat2: torch.fx.Node) -> tuple[str, torch.Tensor] | None:
    """(attribute name, W [out, in]) when `mat2` (= W^T) is a constant reached through transposes."""
    flips, node = 0, mat2
    while _is_transpose(node):
        flips, node = flips + 1, node.args[0]
    if node.op != "get_attr":
        return None
    value = getattr(gm, node.target, None)
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        return None
    return node.target, value if flips % 2 else value.t()


def _m_range(x: torch.fx.Node) -> MRange | None:
    """The bounds of the matmul's row count: exact when static, the symbol's range when dynamic."""
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 2:
        return None
    rows = val.shape[0]
    if isinstance(rows, int):
        return rows, rows
    bounds = rows.node.shape_env.bound_sympy(rows.node.expr)
    lower = int(bounds.lower) if isinstance(bounds.lower, sympy.Integer) else 0
    upper = int(bounds.upper) if isinstance(bounds.upper, sympy.Integer) else None
    return lower, upper


def _match(node: torch.fx.Node) -> tuple[torch.fx.Node | None, torch.fx.Node, torch.fx.Node] | None:
    """(bias, x, mat2) of a plain mm/addmm node, else None."""
    if node.op != "call_function":
        return None
    if node.target is _ATEN.mm.default:
        return None, node.args[0], node.args[1]
    if node.target is _ATEN.addmm.default and node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1:
        bias = node.args[0]
        bias_val = bias.meta.get("val") if isinstance(bias, torch.fx.Node) else None
        if isinstance(bias_val, torch.Tensor) and bias_val.dim() == 1:
            return bias, node.args[1], node.args[2]
    return None


class Sparse24Pass(CustomGraphPass):
    """Post-grad pass rewriting mm/addmm with a constant 2:4 weight into `proxsparse::linear24`.

    `decide(names, weight, m_range)` makes the final call for a weight the kernels can take
    (e.g. keep it dense where sparse is slower); `resolve(weight)` names the layers whose
    weights make up a constant, as (name, rows) in row order, or None when it does not know
    it (the constant's attribute name is used then). Each compiled graph appends its list
    of records to `records`.
    """

    def __init__(self, decide: Decide = always, resolve: Resolve | None = None) -> None:
        self.decide = decide
        self.resolve = resolve
        self.records: list[list[PassRecord]] = []
        self._compressed: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def uuid(self) -> None:
        """None: Inductor then skips its FX graph cache for graphs compiled with this pass.

        Under freezing that cache keys constants by metadata only, while this pass's output
        (whether to rewrite, and the compressed constants it embeds) depends on their values:
        a cache hit could reuse another model's compressed weights.
        """
        return None

    def __call__(self, graph: torch.fx.Graph) -> None:
        gm = graph.owning_module
        records: list[PassRecord] = []
        compressed: dict[str, tuple[str, str]] = {}
        with _real_tensors():
            for node in list(graph.nodes):
                match = _match(node)
                if match is None:
                    continue
                bias, x, mat2 = match
                found = _constant_weight(gm, mat2) if isinstance(mat2, torch.fx.Node) else None
                m_range = _m_range(x) if isinstance(x, torch.fx.Node) else None
                if found is None or m_range is None:
                    continue
                target, weight = found
                parts = (self.resolve(weight) if self.resolve is not None else None) or [(target, weight.shape[0])]
                names = [name for name, _ in parts]
                rewrite, reasons = self._decide(parts, weight, m_range, x)
                if rewrite:
                    if target not in compressed:
                        pair = self._compress(weight, "+".join(names))
                        compressed[target] = self._install(gm, pair, len(compressed))
                    self._replace(graph, node, x, bias, compressed[target])
                records += [
                    PassRecord(name, (int(rows), int(weight.shape[1])), m_range, rewrite, reason, tuple(names))
                    for (name, rows), reason in zip(parts, reasons)
                ]
        if any(r.rewritten for r in records):
            graph.eliminate_dead_code()
            graph.lint()
        self.records.append(records)

    def _decide(
        self, parts: list[tuple[str, int]], weight: torch.Tensor, m_range: MRange, x: torch.fx.Node
    ) -> tuple[bool, list[str]]:
        """(rewrite, one reason per part); a fused weight that cannot run names the part at fault."""
        reason = unsupported_reason(weight)
        if reason is not None and len(parts) > 1:
            own = [unsupported_reason(rows) for rows in weight.split([n for _, n in parts])]
            culprits = [f"{name} ({why})" for (name, _), why in zip(parts, own) if why is not None]
            shared = f"fused by Inductor with {', '.join(culprits)}" if culprits else f"fused weight: {reason}"
            return False, [why or shared for why in own]
        if reason is None and x.meta["val"].dtype != weight.dtype:
            reason = f"input dtype {x.meta['val'].dtype} differs from weight dtype {weight.dtype}"
        if reason is None:
            rewrite, reason = self.decide([name for name, _ in parts], weight, m_range)
            return rewrite, [reason] * len(parts)
        return False, [reason] * len(parts)

    def _compress(self, weight: torch.Tensor, name: str) -> Compressed24:
        """`compress_24(weight)`, made once per weight and compile: kept by the tensor the weight
        is a view of (the model's parameter under freezing, weakly held) and its place in it,
        and made again after an in-place write (version counter) or a new `.data`."""
        root = weight if weight._base is None else weight._base
        try:
            version = weight._version
        except RuntimeError:  # an inference tensor keeps no version counter: compress every time
            return compress_24(weight, name)
        key = (weight.storage_offset(), tuple(weight.shape), tuple(weight.stride()), weight.dtype)
        stamp = (version, weight.data_ptr())
        known = self._compressed.setdefault(root, {})
        entry = known.get(key)
        if entry is None or entry[0] != stamp:
            entry = known[key] = (stamp, compress_24(weight, name))
        return entry[1]

    @staticmethod
    def _install(gm: torch.fx.GraphModule, pair: Compressed24, index: int) -> tuple[str, str]:
        values, meta = pair
        stem = f"_proxsparse24_{index}"
        while hasattr(gm, f"{stem}_values"):
            stem += "_"
        gm.register_buffer(f"{stem}_values", values, persistent=False)
        gm.register_buffer(f"{stem}_meta", meta, persistent=False)
        return f"{stem}_values", f"{stem}_meta"

    @staticmethod
    def _replace(
        graph: torch.fx.Graph, node: torch.fx.Node, x: torch.fx.Node, bias: torch.fx.Node | None, attrs: tuple[str, str]
    ) -> None:
        gm = graph.owning_module
        fake_mode = x.meta["val"].fake_mode
        with graph.inserting_before(node):
            values = graph.get_attr(attrs[0])
            meta = graph.get_attr(attrs[1])
            values.meta["val"] = fake_mode.from_tensor(getattr(gm, attrs[0]), static_shapes=True)
            meta.meta["val"] = fake_mode.from_tensor(getattr(gm, attrs[1]), static_shapes=True)
            call = graph.call_function(LINEAR24, (x, values, meta, bias))
            with fake_mode:
                call.meta["val"] = LINEAR24(
                    x.meta["val"], values.meta["val"], meta.meta["val"], bias.meta["val"] if bias is not None else None
                )
        node.replace_all_uses_with(call)
        graph.erase_node(node)
