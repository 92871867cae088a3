"""proxsparse_ao.compile end to end on CPU: the rewrite, its report, dynamic shapes, the CPU default.

Inductor compiles take ~20 s each here, so each fixture compiles once and is shared.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

import proxsparse_ao
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.masks import apply_mask, magnitude_mask
from proxsparse_ao.speed import SpeedTable

OP_CALL = "torch.ops.proxsparse.linear24.default("
BF16_TOL = {"atol": 3e-2, "rtol": 3e-2}


def prune_(model: nn.Module, skip: tuple[str, ...] = ()) -> None:
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name not in skip:
                module.weight.copy_(apply_mask(module.weight, magnitude_mask(module.weight)))


def op_calls(code: list[str]) -> int:
    return sum(source.count(OP_CALL) for source in code)


class Mixed(nn.Module):
    """One eligible linear (with bias: the addmm path) and one of each reason to stay dense."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(64, 128).to(torch.bfloat16)
        self.down = nn.Linear(128, 64, bias=False).to(torch.bfloat16)
        self.odd = nn.Linear(64, 48, bias=False).to(torch.bfloat16)
        self.fp32 = nn.Linear(64, 64, bias=False)
        self.lm_head = nn.Linear(64, 256, bias=False).to(torch.bfloat16)
        prune_(self, skip=("down",))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.down(torch.relu(self.up(x)))
        h = h + self.fp32(h.float()).to(h.dtype)
        return self.lm_head(h), self.odd(h)


class SharedInput(nn.Module):
    """Five linears on one input: Inductor's freezing concatenates their weights when concat-linear is on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        sizes = {"q": 64, "k": 32, "v": 32, "gate": 128, "up": 128}
        for name, rows in sizes.items():
            setattr(self, name, nn.Linear(64, rows, bias=False).to(torch.bfloat16))
        prune_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = torch.cat([self.q(x), self.k(x), self.v(x)], -1).sum(-1, keepdim=True)
        return attn * torch.relu(self.gate(x)) * self.up(x)


def compile_and_run(model: nn.Module, inputs: list[torch.Tensor], **kwargs) -> SimpleNamespace:
    compiled, report = proxsparse_ao.compile(model, **kwargs)
    with torch.no_grad():
        references = [model(x) for x in inputs]
    first, code = run_and_get_code(compiled, inputs[0])
    outputs = [first] + [compiled(x) for x in inputs[1:]]
    return SimpleNamespace(compiled=compiled, report=report, code=code, outputs=outputs, references=references)


@pytest.fixture(scope="module")
def llama(tiny_llama_factory):
    model = tiny_llama_factory(seed=0, dtype=torch.bfloat16, layers=2)
    prune_(model, skip=("model.layers.1.mlp.up_proj",))
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, shape, generator=generator) for shape in ((2, 9), (3, 5))]
    return compile_and_run(model, inputs, sparse="always", dynamic=True, fullgraph=True)


@pytest.fixture(scope="module")
def mixed_forced():
    x = torch.randn(2, 7, 64).to(torch.bfloat16)
    return compile_and_run(Mixed(), [x], sparse="always")


@pytest.fixture(scope="module")
def mixed_default():
    x = torch.randn(2, 7, 64).to(torch.bfloat16)
    return compile_and_run(Mixed(), [x])


@pytest.fixture(scope="module")
def fused():
    """CPU compile with Inductor's concat-linear on (as on CUDA, where it is always on), k excluded."""
    x = torch.randn(2, 5, 64).to(torch.bfloat16)
    with torch._inductor.config.patch({"cpp.enable_concat_linear": True}):
        return compile_and_run(SharedInput(), [x], sparse="always", exclude=("k",))


def test_every_eligible_llama_linear_becomes_linear24(llama):
    assert len(llama.report.eligible) == 13  # 2 layers x 7 linears, minus one non-2:4; lm_head excluded
    assert op_calls(llama.code) == len(llama.report.eligible)
    assert llama.report.rewritten == llama.report.eligible


def test_llama_layers_kept_dense_say_why(llama):
    assert llama.report.not_rewritten == {
        "model.layers.1.mlp.up_proj": "not 2:4: 2048 of 2048 groups of 4 have more than 2 non-zeros",
        "lm_head": "excluded (matches 'lm_head')",
    }


