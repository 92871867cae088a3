"""Tiny random models and a byte tokenizer for plumbing tests (dims multiples of 64); no hub."""

from __future__ import annotations

import torch


def make_tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, layers: int = 2):
    """A randomly initialised Llama with hidden 64, intermediate 128, vocab 256."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    return model


def make_byte_tokenizer():
    """A byte-level tokenizer with exactly 256 tokens (one per byte), matching the tiny Llama's vocab; no hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="Ċ")


def make_tiny_opt(seed: int = 0):
    """A randomly initialised OPT (hidden 64, ffn 128, vocab 256) with Hugging Face's default dropout 0.1,
    which mask learning's train mode turns on."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=64, word_embed_proj_dim=64, dropout=0.1)
    torch.manual_seed(seed)
    model = OPTForCausalLM(config)
    model.eval()
    return model


def make_tiny_mixtral(seed: int = 0):
    """A randomly initialised Mixtral (hidden 64, 4 experts of 128, vocab 256): transformers' mixture of
    experts, its experts fused in 3-D tensors outside any nn.Linear."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, num_local_experts=4, num_experts_per_tok=2,
                           tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = MixtralForCausalLM(config)
    model.eval()
    return model


class EmptySliceExpert(torch.nn.Module):
    """An MLP block that also calls its `expert` linear on the tokens routed to it, here always none: the
    expert is called, on an empty slice, and no token reaches it (as an MoE expert the router never picks)."""

    def __init__(self, mlp: torch.nn.Module, features: int = 64) -> None:
        super().__init__()
        self.mlp, self.expert = mlp, torch.nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routed = x[x[..., 0] > float("inf")]
        return self.mlp(x) + self.expert(routed).sum() * 0


def make_tiny_gemma3(seed: int = 0, sliding_window: int = 8):
    """A randomly initialised Gemma 3 text model (hidden 64, intermediate 128, vocab 256, tied embeddings) whose two
    layers are of different types: a sliding-window layer (window `sliding_window`, local rotary base) and then a
    full-attention one (global rotary base). So the model passes its blocks different attention masks on samples
    longer than the window, and different rotary embeddings on every sample."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=sliding_window,
                              layer_types=["sliding_attention", "full_attention"], pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    model.eval()
    return model


def make_tiny_family(family: str, seed: int = 0):
    """A randomly initialised 2-layer model of another transformers family (hidden 64, intermediate 128,
    vocab 256): qwen2 (attention biases), qwen3 (q/k norms), mistral, gemma2 (tied embeddings, soft-capping,
    sliding and full layers), gemma3 (make_tiny_gemma3), phi3 (fused qkv_proj and gate_up_proj), gpt_neox, falcon."""
    import transformers

    if family == "gemma3":
        return make_tiny_gemma3(seed)
    common = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
    llama_like = dict(common, intermediate_size=128, num_key_value_heads=2)
    special = dict(pad_token_id=0, bos_token_id=2, eos_token_id=1)
    configs = {
        "qwen2": ("Qwen2", dict(llama_like, tie_word_embeddings=False)),
        "qwen3": ("Qwen3", dict(llama_like, head_dim=16, tie_word_embeddings=False)),
        "mistral": ("Mistral", dict(llama_like, tie_word_embeddings=False)),
        "gemma2": ("Gemma2", dict(llama_like, head_dim=16, sliding_window=8, **special)),
        "phi3": ("Phi3", dict(llama_like, tie_word_embeddings=False, **special)),
        "gpt_neox": ("GPTNeoX", dict(common, intermediate_size=128, bos_token_id=0, eos_token_id=0)),
        "falcon": ("Falcon", dict(common, bos_token_id=0, eos_token_id=0)),
    }
    prefix, settings = configs[family]
    config = getattr(transformers, f"{prefix}Config")(**settings)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForCausalLM")(config)
    model.eval()
    return model
