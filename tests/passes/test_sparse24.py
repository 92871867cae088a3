"""The post-grad pass on small hand-traced graphs (no Inductor compile: fast)."""

from __future__ import annotations

import functools

import pytest
import torch

from proxsparse_ao.masks import apply_mask, magnitude_mask
from proxsparse_ao.passes import LinearWeights, Sparse24Pass
from proxsparse_ao.sparse_format import compress_24
from traced_graphs import traced

LINEAR24 = torch.ops.proxsparse.linear24.default


def pruned(rows: int, cols: int, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> torch.Tensor:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return apply_mask(weight, magnitude_mask(weight))


def run_pass(gm: torch.fx.GraphModule, graph_pass: Sparse24Pass) -> int:
    graph_pass(gm.graph)
    gm.recompile()
    return sum(node.target is LINEAR24 for node in gm.graph.nodes)


def test_mm_and_addmm_with_a_2to4_constant_become_linear24():
    weight, bias = pruned(64, 128), torch.randn(64).to(torch.bfloat16)
    x = torch.randn(5, 128).to(torch.bfloat16)

    def fn(x):
        return torch.addmm(bias, x, weight.t()) + torch.mm(x, weight.t())

    gm = traced(fn, x)
    graph_pass = Sparse24Pass(resolve=lambda w: [("proj", w.shape[0])])
    assert run_pass(gm, graph_pass) == 2
    targets = {node.target for node in gm.graph.nodes}
    assert torch.ops.aten.mm.default not in targets and torch.ops.aten.addmm.default not in targets
    assert [(r.name, r.shape, r.m_range, r.rewritten) for r in graph_pass.records[0]] == [
        ("proj", (64, 128), (5, 5), True),
        ("proj", (64, 128), (5, 5), True),
    ]
    assert len([n for n in gm.graph.nodes if n.op == "get_attr" and "_proxsparse24_" in str(n.target)]) == 4
    assert torch.equal(gm(x), fn(x))


def test_weights_the_kernels_cannot_take_stay_dense_with_reasons():
    dense = torch.randn(64, 128).to(torch.bfloat16)
    fp32 = pruned(64, 128, torch.float32)
    odd = pruned(48, 128)
    x = torch.randn(4, 128).to(torch.bfloat16)

    def fn(x):
        return (x @ dense.t()).sum() + (x.float() @ fp32.t()).sum() + (x @ odd.t()).sum()

    graph_pass = Sparse24Pass()
    assert run_pass(traced(fn, x), graph_pass) == 0
    reasons = [r.reason for r in graph_pass.records[0]]
    assert reasons[0].startswith("not 2:4: 2048 of 2048 groups")
    assert reasons[1].startswith("dtype float32")
    assert reasons[2].startswith("shape 48x128")


def test_decide_can_keep_a_weight_dense():
    weight = pruned(64, 128)
    x = torch.randn(3, 128).to(torch.bfloat16)
    seen = []

    def decide(names, w, m_range):
        seen.append((names, tuple(w.shape), m_range))
        return False, "slower than dense here"

    graph_pass = Sparse24Pass(decide)
    assert run_pass(traced(lambda x: x @ weight.t(), x), graph_pass) == 0
    assert seen == [([graph_pass.records[0][0].name], (64, 128), (3, 3))]
    assert graph_pass.records[0][0].reason == "slower than dense here"


def test_matmul_with_a_non_constant_weight_is_left_alone():
    x, w = torch.randn(3, 128).to(torch.bfloat16), pruned(64, 128)
    graph_pass = Sparse24Pass()
    assert run_pass(traced(lambda x, w: x @ w.t(), x, w), graph_pass) == 0
    assert graph_pass.records == [[]]


def test_uuid_is_none_which_inductor_reads_as_do_not_cache_graphs_this_pass_ran_on():
    assert Sparse24Pass().uuid() is None


def test_a_constant_fused_from_several_layers_is_rewritten_once_and_recorded_per_layer():
    q, k, v = pruned(64, 128, seed=1), pruned(32, 128, seed=2), pruned(32, 128, seed=3)
    fused = torch.cat([q, k, v]).t().contiguous()  # what Inductor's freezing makes of q/k/v
    names = {q.data_ptr(): "q", k.data_ptr(): "k", v.data_ptr(): "v"}
    x = torch.randn(4, 128).to(torch.bfloat16)

    def resolve(weight):
        return [(names[w.data_ptr()], w.shape[0]) for w in (q, k, v)] if weight.shape[0] == 128 else None

    graph_pass = Sparse24Pass(resolve=resolve)
    gm = traced(lambda x: x @ fused, x)
    assert run_pass(gm, graph_pass) == 1
    assert [(r.name, r.shape, r.group) for r in graph_pass.records[0]] == [
        ("q", (64, 128), ("q", "k", "v")),
        ("k", (32, 128), ("q", "k", "v")),
        ("v", (32, 128), ("q", "k", "v")),
    ]
    assert torch.equal(gm(x), x @ fused)


def test_a_fused_constant_with_a_non_2to4_part_names_the_part():
    q, k = pruned(64, 128, seed=1), torch.randn(64, 128).to(torch.bfloat16)
    fused = torch.cat([q, k]).t().contiguous()
    graph_pass = Sparse24Pass(resolve=lambda w: [("q", 64), ("k", 64)])
    assert run_pass(traced(lambda x: x @ fused, torch.randn(2, 128).to(torch.bfloat16)), graph_pass) == 0
    q_record, k_record = graph_pass.records[0]
    assert k_record.reason.startswith("not 2:4: 2048 of 2048 groups")
    assert q_record.reason.startswith("fused by Inductor with k (not 2:4")


def test_linear_weights_names_a_layer_and_a_row_concatenation_of_layers():
    model = torch.nn.ModuleDict(
        {name: torch.nn.Linear(128, rows, bias=False).to(torch.bfloat16) for name, rows in [("q", 64), ("k", 32), ("v", 32)]}
    )
    resolve = LinearWeights(model)
    q, k, v = (model[n].weight.detach() for n in ("q", "k", "v"))
    assert resolve(q) == [("q", 64)]
    assert resolve(q.t().t()) == [("q", 64)]
    assert resolve(torch.cat([q, k, v])) == [("q", 64), ("k", 32), ("v", 32)]
    assert resolve(torch.cat([v, q])) == [("v", 32), ("q", 64)]
    assert resolve(torch.cat([q, torch.ones(32, 128, dtype=torch.bfloat16)])) is None


def count_compressions(monkeypatch) -> list[str]:
    import proxsparse_ao.passes.sparse24 as sparse24

    made: list[str] = []

    def counting(weight, name="weight"):
        made.append(name)
        return compress_24(weight, name)

    monkeypatch.setattr(sparse24, "compress_24", counting)
    return made


def test_graphs_of_one_pass_share_one_compressed_copy_per_weight(monkeypatch):
    """Freezing gives each graph (prefill, decode steps, recompiles) its own view of a parameter:
    each graph compressed it again and kept its own copy (42 copies for 14 layers and 3 graphs)."""
    made = count_compressions(monkeypatch)
    weight = pruned(64, 128)
    graph_pass = Sparse24Pass(resolve=lambda w: [("proj", w.shape[0])])
    graphs = []
    for rows in (5, 1, 3):
        view = weight.t()  # a new view object per graph, as freezing makes them
        x = torch.randn(rows, 128).to(torch.bfloat16)
        gm = traced(lambda x: x @ view, x)
        assert run_pass(gm, graph_pass) == 1
        assert torch.equal(gm(x), x @ weight.t())
        graphs.append(gm)
    assert made == ["proj"]
    assert len({id(gm._proxsparse24_0_values) for gm in graphs}) == 1
    with torch.no_grad():
        weight.mul_(-2)  # in place, still 2:4: the next graph sees the new values
    x = torch.randn(2, 128).to(torch.bfloat16)
    gm = traced(lambda x: x @ weight.t(), x)
    assert run_pass(gm, graph_pass) == 1
    assert torch.equal(gm(x), x @ weight.t()) and len(made) == 2
    other = Sparse24Pass(resolve=lambda w: [("proj", w.shape[0])])  # another compile: its own copy
    assert run_pass(traced(lambda x: x @ weight.t(), x), other) == 1 and len(made) == 3


@pytest.mark.parametrize("scale", [{"beta": 2}, {"alpha": 2}, {"beta": 2, "alpha": 0.5}])
def test_addmm_with_a_scale_stays_dense(scale):
    """linear24 computes x @ W.T + bias: a scaled addmm rewritten into it would drop the scale."""
    weight, bias = pruned(64, 128), torch.randn(64).to(torch.bfloat16)
    x = torch.randn(5, 128).to(torch.bfloat16)

    def fn(x):
        return torch.addmm(bias, x, weight.t(), **scale)

    gm = traced(fn, x)
    assert run_pass(gm, Sparse24Pass()) == 0
    assert torch.equal(gm(x), fn(x))


def test_an_input_of_another_dtype_than_the_weight_stays_dense():
    weight = pruned(64, 128)
    x = torch.randn(4, 128).to(torch.bfloat16)
    gm = traced(lambda x: x @ weight.t(), x)
    placeholder = next(node for node in gm.graph.nodes if node.op == "placeholder")
    fake = placeholder.meta["val"]
    placeholder.meta["val"] = fake.fake_mode.from_tensor(torch.randn(4, 128).to(torch.float16))
    graph_pass = Sparse24Pass()
    assert run_pass(gm, graph_pass) == 0
    assert graph_pass.records[0][0].reason == "input dtype torch.float16 differs from weight dtype torch.bfloat16"


def test_linear_weights_names_only_constants_whose_values_are_the_layers_weights():
    """Matching rows by their first entries alone would name a different constant as a layer, and the
    decisions made for that layer (excluded, not 2:4) would be applied to the wrong weight."""
    model = torch.nn.ModuleDict({name: torch.nn.Linear(128, 64, bias=False).to(torch.bfloat16) for name in ("q", "k")})
    resolve = LinearWeights(model)
    q, k = (model[n].weight.detach() for n in ("q", "k"))
    edited = q.clone()
    edited[5, 100] += 1  # same first row, same first columns, other values further in
    assert resolve(edited) is None
    assert resolve(torch.cat([q, edited])) is None
    assert resolve(q[:32]) is None  # part of a layer's weight (same storage) is not that layer
    assert resolve(torch.cat([k, q])) == [("k", 64), ("q", 64)]


def test_only_a_transpose_flips_the_weight_a_non_transposing_permute_is_left_alone():
    """permute(0, 1) keeps the constant as it is: read as a transpose, the weight's orientation flips."""
    constant = pruned(64, 64)  # square and 2:4 along its rows: a flipped reading would still pass every check
    x = torch.randn(3, 64).to(torch.bfloat16)

    def fn(x):
        return x @ constant.permute(0, 1)

    gm = traced(fn, x)
    graph_pass = Sparse24Pass()
    assert run_pass(gm, graph_pass) == 0 and graph_pass.records == [[]]
    assert torch.equal(gm(x), fn(x))


def test_addmm_with_a_bias_of_more_than_one_dimension_stays_dense():
    """linear24 takes a bias of one value per output feature; a [M, N] addend is another computation."""
    weight = pruned(64, 128)
    x = torch.randn(5, 128).to(torch.bfloat16)
    for addend in (torch.randn(5, 64).to(torch.bfloat16), torch.randn(1, 64).to(torch.bfloat16)):
        fn = functools.partial(torch.addmm, addend, mat2=weight.t())
        gm = traced(lambda x: fn(x), x)
        assert run_pass(gm, Sparse24Pass()) == 0
        assert torch.equal(gm(x), fn(x))


def test_a_rewritten_graph_no_longer_holds_the_dense_weight():
    """The dense constant becomes dead and is dropped, so the compiled graph does not keep both copies."""
    weight, bias = pruned(64, 128), torch.randn(64).to(torch.bfloat16)
    x = torch.randn(5, 128).to(torch.bfloat16)
    gm = traced(lambda x: torch.addmm(bias, x, weight.t()), x)
    assert run_pass(gm, Sparse24Pass()) == 1
    constants = [getattr(gm, node.target) for node in gm.graph.nodes if node.op == "get_attr"]
    assert not any(c.shape == weight.shape or c.shape == weight.t().shape for c in constants)
    assert [node.target for node in gm.graph.nodes if node.op == "call_function"] == [LINEAR24]


def test_a_weight_given_new_data_is_compressed_again(monkeypatch):
    """`.data = ...` keeps the version counter (no in-place write) but holds other values."""
    made = count_compressions(monkeypatch)
    weight = pruned(64, 128)
    graph_pass = Sparse24Pass(resolve=lambda w: [("proj", w.shape[0])])
    x = torch.randn(2, 128).to(torch.bfloat16)
    assert run_pass(traced(lambda x: x @ weight.t(), x), graph_pass) == 1
    weight.data = pruned(64, 128, seed=7)
    gm = traced(lambda x: x @ weight.t(), x)
    assert run_pass(gm, graph_pass) == 1
    assert torch.equal(gm(x), x @ weight.t()) and len(made) == 2


def test_row_blocks_of_one_parameter_are_each_compressed_once_for_all_graphs(monkeypatch):
    """A parameter holding several layers' rows (a fused qkv weight) gives equal-shaped views at other
    offsets: each block keeps its own compressed copy, shared by every graph of the compile."""
    made = count_compressions(monkeypatch)
    parameter = pruned(128, 128)
    graph_pass = Sparse24Pass(resolve=lambda w: [("block", w.shape[0])])
    for rows in (4, 1, 3):
        views = parameter[:64], parameter[64:]  # new view objects per graph, as freezing makes them
        x = torch.randn(rows, 128).to(torch.bfloat16)
        gm = traced(lambda x: torch.cat([x @ view.t() for view in views], -1), x)
        assert run_pass(gm, graph_pass) == 2
        assert torch.equal(gm(x), x @ parameter.t())
    assert len(made) == 2
