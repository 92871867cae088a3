"""The baselines through the shared API: exactly 2:4, sequential calibration (padding ignored), torchao handlers, bad input."""

import pytest
import torch
from torch import nn
from torchao.quantization import quantize_

from proxsparse_ao.api import sparsify_
from proxsparse_ao.baselines import (
    Hessian,
    InputNorms,
    MagnitudeConfig,
    SparseGPTConfig,
    WandaConfig,
    capture_block_inputs,
    decoder_blocks,
    prune,
    sequential_prune,
)
from proxsparse_ao.baselines.sequential import capture_calibration_inputs
from proxsparse_ao.calibration import PAD_ID
from proxsparse_ao.config import ConfigError
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.masks import is_nm, magnitude_mask
from proxsparse_ao.targets import select_targets
from tiny_models import make_tiny_gemma3, make_tiny_llama

TOKENS = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
CONFIGS = [MagnitudeConfig(), WandaConfig(), SparseGPTConfig(), SparseGPTConfig(update_weights=False)]


@pytest.mark.parametrize("config", CONFIGS, ids=["magnitude", "wanda", "sparsegpt", "sparsegpt-mask"])
def test_every_method_exactly_24_and_nothing_else_changes(config, tiny_llama_factory):
    model = tiny_llama_factory(layers=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = prune(model, config, calibration=TOKENS)
    assert len(result.masks) == 14
    for name, mask in result.masks.items():
        weight = model.get_submodule(name).weight
        assert bool((mask.reshape(-1, 4).sum(1) == 2).all())
        assert is_nm(weight) and bool((weight[~mask] == 0).all()) and not bool(torch.signbit(weight[~mask]).any())
        original = before[f"{name}.weight"]
        if not (isinstance(config, SparseGPTConfig) and config.update_weights):
            assert torch.equal(weight[mask], original[mask])  # mask-only methods keep the original weights
    for name, param in model.named_parameters():
        if name.removesuffix(".weight") not in result.masks:
            assert torch.equal(param, before[name]), name


def test_calibrated_masks_differ_from_magnitude(tiny_llama_factory):
    model = tiny_llama_factory()
    magnitude = {n: magnitude_mask(model.get_submodule(n).weight) for n in ("model.layers.0.self_attn.q_proj",)}
    masks = prune(model, WandaConfig(), calibration=TOKENS).masks
    assert not torch.equal(masks["model.layers.0.self_attn.q_proj"], magnitude["model.layers.0.self_attn.q_proj"])


@pytest.mark.parametrize("config", [WandaConfig(), SparseGPTConfig()], ids=["wanda", "sparsegpt"])
def test_block_inputs_come_from_the_pruned_earlier_blocks(config, tiny_llama_factory):
    model = tiny_llama_factory(layers=3)
    dense = tiny_llama_factory(layers=3)
    seen: dict[int, torch.Tensor] = {}  # what each block first computes on (its first sublayer's input)
    handles = [
        block.input_layernorm.register_forward_pre_hook(lambda m, args, k=k: seen.setdefault(k, args[0].detach().clone()))
        for k, block in enumerate(model.model.layers)
    ]
    prune(model, config, calibration=TOKENS)
    for handle in handles:
        handle.remove()
    for k in (1, 2):
        pruned_inputs, _ = capture_block_inputs(model, model.model.layers[k], TOKENS[:1])
        dense_inputs, _ = capture_block_inputs(dense, dense.model.layers[k], TOKENS[:1])
        assert torch.allclose(seen[k], pruned_inputs[0], atol=1e-6), k  # from the pruned blocks < k
        assert not torch.allclose(seen[k], dense_inputs[0], atol=1e-3), k  # not from the dense ones


class CarryBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 64)

    def forward(self, hidden: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden + self.proj(hidden) * carry, carry * 2 + hidden.mean()


class CarryModel(nn.Module):
    """Its loop unpacks (hidden states, carry) from each block and hands the carry to the next block as an
    argument: the capture cannot skip the blocks' computation here."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(256, 64)
        self.layers = nn.ModuleList(CarryBlock() for _ in range(3))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        hidden, carry = self.embed(input_ids), torch.ones(())
        for block in self.layers:
            hidden, carry = block(hidden, carry=carry)
        return hidden


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_gemma3, CarryModel],
                         ids=["llama", "gemma3-sliding-then-full", "block-outputs-feed-the-next-block"])
def test_each_block_is_calibrated_with_the_arguments_the_model_passes_that_block(make):
    """Gemma 3 gives its sliding-window and full-attention layers different attention masks and rotary
    embeddings: a block replayed with another block's arguments would compute other activations. With
    every weight kept, the statistics block-by-block calibration gathers are those of the model's own forward."""
    model = make()
    layers = select_targets(model, ["Linear"], ["re:.*lm_head"]).layers
    gathered = {}

    def keep_all(name, layer, stat):
        gathered[name] = stat.sum_squares
        return torch.ones_like(layer.weight, dtype=torch.bool)

    sequential_prune(model, TOKENS[:2], layers, lambda layer: InputNorms(layer.in_features), keep_all)
    expected = {name: InputNorms(layer.in_features) for name, layer in layers.items()}
    handles = [layer.register_forward_pre_hook(lambda m, args, n=name: expected[n].add(args[0])) for name, layer in layers.items()]
    with torch.no_grad():
        for row in TOKENS[:2]:
            model(row[None])
    for handle in handles:
        handle.remove()
    for name in layers:
        torch.testing.assert_close(gathered[name], expected[name].sum_squares, rtol=1e-5, atol=1e-5, msg=name)


def test_capture_keeps_position_embeddings(tiny_llama):
    hidden, kwargs = capture_block_inputs(tiny_llama, tiny_llama.model.layers[0], TOKENS[:2])
    assert len(hidden) == 2 and hidden[0].shape == (1, 32, 64)
    assert "position_embeddings" in kwargs[0]


def test_sparsify_and_quantize_entry_points(tiny_llama_factory, byte_tokenizer):
    model = tiny_llama_factory()
    assert sparsify_(model, WandaConfig(samples=2, seqlen=32), tokenizer=byte_tokenizer) is model
    assert all(is_nm(m.weight) for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n)
    other = tiny_llama_factory()
    quantize_(other, MagnitudeConfig(), filter_fn=lambda m, fqn: fqn == "model.layers.0.mlp.up_proj")
    assert is_nm(other.model.layers[0].mlp.up_proj.weight) and not is_nm(other.model.layers[0].mlp.down_proj.weight)


def test_targets_and_ignore(tiny_llama_factory):
    model = tiny_llama_factory()
    masks = prune(model, WandaConfig(targets=["re:.*mlp.*"], ignore=["down_proj"]), calibration=TOKENS).masks
    assert sorted(masks) == [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")]
    assert not is_nm(model.model.layers[0].self_attn.q_proj.weight)


@pytest.mark.parametrize("config", [WandaConfig(samples=2, seqlen=32), SparseGPTConfig(samples=2, seqlen=32)], ids=["wanda", "sparsegpt"])
def test_a_seqlen_longer_than_the_models_context_is_refused(config, tiny_llama_factory, byte_tokenizer):
    model = tiny_llama_factory()
    model.config.max_position_embeddings = 16
    name = type(config).__name__
    with pytest.raises(ProxSparseError, match=f"^{name}.seqlen 32 is longer than the model's maximum context of 16 tokens"):
        prune(model, config, tokenizer=byte_tokenizer)
    with pytest.raises(ProxSparseError, match="^the calibration sample length 32 is longer than the model's maximum context of 16"):
        prune(model, config, calibration=TOKENS)
    assert not any(is_nm(layer.weight) for layer in model.modules() if isinstance(layer, nn.Linear))


def test_bad_input(tiny_llama_factory):
    model = tiny_llama_factory()
    with pytest.raises(ProxSparseError, match="tokenizer"):
        prune(model, WandaConfig())
    with pytest.raises(ProxSparseError, match="integer tensor"):
        prune(model, WandaConfig(), calibration=torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="samples"):
        WandaConfig(samples=0)
    with pytest.raises(ConfigError, match="blocksize"):
        SparseGPTConfig(blocksize=6)
    with pytest.raises(ConfigError, match="targets"):
        MagnitudeConfig(targets=[])
    with pytest.raises(ConfigError, match=r"MagnitudeConfig.targets: 're:\[' is not a valid regular expression"):
        MagnitudeConfig(targets=["re:["])
    with pytest.raises(ConfigError, match="WandaConfig.seed must fit in 64 bits"):
        WandaConfig(seed=-(2**64))
    with pytest.raises(ConfigError, match="update_weights"):
        SparseGPTConfig(update_weights="no")
    with pytest.raises(ConfigError, match="expected one of"):
        prune(model, object())
    flat = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ProxSparseError, match="decoder blocks"):
        decoder_blocks(flat, {"0": flat[0]})
    with pytest.raises(ProxSparseError, match="outside them: lm_head"):
        decoder_blocks(model, {"lm_head": model.lm_head, "model.layers.0.mlp.up_proj": model.model.layers[0].mlp.up_proj})


@pytest.mark.parametrize("statistic", [InputNorms, Hessian], ids=["wanda-norms", "sparsegpt-hessian"])
def test_padding_adds_nothing_the_statistics_are_those_of_the_trimmed_samples(statistic, tiny_llama):
    layers = select_targets(tiny_llama, ["Linear"], ["re:.*lm_head"]).layers
    padded = TOKENS[:2].clone()
    padded[1, 20:] = PAD_ID

    def statistics(tokens):  # every layer's statistic; the weights stay dense, so each sample's inputs are its own
        seen = {}

        def record(name, layer, stat):
            seen[name] = stat
            return torch.ones_like(layer.weight, dtype=torch.bool)

        sequential_prune(tiny_llama, tokens, layers, lambda layer: statistic(layer.in_features), record)
        return seen

    both = statistics(padded)
    first, second = statistics(TOKENS[:1]), statistics(TOKENS[1:2, :20])
    hidden, _ = capture_block_inputs(tiny_llama, tiny_llama.model.layers[0], padded)
    assert [h.shape[1] for h in hidden] == [32, 20]
    for name in layers:
        if statistic is InputNorms:
            expected, got = first[name].sum_squares + second[name].sum_squares, both[name].sum_squares
        else:  # H = 2/N sum x x^T over N = 2 samples
            expected, got = (first[name].matrix + second[name].matrix) / 2, both[name].matrix
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_capture_skips_the_blocks_where_the_model_computes_their_arguments_before_its_loop(tiny_llama):
    ran = []
    handles = [block.mlp.register_forward_hook(lambda *_: ran.append(1)) for block in tiny_llama.model.layers]
    hidden, kwargs = capture_calibration_inputs(tiny_llama, tiny_llama.model.layers, TOKENS[:2])
    for handle in handles:
        handle.remove()
    assert ran == [] and len(hidden) == 2 and [len(per_block) for per_block in kwargs] == [2, 2]
    assert all("forward" not in block.__dict__ for block in tiny_llama.model.layers)  # the blocks' own forward is back


def test_the_capture_runs_the_blocks_where_the_models_loop_needs_their_outputs():
    model = CarryModel()
    hidden, kwargs = capture_calibration_inputs(model, model.layers, TOKENS[:2])
    with torch.no_grad():
        carry, expected = torch.ones(()), []
        states = model.embed(TOKENS[:1, :])
        for block in model.layers:
            expected.append(carry)
            states, carry = block(states, carry=carry)
    assert [kw["carry"] for kw in (per_block[0] for per_block in kwargs)] == expected
    assert all("forward" not in block.__dict__ for block in model.layers)
