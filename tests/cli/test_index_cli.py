"""`nag index build|append|info|compact` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nagindex import Index
from nagindex.cli import app
from nagindex.io import write_features_parquet
from nagindex.schemas import FeatureSpec

L, K, W = 2, 3, 10
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",), layer_widths={"fwd_up": W})


def features_for(n, seed):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, L, W)), axis=2)[:, :, :K].reshape(n, L * K).astype(np.uint16)


def write_inputs(tmp_path, name, ids, seed, token_num=None):
    n = len(ids)
    tok = np.arange(1, n + 1) if token_num is None else token_num
    pq.write_table(pa.table({"docid": ids, "doc": [f"text {i}" for i in ids], "token_num": tok, "dataset": ["d"] * n}), tmp_path / f"{name}.parquet")
    feats = features_for(n, seed)
    write_features_parquet(tmp_path / f"{name}.features.parquet", ids, {"fwd_up": feats}, SPEC)
    return str(tmp_path / f"{name}.parquet"), str(tmp_path / f"{name}.features.parquet"), feats


def invoke(*args):
    return CliRunner().invoke(app, ["index", *map(str, args)])


def test_inverted_lists_only_with_postings_and_the_same_answers(tmp_path):
    pool, feats_file, feats = write_inputs(tmp_path, "pool", [f"a{i}" for i in range(40)], 3)
    for name, flags in (("plain", ()), ("lists", ("--postings",))):
        res = invoke("build", tmp_path / name, pool, "--features", feats_file, "--no-progress", *flags)
        assert res.exit_code == 0, res.output
    plain, lists = Index.open(tmp_path / "plain"), Index.open(tmp_path / "lists")
    assert not plain.has_postings and not list((tmp_path / "plain").rglob("postings.*"))
    assert lists.has_postings and list((tmp_path / "lists").rglob("postings.*.ids"))
    target = feats[:4]
    a = plain.run_query([target], preset="paper", top=7, plan="inverted")
    b = lists.run_query([target], preset="paper", top=7, plan="inverted")
    assert a.plans[0].path == "scan" and "--postings" in a.plans[0].reason
    assert a.table.column("docid").to_pylist() == b.table.column("docid").to_pylist()


def test_build_append_info_compact(tmp_path):
    idx = tmp_path / "idx"
    pool, feats_file, feats = write_inputs(tmp_path, "pool", [f"a{i}" for i in range(12)], 1)
    # a tiny hashed embedder stands in for the default all-MiniLM-L6-v2 (tests load no model)
    res = invoke("build", idx, pool, "--features", feats_file, "--no-progress", "--embedder", "hash:8")
    assert res.exit_code == 0, res.output
    assert "indexed 12 documents (78 tokens)" in res.output

    more, more_feats, feats2 = write_inputs(tmp_path, "more", ["a3", "a4", "b1"], 2)
    res = invoke("append", idx, more, "--features", more_feats, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "added 1, skipped 2 already indexed, replaced 0; 13 documents" in res.output
    res = invoke("append", idx, more, "--features", more_feats, "--replace", "--no-progress")
    assert "added 3, skipped 0 already indexed, replaced 3; 13 documents" in res.output

    res = invoke("info", idx, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["documents"] == 13 and info["rows"] == 16 and info["replaced_rows"] == 3
    assert info["deltas_pending"] == 2 and info["num_layers"] == L and info["top_k"] == K
    assert info["tokens"] == sum(range(1, 13)) - 4 - 5 + 1 + 2 + 3
    text = invoke("info", idx).output
    assert "documents: 13 (3 replaced rows awaiting compaction)" in text and "2 deltas pending" in text

    res = invoke("compact", idx, "--no-progress")
    assert res.exit_code == 0, res.output
    index = Index.open(idx)
    assert index.info()["deltas_pending"] == 0 and index.num_rows == 13
    by_id = dict(zip(index.docids().to_pylist(), index.features("fwd_up").tolist()))
    assert by_id["a3"] == feats2[0].tolist() and by_id["a0"] == feats[0].tolist()
    # appends embedded their documents and compaction kept every vector
    from nagindex.extraction.embedder import hashed_embeddings

    texts = index.take(np.arange(13), ["doc"]).column("doc").to_pylist()
    assert np.array_equal(index.embeddings(np.arange(13)), hashed_embeddings(texts, 8))


@pytest.mark.parametrize(
    "token_num, message",
    [
        (np.array([1, -2, 3]), "token_num must be >= 0"),
        (np.array([1.0, 2.5, 3.0]), "token_num' must be an integer"),
    ],
)
def test_bad_pool_exits_2_and_leaves_nothing(tmp_path, token_num, message):
    pool, feats_file, _ = write_inputs(tmp_path, "pool", ["a", "b", "c"], 3, token_num=token_num)
    res = invoke("build", tmp_path / "idx", pool, "--features", feats_file, "--no-progress", "--embedder", "none")
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()


def test_pool_without_token_num_and_no_model(tmp_path):
    pq.write_table(pa.table({"docid": ["a"], "doc": ["text"]}), tmp_path / "pool.parquet")
    write_features_parquet(tmp_path / "f.parquet", ["a"], {"fwd_up": features_for(1, 4)}, SPEC)
    res = invoke("build", tmp_path / "idx", tmp_path / "pool.parquet", "--features", tmp_path / "f.parquet", "--no-progress",
                 "--embedder", "none")
    assert res.exit_code == 2 and "no token_num" in res.output and "--model" in res.output


def test_errors_on_wrong_directories(tmp_path):
    res = invoke("info", tmp_path)
    assert res.exit_code == 2 and "not a nagindex index" in res.output
    pool, feats_file, _ = write_inputs(tmp_path, "pool", ["a"], 5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = invoke("build", tmp_path / "full", pool, "--features", feats_file, "--embedder", "none")
    assert res.exit_code == 2 and "not empty" in res.output
    res = invoke("append", tmp_path / "nope", pool, "--features", feats_file)
    assert res.exit_code == 2 and "not a nagindex index" in res.output


def test_help_texts_teach():
    for command in ("build", "append", "info", "compact"):
        res = invoke(command, "--help")
        assert res.exit_code == 0
    assert "--replace" in invoke("append", "--help").output
    assert "Default: 100" in invoke("build", "--help").output and "paper" in invoke("build", "--help").output
