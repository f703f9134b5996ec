"""An index from upstream NAG JSONL features alone: no model, or a model that is only recorded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nagindex import Index
from nagindex.cli import app
from nagindex.extraction import backbones
from nagindex.io import write_upstream_jsonl
from nagindex.schemas import UNKNOWN_HASH

L, K, W = 3, 4, 64  # the tiny llama: 3 layers, fwd_up width 64


def _features(n, seed):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, L, W)), axis=2)[:, :, :K].reshape(n, L * K).astype(np.uint16)


@pytest.fixture
def upstream(tmp_path):
    ids = [f"d{i}" for i in range(20)]
    pq.write_table(pa.table({"docid": ids, "doc": [f"text number {i}" for i in ids], "token_num": np.arange(1, 21)}),
                   tmp_path / "pool.parquet")
    feats = _features(20, 0)
    write_upstream_jsonl(tmp_path / "feats.jsonl", ids, {"fwd_up": feats})
    write_upstream_jsonl(tmp_path / "target.jsonl", ["t0", "t1"], {"fwd_up": feats[:2]})
    return tmp_path, feats


def _never_load(*args, **kwargs):
    raise AssertionError("model weights were loaded")


def test_build_from_upstream_flags_without_a_model(upstream, monkeypatch):
    tmp, feats = upstream
    monkeypatch.setattr(backbones, "_load_pretrained", _never_load)
    res = CliRunner().invoke(app, ["index", "build", str(tmp / "idx"), str(tmp / "pool.parquet"), "--features",
                                   str(tmp / "feats.jsonl"), "--num-layers", str(L), "--top-k", str(K),
                                   "--width", str(W), "--no-progress"])
    assert res.exit_code == 0, res.output
    index = Index.open(tmp / "idx")
    assert (index.spec.num_layers, index.spec.top_k, index.spec.layer_widths["fwd_up"]) == (L, K, W)
    assert index.spec.backbone_hash == UNKNOWN_HASH
    assert np.array_equal(index.features("fwd_up"), feats)
    # feature targets work ...
    res = CliRunner().invoke(app, ["query", str(tmp / "idx"), "--target-features", str(tmp / "target.jsonl"),
                                   "--top", "2", "--out", str(tmp / "sel.parquet"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert set(pq.read_table(tmp / "sel.parquet").column("docid").to_pylist()) == {"d0", "d1"}
    # ... and text targets say what they need, in one line
    (tmp / "t.txt").write_text("some target text\n")
    res = CliRunner().invoke(app, ["query", str(tmp / "idx"), str(tmp / "t.txt"), "--top", "2",
                                   "--out", str(tmp / "sel2.parquet"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "needs" in res.output or "need a loadable backbone" in res.output
    assert "--model" in res.output and len(res.output.strip().splitlines()) == 1


def test_upstream_build_without_flags_names_them(upstream):
    tmp, _ = upstream
    res = CliRunner().invoke(app, ["index", "build", str(tmp / "idx"), str(tmp / "pool.parquet"), "--features",
                                   str(tmp / "feats.jsonl"), "--no-progress"])
    assert res.exit_code == 2
    assert "--num-layers" in res.output and "--width" in res.output
    assert not (tmp / "idx").exists()


def test_model_with_features_is_recorded_not_loaded(upstream, tiny_llama, monkeypatch):
    tmp, feats = upstream
    model_dir = tmp / "tiny"
    tiny_llama.model.save_pretrained(model_dir)
    tiny_llama.tokenizer.save_pretrained(model_dir)
    with monkeypatch.context() as m:
        m.setattr(backbones, "_load_pretrained", _never_load)
        m.chdir(tmp)
        # L and the width come from the local config; the relative path is stored resolved
        Index.build("idx", "pool.parquet", features="feats.jsonl", model="tiny", top_k=K, progress=False, embedder=None)
    index = Index.open(tmp / "idx")
    assert index.spec.num_layers == L and index.spec.layer_widths["fwd_up"] == W
    assert index.spec.backbone_location == str(model_dir.resolve())
    # the recorded model then serves text targets (L, K and widths checked; weights unknown)
    (tmp / "t.txt").write_text("some target text\nanother one\n")
    table = index.query([str(tmp / "t.txt")], top=3, progress=False)
    assert table.num_rows == 3
