"""sparsify_ end to end, and the torchao handler through plain quantize_."""

from __future__ import annotations

import pytest
import torch
from torchao.quantization import quantize_

from proxsparse_ao import (
    ConfigError,
    MagnitudeConfig,
    ProxSparseConfig,
    SparseGPTConfig,
    WandaConfig,
    attach_masks,
    is_nm,
    learn,
    learn_masks,
    load_pruned,
    magnitude_mask,
    save_pruned,
    sparsify_,
    stored_masks,
    target_filter,
)
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.targets import select_targets
from tiny_models import make_tiny_family

FAST = dict(samples=4, seqlen=16, lr=1e-2)


def _tokens(n=4):
    return torch.randint(0, 256, (n, 16), generator=torch.Generator().manual_seed(0))


def test_sparsify_prunes_targets_exactly_and_leaves_the_rest(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    model = sparsify_(tiny_llama, ProxSparseConfig(**FAST), calibration=_tokens())
    assert model is tiny_llama
    targets = set(select_targets(model, ["Linear"], ["re:.*lm_head"]).layers)
    for name, module in model.named_modules():
        if name in targets:
            weight, original = module.weight.detach(), before[name + ".weight"]
            kept = module.proxsparse_mask
            assert is_nm(weight) and int(kept.sum()) * 2 == kept.numel()
            assert torch.equal(weight[kept], original[kept])  # the ORIGINAL weights under the mask
            assert not bool(torch.signbit(weight[~kept]).any()) and bool((weight[~kept] == 0).all())
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] not in targets:
            assert torch.equal(value, before[key]), key


def test_filter_fn_limits_pruning(tiny_llama):
    sparsify_(tiny_llama, ProxSparseConfig(**FAST), lambda m, name: name.endswith("q_proj"), calibration=_tokens())
    assert is_nm(tiny_llama.model.layers[0].self_attn.q_proj.weight)
    assert not is_nm(tiny_llama.model.layers[0].mlp.up_proj.weight)


def test_handler_applies_stored_masks_through_plain_quantize(tiny_llama):
    layer = tiny_llama.model.layers[1].mlp.down_proj
    original = layer.weight.detach().clone()
    mask = magnitude_mask(original)
    attach_masks(tiny_llama, {"model.layers.1.mlp.down_proj": mask})
    quantize_(tiny_llama, ProxSparseConfig())  # torchao's own entry point, default filter (all linears)
    assert torch.equal(layer.weight.detach(), torch.where(mask, original, torch.zeros(())))
    assert not is_nm(tiny_llama.model.layers[0].mlp.down_proj.weight)  # no stored mask: untouched


def test_sparsify_without_tokenizer_or_calibration_is_a_clear_error(tiny_llama):
    with pytest.raises(Exception, match="no calibration tokens"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST))


def test_a_seqlen_longer_than_the_models_context_is_refused_before_the_text_is_read(tiny_llama, byte_tokenizer, monkeypatch):
    import proxsparse_ao.data

    def unread(*args, **kwargs):
        raise AssertionError("the calibration text was read")

    monkeypatch.setattr(proxsparse_ao.data, "load_documents", unread)
    tiny_llama.config.max_position_embeddings = 8
    with pytest.raises(ProxSparseError, match="^ProxSparseConfig.seqlen 16 is longer than the model's maximum context of 8 tokens"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST), tokenizer=byte_tokenizer)
    with pytest.raises(ProxSparseError, match="^the calibration sample length 16 is longer than the model's maximum context of 8"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST), calibration=_tokens())


def test_wrong_config_type_is_rejected(tiny_llama):
    with pytest.raises(ConfigError, match="expected a ProxSparseConfig"):
        sparsify_(tiny_llama, {"lambda1": 1.0}, calibration=_tokens())
    config = ProxSparseConfig(**FAST)
    config.lambda1 = -1.0  # reassigned after construction: still caught
    with pytest.raises(ConfigError, match="lambda1"):
        sparsify_(tiny_llama, config, calibration=_tokens())


