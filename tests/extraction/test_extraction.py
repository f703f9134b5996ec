"""Extraction: exact against a plain SPEC computation, hooks harmless, files resumable."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nagindex import NEURON_TYPES, NagError
from nagindex import io as nio
from nagindex.extraction.features import capture_features, count_tokens, extract_texts, feature_spec, length_batches
from nagindex.extraction.jobs import extract_files, parts_dir
from nagindex.schemas import feature_column
from nagindex.extraction.testing import tiny_backbone

TEXTS = [
    "hi",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x * 2  # doubled",
    "Neurons light up differently for code, prose and mathematics: " * 3,  # truncated
    "tiny",
    "A medium sized sentence about cells and proteins.",
    "ok",
]
MAX_LEN = 40
K = 5


# --------------------------------------------------------------------------
# An independent plain computation of SPEC section 1
# --------------------------------------------------------------------------


def _kv_to_query_heads(states: torch.Tensor, kv_heads: int, heads: int) -> torch.Tensor:
    """(seq, kv_heads*hd) -> (seq, heads*hd) using transformers' own repeat_kv."""
    from transformers.models.llama.modeling_llama import repeat_kv

    seq = states.shape[0]
    per_head = states.view(1, seq, kv_heads, -1).transpose(1, 2)
    return repeat_kv(per_head, heads // kv_heads).transpose(1, 2).reshape(seq, -1)


def reference_features(arch: str, model, tokenizer, texts, top_k: int, max_length: int) -> dict[str, np.ndarray]:
    """Each document ALONE (no padding), full causal-LM forward, plain hooks that keep the
    raw projection outputs; then mean |h| over tokens and torch.topk per layer."""
    cfg = model.config
    if arch == "gpt2":
        layers, names = model.transformer.h, {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"}
    elif arch == "gpt_neox":
        layers = model.gpt_neox.layers
        names = {"qkv": "attention.query_key_value", "o": "attention.dense", "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"}
    else:
        layers = model.model.layers
        norm = arch in ("qwen3", "gemma3")
        names = {
            "q": "self_attn.q_norm" if norm else "self_attn.q_proj",
            "k": "self_attn.k_norm" if norm else "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
        }
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    out = {t: [] for t in NEURON_TYPES}
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        raw: dict[tuple[int, str], torch.Tensor] = {}
        handles = []
        for li, layer in enumerate(layers):
            for key, path in names.items():
                def keep(mod, args, output, li=li, key=key):
                    raw[(li, key)] = (output[0] if isinstance(output, tuple) else output).detach()[0]
                handles.append(layer.get_submodule(path).register_forward_hook(keep))
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        for h in handles:
            h.remove()
        seq = len(ids)
        rows = {t: [] for t in NEURON_TYPES}
        for li in range(len(layers)):
            states = {"fwd_up": raw[(li, "up")], "fwd_down": raw[(li, "down")], "att_o": raw[(li, "o")]}
            if arch == "gpt2":
                q, k, v = raw[(li, "qkv")].split(cfg.n_embd, dim=-1)
            elif arch == "gpt_neox":
                q, k, v = raw[(li, "qkv")].view(seq, heads, -1).chunk(3, dim=-1)
                q, k, v = (x.reshape(seq, -1) for x in (q, k, v))
            else:
                q, k, v = raw[(li, "q")], raw[(li, "k")], raw[(li, "v")]
                if arch == "gemma3":  # normalised after moving heads first
                    q, k = q.transpose(0, 1), k.transpose(0, 1)
                q, k = q.reshape(seq, -1), k.reshape(seq, -1)
                k, v = _kv_to_query_heads(k, kv_heads, heads), _kv_to_query_heads(v, kv_heads, heads)
            states.update(att_q=q, att_k=k, att_v=v)
            for t, h in states.items():
                mask = torch.ones(seq, dtype=h.dtype)
                impact = (mask[:, None] * h.abs()).sum(0) / torch.clamp(mask.sum(), min=1e-6)
                rows[t].append(torch.topk(impact, top_k).indices)
        for t in NEURON_TYPES:
            out[t].append(torch.cat(rows[t]).numpy())
    return {t: np.stack(v).astype(np.uint16) for t, v in out.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "gpt2", "gpt_neox"])
def test_features_equal_plain_spec_computation_with_padding(arch):
    bb = tiny_backbone(arch, dtype=torch.float64)
    # batch_size 3 over 7 length-sorted texts: batches mix lengths, so there is
    # padding, and one text is truncated to MAX_LEN.
    got = extract_texts(bb, TEXTS, neuron_types=NEURON_TYPES, top_k=K, max_length=MAX_LEN, batch_size=3)
    want = reference_features(arch, bb.model, bb.tokenizer, TEXTS, K, MAX_LEN)
    lengths = count_tokens(bb.tokenizer, TEXTS, MAX_LEN)
    assert lengths.max() == MAX_LEN and lengths.min() < MAX_LEN // 4  # padding really happens
    for t in NEURON_TYPES:
        assert got[t].dtype == np.uint16 and got[t].shape == (len(TEXTS), 3 * K)
        np.testing.assert_array_equal(got[t], want[t], err_msg=f"{arch} {t}")


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "smollm3", "gemma2"])
def test_other_llama_style_families_match_reference(arch):
    bb = tiny_backbone(arch, dtype=torch.float64)
    got = extract_texts(bb, TEXTS[:4], neuron_types=NEURON_TYPES, top_k=K, max_length=MAX_LEN, batch_size=4)
    want = reference_features(arch, bb.model, bb.tokenizer, TEXTS[:4], K, MAX_LEN)
    for t in NEURON_TYPES:
        np.testing.assert_array_equal(got[t], want[t], err_msg=f"{arch} {t}")


