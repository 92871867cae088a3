"""The learning loop: exact 2:4 masks, the model given back untouched, resume equality, padding, seeded dropout, bad input."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from proxsparse_ao import ProxSparseConfig, is_nm, learn_masks
from proxsparse_ao.calibration import PAD_ID
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.training import NonFiniteLossWarning, _causal_lm_loss, top2_codes
from proxsparse_ao.masks import magnitude_mask
from proxsparse_ao.targets import select_targets
from tiny_models import make_tiny_opt

FAST = dict(samples=6, seqlen=16, lr=1e-2)


def _tokens(n=6, length=16, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _layers(model, config):
    return select_targets(model, config.targets, config.ignore).layers


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_masks_are_exactly_2_4_and_model_comes_back_untouched(tiny_llama):
    config = ProxSparseConfig(**FAST)
    before = _state(tiny_llama)
    grads_before = {n: p.requires_grad for n, p in tiny_llama.named_parameters()}
    seen = []
    result = learn_masks(tiny_llama, _tokens(), config, _layers(tiny_llama, config), callback=seen.append)
    assert _same(before, _state(tiny_llama))
    assert grads_before == {n: p.requires_grad for n, p in tiny_llama.named_parameters()}
    assert not tiny_llama.training and all(p.grad is None for p in tiny_llama.parameters())
    assert len(result.masks) == 14 and result.steps_done == result.total_steps == 6
    for name, mask in result.masks.items():
        assert mask.dtype == torch.bool and is_nm(mask.float())
        assert int(mask.sum()) * 2 == mask.numel()
    assert [s.step for s in seen] == list(range(1, 7))
    assert seen[-1].fraction_24 > seen[0].fraction_24
    assert result.history[-1]["changed_vs_magnitude"] == pytest.approx(result.changed_vs_magnitude)


@pytest.mark.parametrize("caller_mode", [torch.no_grad, torch.inference_mode])
def test_learning_under_the_callers_no_grad_or_inference_mode_learns_the_same_masks(tiny_llama, caller_mode):
    """Pruning code often runs under no_grad: the first backward failed there ("element 0 of tensors does not
    require grad"), after the statistics pass. The caller's mode holds again after learning."""
    config = ProxSparseConfig(**{**FAST, "samples": 3})
    layers = _layers(tiny_llama, config)
    expected = learn_masks(tiny_llama, _tokens(3), config, layers).masks
    before = _state(tiny_llama)
    with caller_mode():
        tokens = _tokens(3)  # made under the caller's mode too (an inference tensor under inference_mode)
        masks = learn_masks(tiny_llama, tokens, config, layers).masks
        assert not torch.is_grad_enabled()
    assert masks.keys() == expected.keys() and all(torch.equal(masks[n], expected[n]) for n in masks)
    assert _same(before, _state(tiny_llama))


@pytest.mark.parametrize("extra", [dict(train="all"), dict(precision="bfloat16"), dict(gradient_checkpointing=True, w0_device="model")])
def test_other_modes_also_restore_the_model_exactly(tiny_llama, extra):
    config = ProxSparseConfig(**{**FAST, "samples": 3, **extra})
    before = _state(tiny_llama)
    result = learn_masks(tiny_llama, _tokens(3), config, _layers(tiny_llama, config))
    assert _same(before, _state(tiny_llama))
    assert all(is_nm(m.float()) for m in result.masks.values())


def test_resume_after_a_kill_gives_the_identical_mask(tiny_llama_factory, tmp_path):
    tokens = _tokens(8)
    straight_model = tiny_llama_factory()
    config = ProxSparseConfig(**{**FAST, "samples": 8})
    straight = learn_masks(straight_model, tokens, config, _layers(straight_model, config))

    killed = ProxSparseConfig(**{**FAST, "samples": 8, "checkpoint_dir": str(tmp_path), "checkpoint_every": 1})
    for kill_at in (3, 6):
        model = tiny_llama_factory()

        def die(stats, at=kill_at):
            if stats.step == at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            learn_masks(model, tokens, killed, _layers(model, killed), callback=die)
    model = tiny_llama_factory()
    resumed = learn_masks(model, tokens, killed, _layers(model, killed))
    assert resumed.resumed_from == 5  # killed inside step 6, before its checkpoint
    assert all(torch.equal(straight.masks[n], resumed.masks[n]) for n in straight.masks)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_a_checkpoint_of_another_run_is_refused(tiny_llama, tmp_path):
    config = ProxSparseConfig(**{**FAST, "samples": 2, "checkpoint_dir": str(tmp_path)})
    learn_masks(tiny_llama, _tokens(2), config, _layers(tiny_llama, config))
    with pytest.raises(ProxSparseError, match="belongs to another run"):
        learn_masks(tiny_llama, _tokens(2, seed=1), config, _layers(tiny_llama, config))


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tiny_llama):
    config = ProxSparseConfig(**FAST)
    layers = _layers(tiny_llama, config)
    norm = tiny_llama.model.norm
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += module.training  # the activation-statistics pass runs in eval mode
        return output * float("nan") if calls["n"] == 3 else output

    handle = norm.register_forward_hook(poison)
    before = _state(tiny_llama)
    try:
        with pytest.warns(NonFiniteLossWarning, match="non-finite loss") as caught:
            result = learn_masks(tiny_llama, _tokens(), config, layers)
    finally:
        handle.remove()
    assert caught[0].filename == __file__  # the caller's line, not the library's
    assert result.steps_done == 2 and "step 3" in result.stopped
    assert len(result.history) == 2
    assert all(is_nm(m.float()) for m in result.masks.values())
    assert _same(before, _state(tiny_llama))