@pytest.mark.parametrize("config, got", [
    (WandaConfig, r"got the class WandaConfig: pass an instance, WandaConfig\(\)$"),
    ("magnitude", r"got str$"),
], ids=["a-config-class", "a-method-name"])
def test_a_config_that_is_no_config_instance_names_every_config_sparsify_takes(tiny_llama, config, got):
    """A baseline's class was refused as "expected a ProxSparseConfig, got ABCMeta"."""
    with pytest.raises(ConfigError, match=r"^expected a ProxSparseConfig or a baseline config \(MagnitudeConfig, WandaConfig, "
                                          r"SparseGPTConfig\), " + got):
        sparsify_(tiny_llama, config)


@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), MagnitudeConfig(), WandaConfig(samples=4, seqlen=16)])
def test_a_model_that_is_no_module_is_refused_in_one_line(config):
    """It failed with AttributeError: 'NoneType' object has no attribute 'named_modules'."""
    with pytest.raises(ProxSparseError, match="^the model must be a torch.nn.Module, got NoneType$"):
        sparsify_(None, config, calibration=_tokens())


@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), MagnitudeConfig(), WandaConfig(samples=4, seqlen=16)])
def test_a_non_finite_target_weight_is_named_before_any_work(tiny_llama, config):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    tiny_llama.model.layers[1].mlp.down_proj.weight.data[3, 5] = float("nan")
    with pytest.raises(ProxSparseError, match=r"model.layers.1.mlp.down_proj: the weight has a non-finite value \(nan\) at \[3, 5\]"):
        sparsify_(tiny_llama, config, calibration=_tokens())
    for key, value in tiny_llama.state_dict().items():
        assert key == "model.layers.1.mlp.down_proj.weight" or torch.equal(value, before[key]), key


def test_a_model_whose_weights_are_not_loaded_is_refused(tiny_llama_factory):
    model = tiny_llama_factory().to("meta")
    with pytest.raises(ProxSparseError, match="the weight is on the meta device"):
        sparsify_(model, MagnitudeConfig())


def test_stored_masks_are_what_save_pruned_needs_after_sparsify(tiny_llama, tmp_path):
    from proxsparse_ao import load_pruned, save_pruned

    sparsify_(tiny_llama, ProxSparseConfig(**FAST), calibration=_tokens())
    masks = stored_masks(tiny_llama)
    assert sorted(masks) == sorted(select_targets(tiny_llama, ["Linear"], ["re:.*lm_head"]).layers)
    assert all(torch.equal(tiny_llama.get_submodule(n).weight.detach() != 0, m) for n, m in masks.items())
    _, _, loaded, _ = load_pruned(save_pruned(tiny_llama, tmp_path / "pruned", masks))
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)


@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), WandaConfig(samples=4, seqlen=16)], ids=["proxsparse", "wanda"])
def test_a_torch_compiled_model_is_pruned_eagerly_through_the_model_it_wraps(tiny_llama_factory, config):
    """Learning compiled the training step (minutes on a real model) and Wanda's capture ran under dynamo;
    now nothing is compiled, the masks are those of the uncompiled model and the wrapper comes back."""
    from torch._dynamo.utils import counters

    expected = stored_masks(sparsify_(tiny_llama_factory(), config, calibration=_tokens()))
    compiled = torch.compile(tiny_llama_factory())
    counters.clear()
    assert sparsify_(compiled, config, calibration=_tokens()) is compiled
    assert not counters["frames"]["total"]
    masks = stored_masks(compiled._orig_mod)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[n], expected[n]) for n in masks)
    assert all(torch.equal(compiled.get_submodule("_orig_mod." + n).weight.detach() != 0, m) for n, m in masks.items())