def test_result_does_not_depend_on_batching_or_order():
    bb = tiny_backbone("llama", dtype=torch.float64)
    one = extract_texts(bb, TEXTS, neuron_types=("fwd_up", "att_k"), top_k=K, batch_size=1)
    many = extract_texts(bb, TEXTS, neuron_types=("fwd_up", "att_k"), top_k=K, batch_size=32)
    rev = extract_texts(bb, TEXTS[::-1], neuron_types=("fwd_up", "att_k"), top_k=K, batch_size=2)
    for t in ("fwd_up", "att_k"):
        np.testing.assert_array_equal(one[t], many[t])
        np.testing.assert_array_equal(one[t], rev[t][::-1])
    # Different documents really get different features.
    assert len({row.tobytes() for row in one["fwd_up"]}) == len(TEXTS)


def test_only_requested_types_are_returned_and_equal_the_full_run():
    bb = tiny_backbone("qwen3", dtype=torch.float64)
    full = extract_texts(bb, TEXTS, neuron_types=NEURON_TYPES, top_k=K)
    part = extract_texts(bb, TEXTS, neuron_types="att_v,fwd_down", top_k=K)
    assert set(part) == {"att_v", "fwd_down"}
    for t in part:
        np.testing.assert_array_equal(part[t], full[t])