@pytest.mark.parametrize("bad", [torch.zeros(0, 16, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 8), [[1, 2]]])
def test_empty_or_malformed_calibration_is_a_clear_error(tiny_llama, bad):
    config = ProxSparseConfig(**FAST)
    with pytest.raises(ProxSparseError, match="calibration"):
        learn_masks(tiny_llama, bad, config, _layers(tiny_llama, config))


@pytest.mark.parametrize("dtype", [torch.uint16, torch.int16, torch.uint8, torch.int32])
def test_token_ids_of_any_integer_dtype_learn_what_int64_ids_learn(tiny_llama, dtype):
    """"calibration must be an integer tensor [N, L], got torch.uint16" refused the compact ids of token files."""
    config = ProxSparseConfig(**{**FAST, "samples": 2})
    layers = _layers(tiny_llama, config)
    expected = learn_masks(tiny_llama, _tokens(2), config, layers).masks
    masks = learn_masks(tiny_llama, _tokens(2).to(dtype), config, layers).masks
    assert all(torch.equal(masks[n], expected[n]) for n in expected)


@pytest.mark.parametrize("bad", [torch.zeros(4, 8, dtype=torch.bool), torch.zeros(4, 8, dtype=torch.complex64)])
def test_token_ids_that_are_not_integers_are_refused(tiny_llama, bad):
    config = ProxSparseConfig(**FAST)
    with pytest.raises(ProxSparseError, match=r"^calibration must be an integer tensor \[N, L\], got torch\.(bool|complex64) "):
        learn_masks(tiny_llama, bad, config, _layers(tiny_llama, config))


def test_token_ids_on_the_meta_device_are_refused_before_any_work(tiny_llama):
    """A meta tensor has a shape but no values: it failed with torch's "Tensor.item() cannot be called on meta tensors"."""
    config = ProxSparseConfig(**FAST)
    before = _state(tiny_llama)
    meta = torch.empty(4, 16, dtype=torch.long, device="meta")
    with pytest.raises(ProxSparseError, match=r"^calibration is a meta tensor \(4, 16\): it has a shape but no token ids; pass the ids on cpu or cuda$"):
        learn_masks(tiny_llama, meta, config, _layers(tiny_llama, config))
    assert _same(_state(tiny_llama), before)