def test_compiled_llama_matches_the_dense_masked_model(llama):
    for out, ref in zip(llama.outputs, llama.references):
        torch.testing.assert_close(out.logits.float(), ref.logits.float(), **BF16_TOL)


def test_dynamic_fullgraph_compiles_one_graph_for_both_shapes(llama):
    assert len(llama.report.graphs) == 1
    assert {r.m_range[1] for r in llama.report.graphs[0]} == {None}


def test_summary_counts_graphs_and_reasons(llama):
    summary = llama.report.summary()
    assert "13 of 15 linears rewritten" in summary
    assert "graph 0: 13 of 15 linears rewritten" in summary
    assert "kept dense x1: excluded (matches 'lm_head')" in summary
    assert "compiled graphs so far: 1" in summary.splitlines()[0]


def test_forced_rewrite_takes_only_the_eligible_linear(mixed_forced):
    report = mixed_forced.report
    assert op_calls(mixed_forced.code) == 1
    assert report.rewritten == ["up"]
    reasons = report.not_rewritten
    assert reasons["down"].startswith("not 2:4")
    assert reasons["odd"].startswith("shape 48x64")
    assert reasons["fp32"].startswith("dtype float32")
    assert reasons["lm_head"].startswith("excluded")
    for out, ref in zip(mixed_forced.outputs[0], mixed_forced.references[0]):
        torch.testing.assert_close(out.float(), ref.float(), **BF16_TOL)


def test_cpu_default_never_rewrites_and_says_why(mixed_default):
    report = mixed_default.report
    assert op_calls(mixed_default.code) == 0
    assert report.rewritten == []
    assert report.eligible == ["up"]
    assert report.not_rewritten["up"].startswith("slower than dense on cpu")
    for out, ref in zip(mixed_default.outputs[0], mixed_default.references[0]):
        torch.testing.assert_close(out.float(), ref.float(), **BF16_TOL)


def test_report_before_the_first_call_says_nothing_is_compiled_yet():
    _, report = proxsparse_ao.compile(Mixed(), sparse="always")
    assert report.graphs == []
    assert report.not_rewritten["up"].startswith("not seen in a compiled graph yet")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sparse": "sometimes"}, "sparse='sometimes'"),
        ({"backend": "eager"}, "backend='eager'"),
        ({"exclude": ["re:["]}, r"exclude pattern 're:\[' is not a valid regular expression \(unterminated character set"),
        ({"exclude": None}, "exclude must be a pattern or a list of patterns, got NoneType"),
        ({"exclude": ["lm_head", None]}, "exclude patterns must be strings, got None"),
        ({"timings": "timings.json"}, "timings must be a SpeedTable, got str"),
        ({"options": {"freezing": False}}, r"options 'freezing': proxsparse_ao.compile sets freezing, "),
        (
            {"options": {"max_autotune": False, "cpp.weight_prepack": True, "post_grad_custom_post_pass": None}},
            r"options 'post_grad_custom_post_pass', 'cpp.weight_prepack': .* turns the 2:4 pass off",
        ),
        ({"options": {"post-grad-custom-post-pass": None}}, r"options 'post-grad-custom-post-pass': .* turns the 2:4 pass off"),
    ],
)
def test_bad_arguments_are_refused(kwargs, needle):
    with pytest.raises(ProxSparseError, match=needle):
        proxsparse_ao.compile(Mixed(), **kwargs)


def test_a_model_the_pass_cannot_work_on_is_refused():
    """A compiled model compiled again rewrote nothing and said nothing; the others failed with
    AttributeError or RuntimeError (a meta weight: accelerate's cpu_offload) from deep inside."""
    compiled, _ = proxsparse_ao.compile(Mixed(), sparse="always")
    with pytest.raises(ProxSparseError, match=r"^the model was compiled by proxsparse_ao.compile already: .*`compiled.model`"):
        proxsparse_ao.compile(compiled, sparse="always")
    with pytest.raises(ProxSparseError, match="^proxsparse_ao.compile takes a torch.nn.Module, got function$"):
        proxsparse_ao.compile(lambda x: x)
    offloaded = Mixed().to("meta")
    with pytest.raises(ProxSparseError, match=r"^up: the weight is on the meta device \(not loaded, or offloaded by accelerate\)"):
        proxsparse_ao.compile(offloaded)
    with pytest.raises(ProxSparseError, match="^options must be a dict of Inductor settings, got str$"):
        proxsparse_ao.compile(Mixed(), options="max-autotune")