def test_plain_quantize_with_target_filter_prunes_what_sparsify_would(tiny_llama_factory):
    """torchao's default filter is every nn.Linear, lm_head included; target_filter applies the config's rules."""
    config = MagnitudeConfig(ignore=["re:.*lm_head", "re:.*mlp.*"])
    model = tiny_llama_factory()
    head = model.lm_head.weight.detach().clone()
    quantize_(model, config, filter_fn=target_filter(model, config))
    assert is_nm(model.model.layers[0].self_attn.q_proj.weight)
    assert not is_nm(model.model.layers[0].mlp.up_proj.weight) and torch.equal(model.lm_head.weight, head)


def test_magnitude_prunes_by_magnitude_even_where_another_method_left_a_mask(tiny_llama_factory):
    model = tiny_llama_factory()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    sparsify_(model, WandaConfig(samples=4, seqlen=16), calibration=_tokens())
    model.load_state_dict(dense)  # dense again; Wanda's masks stay on the modules (non-persistent buffers)
    layer = model.model.layers[0].self_attn.q_proj
    expected = magnitude_mask(layer.weight)
    assert not torch.equal(layer.proxsparse_mask, expected)
    sparsify_(model, MagnitudeConfig())
    assert torch.equal(layer.weight.detach() != 0, expected)


def test_documents_mode_learns_from_short_documents_and_counts_their_real_tokens(tiny_llama, byte_tokenizer, tmp_path):
    from proxsparse_ao.api import learn

    text = tmp_path / "short.txt"
    text.write_text("\n\n".join(f"document {i}: " + "lorem ipsum " * i for i in range(1, 9)))
    config = ProxSparseConfig(samples=8, seqlen=64, lr=1e-2, batch_size=2, calibration=str(text), calibration_mode="documents")
    result = learn(tiny_llama, config, tokenizer=byte_tokenizer)
    assert result.extra["calibration_shape"] == [8, 64]
    assert result.extra["calibration_tokens"] == sum(min(64, len(f"document {i}: " + "lorem ipsum " * i)) for i in range(1, 9))
    assert result.steps_done == 4 and all(is_nm(m.float()) for m in result.masks.values())


def test_a_subclass_of_a_config_prunes_like_its_base(tiny_llama_factory):
    from dataclasses import dataclass

    @dataclass
    class NotedProxSparse(ProxSparseConfig):
        note: str = "run 1"

    @dataclass
    class NotedMagnitude(MagnitudeConfig):
        note: str = "run 1"

    for config in (NotedProxSparse(**FAST), NotedMagnitude()):
        model = tiny_llama_factory()
        sparsify_(model, config, calibration=_tokens())
        masks = stored_masks(model)
        assert masks and all(is_nm(model.get_submodule(name).weight) for name in masks), type(config).__name__