def test_top2_codes_match_magnitude_mask_with_ties():
    weight = torch.randint(-2, 3, (64, 32)).float()
    codes = top2_codes(weight)
    bits = torch.tensor([1, 2, 4, 8], dtype=torch.uint8)
    expected = (magnitude_mask(weight).reshape(-1, 4).to(torch.uint8) * bits).sum(1, dtype=torch.uint8)
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("activation_aware", [True, False])
def test_without_prox_and_with_a_negligible_step_the_mask_is_the_starting_one(tiny_llama, activation_aware):
    """Activation-aware learning starts from Wanda's mask (one dense pass), plain learning from magnitude's."""
    from proxsparse_ao.baselines import wanda_mask
    from reference_norms import input_norms_by_hand

    config = ProxSparseConfig(samples=4, seqlen=16, lr=1e-12, lambda1=0.0, activation_aware=activation_aware)
    layers = _layers(tiny_llama, config)
    tokens = _tokens(4)
    norms = input_norms_by_hand(tiny_llama, layers, tokens)
    result = learn_masks(tiny_llama, tokens, config, layers)
    for name, layer in layers.items():
        start = wanda_mask(layer.weight, norms[name]) if activation_aware else magnitude_mask(layer.weight)
        assert torch.equal(result.masks[name], start), name
    assert result.changed_vs_start == 0.0
    assert (result.changed_vs_magnitude > 0.1) == activation_aware  # Wanda's mask is not magnitude's
    assert [h["fraction_24"] for h in result.history][-1] < 0.2  # no prox: the weights stay dense
    assert ("activation_pass_seconds" in result.extra) == activation_aware


def test_activation_aware_learning_moves_masks_and_the_lr_schedule_option_runs(tiny_llama_factory):
    tokens = _tokens(6)
    results = {}
    for schedule in ("constant", "lr"):
        model = tiny_llama_factory()
        config = ProxSparseConfig(**FAST, strength_schedule=schedule)
        results[schedule] = learn_masks(model, tokens, config, _layers(model, config))
    for result in results.values():
        assert all(is_nm(m.float()) for m in result.masks.values())
        assert result.changed_vs_start > 0
        assert result.history[-1]["changed_vs_start"] == pytest.approx(result.changed_vs_start)
    # the threshold follows the lr, which is below its peak on every step but one: less shrinkage
    assert results["lr"].history[-1]["fraction_24"] < results["constant"].history[-1]["fraction_24"]


def test_an_fp16_model_learns_in_bf16_and_comes_back_in_fp16_untouched(tiny_llama_factory):
    """AdamW's state underflows in fp16 (the first step would divide by zero), so "auto" learns in bf16."""
    model = tiny_llama_factory(dtype=torch.float16)
    config = ProxSparseConfig(**FAST)
    before = _state(model)
    result = learn_masks(model, _tokens(), config, _layers(model, config))
    assert result.steps_done == result.total_steps and result.stopped is None
    assert all(is_nm(mask.float()) for mask in result.masks.values())
    assert _same(before, _state(model))


def test_a_learned_mask_never_spends_a_kept_slot_on_an_original_zero(tiny_llama):
    """On weights already 2:4 (a model pruned before), learning can grow the zeros; the final mask
    still keeps the two original non-zeros of every group, so nothing is pruned twice."""
    config = ProxSparseConfig(**{**FAST, "lr": 3e-2})
    layers = _layers(tiny_llama, config)
    with torch.no_grad():
        for layer in layers.values():
            layer.weight.mul_(magnitude_mask(layer.weight))
    result = learn_masks(tiny_llama, _tokens(), config, layers)
    for name, layer in layers.items():
        assert torch.equal(result.masks[name], layer.weight.detach() != 0), name


def test_token_ids_outside_the_vocabulary_are_refused_before_any_work(tiny_llama):
    config = ProxSparseConfig(**FAST)
    with pytest.raises(ProxSparseError, match="calibration has token ids 0..256; the model's vocabulary is 0..255"):
        learn_masks(tiny_llama, torch.tensor([[0, 256, 3]]), config, _layers(tiny_llama, config))
    with pytest.raises(ProxSparseError, match="calibration has token ids -1..3; the model's vocabulary is 0..255"):
        learn_masks(tiny_llama, torch.tensor([[-1, 3, 3]]), config, _layers(tiny_llama, config))


def test_calibration_longer_than_the_models_context_is_refused_before_any_work(tiny_llama):
    tiny_llama.config.max_position_embeddings = 8
    config = ProxSparseConfig(**FAST)
    before = _state(tiny_llama)
    with pytest.raises(ProxSparseError, match="^the calibration sample length 16 is longer than the model's maximum context of 8 tokens"):
        learn_masks(tiny_llama, _tokens(length=16), config, _layers(tiny_llama, config))
    assert _same(_state(tiny_llama), before)