def test_weights_fused_by_inductor_are_rewritten_as_one_matmul_per_group(fused):
    records = {r.name: r for r in fused.report.graphs[0]}
    groups = {r.group for r in records.values()}
    if all(len(group) == 1 for group in groups):  # torch 2.11's CPU Inductor leaves these linears apart
        pytest.skip(f"torch {torch.__version__}'s Inductor does not concatenate linears on CPU: nothing fused to check")
    assert sorted(name for group in groups for name in group) == ["gate", "k", "q", "up", "v"]
    sparse_groups = {r.group for r in records.values() if r.rewritten}
    assert op_calls(fused.code) == len(sparse_groups) >= 1
    for group in groups:
        rewritten = {records[name].rewritten for name in group}
        assert rewritten == {"k" not in group}
        if "k" in group:
            assert all(records[n].reason.startswith("fused by Inductor with k (excluded") for n in group)
    scale = fused.references[0].abs().max()
    torch.testing.assert_close(fused.outputs[0].float() / scale, fused.references[0].float() / scale, **BF16_TOL)


def linear24_calls(run) -> int:
    """How many times `run()` calls the linear24 op (a compiled graph reused shows no new code)."""
    from torch.profiler import profile

    with profile() as trace:
        run()
    return sum(event.name == "proxsparse::linear24" for event in trace.events())


def test_two_compiles_of_one_model_each_run_their_own_graphs():
    model, x = Mixed(), torch.randn(1, 3, 64).to(torch.bfloat16)
    dense, dense_report = proxsparse_ao.compile(model, sparse="never")
    dense(x)
    sparse, sparse_report = proxsparse_ao.compile(model, sparse="always")
    sparse(x)
    assert dense_report.rewritten == [] and sparse_report.rewritten == ["up"]
    assert linear24_calls(lambda: dense(x)) == 0 and linear24_calls(lambda: sparse(x)) == 1
    assert len(dense_report.graphs) == len(sparse_report.graphs) == 1  # no recompiles: each kept its graph


def test_a_gpu_without_a_2to4_matmul_in_this_torch_build_is_named(monkeypatch):
    """sm90 runs cuSPARSELt; without it in the build, compile says so instead of timing a kernel that fails."""
    import importlib

    compile_module = importlib.import_module("proxsparse_ao.compiler")

    monkeypatch.setattr(torch, "_sparse_semi_structured_mm", lambda *args: None, raising=False)
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    reason = compile_module.kernel_missing(torch.device("cuda"))
    assert "sm90" in reason and "cuSPARSELt" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert compile_module.kernel_missing(torch.device("cuda")) is None


