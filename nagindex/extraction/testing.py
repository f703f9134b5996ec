"""Helpers for tests: tiny random-init backbones that need no download.

`tiny_backbone("llama")` builds a 3-layer model of the requested architecture
from a config written here, with a byte-level tokenizer built in code (one
token per UTF-8 byte), so tests of every stage run in milliseconds, offline,
and deterministically (`seed`).
"""

from __future__ import annotations

import functools

import torch

from nagindex.extraction.backbones import Backbone, backbone_from_model

TINY_ARCHS: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "smollm3",
    "gemma2",
    "gemma3",
    "gpt2",
    "gpt_neox",
)

# 256 byte tokens + end-of-text; models get a few spare rows.
TINY_VOCAB = 260
EOS_TOKEN = "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def _byte_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab[EOS_TOKEN] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN])
    return tok.to_str()


def tiny_tokenizer():
    """A byte-level tokenizer (one token per UTF-8 byte) with eos and no pad token.

    It has no pad token on purpose: extraction must fall back to eos, as
    upstream does for Llama-style tokenizers.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_byte_tokenizer_json()),
        eos_token=EOS_TOKEN,
        padding_side="left",
    )


def tiny_config(arch: str = "llama", **overrides):
    """The config of a tiny model of `arch` (3 layers, width 32, GQA where the family has it)."""
    import transformers as tf

    common = dict(vocab_size=TINY_VOCAB, eos_token_id=256, bos_token_id=256, pad_token_id=None)
    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        cfg = tf.LlamaConfig(**common, **llama_like)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**common, **llama_like)
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(**common, **llama_like)
    elif arch == "mistral":
        cfg = tf.MistralConfig(**common, **llama_like)
    elif arch == "smollm3":
        cfg = tf.SmolLM3Config(**common, **llama_like)
    elif arch == "gemma2":
        cfg = tf.Gemma2Config(**common, **llama_like)
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(**common, **llama_like)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(
            **common, n_embd=32, n_layer=3, n_head=4, n_inner=64, n_positions=512
        )
    elif arch == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            **common,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=512,
        )
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {', '.join(TINY_ARCHS)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A random-init causal LM of `arch`, in eval mode, sdpa attention (eager gives NaN
    at padded positions in fp64 with transformers 5)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, **overrides)
    torch.manual_seed(seed)
    # Gemma 2 has no sdpa path (logit soft-capping).
    attn = "eager" if arch == "gemma2" else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    # Random init draws small weights with many near-equal impacts; widen the
    # spread so that top-K has no near-ties (exactness tests compare indices).
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1] ** 0.5))
    return model.to(dtype).eval()


def tiny_backbone(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> Backbone:
    """A tiny random-init backbone of `arch` on CPU (see `TINY_ARCHS`).

    Different seeds give different weights and so different `weights_hash`.
    `overrides` set config attributes (e.g. ``num_hidden_layers=4``).
    """
    model = tiny_model(arch, seed=seed, dtype=dtype, **overrides)
    return backbone_from_model(model, tiny_tokenizer(), name=f"tiny-{arch}-seed{seed}")