def test_a_model_whose_forward_takes_no_input_ids_is_refused_before_any_work():
    model = torch.nn.Sequential(torch.nn.Embedding(256, 64), torch.nn.Linear(64, 256))
    with pytest.raises(ProxSparseError, match="Sequential.forward takes no input_ids: mask learning needs a causal language model"):
        learn_masks(model, _tokens(), ProxSparseConfig(**FAST), {"1": model[1]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"callback": 3}, r"^callback must be a function taking StepStats, got int 3$"),
        ({"stats_every": "2"}, r"^stats_every must be an int \(steps between statistics passes\) or None, got str '2'$"),
    ],
)
def test_a_callback_or_stats_interval_that_cannot_work_is_refused_before_any_work(tiny_llama, monkeypatch, kwargs, message):
    """They failed with a TypeError at the end of the first step, after the statistics pass and a step of learning."""
    import proxsparse_ao.training as training

    monkeypatch.setattr(training, "activation_scales", lambda *args: pytest.fail("the statistics pass ran"))
    config = ProxSparseConfig(**FAST)
    with pytest.raises(ProxSparseError, match=message):
        learn_masks(tiny_llama, _tokens(), config, _layers(tiny_llama, config), **kwargs)


def test_a_model_that_returns_no_logits_is_refused_and_comes_back_untouched(tiny_llama):
    """The base model inside a ...ForCausalLM (no LM head) failed with a TypeError inside transformers
    (`tuple indices must be integers or slices`), when the loss read its hidden states as logits."""
    base = tiny_llama.model
    before = _state(base)
    config = ProxSparseConfig(**FAST)
    with pytest.raises(ProxSparseError, match=r"^LlamaModel returns no logits .*got BaseModelOutputWithPast.*\.\.\.ForCausalLM"):
        learn_masks(base, _tokens(), config, _layers(base, config))
    assert _same(_state(base), before)


@pytest.mark.parametrize("activation_aware", [True, False], ids=["activation-aware", "weight-space"])
def test_a_layer_no_token_reaches_is_refused_by_name_before_any_work(tiny_llama, tmp_path, activation_aware):
    """Called directly (not through learn or the CLI), with or without the statistics pass; a checkpoint folder
    that cannot be used is named first in both cases (it is checked before any pass over the tokens)."""
    tiny_llama.model.layers[0].mlp.unused = torch.nn.Linear(64, 64)
    (tmp_path / "a_file").write_text("")
    before = _state(tiny_llama)
    config = ProxSparseConfig(**FAST, activation_aware=activation_aware, checkpoint_dir=str(tmp_path / "a_file"))
    with pytest.raises(ProxSparseError, match="a_file is not a folder"):
        learn_masks(tiny_llama, _tokens(), config, _layers(tiny_llama, config))
    config = ProxSparseConfig(**FAST, activation_aware=activation_aware)
    with pytest.raises(ProxSparseError, match=r"no calibration token reaches .*: model\.layers\.0\.mlp\.unused; "):
        learn_masks(tiny_llama, _tokens(), config, _layers(tiny_llama, config))
    assert _same(_state(tiny_llama), before)