def test_generate_runs_prefill_and_every_decode_step_through_the_2_4_graphs(tiny_llama_factory, monkeypatch):
    import proxsparse_ao.passes.sparse24 as sparse24

    compressions = []
    compress = sparse24.compress_24
    monkeypatch.setattr(sparse24, "compress_24", lambda weight, name: compressions.append(name) or compress(weight, name))
    model = tiny_llama_factory(seed=1, dtype=torch.bfloat16, layers=2)
    prune_(model)
    prompt = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    expected = model.generate(prompt, max_new_tokens=5, do_sample=False)
    compiled, report = proxsparse_ao.compile(model, sparse="always")
    tokens, code = run_and_get_code(compiled.generate, prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(tokens, expected)
    assert {record.m_range[0] for graph in report.graphs for record in graph} >= {12, 1}  # prefill and decode
    assert all(sum(record.rewritten for record in graph) == 14 for graph in report.graphs)
    assert op_calls(code) == 14 * len(report.graphs)
    assert len(report.graphs) >= 2 and len(compressions) == 14  # the graphs share one compressed copy per weight
    assert "forward" not in vars(model)  # the model's own forward is back
    with pytest.raises(ValueError, match="not_an_argument"):
        compiled.generate(prompt, not_an_argument=1)
    assert "forward" not in vars(model)  # also when generate fails
    with torch.no_grad():
        torch.testing.assert_close(compiled(prompt).logits.float(), model(prompt).logits.float(), **BF16_TOL)


def test_the_compiled_model_reads_what_it_lacks_from_the_model(tiny_llama_factory):
    model = tiny_llama_factory(seed=2, dtype=torch.bfloat16, layers=1)
    compiled, _ = proxsparse_ao.compile(model, sparse="never")
    assert compiled.config is model.config and compiled.generation_config is model.generation_config
    assert (compiled.device, compiled.dtype) == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(AttributeError, match="no_such_thing"):
        compiled.no_such_thing


def test_a_compiled_model_cannot_be_cast_or_moved_only_compiled_again():
    model = Mixed()
    dtype = next(model.parameters()).dtype
    compiled, _ = proxsparse_ao.compile(model, sparse="always")
    for change in (lambda m: m.half(), lambda m: m.to(torch.float64), lambda m: m.cpu()):
        with pytest.raises(ProxSparseError, match="cast or move the model first, then call proxsparse_ao.compile"):
            change(compiled)
    assert next(model.parameters()).dtype == dtype


def test_generate_needs_a_generative_model():
    compiled, _ = proxsparse_ao.compile(Mixed(), sparse="always")
    with pytest.raises(ProxSparseError, match="Mixed has no generate"):
        compiled.generate(torch.zeros(1, 4, dtype=torch.long))


def test_proxsparse_ao_compile_stays_the_function_whatever_was_imported_first():
    """A submodule named like the function would replace it on the package once imported (verify imports it)."""
    import subprocess
    import sys

    code = ("import proxsparse_ao.compiler, proxsparse_ao.verification, proxsparse_ao; "
            "assert proxsparse_ao.compile is proxsparse_ao.compiler.compile, proxsparse_ao.compile")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_compiled_model_cannot_be_deep_copied_only_compiled_again():
    """A deep copy shared the compiled graphs: it ran the original's weights and filled in its report."""
    import copy

    compiled, _ = proxsparse_ao.compile(Mixed(), sparse="always")
    with pytest.raises(ProxSparseError, match="cannot be deep-copied .*copy the model, then call proxsparse_ao.compile on the copy"):
        copy.deepcopy(compiled)
    with pytest.raises(ProxSparseError, match="cannot be deep-copied"):
        copy.deepcopy(nn.ModuleList([compiled]))


def test_the_report_names_layers_swapped_before_compiling():
    """It said "0 of 1 linears rewritten; 0 eligible", as if nothing ran as 2:4."""
    from proxsparse_ao.passes import swap_linears

    model = Mixed()
    assert swap_linears(model)["up"] == "swapped"
    _, report = proxsparse_ao.compile(model, sparse="always")
    assert report.swapped == ["up"] and "up" not in report.linears
    assert "swapped to SparseLinear24 before compiling: 1 (linear24 in every graph)" in report.summary().splitlines()[1]


def test_a_model_torch_compiled_already_is_compiled_as_the_model_it_wraps():
    """Its layers were named "_orig_mod.up", ..., so a full-name or regex exclusion silently excluded
    nothing and the report named layers the model does not have."""
    model = Mixed()
    compiled, report = proxsparse_ao.compile(torch.compile(model), sparse="always", exclude=["re:lm_h.*"])
    assert compiled.model is model
    assert list(report.linears) == ["up", "down", "odd", "fp32", "lm_head"]
    assert report.linears["lm_head"] == "excluded (matches 're:lm_h.*')"
    (record,) = decisions(compiled, report, model.up.weight, rows=4)
    assert (record.name, record.rewritten) == ("up", True)


def decisions(compiled: nn.Module, report, weight: torch.Tensor, rows: int) -> list:
    """The records of the 2:4 pass `proxsparse_ao.compile` installed in `compiled`, run on a hand-traced
    graph of `x @ weight.T` (no Inductor compile): what the compiled model decides for that matmul."""
    from traced_graphs import traced

    x = torch.randn(rows, weight.shape[1]).to(weight.dtype)
    with torch.no_grad():
        graph = traced(lambda x: x @ weight.t(), x)
    compiled.inductor_config["post_grad_custom_post_pass"](graph.graph)
    (records,) = report.graphs
    return records


class Timer:
    """A SpeedTable timer for which sparse is twice as fast as dense; records the (M, N, K) it is asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, device, dtype, m, n, k):
        self.calls.append((m, n, k))
        return 2.0, 1.0


def as_if_on_a_2to4_gpu(monkeypatch) -> None:
    """The per-shape timing path of sparse='auto', which only CUDA sm80+ takes (CPU never gains from 2:4)."""
    import importlib

    compile_module = importlib.import_module("proxsparse_ao.compiler")
    monkeypatch.setattr(compile_module, "never_faster", lambda device: None)
    monkeypatch.setattr(compile_module, "kernel_missing", lambda device: None)


def test_auto_times_each_layer_at_its_rows_out_features_and_in_features(monkeypatch):
    as_if_on_a_2to4_gpu(monkeypatch)
    model, timer = Mixed(), Timer()
    (record,) = decisions(*proxsparse_ao.compile(model, timings=SpeedTable(timer)), model.up.weight, 5)
    assert timer.calls == [(5, 128, 64)]  # up: 64 in, 128 out
    assert (record.name, record.rewritten, record.reason) == ("up", True, "faster than dense (at least 2.00x, at M=5)")


def test_never_keeps_every_layer_dense_even_where_sparse_is_timed_faster(monkeypatch):
    as_if_on_a_2to4_gpu(monkeypatch)
    model, timer = Mixed(), Timer()
    (record,) = decisions(*proxsparse_ao.compile(model, sparse="never", timings=SpeedTable(timer)), model.up.weight, 5)
    assert (record.name, record.rewritten, record.reason) == ("up", False, "sparse='never'")
    assert timer.calls == []


def test_a_weight_replaced_after_compile_stays_dense_and_says_so():
    """compile() judged the weights it saw; a weight set since is not one it checked (exclusions, 2:4)."""
    model = Mixed()
    replacement = nn.Linear(64, 128).to(torch.bfloat16)
    prune_(replacement)
    compiled, report = proxsparse_ao.compile(model, sparse="always")
    model.up.weight = replacement.weight
    (record,) = decisions(compiled, report, model.up.weight, 3)
    assert not record.rewritten
    assert record.reason.startswith("not the weight of an nn.Linear of this model as it was at compile()")


def test_a_gpu_older_than_sm80_is_named_as_lacking_2to4_tensor_cores(monkeypatch):
    import importlib

    compile_module = importlib.import_module("proxsparse_ao.compiler")
    monkeypatch.setattr(torch, "_sparse_semi_structured_mm", lambda *args: None, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert compile_module.kernel_missing(torch.device("cuda")) == "GPU sm75 has no 2:4 sparse tensor cores (needs sm80 or newer)"


def test_the_record_of_an_excluded_layer_gives_the_exclusion_as_its_reason():
    model = Mixed()
    (record,) = decisions(*proxsparse_ao.compile(model, sparse="always"), model.lm_head.weight, 2)
    assert (record.name, record.rewritten, record.reason) == ("lm_head", False, "excluded (matches 'lm_head')")


def test_hooks_on_the_model_itself_run_around_every_compiled_call_once(tiny_llama_factory):
    """The compiled model ran the model's forward alone: hooks registered on the model were silently skipped
    (they ran only inside generate)."""
    model = tiny_llama_factory(seed=3, dtype=torch.bfloat16, layers=1)
    prune_(model)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append("pre"))
    model.register_forward_hook(lambda module, args, output: calls.append("post") or output)
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(prompt).logits
        tokens = model.generate(prompt, max_new_tokens=3, do_sample=False)
    calls.clear()
    compiled, _ = proxsparse_ao.compile(model, sparse="always")
    torch.testing.assert_close(compiled(prompt).logits, expected, **BF16_TOL)
    assert calls == ["pre", "post"]
    calls.clear()
    assert torch.equal(compiled.generate(prompt, max_new_tokens=3, do_sample=False), tokens)
    assert calls == ["pre", "post"] * 3  # once per forward pass, not once by generate and again by the compiled call
    assert "forward" not in vars(model)