def test_a_checkpoint_dir_that_cannot_be_written_is_refused_before_the_statistics_pass(tiny_llama, tmp_path, monkeypatch):
    import proxsparse_ao.training as training

    monkeypatch.setattr(training, "activation_scales", lambda *a, **k: pytest.fail("the statistics pass ran"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for folder in (blocker, blocker / "below"):
        with pytest.raises(ProxSparseError, match=f"checkpoint_dir {folder}: {blocker} is not a folder"):
            sparsify_(tiny_llama, ProxSparseConfig(**FAST, checkpoint_dir=str(folder)), calibration=_tokens())


def test_another_runs_checkpoint_is_refused_before_the_statistics_pass(tiny_llama_factory, tmp_path, monkeypatch):
    import proxsparse_ao.training as training

    config = ProxSparseConfig(**FAST, checkpoint_dir=str(tmp_path / "state"))
    sparsify_(tiny_llama_factory(seed=0), config, calibration=_tokens())
    monkeypatch.setattr(training, "activation_scales", lambda *a, **k: pytest.fail("the statistics pass ran"))
    with pytest.raises(ProxSparseError, match="belongs to another run"):
        sparsify_(tiny_llama_factory(seed=1), config, calibration=_tokens())  # same settings and tokens, other weights


def test_masks_of_an_earlier_run_that_the_weights_no_longer_follow_are_dropped(tiny_llama):
    dense = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    in_layer = lambda index: lambda module, name: name.startswith(f"model.layers.{index}.")  # noqa: E731
    sparsify_(tiny_llama, MagnitudeConfig(), in_layer(0))
    tiny_llama.load_state_dict(dense)  # layer 0 dense again: its stored masks no longer hold
    sparsify_(tiny_llama, MagnitudeConfig(), in_layer(1))
    assert sorted(stored_masks(tiny_llama)) == sorted(select_targets(tiny_llama, ["Linear"], ["re:.*lm_head"], in_layer(1)).layers)
    sparsify_(tiny_llama, MagnitudeConfig(), in_layer(0))  # pruned one after the other: both layers' masks are kept
    assert len(stored_masks(tiny_llama)) == len(select_targets(tiny_llama, ["Linear"], ["re:.*lm_head"]).layers)


def test_attach_masks_refuses_what_is_never_pruned_or_does_not_exist(tiny_llama):
    head = magnitude_mask(tiny_llama.lm_head.weight)
    with pytest.raises(ProxSparseError, match="mask for lm_head: embeddings and lm_head are never pruned"):
        attach_masks(tiny_llama, {"lm_head": head})
    with pytest.raises(ProxSparseError, match="mask for model.layers.9.mlp: the model has no such module"):
        attach_masks(tiny_llama, {"model.layers.9.mlp": head})
    q_proj = tiny_llama.model.layers[0].self_attn.q_proj.weight
    with pytest.raises(ProxSparseError, match=r"is torch.float32 \(64, 64\); the weight needs torch.bool \(64, 64\)"):
        attach_masks(tiny_llama, {"model.layers.0.self_attn.q_proj": magnitude_mask(q_proj).float()})
    assert stored_masks(tiny_llama) == {}


def test_plain_quantize_with_magnitude_stores_the_masks_save_pruned_needs(tiny_llama, tmp_path):
    from proxsparse_ao import load_pruned, save_pruned

    config = MagnitudeConfig()
    quantize_(tiny_llama, config, filter_fn=target_filter(tiny_llama, config))
    masks = stored_masks(tiny_llama)
    assert sorted(masks) == sorted(select_targets(tiny_llama, ["Linear"], ["re:.*lm_head"]).layers)
    _, _, loaded, _ = load_pruned(save_pruned(tiny_llama, tmp_path / "pruned", masks))
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)


def test_a_tokenizer_name_instead_of_a_tokenizer_is_named(tiny_llama):
    with pytest.raises(ProxSparseError, match="tokenizer must be a tokenizer object .* got str 'gpt2'"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST), tokenizer="gpt2")


def test_a_callback_that_cannot_be_called_is_refused_before_calibration_is_made(tiny_llama):
    """It failed with "'int' object is not callable" after the statistics pass and the first step."""
    with pytest.raises(ProxSparseError, match="^callback must be a function taking StepStats, got int 3$"):
        sparsify_(tiny_llama, ProxSparseConfig(**FAST), callback=3)  # no tokenizer either: the callback is named first


def test_a_callback_with_a_baseline_is_refused(tiny_llama):
    with pytest.raises(ConfigError, match="callback: MagnitudeConfig learns nothing step by step"):
        sparsify_(tiny_llama, MagnitudeConfig(), callback=lambda stats: None)
    assert not is_nm(tiny_llama.model.layers[0].self_attn.q_proj.weight)


def test_the_errors_a_caller_catches_are_exported():
    import proxsparse_ao
    from proxsparse_ao.targets import NoTargetsError
    from proxsparse_ao.training import NonFiniteLossWarning

    assert proxsparse_ao.ProxSparseError is ProxSparseError and issubclass(proxsparse_ao.ConfigError, ProxSparseError)
    assert proxsparse_ao.NoTargetsError is NoTargetsError and proxsparse_ao.NonFiniteLossWarning is NonFiniteLossWarning