def _padded(tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    padded = tokens.clone()
    for row, length in zip(padded, lengths):
        row[length:] = PAD_ID
    return padded


def test_padding_is_neither_attended_nor_a_target_a_padded_row_scores_as_its_trimmed_self(tiny_llama):
    tokens = _tokens(2, 16)
    padded = _padded(tokens, [16, 9])
    with torch.no_grad():
        batch = _causal_lm_loss(tiny_llama, padded)
        alone = [_causal_lm_loss(tiny_llama, tokens[:1]), _causal_lm_loss(tiny_llama, tokens[1:, :9])]
        one_padded_row = _causal_lm_loss(tiny_llama, padded[1:])
    torch.testing.assert_close(one_padded_row, alone[1])
    torch.testing.assert_close(batch, (15 * alone[0] + 8 * alone[1]) / 23)  # the mean over the 23 real targets


def test_a_padded_sample_learns_the_masks_of_its_trimmed_self(tiny_llama_factory):
    tokens = _tokens(1, 16)
    config = ProxSparseConfig(**{**FAST, "samples": 1})
    runs = []
    for calibration in (_padded(tokens, [11]), tokens[:, :11]):
        model = tiny_llama_factory()
        runs.append(learn_masks(model, calibration, config, _layers(model, config)))  # activation-aware: its pass too
    padded, trimmed = runs
    assert padded.history[0]["ce"] == pytest.approx(trimmed.history[0]["ce"], rel=1e-5)
    assert all(torch.equal(padded.masks[n], trimmed.masks[n]) for n in trimmed.masks)


def test_padded_batches_of_several_samples_learn(tiny_llama):
    config = ProxSparseConfig(**{**FAST, "batch_size": 3})
    result = learn_masks(tiny_llama, _padded(_tokens(), [16, 5, 16, 2, 12, 16]), config, _layers(tiny_llama, config))
    assert result.steps_done == 2 and all(is_nm(m.float()) for m in result.masks.values())
    assert all(h["ce"] == h["ce"] for h in result.history)  # finite: no all-padding row or empty mean


def test_a_batch_of_short_samples_runs_only_as_wide_as_its_longest(tiny_llama):
    """Padding costs nothing: a step's forward is as wide as the batch's longest sample, not seqlen."""
    config = ProxSparseConfig(**{**FAST, "batch_size": 3, "activation_aware": False})
    widths = []
    def record(module, args, out):
        if module.training:  # a learning step, not the pass that checks every target is reached (eval mode)
            widths.append(args[0].shape[1])

    handle = tiny_llama.model.embed_tokens.register_forward_hook(record)
    try:
        learn_masks(tiny_llama, _padded(_tokens(), [5, 9, 3, 7, 2, 4]), config, _layers(tiny_llama, config))
    finally:
        handle.remove()
    assert len(widths) == 2 and max(widths) == 9  # seqlen is 16: no step ran wider than the longest sample


@pytest.mark.parametrize(
    ("rows", "message"),
    [([[3, PAD_ID, 4]], "padding \\(-100\\) before a token"), ([[3, PAD_ID, PAD_ID]], "fewer than 2 tokens")],
)
def test_padding_must_be_at_the_end_of_rows_of_two_or_more_tokens(tiny_llama, rows, message):
    config = ProxSparseConfig(**FAST)
    with pytest.raises(ProxSparseError, match=message):
        learn_masks(tiny_llama, torch.tensor(rows), config, _layers(tiny_llama, config))


def test_config_seed_alone_decides_the_masks_under_dropout_and_the_callers_rng_is_left_alone():
    config = ProxSparseConfig(**FAST)
    runs = []
    for caller_seed in (1, 2):
        model = make_tiny_opt()
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        runs.append(learn_masks(model, _tokens(), config, _layers(model, config)))
        assert torch.equal(torch.get_rng_state(), before)
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]
    assert all(torch.equal(runs[0].masks[n], runs[1].masks[n]) for n in runs[0].masks)
    model = make_tiny_opt()
    other = learn_masks(model, _tokens(), ProxSparseConfig(**{**FAST, "seed": 5}), _layers(model, config))
    assert [h["loss"] for h in other.history] != [h["loss"] for h in runs[0].history]


def test_resume_under_dropout_gives_the_uninterrupted_run(tmp_path):
    config = ProxSparseConfig(**FAST)
    model = make_tiny_opt()
    torch.manual_seed(99)  # what the caller's RNG holds matters to no run below
    straight = learn_masks(model, _tokens(), config, _layers(model, config))
    resumable = ProxSparseConfig(**{**FAST, "checkpoint_dir": str(tmp_path), "checkpoint_every": 1})
    _interrupt_in_step(3, make_tiny_opt(), resumable)
    model = make_tiny_opt()
    torch.manual_seed(123)
    resumed = learn_masks(model, _tokens(), resumable, _layers(model, resumable))
    assert resumed.resumed_from == 2
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert all(torch.equal(straight.masks[n], resumed.masks[n]) for n in straight.masks)


def _interrupt_in_step(step: int, model, config: ProxSparseConfig) -> None:
    """learn_masks stopped by Ctrl-C in step `step`, before that step's checkpoint is written."""

    def die(stats):
        if stats.step == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn_masks(model, _tokens(), config, _layers(model, config), callback=die)


