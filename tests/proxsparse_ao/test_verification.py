"""The library half of `verify`: metadata, targets, the structure check, the dense source, speed gating."""

from __future__ import annotations

import importlib

import pytest
import torch

from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.masks import apply_mask, magnitude_mask
from proxsparse_ao.verification import (
    SPEED_SKIP, baseline_source, check_structure, measure_speed, speed_skip_reason, target_layers,
)


def prune_in_place(model) -> dict[str, torch.Tensor]:
    layers, _, _ = target_layers(model, None)
    masks = {}
    with torch.no_grad():
        for name, layer in layers.items():
            masks[name] = magnitude_mask(layer.weight)
            layer.weight.copy_(apply_mask(layer.weight, masks[name]))
    return masks


def test_default_targets_are_every_linear_but_lm_head(tiny_llama):
    layers, source, skipped = target_layers(tiny_llama, None)
    assert len(layers) == 14 and "lm_head" not in layers and skipped == {}
    assert source == "default targets (no proxsparse.json)"


def test_structure_passes_a_pruned_model_and_names_bad_layers(tiny_llama):
    masks = prune_in_place(tiny_llama)
    layers, source, _ = target_layers(tiny_llama, {"targets": sorted(masks)})
    assert source == "proxsparse.json"
    good = check_structure(layers, masks)
    assert good.pattern_ok and good.bad_groups == 0 and good.pattern()[2] == 1.0
    with torch.no_grad():
        layers["model.layers.1.mlp.down_proj"].weight.fill_(1.0)
        layers["model.layers.0.self_attn.q_proj"].weight[0, 0] = -0.0  # off-mask entry that is -0.0, pattern still fine
    masks["model.layers.0.self_attn.q_proj"][0, 0] = False
    bad = check_structure(layers, masks)
    assert bad.failing == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    down = next(layer for layer in bad.layers if layer.name.endswith("1.mlp.down_proj"))
    assert down.bad_groups == down.groups and "more than 2 non-zeros" in down.problem()
    assert bad.to_dict()["failing_layers"]["model.layers.0.self_attn.q_proj"] == "1 entries are not +0.0 where the mask is off"


def test_a_nan_or_inf_weight_fails_the_structure_check_even_where_the_pattern_holds(tiny_llama):
    masks = prune_in_place(tiny_llama)
    layers, _, _ = target_layers(tiny_llama, {"targets": sorted(masks)})
    up = layers["model.layers.0.mlp.up_proj"]
    kept = masks["model.layers.0.mlp.up_proj"].nonzero()[:2]
    with torch.no_grad():
        up.weight[tuple(kept[0])] = float("nan")
        up.weight[tuple(kept[1])] = float("inf")
    check = check_structure(layers, masks)
    assert check.failing == ["model.layers.0.mlp.up_proj"] and check.bad_groups == 0
    assert check.to_dict()["failing_layers"]["model.layers.0.mlp.up_proj"] == "2 entries are NaN or Inf"


def test_mismatched_masks_are_bad_input(tiny_llama):
    masks = prune_in_place(tiny_llama)
    layers, _, _ = target_layers(tiny_llama, None)
    with pytest.raises(ProxSparseError, match="does not match the targets"):
        check_structure(layers, {name: masks[name] for name in list(masks)[:3]})


def test_metadata_naming_missing_or_no_targets_is_bad_input(tiny_llama):
    with pytest.raises(ProxSparseError, match="does not have"):
        target_layers(tiny_llama, {"targets": ["model.layers.9.mlp.up_proj"]})
    with pytest.raises(ProxSparseError, match="no target layers"):
        target_layers(tiny_llama, {"targets": []})


def test_baseline_source():
    from proxsparse_ao.models import DEFAULT_MODEL_LABEL

    assert baseline_source(None, None) == (None, None)
    assert baseline_source({"source_model": DEFAULT_MODEL_LABEL}, None) == ("default", DEFAULT_MODEL_LABEL)
    assert baseline_source({"source_model": "/models/dense"}, None) == ("/models/dense", "/models/dense")
    assert baseline_source({"source_model": "/models/dense"}, "./other") == ("./other", "./other")