@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), MagnitudeConfig()])
def test_two_targets_sharing_one_weight_are_named_before_any_work(tiny_llama, config):
    mlp = tiny_llama.model.layers[0].mlp
    mlp.up_proj.weight = mlp.gate_proj.weight  # one tensor, two layers
    before = mlp.gate_proj.weight.detach().clone()
    with pytest.raises(ProxSparseError, match="model.layers.0.mlp.gate_proj and model.layers.0.mlp.up_proj share one weight "
                       "tensor: it gets one mask, so make only one of them a target"):
        sparsify_(tiny_llama, config, calibration=_tokens())
    assert torch.equal(mlp.gate_proj.weight.detach(), before)


def test_a_batch_larger_than_the_calibration_given_is_refused(tiny_llama):
    """samples counts the made calibration; given tokens, their rows must fill one batch (and samples is not used)."""
    before = tiny_llama.model.layers[0].mlp.up_proj.weight.detach().clone()
    with pytest.raises(ConfigError, match=r"^ProxSparseConfig.batch_size \(4\) is larger than the 2 calibration samples: "):
        sparsify_(tiny_llama, ProxSparseConfig(**{**FAST, "batch_size": 4}), calibration=_tokens(2))
    assert torch.equal(tiny_llama.model.layers[0].mlp.up_proj.weight, before)
    with pytest.raises(ConfigError, match=r"^ProxSparseConfig.batch_size \(4\) is larger than the 2 calibration samples: "):
        learn_masks(tiny_llama, _tokens(2), ProxSparseConfig(**{**FAST, "batch_size": 4}), {"up": tiny_llama.model.layers[0].mlp.up_proj})
    result = learn(tiny_llama, ProxSparseConfig(**{**FAST, "samples": 1, "batch_size": 2}), calibration=_tokens(2))
    assert result.total_steps == 1  # samples=1 is not read: the 2 given rows make one batch of 2
    with pytest.raises(ConfigError, match=r"^ProxSparseConfig.batch_size \(2\) is larger than ProxSparseConfig.samples \(1\)"):
        learn(tiny_llama, ProxSparseConfig(**{**FAST, "samples": 1, "batch_size": 2}), tokenizer=object())


@pytest.mark.parametrize("config", [
    ProxSparseConfig(**FAST), ProxSparseConfig(**FAST, activation_aware=False), WandaConfig(samples=4, seqlen=16),
    SparseGPTConfig(samples=4, seqlen=16),
], ids=["proxsparse", "proxsparse-weight-space", "wanda", "sparsegpt"])
@pytest.mark.parametrize("unreached", ["never called", "called on empty slices"])
def test_a_target_no_token_reaches_is_refused_by_every_calibrated_method(tiny_llama, config, unreached):
    """No calibration token reaches it (a leftover head; an expert the router never picks), so no method has
    anything to choose its mask from: refused by name, before ProxSparse learns anything."""
    from tiny_models import EmptySliceExpert

    if unreached == "never called":
        tiny_llama.model.layers[0].mlp.unused = torch.nn.Linear(64, 64)
        name = r"model\.layers\.0\.mlp\.unused"
    else:
        tiny_llama.model.layers[0].mlp = EmptySliceExpert(tiny_llama.model.layers[0].mlp)
        name = r"model\.layers\.0\.mlp\.expert"
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(ProxSparseError, match=rf"no calibration token reaches .*{name}"):
        sparsify_(tiny_llama, config, calibration=_tokens())
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())
    assert not stored_masks(tiny_llama)


@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), WandaConfig(samples=4, seqlen=16), SparseGPTConfig(samples=4, seqlen=16)],
                         ids=["proxsparse", "wanda", "sparsegpt"])
