"""Backbones: adapter table, weights hash, loading from a directory, the embedded default."""

from __future__ import annotations

import pytest
import torch

from nagindex import NEURON_TYPES, NagError
from nagindex.extraction.backbones import (
    ADAPTERS,
    SUPPORTED_ARCHITECTURES,
    adapter_for,
    backbone_from_model,
    load_backbone,
    weights_hash,
)
from nagindex.extraction.testing import TINY_ARCHS, tiny_backbone, tiny_tokenizer


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_adapter_points_exist_and_widths_match_the_modules(arch):
    bb = tiny_backbone(arch)
    assert bb.num_layers == 3
    seen = {}
    handles = []
    for t, point in bb.adapter.points.items():
        mod = bb.layers[1].get_submodule(point.module)

        def grab(m, a, out, t=t, point=point):
            h = point.read(out[0] if isinstance(out, tuple) else out, bb.config)
            seen[t] = h.shape[-1] * (bb.kv_repeat if point.repeat_kv else 1)

        handles.append(mod.register_forward_hook(grab))
    with torch.no_grad():
        bb.base_model(input_ids=torch.tensor([[1, 2, 3, 4, 5]]))
    for h in handles:
        h.remove()
    assert seen == {t: bb.width(t) for t in NEURON_TYPES}


def test_supported_families_cover_the_issue():
    for family in ("llama", "qwen2", "qwen3", "mistral", "smollm3", "gemma2", "gemma3", "gpt2", "gpt_neox"):
        assert family in ADAPTERS
    # Models that normalise q and k read the normalised states.
    assert ADAPTERS["qwen3"].points["att_q"].module.endswith("q_norm")
    assert ADAPTERS["llama"].points["att_q"].module.endswith("q_proj")
    assert ADAPTERS["llama"].points["att_k"].repeat_kv and not ADAPTERS["llama"].points["att_q"].repeat_kv


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(NagError, match="unsupported model architecture 'bert'.*llama.*qwen3"):
        backbone_from_model(model, tiny_tokenizer(), "bert")
    with pytest.raises(NagError, match=", ".join(SUPPORTED_ARCHITECTURES)):
        adapter_for(BertConfig())


def test_weights_hash_is_stable_and_tells_checkpoints_apart():
    a, b, c = tiny_backbone("llama", seed=0), tiny_backbone("llama", seed=0), tiny_backbone("llama", seed=1)
    assert a.weights_hash == b.weights_hash != c.weights_hash
    # Same weights in bf16 (e.g. on a GPU) hash the same, since samples are rounded to bf16.
    assert weights_hash(a.model.to(torch.bfloat16)) == b.weights_hash
    # Changing one weight that the sample reads changes the hash.
    with torch.no_grad():
        b.model.model.layers[2].mlp.up_proj.weight[0, 0] += 1.0
    assert weights_hash(b.model) != a.weights_hash


def test_tokenizer_defaults_for_extraction():
    bb = tiny_backbone("qwen3")
    assert bb.tokenizer.padding_side == "left"
    assert bb.pad_token_id == bb.tokenizer.eos_token_id  # no pad token: eos
    assert bb.kv_repeat == 2 and bb.head_dim == 8


def test_load_backbone_from_a_local_directory(tmp_path):
    bb = tiny_backbone("qwen3", seed=3)
    bb.model.save_pretrained(tmp_path / "m")
    bb.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_backbone(tmp_path / "m", device="cpu")
    assert loaded.weights_hash == bb.weights_hash
    assert loaded.num_layers == 3 and loaded.adapter.family == "qwen3"
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"


def test_load_backbone_errors(tmp_path):
    with pytest.raises(NagError, match="not found"):
        load_backbone(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(NagError, match="not found"):
        load_backbone(str(tmp_path / "m.gguf"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NagError, match="cannot load model"):
        load_backbone(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(NagError, match="unknown dtype"):
        load_backbone(str(tmp_path / "empty"), device="cpu", dtype="fp7")


@pytest.mark.slow
def test_embedded_default_backbone(embedded_backbone):
    bb = embedded_backbone
    assert bb.name == "SmolLM2-135M-Instruct" and bb.config.model_type == "llama"
    assert bb.num_layers == 30
    assert bb.width("fwd_up") == 1536 and bb.width("fwd_down") == 576 and bb.width("att_k") == 576
    assert bb.kv_repeat == 3
    assert bb.dtype == torch.float32 and bb.tokenizer.padding_side == "left"
    assert bb.tokenizer("hello world", add_special_tokens=False)["input_ids"] == [28120, 905]
    # The cached fp32 copy loads the same weights every time.
    again = load_backbone(device="cpu")
    assert again.weights_hash == bb.weights_hash