def test_speed_is_skipped_off_cuda_with_the_reason():
    reason = speed_skip_reason(torch.device("cpu"))
    assert reason.startswith(SPEED_SKIP) and "cpu" in reason


def test_end_to_end_speed_times_sparse_and_dense_alternately(tiny_llama, monkeypatch):
    """The compiled models are stand-ins here (no compile): what is checked is the protocol."""
    calls: list[str] = []
    compile_module = importlib.import_module("proxsparse_ao.compiler")
    monkeypatch.setattr(compile_module, "compile", lambda model, sparse: (lambda ids: calls.append("dense"), None))
    monkeypatch.setattr(importlib.import_module("proxsparse_ao.speed"), "time_linear", lambda *shape, reps: (2.0, 1.0))
    layers = list(target_layers(tiny_llama, None)[0])
    speed = measure_speed(tiny_llama, lambda ids: calls.append("sparse"), torch.zeros(1, 8, dtype=torch.long), layers, reps=8)
    s, d = "sparse", "dense"
    assert calls == [s] * 3 + [d] * 3 + ([s] * 2 + [d] * 2 + [d] * 2 + [s] * 2) * 2  # warm-up, then S D, D S, ...
    assert speed["tokens"] == 8 and speed["speedup"] == pytest.approx(speed["dense_ms"] / speed["sparse_ms"])
    assert set(speed["per_layer"]) == set(layers) and all(row["speedup"] == 2.0 for row in speed["per_layer"].values())


def test_deployment_check_fails_a_rewrite_that_changes_the_outputs():
    from proxsparse_ao.verification import Deployment

    def deployment(error: float, rewritten: list[str]) -> Deployment:
        return Deployment("bfloat16", ["a", "b"], rewritten, {}, {}, error, 0.02, 0.99, "", 1.0)

    assert deployment(0.019, ["a", "b"]).ok
    assert not deployment(0.5, ["a", "b"]).outputs_match
    assert not deployment(float("nan"), ["a", "b"]).ok
    missed = deployment(0.01, ["a"])
    assert not missed.all_rewritten and not missed.ok


@pytest.mark.parametrize(("eager_error", "limit"), [(0.02, 2 * 0.02 + 1e-3), (0.0, 1e-3), (0.3, 2 * 0.3 + 1e-3)])
def test_the_compiled_logits_may_differ_by_twice_the_dtypes_own_error_plus_a_small_floor_and_no_more(eager_error, limit):
    from proxsparse_ao.verification import Deployment

    def deployment(error: float) -> Deployment:
        return Deployment("bfloat16", ["a"], ["a"], {}, {}, error, eager_error, 1.0, "", 1.0)

    assert deployment(0.0).tolerance == pytest.approx(limit, rel=1e-12)
    assert deployment(limit * (1 - 1e-6)).ok and deployment(limit).ok  # at the limit: passes
    assert not deployment(limit * (1 + 1e-6)).outputs_match and not deployment(limit * (1 + 1e-6)).ok
    assert deployment(limit * 1.01).to_dict()["outputs_match"] is False


def test_a_single_group_with_three_nonzeros_fails_the_structure_check(tiny_llama):
    prune_in_place(tiny_llama)
    layers, _, _ = target_layers(tiny_llama, None)
    weight = layers["model.layers.0.self_attn.o_proj"].weight
    with torch.no_grad():
        weight[3, 4:8] = torch.tensor([1.0, -1.0, 0.5, 0.0])
    check = check_structure(layers)
    assert check.failing == ["model.layers.0.self_attn.o_proj"] and check.bad_groups == 1 and not check.pattern_ok


def test_a_mask_of_another_shape_than_its_weight_is_bad_input_naming_the_layer(tiny_llama):
    masks = prune_in_place(tiny_llama)
    layers, _, _ = target_layers(tiny_llama, None)
    masks["model.layers.1.mlp.down_proj"] = masks["model.layers.1.mlp.down_proj"].t()
    with pytest.raises(ProxSparseError, match=r"^the mask of model.layers.1.mlp.down_proj is \(128, 64\), its weight is \(64, 128\)$"):
        check_structure(layers, masks)


