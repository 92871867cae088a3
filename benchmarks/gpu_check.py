"""GPU check for the 2:4 deployment path: kernel correctness, per-shape speed, the prox step, end-to-end tokens/s.

Runs with torch and transformers only (no torchao, lm_eval, datasets, network) from a plain
checkout. Every stage writes its result (or its error) into OUT/gpu_check.json as soon as it
ends, and stages are skipped once the time budget would be exceeded, so a slow or failing
stage never loses the others. The prox step runs last, in time kept for it: a crash inside its
Triton kernel can poison the CUDA context, which would fail every later stage of the run.
`--smoke` runs the same code on CPU with tiny shapes.
"""

from __future__ import annotations

import argparse
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
PROX_ESTIMATE_S = 60.0  # four kernel compiles and six CPU solves of a 4096x4096 matrix, with room
PROX_MAX_EXCESS = 1e-6  # objective of the GPU result above the CPU one, relative to 1/2 ||z||^2 per group
MS = (1, 16, 128, 2048, 8192)
TARGET_MLP_SPEEDUP = 1.3
NOISE = 0.02  # end to end counts as "not slower" within 2% timing noise

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


def environment(device: torch.device) -> dict:
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
            })
    mlp = [r for r in rows if r["layer"] in MLP_SHAPES and r["m"] >= 2048]
    return {
        "dtype": "bfloat16",
        "rows": rows,
        "target": f"speedup >= {TARGET_MLP_SPEEDUP} on MLP shapes at M >= 2048",
        "target_met": bool(mlp) and all(r["speedup"] >= TARGET_MLP_SPEEDUP for r in mlp),
    }


def bare_cusparselt_ms(device: torch.device, m: int, n: int, k: int) -> float | None:
    """torch._cslt_sparse_mm alone on a weight packed beforehand, where linear24 runs cuSPARSELt:
    what the op's own work (padding, the packed-weight lookup) adds on top of it."""
    from proxsparse_ao.ops import cuda_backend

    if device.type != "cuda" or cuda_backend(torch.cuda.get_device_capability(device)) != "cusparselt":
        return None
    packed = torch._cslt_compress(pruned(n, k, device, torch.bfloat16))
    x = torch.randn(m + (-m) % 8, k, device=device, dtype=torch.bfloat16)
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


def timed(fn, device: torch.device, warmup: int, reps: int) -> tuple[float, float, float]:
    """(seconds of the first call, which compiles; median and fastest seconds per call after
    `warmup` more calls). The fastest shows what the median loses to a busy host."""
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), min(times)


def end_to_end(name: str, device: torch.device, args, budget: Budget, estimates: dict) -> dict:
    """Prefill and decode tokens/s under proxsparse_ao.compile, dense (sparse='never') vs 2:4."""
    import proxsparse_ao
    from proxsparse_ao.speed import SpeedTable
    from transformers import StaticCache

    dtype = torch.bfloat16
    model, weights = build_model(name, device, dtype, args.model if name != "llama_1b_random" else None)
    result = {"weights": weights, "pruned_linears": prune_model(model), "sparse_mode": args.sparse}
    batch, seq = (1, 32) if args.smoke else (1, args.prefill_tokens)
    context, steps = (8, 4) if args.smoke else (128, args.decode_steps)
    result.update(prefill={"batch": batch, "tokens": seq}, decode={"batch": batch, "context": context, "steps": steps})
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator).to(device)
    prompt = ids[:, :context]
    cache_name = cache_kwarg(model)
    timings = SpeedTable(path=args.out / "linear24_timings.json")
    logits = {}

    def run(variant: str, phase: str) -> dict:
        compiled, report = proxsparse_ao.compile(model, sparse="never" if variant == "dense" else args.sparse, timings=timings)
        if phase == "prefill":
            def step():
                return compiled(ids, use_cache=False, logits_to_keep=1)

            first, per_call, fastest = timed(step, device, warmup=3, reps=5 if args.smoke else 10)
            logits[variant] = step().logits.float().cpu()
            tokens_per_s = batch * seq / per_call
        else:
            cache = StaticCache(config=model.config, max_cache_len=context + steps + 8)
            with torch.no_grad():
                model(prompt, **{cache_name: cache}, use_cache=True)
            position = [context]
            token = ids[:, context : context + 1]

            def step():
                pos = torch.full((batch, 1), position[0], device=device, dtype=torch.long)
                position[0] += 1
                return compiled(token, position_ids=pos, **{cache_name: cache}, use_cache=True, logits_to_keep=1)

            first, per_call, fastest = timed(step, device, warmup=5, reps=steps)
            tokens_per_s = batch / per_call
        estimates[name] = max(estimates.get(name, 0.0), first)
        return {
            "first_call_s_with_compile": first, "median_ms_per_call": per_call * 1e3, "fastest_ms_per_call": fastest * 1e3,
            "tokens_per_s": tokens_per_s,
            "rewritten": len(report.rewritten), "eligible": len(report.eligible), "report": report.summary(),
        }

    for phase in ("prefill", "decode"):
        for variant in ("dense", "sparse"):
            estimate = estimates.get(name, 90.0)
            if not budget.allows(estimate + 15):
                result[phase][variant] = {"skipped": f"time budget ({budget.elapsed():.0f} s used, next compile ~{estimate:.0f} s)"}
                continue
            try:
                result[phase][variant] = run(variant, phase)
            except Exception as err:  # one failed phase must not lose the others
                result[phase][variant] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    for phase in ("prefill", "decode"):
        dense, sparse = result[phase].get("dense", {}), result[phase].get("sparse", {})
        if "tokens_per_s" in dense and "tokens_per_s" in sparse:
            ratio = sparse["tokens_per_s"] / dense["tokens_per_s"]
            result[phase]["sparse_over_dense"] = ratio
            result[phase]["not_slower_within_noise"] = ratio >= 1 - NOISE
    if len(logits) == 2:
        diff = (logits["sparse"] - logits["dense"]).abs().max()
        result["prefill"]["last_logits_max_abs_diff_sparse_vs_dense"] = float(diff)
        result["prefill"]["last_logits_max_abs"] = float(logits["dense"].abs().max())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and linear24_timings.json")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no new step starts past this (default 420)")
    parser.add_argument("--sparse", default="auto", choices=("auto", "always"), help="policy of the 2:4 variant")
    parser.add_argument("--model", default=None, help="local HF checkpoint folder of the default model (SmolLM2)")
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    args = parser.parse_args(argv)
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

    stage("environment", lambda: environment(device))
    if device.type == "cuda" and not torch.cuda.is_available():
        results["environment"]["error"] = "CUDA is not available"
        write()
        return 1
    stage("kernel_correctness", lambda: kernel_correctness(device, args.smoke))
    stage("per_shape_speed", lambda: per_shape_speed(device, args.smoke, args.out / "linear24_timings.json"))
    estimates: dict[str, float] = {}
    models = ["tiny_random"] if args.smoke else ["llama_1b_random", "smollm2_135m_shapes_random"]
    before_prox = budget.keeping(PROX_ESTIMATE_S)
    for name in models:
        stage(f"end_to_end_{name}", lambda name=name: end_to_end(name, device, args, before_prox, estimates))
    stage("prox_step", lambda: prox_step(device, args.smoke, budget))  # last: see the module docstring
    results["total_seconds"] = budget.elapsed()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