def test_a_run_resumes_with_its_calibration_file_named_another_way(tmp_path, tiny_llama_factory):
    """Started as data/calib.txt, resumed from elsewhere as ../run/data/calib.txt: the same tokens, so the same
    run (it was refused as "belongs to another run")."""
    checkpoints = str(tmp_path / "ckpt")
    here = ProxSparseConfig(**{**FAST, "calibration": "data/calib.txt", "checkpoint_dir": checkpoints, "checkpoint_every": 1})
    there = ProxSparseConfig(**{**here.to_dict(), "calibration": "../run/data/calib.txt"})
    _interrupt_in_step(2, tiny_llama_factory(), here)
    model = tiny_llama_factory()
    assert learn_masks(model, _tokens(), there, _layers(model, there)).resumed_from == 1


# --- the optimisation itself: schedule, clipping, weight decay, frozen term, batch order, strengths ---


@contextmanager
def _optimizer_steps():
    """Every optimizer step taken inside the block, as the optimizer sees it just before stepping: its class,
    lr, weight decay and the norm of the gradients it is about to apply (after any clipping)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps = []

    def record(optimizer, args, kwargs):
        group = optimizer.param_groups[0]
        grads = [p.grad.double() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        steps.append({"optimizer": type(optimizer).__name__, "lr": group["lr"], "weight_decay": group["weight_decay"],
                      "grad_norm": float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))})

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield steps
    finally:
        handle.remove()


def test_the_lr_warms_up_linearly_from_zero_then_decays_linearly_to_zero_and_is_logged_as_applied(tiny_llama):
    """8 steps, warmup_ratio 0.25: 2 warmup steps (lr * 0, lr * 1/2, as HF's linear schedule), then lr * (8 - s) / 6."""
    config = ProxSparseConfig(samples=8, seqlen=8, lr=1e-2, warmup_ratio=0.25, activation_aware=False)
    with _optimizer_steps() as steps:
        result = learn_masks(tiny_llama, _tokens(8, 8), config, _layers(tiny_llama, config))
    expected = [1e-2 * f for f in (0.0, 0.5, 6 / 6, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)]
    assert [h["lr"] for h in result.history] == pytest.approx(expected, abs=1e-12)
    assert [s["lr"] for s in steps] == pytest.approx(expected, abs=1e-12)  # the logged lr is the one the step used


def test_without_warmup_the_first_step_runs_at_the_full_lr():
    from proxsparse_ao.training import _lr_factor

    factor = _lr_factor(0, 4)
    assert [factor(step) for step in range(4)] == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.0])
def test_the_gradient_is_clipped_to_max_grad_norm_before_the_step_and_0_turns_clipping_off(tiny_llama, max_grad_norm):
    config = ProxSparseConfig(samples=3, seqlen=8, lr=1e-2, activation_aware=False, max_grad_norm=max_grad_norm)
    with _optimizer_steps() as steps:
        result = learn_masks(tiny_llama, _tokens(3, 8), config, _layers(tiny_llama, config))
    logged = [h["grad_norm"] for h in result.history]  # the norm before clipping
    assert len(steps) == 3 and min(logged) > 0.1
    applied = [min(norm, max_grad_norm or float("inf")) for norm in logged]
    assert [s["grad_norm"] for s in steps] == pytest.approx(applied, rel=1e-4)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adamw_runs_with_the_configured_weight_decay(tiny_llama, weight_decay):
    """0 means none at all (torch's AdamW would default to 0.01)."""
    config = ProxSparseConfig(samples=2, seqlen=8, lr=1e-2, activation_aware=False, weight_decay=weight_decay)
    with _optimizer_steps() as steps:
        learn_masks(tiny_llama, _tokens(2, 8), config, _layers(tiny_llama, config))
    assert [(s["optimizer"], s["weight_decay"]) for s in steps] == [("AdamW", weight_decay)] * 2


def test_weight_decay_changes_what_is_learned(tiny_llama_factory):
    losses = []
    for weight_decay in (0.0, 0.5):
        model = tiny_llama_factory()
        config = ProxSparseConfig(samples=3, seqlen=8, lr=1e-1, warmup_ratio=0.0, activation_aware=False, weight_decay=weight_decay)
        losses.append([h["ce"] for h in learn_masks(model, _tokens(3, 8), config, _layers(model, config)).history])
    assert losses[0][0] == losses[1][0] and losses[0][1:] != losses[1][1:]  # the same start, then decay pulls the weights