def test_metadata_naming_a_target_that_is_not_a_linear_is_bad_input(tiny_llama):
    with pytest.raises(ProxSparseError, match="names target 'model.layers.0.mlp', which is a LlamaMLP, not a Linear"):
        target_layers(tiny_llama, {"targets": ["model.layers.0.mlp"]})


def test_speed_is_skipped_on_a_gpu_without_a_2to4_kernel_naming_why(monkeypatch):
    compile_module = importlib.import_module("proxsparse_ao.compiler")
    monkeypatch.setattr(compile_module, "kernel_missing", lambda device: "GPU sm75 has no 2:4 sparse tensor cores")
    assert speed_skip_reason(torch.device("cuda")) == f"{SPEED_SKIP} (GPU sm75 has no 2:4 sparse tensor cores)"
    monkeypatch.setattr(compile_module, "kernel_missing", lambda device: None)
    assert speed_skip_reason(torch.device("cuda")) is None


def test_each_distinct_layer_shape_is_timed_once(tiny_llama, monkeypatch):
    timed = []
    compile_module = importlib.import_module("proxsparse_ao.compiler")
    monkeypatch.setattr(compile_module, "compile", lambda model, sparse: (lambda ids: None, None))
    monkeypatch.setattr(importlib.import_module("proxsparse_ao.speed"), "time_linear",
                        lambda device, dtype, m, n, k, reps: timed.append((m, n, k)) or (2.0, 1.0))
    layers = list(target_layers(tiny_llama, None)[0])
    speed = measure_speed(tiny_llama, lambda ids: None, torch.zeros(1, 8, dtype=torch.long), layers, reps=4)
    assert sorted(timed) == [(8, 32, 64), (8, 64, 64), (8, 64, 128), (8, 128, 64)]  # k/v, q/o, down, gate/up
    assert len(speed["per_layer"]) == 14


def test_a_deployment_with_no_eligible_linear_fails():
    """Nothing rewritten is no 2:4 deployment, even with matching logits."""
    from proxsparse_ao.verification import Deployment

    check = Deployment("bfloat16", [], [], {}, {"a": "not 2:4"}, 0.0, 0.0, 1.0, "", 1.0)
    assert check.all_rewritten and check.outputs_match and not check.ok and check.to_dict()["ok"] is False


def compile_eagerly(monkeypatch) -> list[str]:
    """Replace proxsparse_ao.compile by an eager stand-in (no Inductor) whose report marks every eligible
    linear rewritten; returns the sparse modes it was called with."""
    from proxsparse_ao.compiler import CompileReport
    from proxsparse_ao.passes import PassRecord, linear_status

    calls = []

    def compile_24(model, *, sparse):
        calls.append(sparse)
        status = linear_status(model)
        records = [PassRecord(name, tuple(model.get_submodule(name).weight.shape), (8, 8), why is None, why or "forced")
                   for name, why in status.items()]
        return (lambda ids: model(ids)), CompileReport(sparse, status, [records])

    monkeypatch.setattr(importlib.import_module("proxsparse_ao.compiler"), "compile", compile_24)
    return calls


def test_the_deployment_check_names_each_target_that_stays_dense_and_why(tiny_llama, monkeypatch):
    from proxsparse_ao.verification import check_deployment

    masks = prune_in_place(tiny_llama)
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.up_proj.weight.normal_()
    calls = compile_eagerly(monkeypatch)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    check, _, deploy = check_deployment(tiny_llama, ids, sorted(masks), torch.bfloat16)
    assert calls == ["always"] and next(deploy.parameters()).dtype == torch.bfloat16
    assert check.targets_not_eligible == {
        "model.layers.1.mlp.up_proj": "not 2:4: 2048 of 2048 groups of 4 have more than 2 non-zeros"
    }
    assert len(check.eligible) == 13 and check.rewritten == check.eligible and check.ok


def test_the_deployment_check_refuses_a_dtype_the_2to4_kernels_cannot_run_before_compiling(tiny_llama, monkeypatch):
    from proxsparse_ao.verification import check_deployment

    calls = compile_eagerly(monkeypatch)
    with pytest.raises(ProxSparseError, match="^2:4 kernels run fp16/bf16 weights, not torch.float32$"):
        check_deployment(tiny_llama, torch.zeros(1, 8, dtype=torch.long), [], torch.float32)
    assert calls == []