def _logits(bb, ids, mask):
    with torch.no_grad():
        return bb.model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hooks_do_not_change_model_outputs(arch):
    bb = tiny_backbone(arch)
    ids = torch.tensor([[256, 256, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    before = _logits(bb, ids, mask)
    with capture_features(bb, NEURON_TYPES, K, stop=False) as state:
        state.mask = mask
        during = _logits(bb, ids, mask)
        assert len(state.results) == 6 * bb.num_layers  # the hooks did run
    extract_texts(bb, TEXTS, neuron_types=NEURON_TYPES, top_k=K)
    after = _logits(bb, ids, mask)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert all(not m._forward_hooks for m in bb.model.modules())  # nothing left behind


def test_no_lm_head_and_forward_stops_after_last_needed_projection():
    bb = tiny_backbone("llama")
    calls = {"lm_head": 0, "last_mlp": 0, "last_o": 0, "final_norm": 0}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook

    last = bb.layers[-1]
    handles = [
        bb.model.lm_head.register_forward_hook(counter("lm_head")),
        last.mlp.register_forward_pre_hook(counter("last_mlp")),  # the MLP started
        last.self_attn.o_proj.register_forward_hook(counter("last_o")),
        bb.model.model.norm.register_forward_hook(counter("final_norm")),
    ]
    try:
        extract_texts(bb, TEXTS[:3], neuron_types=("att_q", "att_o"), top_k=K, batch_size=8)
        assert calls == {"lm_head": 0, "last_mlp": 0, "last_o": 1, "final_norm": 0}
        extract_texts(bb, TEXTS[:3], neuron_types=("fwd_down",), top_k=K, batch_size=8)
        assert calls["last_mlp"] == 1 and calls["lm_head"] == 0 and calls["final_norm"] == 0
    finally:
        for h in handles:
            h.remove()


def test_bad_arguments_are_user_errors():
    bb = tiny_backbone("llama")
    with pytest.raises(NagError, match="unknown neuron type 'fwd_sideways'"):
        extract_texts(bb, TEXTS, neuron_types=("fwd_sideways",))
    with pytest.raises(NagError, match="larger than the layer width"):
        extract_texts(bb, TEXTS, neuron_types=("att_o",), top_k=33)  # att_o width is 32
    with pytest.raises(NagError, match="top-k"):
        feature_spec(bb, ("fwd_up",), 0, 10)


def test_feature_spec_and_empty_inputs():
    bb = tiny_backbone("gpt2")
    spec = feature_spec(bb, "fwd_up,att_q", 4, 50)
    assert spec.num_layers == 3 and spec.top_k == 4 and spec.max_length == 50
    assert spec.layer_widths == {"fwd_up": 64, "att_q": 32}
    assert spec.backbone_hash == bb.weights_hash
    assert extract_texts(bb, [], top_k=4)["fwd_up"].shape == (0, 12)
    # A text with no token at all: impacts are all 0 (SPEC's max(sum m, 1e-6)).
    f = extract_texts(bb, ["", "abc"], top_k=4)["fwd_up"]
    np.testing.assert_array_equal(f[0], np.tile(torch.topk(torch.zeros(64), 4).indices.numpy(), 3))
    np.testing.assert_array_equal(f[1], extract_texts(bb, ["abc"], top_k=4)["fwd_up"][0])


def test_count_tokens_and_length_batches():
    bb = tiny_backbone("llama")
    n = count_tokens(bb.tokenizer, ["abc", "é" * 100])
    assert n.dtype == np.int64 and n.tolist() == [3, 200]  # byte tokens, not truncated
    assert count_tokens(bb.tokenizer, ["é" * 100], max_length=120).tolist() == [120]
    batches = length_batches(np.array([3, 9, 1, 9, 5]), 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _web_parquet(path, docids, docs, token_num=None, **extra):
    cols = {"docid": docids, "doc": docs}
    if token_num is not None:
        cols["token_num"] = token_num
    cols.update(extra)
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny model saved as a local model directory (what --model DIR loads)."""
    bb = tiny_backbone("llama")
    d = tmp_path_factory.mktemp("tiny-llama")
    bb.model.save_pretrained(d)
    bb.tokenizer.save_pretrained(d)
    return bb, d


def test_extract_files_writes_features_and_metadata(tmp_path, saved_tiny):
    bb, _ = saved_tiny
    src = _web_parquet(tmp_path / "a.parquet", [f"d{i}" for i in range(len(TEXTS))], TEXTS,
                       token_num=[5, None, 7, None, 1, 2, 3], dataset=["x"] * len(TEXTS))
    out = tmp_path / "feat.parquet"
    summary = extract_files([src], out, model=bb, neuron_types="fwd_up,att_q", top_k=K, max_length=MAX_LEN,
                            batch_size=3, export_jsonl=tmp_path / "up.jsonl", progress=False)
    assert summary["documents"] == len(TEXTS) and not summary["already_done"]
    table, spec = nio.read_feature_files([out])
    assert spec.neuron_types == ("fwd_up", "att_q") and spec.top_k == K and spec.max_length == MAX_LEN
    assert spec.backbone_hash == bb.weights_hash
    assert table.schema.field("fwd_up_feature").type == pa.list_(pa.uint16(), 3 * K)
    assert table.column("docid").to_pylist() == [f"d{i}" for i in range(len(TEXTS))]
    want = extract_texts(bb, TEXTS, neuron_types=("fwd_up", "att_q"), top_k=K, max_length=MAX_LEN)
    got = nio.features_from_table(table, spec)
    for t in want:
        np.testing.assert_array_equal(got[t], want[t])
    # Missing token_num is computed with the tokenizer (full length, not truncated).
    full = count_tokens(bb.tokenizer, TEXTS).tolist()
    assert table.column("token_num").to_pylist() == [5, full[1], 7, full[3], 1, 2, 3]
    # Upstream JSONL export has the same vectors.
    first = json.loads((tmp_path / "up.jsonl").read_text().splitlines()[0])
    assert first["docid"] == "d0"
    assert first["fwd_up_feature"]["layer_topk_value_index"] == want["fwd_up"][0].tolist()
    assert not parts_dir(out).exists()


def test_extract_files_is_resumable_after_a_crash(tmp_path, saved_tiny, monkeypatch):
    bb, _ = saved_tiny
    a = _web_parquet(tmp_path / "a.parquet", [f"a{i}" for i in range(5)], TEXTS[:5])
    b = _web_parquet(tmp_path / "b.parquet", [f"b{i}" for i in range(4)], TEXTS[3:])
    out = tmp_path / "out" / "feat.parquet"
    reference = tmp_path / "ref.parquet"
    extract_files([a, b], reference, model=bb, top_k=K, shard_size=2, progress=False)

    import nagindex.extraction.features as ex  # what every extraction calls, through `Extractor`

    real = ex.extract_texts
    calls = {"n": 0}

    def crash_on_third_shard(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stands in for kill -9: the process just stops
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "extract_texts", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_files([a, b], out, model=bb, top_k=K, shard_size=2, progress=False)
    assert not out.exists()
    done = sorted(p.name for p in parts_dir(out).glob("part-*.parquet"))
    assert done == ["part-00000-000000.parquet", "part-00000-000001.parquet"]
    # A half-written file from a killed writer, and a corrupt part, are never trusted.
    (parts_dir(out) / ".part-00000-000002.parquet.abc.tmp").write_bytes(b"PAR1 garbage")
    (parts_dir(out) / "part-00001-000000.parquet").write_bytes(b"PAR1 truncated")

    monkeypatch.setattr(ex, "extract_texts", real)
    summary = extract_files([a, b], out, model=bb, top_k=K, shard_size=2, progress=False)
    assert summary["shards"] == 5 and summary["shards_reused"] == 2 and summary["computed"] == 5
    assert pq.read_table(out).equals(pq.read_table(reference))
    assert not parts_dir(out).exists()
    again = extract_files([a, b], out, model=bb, top_k=K, shard_size=2, progress=False)
    assert again["already_done"]
    # Changing a setting is a different job: recomputed, not reused.
    other = extract_files([a, b], out, model=bb, top_k=K + 1, shard_size=2, progress=False)
    assert not other["already_done"] and nio.read_feature_files([out])[1].top_k == K + 1


def test_extract_files_bad_input_writes_nothing(tmp_path, saved_tiny):
    bb, _ = saved_tiny
    a = _web_parquet(tmp_path / "a.parquet", ["x", "y"], ["one", "two"])
    dup = _web_parquet(tmp_path / "dup.parquet", ["y", "z"], ["three", "four"])
    nodoc = tmp_path / "nodoc.parquet"
    pq.write_table(pa.table({"docid": ["q"], "body": ["text"]}), nodoc)
    out = tmp_path / "feat.parquet"
    cases = [
        ([a, dup], "more than once"),
        ([a, tmp_path / "missing.parquet"], "not found"),
        ([nodoc], "no 'doc' text column"),
    ]
    for inputs, msg in cases:
        with pytest.raises(NagError, match=msg):
            extract_files(inputs, out, model=bb, top_k=K, progress=False)
        assert not out.exists() and not parts_dir(out).exists()
    with pytest.raises(NagError, match="larger than the layer width"):
        extract_files([a], out, model=bb, top_k=999, progress=False)
    assert not out.exists()


def test_cli_extract(tmp_path, saved_tiny):
    from typer.testing import CliRunner

    from nagindex.cli import app

    bb, model_dir = saved_tiny
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"j{i}", "text": t, "source": "s"}) for i, t in enumerate(TEXTS)) + "\n")
    out = tmp_path / "feat.parquet"
    runner = CliRunner()
    res = runner.invoke(app, ["extract", str(src), "--out", str(out), "--model", str(model_dir),
                              "--top-k", str(K), "--max-length", str(MAX_LEN), "--neuron-types", "fwd_up,att_v"])
    assert res.exit_code == 0, res.output
    assert "documents" in res.output
    table, spec = nio.read_feature_files([out])
    want = extract_texts(bb, TEXTS, neuron_types=("fwd_up", "att_v"), top_k=K, max_length=MAX_LEN)
    np.testing.assert_array_equal(nio.features_from_table(table, spec)["att_v"], want["att_v"])

    bad = runner.invoke(app, ["extract", str(src), "--out", str(tmp_path / "x.parquet"), "--model", str(model_dir),
                              "--neuron-types", "fwd_nope"])
    assert bad.exit_code == 2 and "unknown neuron type" in bad.output
    assert not (tmp_path / "x.parquet").exists()
    missing = runner.invoke(app, ["extract", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "y.parquet")])
    assert missing.exit_code == 2 and "not found" in missing.output


@pytest.mark.slow
def test_embedded_backbone_features(embedded_backbone):
    bb = embedded_backbone
    assert bb.num_layers == 30 and bb.width("fwd_up") == 1536 and bb.config.model_type == "llama"
    f = extract_texts(bb, ["The mitochondria is the powerhouse of the cell.", "def add(a, b): return a + b"],
                      neuron_types=("fwd_up", "att_k"), top_k=20, batch_size=2)
    assert f["fwd_up"].shape == (2, 600) and f["fwd_up"].max() < 1536
    assert f["att_k"].shape == (2, 600) and f["att_k"].max() < bb.width("att_k")
    assert not np.array_equal(f["fwd_up"][0], f["fwd_up"][1])
    # Each layer's top-20 are distinct neurons.
    assert all(len(set(f["fwd_up"][0, l * 20:(l + 1) * 20])) == 20 for l in range(30))
    # Batched with padding == one at a time (fp32; this model has no near-ties here).
    alone = extract_texts(bb, ["def add(a, b): return a + b"], top_k=20)["fwd_up"][0]
    np.testing.assert_array_equal(alone, f["fwd_up"][1])


def test_shards_are_split_over_accelerate_processes(tmp_path, saved_tiny, monkeypatch):
    """Under `accelerate launch` process i takes shards i, i+n, ...; rank 0 merges.
    Simulated here by running rank 1, then rank 0, of a 2-process layout."""
    import nagindex.extraction.jobs as ex

    bb, _ = saved_tiny
    src = _web_parquet(tmp_path / "a.parquet", [f"a{i}" for i in range(7)], TEXTS)
    single = tmp_path / "single.parquet"
    extract_files([src], single, model=bb, top_k=K, shard_size=2, progress=False)

    class NoBarrier:
        def wait_for_everyone(self):
            pass

    out = tmp_path / "multi.parquet"
    monkeypatch.setattr(ex, "_process_layout", lambda: (1, 2, NoBarrier()))
    s1 = extract_files([src], out, model=bb, top_k=K, shard_size=2, progress=False)
    assert s1["computed"] == 3 and not out.exists()  # shards 1 and 3 (2 + 1 docs)
    assert sorted(p.name for p in parts_dir(out).glob("part-*")) == ["part-00000-000001.parquet",
                                                                    "part-00000-000003.parquet"]
    monkeypatch.setattr(ex, "_process_layout", lambda: (0, 2, NoBarrier()))
    s0 = extract_files([src], out, model=bb, top_k=K, shard_size=2, progress=False)
    assert s0["computed"] == 4
    assert pq.read_table(out).equals(pq.read_table(single))


def test_kill_9_mid_run_then_rerun(tmp_path, saved_tiny):
    """A real SIGKILL of `python -m nagindex extract` part-way; the rerun finishes the job."""
    import signal
    import subprocess
    import sys
    import time

    bb, model_dir = saved_tiny
    n = 40
    docs = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(n)]
    src = _web_parquet(tmp_path / "pool.parquet", [f"p{i}" for i in range(n)], docs)
    out = tmp_path / "feat.parquet"
    args = [str(src), "--out", str(out), "--model", str(model_dir), "--top-k", str(K), "--shard-size", "2",
            "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "nagindex", "extract", *args],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "child.err", "w"))
    deadline = time.time() + 300  # a busy machine can be very slow; no timing is asserted
    while time.time() < deadline and proc.poll() is None and len(list(parts_dir(out).glob("part-*"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts_at_kill = len(list(parts_dir(out).glob("part-*"))) if not out.exists() else 0
    assert "Traceback" not in (tmp_path / "child.err").read_text()
    # Rerun exactly as the killed command (same --model, so the same job).
    summary = extract_files([src], out, model=str(model_dir), top_k=K, shard_size=2, batch_size=1,
                            progress=False, device="cpu")
    if parts_at_kill:
        assert summary["shards_reused"] == parts_at_kill  # parts appear only complete (rename)
        assert summary["computed"] < n
    want = extract_texts(bb, docs, top_k=K)["fwd_up"]
    table, spec = nio.read_feature_files([out])
    np.testing.assert_array_equal(nio.features_from_table(table, spec)["fwd_up"], want)
    assert not parts_dir(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no stray temp files