def test_the_frozen_weight_term_is_lambda2_times_f_of_the_weights_each_step_saw(tiny_llama_factory):
    from proxsparse_ao.regularizers import frozen_weight_penalty

    lambda2, epsilon = 10.0, 0.5
    config = ProxSparseConfig(samples=4, seqlen=8, lr=1e-2, warmup_ratio=0.0, activation_aware=False,
                              lambda2=lambda2, epsilon=epsilon)
    model = tiny_llama_factory()
    layers = _layers(model, config)
    originals = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    seen = []

    def snapshot(module, args):
        if module.training:
            seen.append({name: layer.weight.detach().clone() for name, layer in layers.items()})

    handle = model.register_forward_pre_hook(snapshot)
    try:
        result = learn_masks(model, _tokens(4, 8), config, layers)
    finally:
        handle.remove()
    expected = [lambda2 * sum(float(frozen_weight_penalty(w[n], originals[n], epsilon)) for n in w) for w in seen]
    frozen = [h["frozen"] for h in result.history]
    assert frozen[0] == 0.0 and min(frozen[1:]) > 0  # untouched weights cost nothing, moved ones do
    assert frozen == pytest.approx(expected, rel=1e-4)
    assert [h["loss"] for h in result.history] == pytest.approx([h["ce"] + h["frozen"] for h in result.history], rel=1e-6)

    model = tiny_llama_factory()
    plain = learn_masks(model, _tokens(4, 8), ProxSparseConfig(**{**config.to_dict(), "lambda2": 0.0}), _layers(model, config))
    assert all(h["frozen"] == 0.0 for h in plain.history)
    assert plain.history[0]["ce"] == result.history[0]["ce"] and plain.history[-1]["ce"] != result.history[-1]["ce"]


def _batches_seen(model, tokens, config) -> list[int]:
    """The calibration rows the learning steps ran on, in order (the activation pass runs in eval mode: not counted)."""
    seen = []

    def record(module, args, output):
        if module.training:
            seen.extend(next(i for i, row in enumerate(tokens) if torch.equal(row, ids)) for ids in args[0])

    handle = model.model.embed_tokens.register_forward_hook(record)
    try:
        learn_masks(model, tokens, config, _layers(model, config))
    finally:
        handle.remove()
    return seen


def test_each_sample_is_used_once_in_an_order_shuffled_by_the_seed(tiny_llama):
    tokens = _tokens(8, 4)
    orders = {}
    for seed in (0, 1):
        config = ProxSparseConfig(samples=8, seqlen=4, lr=1e-6, lambda1=0.0, activation_aware=False, seed=seed)
        orders[seed] = _batches_seen(tiny_llama, tokens, config)
        assert sorted(orders[seed]) == list(range(8))  # one pass: every sample exactly once
        assert orders[seed] != list(range(8))  # shuffled, not in the given order
        assert _batches_seen(tiny_llama, tokens, config) == orders[seed]  # the seed alone decides it
    assert orders[0] != orders[1]


def test_a_non_finite_gradient_stops_the_run_and_keeps_the_state_after_the_last_good_step(tiny_llama_factory):
    from proxsparse_ao.masks import learned_mask

    config = ProxSparseConfig(samples=5, seqlen=8, lr=1e-2, activation_aware=False)
    tokens = _tokens(5, 8)

    model = tiny_llama_factory()  # the uninterrupted run, its masks as they stand after step 2
    layers = _layers(model, config)
    originals = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    after_two = {}

    def keep_masks(stats):
        if stats.step == 2:
            after_two.update({n: learned_mask(layer.weight.detach().abs(), originals[n]) for n, layer in layers.items()})

    learn_masks(model, tokens, config, layers, callback=keep_masks)

    model = tiny_llama_factory()
    layers = _layers(model, config)
    before = _state(model)
    backward = {"n": 0}

    def poison(grad):  # the loss stays finite; only this gradient of step 3 is NaN
        backward["n"] += 1
        return grad * float("nan") if backward["n"] == 3 else grad

    handle = layers["model.layers.0.mlp.up_proj"].weight.register_hook(poison)
    try:
        with pytest.warns(NonFiniteLossWarning, match="non-finite gradient"):
            result = learn_masks(model, tokens, config, layers)
    finally:
        handle.remove()
    assert result.stopped == "non-finite gradient at step 3; kept the state after step 2"
    assert result.steps_done == 2 and len(result.history) == 2
    assert all(torch.equal(result.masks[n], after_two[n]) for n in after_two)
    assert after_two[next(iter(after_two))].any()
    assert _same(before, _state(model)) and all(p.grad is None for p in model.parameters())