def test_a_tokenizer_whose_ids_the_model_does_not_have_is_refused_by_every_calibrated_method(tiny_llama, byte_tokenizer, config):
    """The tokens made with the tokenizer are checked against the model's vocabulary as given tokens are:
    before, Wanda and SparseGPT failed inside the embedding with torch's IndexError."""
    tiny_llama.resize_token_embeddings(100)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(ProxSparseError, match=r"^calibration has token ids \d+\.\.\d+; the model's vocabulary is 0\.\.99$"):
        sparsify_(tiny_llama, config, tokenizer=byte_tokenizer)
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())


@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), ProxSparseConfig(**FAST, activation_aware=False),
                                    WandaConfig(samples=4, seqlen=16), SparseGPTConfig(samples=4, seqlen=16), MagnitudeConfig()],
                         ids=["proxsparse", "proxsparse-weight-space", "wanda", "sparsegpt", "magnitude"])
def test_every_module_comes_back_in_its_own_train_or_eval_mode(tiny_llama, config):
    """A block kept in eval inside a model in training came back in training: only the model's own flag was put back."""
    tiny_llama.train()
    tiny_llama.model.layers[0].eval()
    before = {name: module.training for name, module in tiny_llama.named_modules()}
    sparsify_(tiny_llama, config, calibration=_tokens())
    assert {name: module.training for name, module in tiny_llama.named_modules()} == before


def _with_fused_experts(model):
    """The tiny Llama with a 3-D expert tensor outside any nn.Linear, as transformers' MoE blocks hold them."""
    model.model.layers[0].mlp.experts = torch.nn.Module()
    model.model.layers[0].mlp.experts.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 128, 64))
    return model


def test_a_selection_that_only_looks_leaves_the_warning_to_the_run_that_prunes(tiny_llama_factory, recwarn):
    """verify's default target list selects with warn=False: the later sparsify_ still says what stays dense."""
    from proxsparse_ao.verification import target_layers

    model = _with_fused_experts(tiny_llama_factory())
    target_layers(model, None)
    assert not [w for w in recwarn if "gate_up_proj" in str(w.message)]
    sparsify_(model, ProxSparseConfig(**FAST), calibration=_tokens())
    assert len([w for w in recwarn if "gate_up_proj" in str(w.message)]) == 1


def test_one_run_says_once_which_weights_stay_dense(tiny_llama_factory, recwarn):
    """sparsify_, then quantize_ with target_filter (which selects again) on the same model: one warning;
    another model, even an identical one, gets its own."""
    config = ProxSparseConfig(**FAST)
    model = sparsify_(_with_fused_experts(tiny_llama_factory()), config, calibration=_tokens())
    quantize_(model, config, filter_fn=target_filter(model, config))
    select_targets(model, config.targets, config.ignore)
    said = [str(w.message) for w in recwarn if "stay" in str(w.message) and "dense" in str(w.message)]
    assert len(said) == 1 and "layers.0.mlp.experts.gate_up_proj [4, 128, 64]" in said[0], said
    select_targets(_with_fused_experts(tiny_llama_factory()), config.targets, config.ignore)
    assert len([w for w in recwarn if "gate_up_proj" in str(w.message)]) == 2


FAMILIES = ["qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "gpt_neox", "falcon"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("config", [ProxSparseConfig(**FAST), WandaConfig(samples=4, seqlen=16)], ids=["proxsparse", "wanda"])
def test_other_model_families_are_pruned_exactly_saved_and_loaded_back(family, config, tmp_path):
    model = make_tiny_family(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsify_(model, config, calibration=_tokens())
    masks = stored_masks(model)
    targets = set(select_targets(model, ["Linear"], ["re:.*lm_head"]).layers)
    assert set(masks) == targets and len(targets) >= 8
    for name in targets:
        assert is_nm(model.get_submodule(name).weight), name
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] not in targets:
            assert torch.equal(value, before[key]), key  # embeddings, norms, lm_head (tied or not): untouched
    out = save_pruned(model, tmp_path / "pruned", masks, {"source_model": family})
    loaded, _, loaded_masks, _ = load_pruned(out)
    assert set(loaded_masks) == targets
    tokens = _tokens(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits, rtol=0, atol=0)
