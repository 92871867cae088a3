"""GPU check for the 2:4 deployment path: kernel correctness, per-shape speed, the compiled rewrite's outputs, the prox step, end-to-end tokens/s.

Runs with torch and transformers only (no torchao, lm_eval, datasets, network) from a plain
checkout. Every stage writes its result (or its error) into OUT/gpu_check.json as soon as it
ends, and stages are skipped once the time budget would be exceeded, so a slow or failing
stage never loses the others. The prox step runs last, in time kept for it: a crash inside its
Triton kernel can poison the CUDA context, which would fail every later stage of the run.
`--smoke` runs the same code on CPU with tiny shapes.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from script_input import OneLineParser, at_least, finite, run_script

REPO = Path(__file__).resolve().parents[1]

LLAMA3_8B_SHAPES = {  # (out_features N, in_features K) of Llama-3-8B's linears
    "q_proj/o_proj": (4096, 4096),
    "k_proj/v_proj": (1024, 4096),
    "gate_proj/up_proj": (14336, 4096),
    "down_proj": (4096, 14336),
}
MLP_SHAPES = ("gate_proj/up_proj", "down_proj")
PROX_LAMS = (0.1, 1.0, 10.0)
PROX_BLOCKS = (32, 64, 128)  # groups per program of the Triton kernel, timed alone
PROX_ESTIMATE_S = 30.0  # four kernel compiles and six CPU solves of a 4096x4096 matrix: 8 s on an H200 host
COMPILED_REWRITE_ESTIMATE_S = 60.0  # one compile of a two-block 1B-shape Llama, plus an fp32 and a bf16 copy
PROX_MAX_EXCESS = 1e-6  # objective of the GPU result above the CPU one, relative to 1/2 ||z||^2 per group
MS = (1, 16, 128, 2048, 8192)
TARGET_MLP_SPEEDUP = 1.3
NOISE = 0.02  # end to end counts as "not slower" within 2% timing noise
# Prefill has one fixed shape, so its graph is compiled static: in all four H200 runs the second
# model's first prefill compile came out dynamic in M (cause not found; not seen on CPU), which
# tripled its compile time and had the pass time every M bucket. Decode keeps Dynamo's default:
# its cache position changes at every step, and a static compile would recompile each time.
COMPILE_KWARGS = {"prefill": {"dynamic": False}, "decode": {}}

MODELS = {
    # Llama-3.2-1B shapes
    "llama_1b_random": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0,
    ),
    # SmolLM2-135M(-Instruct) shapes, the project's default model
    "smollm2_135m_shapes_random": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0,
    ),
    # Llama-3.2-1B shapes, two blocks: the compiled-rewrite check (every eligible linear 2:4)
    "llama_1b_2_blocks_random": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0,
    ),
    "tiny_random": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    ),
}


def bootstrap() -> None:
    """Import proxsparse_ao from this checkout; map passes/ to proxsparse_ao.passes when not installed."""
    sys.path.insert(0, str(REPO))
    import proxsparse_ao

    try:
        import proxsparse_ao.passes  # noqa: F401
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location(
            "proxsparse_ao.passes", REPO / "passes" / "__init__.py", submodule_search_locations=[str(REPO / "passes")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        proxsparse_ao.passes = module


class Budget:
    """Wall-clock budget: a step starts only if its estimated duration still fits."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, estimate_s: float) -> bool:
        return self.elapsed() + estimate_s <= self.seconds

    def keeping(self, seconds: float) -> Budget:
        """The same clock with `seconds` kept back at the end, for a step that runs after."""
        kept = Budget(self.seconds - seconds)
        kept.start = self.start
        return kept


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pruned(n: int, k: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    from proxsparse_ao.masks import apply_mask, magnitude_mask

    weight = torch.randn(n, k, device=device, dtype=dtype, generator=torch.Generator(device=device).manual_seed(seed))
    return apply_mask(weight, magnitude_mask(weight))


def environment(device: torch.device, out: Path) -> dict:
    from proxsparse_ao.ops import cuda_kernel_available

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cuda_kernel_available": cuda_kernel_available(),
        "has__sparse_semi_structured_mm": hasattr(torch, "_sparse_semi_structured_mm"),
        "has__sparse_semi_structured_linear": hasattr(torch, "_sparse_semi_structured_linear"),
        "torchao_importable": importlib.util.find_spec("torchao") is not None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        from proxsparse_ao.ops import cuda_backend

        info["gpu"] = torch.cuda.get_device_name(device)
        info["cusparselt_available"] = torch.backends.cusparselt.is_available()
        info["linear24_backend"] = cuda_backend(torch.cuda.get_device_capability(device))
        info["capability"] = "sm%d%d" % torch.cuda.get_device_capability(device)
        from proxsparse_ao.cusparselt import ENV_VAR, library_path, direct

        info["cusparselt_library"] = library_path()
        info["cusparselt_cached_plans"] = direct() is not None
        info[ENV_VAR] = os.environ.get(ENV_VAR)
    probe = out / "probe.log"  # written by gpu_check.sh: why the cached-plan caller was (not) used
    if probe.exists():
        info["cusparselt_probe"] = probe.read_text(errors="replace").strip().splitlines()[-20:]
    return info


def kernel_correctness(device: torch.device, smoke: bool) -> dict:
    """linear24 on the device vs the CPU reference kernel, and both vs an fp32 product."""
    from proxsparse_ao.ops import linear24
    from proxsparse_ao.sparse_format import compress_24

    shapes = [(1, 256, 512), (5, 64, 128)] if smoke else [(1, 256, 512), (13, 1024, 4096), (128, 4096, 4096), (257, 14336, 4096)]
    cases, ok = [], True
    for dtype in (torch.bfloat16, torch.float16):
        for m, n, k in shapes:
            for with_bias in (False, True):
                weight = pruned(n, k, device, dtype)
                values, meta = compress_24(weight)
                x = torch.randn(m, k, device=device, dtype=dtype)
                bias = torch.randn(n, device=device, dtype=dtype) if with_bias else None
                out = linear24(x, values, meta, bias).float().cpu()
                reference = linear24(x.cpu(), values.cpu(), meta.cpu(), None if bias is None else bias.cpu()).float()
                dense = F.linear(x, weight, bias).float().cpu()
                exact = F.linear(x.float(), weight.float(), None if bias is None else bias.float()).cpu()
                scale = float(exact.abs().max())
                err_sparse = float((out - exact).abs().max())
                err_dense = float((dense - exact).abs().max())
                passed = bool(torch.isfinite(out).all()) and err_sparse <= 2 * err_dense + 1e-3 * scale
                ok &= passed
                cases.append({
                    "dtype": str(dtype).removeprefix("torch."), "m": m, "n": n, "k": k, "bias": with_bias,
                    "max_abs_err_vs_fp32": err_sparse, "dense_max_abs_err_vs_fp32": err_dense,
                    "max_abs_diff_vs_cpu_reference": float((out - reference).abs().max()), "max_abs_fp32": scale,
                    "passed": passed,
                })
    return {"criterion": "err(linear24 vs fp32) <= 2 * err(dense vs fp32) + 1e-3 * max|fp32|", "all_passed": ok, "cases": cases}


def per_shape_speed(device: torch.device, smoke: bool, timings_path: Path) -> dict:
    from proxsparse_ao.speed import SpeedTable

    shapes = {"smoke": (256, 512)} if smoke else LLAMA3_8B_SHAPES
    ms = (1, 16) if smoke else MS
    table = SpeedTable(path=timings_path)
    rows = []
    for label, (n, k) in shapes.items():
        for m in ms:
            timing = table.timing(device, torch.bfloat16, m, n, k)
            chosen, why = table.choose(device, torch.bfloat16, n, k, (m, m))
            rows.append({
                "layer": label, "m": m, "n": n, "k": k, "dense_ms": timing.dense_ms, "sparse_ms": timing.sparse_ms,
                "speedup": timing.speedup, "pass_picks_sparse": chosen, "decision": why,
                "bare_cusparselt_ms": bare_cusparselt_ms(device, m, n, k),
                "cached_plan_search": cached_plan_search(device, m, n, k),
            })
    mlp = [r for r in rows if r["layer"] in MLP_SHAPES and r["m"] >= 2048]
    return {
        "dtype": "bfloat16",
        "rows": rows,
        "target": f"speedup >= {TARGET_MLP_SPEEDUP} on MLP shapes at M >= 2048",
        "target_met": bool(mlp) and all(r["speedup"] >= TARGET_MLP_SPEEDUP for r in mlp),
    }


def cusparselt_paths(device: torch.device) -> dict:
    """Where a cuSPARSELt 2:4 call spends its time: torch's per-call wrapper (descriptors and plan
    built each call), the cached-plan caller (`proxsparse_ao.cusparselt`) with the default
    algorithm and with the searched one (what linear24 uses), and CUDA-graph replays (kernel time
    without host work), beside dense."""
    from proxsparse_ao.cusparselt import CusparseLt, direct

    if device.type != "cuda" or not hasattr(torch, "_cslt_sparse_mm"):
        return {"skipped": "needs CUDA and torch._cslt_sparse_mm"}
    library = direct()
    info: dict = {"direct_loaded": library is not None}
    if library is None:
        info["why"] = "library not loaded or PROXSPARSE_CUSPARSELT=torch"
        return info
    info["cusparselt_version"] = library.version(device)
    default, searched = CusparseLt(library.lib), CusparseLt(library.lib, search=True)
    shapes = [(16, 14336, 4096), (2048, 14336, 4096), (8192, 14336, 4096), (2048, 4096, 14336), (8192, 4096, 14336), (1, 4096, 4096)]
    rows = []
    for m, n, k in shapes:
        weight = pruned(n, k, device, torch.bfloat16)
        packed = torch._cslt_compress(weight)
        x = torch.randn(padded_rows(m), k, device=device, dtype=torch.bfloat16)
        calls = {
            "dense": lambda: F.linear(x, weight),
            "torch_cslt": lambda: torch._cslt_sparse_mm(packed, x.t(), transpose_result=True),
            "direct": lambda: default.mm(packed, x, n),
            "direct_searched": lambda: searched.mm(packed, x, n),
        }
        row: dict = {"m": m, "n": n, "k": k}
        expected = F.linear(x.float(), weight.float())
        for name, call in calls.items():
            try:
                result = call().float()
                row[f"{name}_max_abs_err"] = float((result - expected).abs().max())
                row[f"{name}_ms"] = pipelined_ms(call, device)
            except Exception as err:  # record and go on: the other paths still say something
                row[f"{name}_error"] = f"{type(err).__name__}: {err}"
        row["direct_searched_plan"] = searched.plan_search(device, torch.bfloat16, x.shape[0], n, k)
        for name in ("dense", "direct", "direct_searched"):  # torch's wrapper builds a plan inside the capture: not tried
            try:
                row[f"{name}_graph_ms"] = graph_ms(calls[name], device)
            except Exception as err:
                row[f"{name}_graph_error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
    info["rows"] = rows
    return info


def padded_rows(m: int) -> int:
    """The rows linear24 hands the 2:4 matmul for M = m (padded to the kernels' multiple)."""
    from proxsparse_ao.ops import CUTLASS_M_MULTIPLE

    return m + (-m) % CUTLASS_M_MULTIPLE


def pipelined_ms(fn, device: torch.device, reps: int = 20) -> float:
    """Milliseconds per call of `reps` calls issued back to back (host work overlaps the GPU), best of 3."""
    from proxsparse_ao.speed import _ms_per_call

    return min(_ms_per_call(fn, device, reps) for _ in range(3))


def graph_ms(fn, device: torch.device, reps: int = 20) -> float:
    """Milliseconds per call of `fn` captured once in a CUDA graph and replayed: the GPU's time alone."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return pipelined_ms(graph.replay, device, reps)


def cached_plan_search(device: torch.device, m: int, n: int, k: int) -> str | None:
    """How linear24's cached cuSPARSELt plan for this shape chose its algorithm, or None if it has none."""
    from proxsparse_ao.cusparselt import direct

    library = direct() if device.type == "cuda" else None
    return None if library is None else library.plan_search(device, torch.bfloat16, padded_rows(m), n, k)


def bare_cusparselt_ms(device: torch.device, m: int, n: int, k: int) -> float | None:
    """torch._cslt_sparse_mm alone on a weight packed beforehand, where linear24 runs cuSPARSELt:
    what the op's own work (padding, the packed-weight lookup) adds on top of it."""
    from proxsparse_ao.ops import cuda_backend

    if device.type != "cuda" or cuda_backend(torch.cuda.get_device_capability(device)) != "cusparselt":
        return None
    packed = torch._cslt_compress(pruned(n, k, device, torch.bfloat16))
    x = torch.randn(padded_rows(m), k, device=device, dtype=torch.bfloat16)
    return best_ms(lambda: torch._cslt_sparse_mm(packed, x.t(), transpose_result=True), device, reps=20)


def best_ms(fn, device: torch.device, reps: int = 5) -> float:
    """Best of `reps` synchronised calls, in milliseconds."""
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def prox_objective(w: torch.Tensor, z: torch.Tensor, lam: float) -> torch.Tensor:
    """1/2 ||w - z||^2 + lam R(w) per group of 4, in float64 on the CPU."""
    from proxsparse_ao.regularizers import r_2to4_groups

    return 0.5 * ((w.double() - z.double()).reshape(-1, 4) ** 2).sum(1) + lam * r_2to4_groups(w)


def prox_step(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """prox_2to4 on the device (the fused Triton kernel on CUDA) against a device copy, and its
    result against the CPU operator (the C kernel) on the same fp32 matrix; bf16 timing too."""
    from proxsparse_ao._prox24_triton import prox24_triton
    from proxsparse_ao.masks import fraction_nm
    from proxsparse_ao.prox import backend, prox_2to4

    if not budget.allows(PROX_ESTIMATE_S):
        return {"skipped": f"time budget ({budget.elapsed():.0f} s used, the step needs ~{PROX_ESTIMATE_S:.0f} s)"}
    size = 256 if smoke else 4096
    weight_cpu = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    weight, half = weight_cpu.to(device), weight_cpu.to(device, torch.bfloat16)
    out, out_half = torch.empty_like(weight), torch.empty_like(half)
    half_norm = (0.5 * (weight_cpu.double().reshape(-1, 4) ** 2).sum(1)).clamp_min(1e-12)
    rows, ok = [], True
    for lam in PROX_LAMS:
        if not budget.allows(10.0):
            rows.append({"lam": lam, "skipped": f"time budget ({budget.elapsed():.0f} s used)"})
            continue
        start = time.perf_counter()
        prox_2to4(weight, lam, out=out)
        sync(device)
        first_call_s = time.perf_counter() - start
        op_ms = best_ms(lambda: prox_2to4(weight, lam, out=out), device)
        copy_ms = best_ms(lambda: out.copy_(weight), device)
        found = prox_2to4(weight, lam).cpu()
        expected = prox_2to4(weight_cpu, lam)
        excess = float(((prox_objective(found, weight_cpu, lam) - prox_objective(expected, weight_cpu, lam)) / half_norm).max())
        prox_2to4(half, lam, out=out_half)
        half_ms = best_ms(lambda: prox_2to4(half, lam, out=out_half), device)
        half_copy_ms = best_ms(lambda: out_half.copy_(half), device)
        half_diff = (prox_2to4(half, lam).cpu().float() - prox_2to4(weight_cpu.bfloat16(), lam).float()).abs().max()
        passed = bool(torch.isfinite(found).all()) and excess <= PROX_MAX_EXCESS
        ok &= passed
        kernel_ms = {}  # the kernel alone (no input check) per groups-per-program
        if backend(device) == "triton":
            for block in PROX_BLOCKS:
                kernel_ms[block] = best_ms(lambda: prox24_triton(weight.view(-1, 4), out.view(-1, 4), lam, block=block), device)
        rows.append({
            "lam": lam, "first_call_s": first_call_s, "op_ms": op_ms, "copy_ms": copy_ms, "op_over_copy": op_ms / copy_ms,
            "kernel_ms_by_block": kernel_ms,
            "two_of_four_fraction": fraction_nm(found),
            "max_abs_diff_vs_cpu": float((found - expected).abs().max()), "max_rel_objective_excess_vs_cpu": excess,
            "bf16_op_ms": half_ms, "bf16_copy_ms": half_copy_ms, "bf16_max_abs_diff_vs_cpu": float(half_diff),
            "passed": passed,
        })
    return {
        "solver": backend(device), "cpu_solver": backend("cpu"), "shape": [size, size], "rows": rows,
        "criterion": f"objective(gpu) - objective(cpu) <= {PROX_MAX_EXCESS:g} * 1/2 ||z||^2 in every group of 4",
        "all_passed": ok and all("passed" in row for row in rows),
    }


def compiled_rewrite(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """`proxsparse_ao.compile(sparse="always")` on a pruned model: every eligible linear rewritten
    (on CUDA Inductor first fuses q/k/v and gate/up) and the logits as close to the fp32 eager
    masked model as the eager bf16 model is (verify's deployment check), prefill of 512 tokens."""
    from proxsparse_ao.verification import check_deployment

    if not budget.allows(COMPILED_REWRITE_ESTIMATE_S):
        return {"skipped": f"time budget ({budget.elapsed():.0f} s used, the step needs ~{COMPILED_REWRITE_ESTIMATE_S:.0f} s)"}
    name = "tiny_random" if smoke else "llama_1b_2_blocks_random"
    model, weights = build_model(name, device, torch.float32, None)
    pruned = prune_model(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 32 if smoke else 512), generator=torch.Generator().manual_seed(0))
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    torch._dynamo.reset()
    check, _, _ = check_deployment(model, ids, targets, torch.bfloat16, sparse="always")
    result = {"model": name, "weights": weights, "pruned_linears": pruned, "tokens": int(ids.numel()),
              "ok": check.ok, "deployment": check.to_dict()}  # ok: all rewritten, logits within tolerance
    del model
    torch._dynamo.reset()  # Dynamo holds the compiled bf16 copy: drop it before the next stages
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def build_model(name: str, device: torch.device, dtype: torch.dtype, model_path: str | None):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if model_path:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        weights = f"pretrained from {model_path}"
    else:
        config = LlamaConfig(max_position_embeddings=4096, **MODELS[name])
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
        weights = "random init (real checkpoint not available on this machine)"
    return model.eval(), weights


def prune_model(model: torch.nn.Module) -> int:
    """Magnitude 2:4 on every linear except lm_head; returns how many were pruned."""
    from proxsparse_ao.masks import apply_mask, magnitude_mask

    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
                module.weight.copy_(apply_mask(module.weight, magnitude_mask(module.weight)))
                count += 1
    return count


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` during 5.x."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def first_call_s(fn, device: torch.device) -> float:
    """Seconds of the first call (the compile)."""
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def end_to_end(name: str, device: torch.device, args, budget: Budget, estimates: dict) -> dict:
    """Prefill and decode tokens/s under proxsparse_ao.compile, dense (sparse='never') vs 2:4,
    each variant on its own copy of the model, timed in alternating blocks."""
    import copy

    import proxsparse_ao
    from proxsparse_ao.speed import SpeedTable, interleaved_seconds
    from transformers import StaticCache

    dtype = torch.bfloat16
    base, weights = build_model(name, device, dtype, args.model if name != "llama_1b_random" else None)
    result = {"weights": weights, "pruned_linears": prune_model(base), "sparse_mode": args.sparse}
    batch, seq = (1, 32) if args.smoke else (1, args.prefill_tokens)
    context, steps = (8, 4) if args.smoke else (128, args.decode_steps)
    result.update(
        prefill={"batch": batch, "tokens": seq, "compile_kwargs": COMPILE_KWARGS["prefill"]},
        decode={"batch": batch, "context": context, "steps": steps, "compile_kwargs": COMPILE_KWARGS["decode"]},
    )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (batch, seq), generator=generator).to(device)
    prompt = ids[:, :context]
    cache_name = cache_kwarg(base)
    timings = SpeedTable(path=args.out / "linear24_timings.json")
    logits = {}

    def prepare(variant: str, phase: str, calls: int):
        """A fresh copy of the model compiled for this variant, and its step function (`calls` decode steps at most)."""
        model = copy.deepcopy(base)
        mode = "never" if variant == "dense" else args.sparse
        compiled, report = proxsparse_ao.compile(model, sparse=mode, timings=timings, **COMPILE_KWARGS[phase])
        if phase == "prefill":
            def step():
                return compiled(ids, use_cache=False, logits_to_keep=1)

            return step, report, batch * seq
        cache = StaticCache(config=model.config, max_cache_len=context + calls + 8)
        with torch.no_grad():
            model(prompt, **{cache_name: cache}, use_cache=True)
        position = [context]
        token = ids[:, context : context + 1]

        def step():
            pos = torch.full((batch, 1), position[0], device=device, dtype=torch.long)
            position[0] += 1
            return compiled(token, position_ids=pos, **{cache_name: cache}, use_cache=True, logits_to_keep=1)

        return step, report, batch

    for phase in ("prefill", "decode"):
        estimate = estimates.get(name, 90.0)
        if not budget.allows(2 * estimate + 20):
            result[phase]["skipped"] = f"time budget ({budget.elapsed():.0f} s used, two compiles ~{estimate:.0f} s each)"
            continue
        try:
            # The last phase's compiles are done with. Dropping them keeps Dynamo's per-function
            # cache (8 entries) from filling up with two copies per phase and model.
            torch._dynamo.reset()
            warmup = 3 if phase == "prefill" else 5
            rounds, per_round = (2, 2) if args.smoke else (8, 4 if phase == "prefill" else max(1, steps // 4))
            calls = 2 + warmup + rounds * per_round  # the first call, the logits call, warmup, timed
            prepared = {variant: prepare(variant, phase, calls) for variant in ("dense", "sparse")}
            step_fns = {variant: fn for variant, (fn, _, _) in prepared.items()}
            for variant, (fn, report, _) in prepared.items():
                seconds = first_call_s(fn, device)
                estimates[name] = max(estimates.get(name, 0.0), seconds)
                result[phase][variant] = {"first_call_s_with_compile": seconds}
                if not report.graphs:
                    raise RuntimeError(f"the {variant} variant reused another compile (its 2:4 pass never ran)")
            if phase == "prefill":
                for variant, fn in step_fns.items():
                    logits[variant] = fn().logits.float().cpu()
            times = interleaved_seconds(step_fns, device, warmup=warmup, rounds=rounds, per_round=per_round)
            for variant, (_, report, tokens) in prepared.items():
                per_call = statistics.median(times[variant])
                result[phase][variant].update({
                    "median_ms_per_call": per_call * 1e3, "fastest_ms_per_call": min(times[variant]) * 1e3,
                    "calls_timed": len(times[variant]), "tokens_per_s": tokens / per_call,
                    "rewritten": len(report.rewritten), "eligible": len(report.eligible), "report": report.summary(),
                    "m_ranges_per_graph": [sorted({r.m_range for r in graph}, key=lambda r: r[0]) for graph in report.graphs],
                })
            del prepared, step_fns
        except Exception as err:  # one failed phase must not lose the others
            result[phase]["error"] = f"{type(err).__name__}: {err}"
            result[phase]["traceback"] = traceback.format_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for phase in ("prefill", "decode"):
        dense, sparse = result[phase].get("dense", {}), result[phase].get("sparse", {})
        if "tokens_per_s" in dense and "tokens_per_s" in sparse:
            ratio = sparse["tokens_per_s"] / dense["tokens_per_s"]
            result[phase]["sparse_over_dense"] = ratio
            result[phase]["not_slower_within_noise"] = ratio >= 1 - NOISE
            result[phase]["sparse_over_dense_fastest_call"] = dense["fastest_ms_per_call"] / sparse["fastest_ms_per_call"]
    if len(logits) == 2:
        diff = (logits["sparse"] - logits["dense"]).abs().max()
        result["prefill"]["last_logits_max_abs_diff_sparse_vs_dense"] = float(diff)
        result["prefill"]["last_logits_max_abs"] = float(logits["dense"].abs().max())
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def probe_cusparselt() -> int:
    """Exit status for gpu_check.sh, run in its own process (a bad foreign call can kill it):
    0 when the cached-plan cuSPARSELt caller matches torch's wrapper on small products or is not
    used here, 1 otherwise (the script then sets PROXSPARSE_CUSPARSELT=torch)."""
    bootstrap()
    from proxsparse_ao.cusparselt import direct

    library = direct() if torch.cuda.is_available() else None
    if library is None:
        print("probe: the cached-plan cuSPARSELt caller is not used here")
        return 0
    device = torch.device("cuda")
    for dtype in (torch.bfloat16, torch.float16):
        for m, n, k in ((8, 64, 128), (24, 256, 512), (2048, 1024, 4096)):
            weight = pruned(n, k, device, dtype)
            packed = torch._cslt_compress(weight)
            x = torch.randn(m, k, device=device, dtype=dtype)
            ours = library.mm(packed, x, n)
            torch_result = torch._cslt_sparse_mm(packed, x.t(), transpose_result=True)
            torch.cuda.synchronize()
            diff = float((ours.float() - torch_result.float()).abs().max())
            scale = float(torch_result.float().abs().max())
            print(f"probe: {dtype} {m}x{n}x{k}: algorithm search {library.plan_search(device, dtype, m, n, k)}")
            if not diff <= 1e-2 * scale:
                print(f"probe: {dtype} {m}x{n}x{k}: max |ours - torch| = {diff:g} (max |torch| {scale:g})")
                return 1
    print(f"probe: cached-plan cuSPARSELt caller matches torch._cslt_sparse_mm (cuSPARSELt {library.version(device)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and linear24_timings.json")
    parser.add_argument("--budget-s", type=finite(0), default=430.0, help="no new step starts past this (default 430)")
    parser.add_argument("--sparse", default="auto", choices=("auto", "always"), help="policy of the 2:4 variant")
    parser.add_argument("--model", default=None, help="local HF checkpoint folder of the default model (SmolLM2)")
    parser.add_argument("--prefill-tokens", type=at_least(1), default=2048)
    parser.add_argument("--decode-steps", type=at_least(1), default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"argument out: {args.out} is a file, not a folder")
    if args.model is not None and not (Path(args.model).expanduser() / "config.json").is_file():
        parser.error(f"argument --model: {args.model} is not a model folder (no config.json in it)")
    args.out.mkdir(parents=True, exist_ok=True)
    bootstrap()
    device = torch.device("cpu" if args.smoke else "cuda")
    budget = Budget(args.budget_s)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke}
    path = args.out / "gpu_check.json"

    def write() -> None:
        """Replace the JSON in one step: a run killed while writing leaves the previous file."""
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(results, indent=1))
        os.replace(partial, path)

    def stage(name: str, fn) -> None:
        # Marked before it runs: a stage that kills the process (a hard crash, the shell's
        # timeout) still shows up in the JSON, next to the results written before it.
        results[name] = {"error": "unfinished: the process ended during this stage"}
        write()
        start = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as err:  # a failed stage is a result; the next stages still run
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        results[name]["seconds"] = time.perf_counter() - start
        write()
        print(f"[{budget.elapsed():6.1f} s] {name}: {'error' if 'error' in results[name] else 'done'}", flush=True)

    stage("environment", lambda: environment(device, args.out))
    if device.type == "cuda" and not torch.cuda.is_available():
        results["environment"]["error"] = "CUDA is not available"
        write()
        return 1
    stage("kernel_correctness", lambda: kernel_correctness(device, args.smoke))
    stage("cusparselt_paths", lambda: cusparselt_paths(device))
    stage("per_shape_speed", lambda: per_shape_speed(device, args.smoke, args.out / "linear24_timings.json"))
    before_prox = budget.keeping(PROX_ESTIMATE_S)
    stage("compiled_rewrite", lambda: compiled_rewrite(device, args.smoke, before_prox))
    estimates: dict[str, float] = {}
    models = ["tiny_random"] if args.smoke else ["llama_1b_random", "smollm2_135m_shapes_random"]
    for name in models:
        stage(f"end_to_end_{name}", lambda name=name: end_to_end(name, device, args, before_prox, estimates))
    stage("prox_step", lambda: prox_step(device, args.smoke, budget))  # last: see the module docstring
    results["total_seconds"] = budget.elapsed()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(run_script(probe_cusparselt if sys.argv[1:] == ["--probe-cusparselt"] else main))