def test_absolute_strength_is_lambda1_itself_and_relative_is_the_ratio_over_each_layers_weight_scale(tiny_llama):
    from proxsparse_ao.targets import weight_rms

    layers = _layers(tiny_llama, ProxSparseConfig())
    tokens = _tokens(1, 8)
    common = dict(samples=1, seqlen=8, lr=1e-3, lambda1=0.25, activation_aware=False)
    absolute = learn_masks(tiny_llama, tokens, ProxSparseConfig(**common, strength="absolute"), layers)
    assert absolute.strengths == {name: 0.25 for name in layers}
    relative = learn_masks(tiny_llama, tokens, ProxSparseConfig(**common, strength="relative"), layers)
    expected = {name: 0.25 * 1e-3 / (3 * weight_rms(layer.weight) ** 2) for name, layer in layers.items()}
    assert relative.strengths.keys() == expected.keys()
    assert all(relative.strengths[n] == pytest.approx(expected[n], rel=1e-9) for n in expected)
    assert len(set(relative.strengths.values())) > 1  # each layer its own threshold


def test_a_checkpoint_of_the_same_settings_and_tokens_on_other_weights_is_refused(tiny_llama_factory, tmp_path):
    config = ProxSparseConfig(**{**FAST, "samples": 2, "checkpoint_dir": str(tmp_path)})
    model = tiny_llama_factory(seed=0)
    learn_masks(model, _tokens(2), config, _layers(model, config))
    other = tiny_llama_factory(seed=1)  # same architecture, names and shapes; other weights
    with pytest.raises(ProxSparseError, match="belongs to another run"):
        learn_masks(other, _tokens(2), config, _layers(other, config))


def test_by_default_the_mask_statistics_run_about_64_times_a_run_and_always_at_the_last_step():
    from proxsparse_ao.training import STATS_PASSES, stats_interval

    assert STATS_PASSES == 64
    assert [stats_interval(None, steps) for steps in (1, 16, 64, 65, 400)] == [1, 1, 1, 2, 7]
    assert stats_interval(5, 400) == 5 and stats_interval(0, 400) == 1


def test_steps_between_statistics_passes_log_none_for_the_statistics(tiny_llama_factory, monkeypatch):
    import proxsparse_ao.training as training

    config = ProxSparseConfig(**{**FAST, "samples": 7})
    model = tiny_llama_factory()
    explicit = learn_masks(model, _tokens(7), config, _layers(model, config), stats_every=3)
    monkeypatch.setattr(training, "STATS_PASSES", 3)  # 7 steps: a pass every 3rd step by default too
    model = tiny_llama_factory()
    default = learn_masks(model, _tokens(7), config, _layers(model, config))
    for result in (explicit, default):  # steps 3 and 6, and the last step, 7
        assert [row["fraction_24"] is not None for row in result.history] == [False, False, True, False, False, True, True]


def test_the_mask_statistics_count_groups_over_every_layer(tiny_llama):
    from proxsparse_ao.training import _Codes

    config = ProxSparseConfig(**FAST)
    layers = _layers(tiny_llama, config)
    weights = {name: layer.weight for name, layer in layers.items()}
    first = next(iter(weights.values()))
    with torch.no_grad():
        first.copy_(first * magnitude_mask(first))  # one layer 2:4, the others dense
    magnitude = {name: top2_codes(w) for name, w in weights.items()}
    start = {name: torch.zeros_like(code) for name, code in magnitude.items()}  # a start no group matches
    total = sum(w.numel() // 4 for w in weights.values())
    codes = _Codes(weights, {}, magnitude, start, total)
    fraction, changed, moved = codes.pattern_stats()
    assert fraction == pytest.approx(first.numel() / 4 / total) and changed == 0.0 and moved == 1.0
