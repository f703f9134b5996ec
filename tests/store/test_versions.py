"""Versions: open an index as it was, tag a version, and compaction keeps tagged versions readable."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from nagindex import Index
from nagindex.cli import app
from nagindex.errors import NagError
from nagindex.schemas import FeatureSpec

L, K, W = 2, 3, 12
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",),
                   layer_widths={"fwd_up": W})


def _batch(ids, seed):
    rng = np.random.default_rng(seed)
    feats = np.argsort(rng.random((len(ids), L, W)), axis=2)[:, :, :K].reshape(len(ids), L * K).astype(np.uint16)
    docs = pa.table({"docid": ids, "doc": ids, "token_num": np.ones(len(ids), np.int64)})
    return docs, feats


def _append(index, ids, seed, replace=False):
    docs, feats = _batch(ids, seed)
    index.append(documents=docs, feature_arrays={"fwd_up": feats}, replace=replace, progress=False)
    return feats


def _selection(index, target):
    return index.query([target], top=4).column("docid").to_pylist()


def test_past_versions_tags_and_compaction(tmp_path):
    index = Index.create(tmp_path / "idx", SPEC)
    first = _append(index, [f"a{i}" for i in range(10)], 0)
    v1 = index.manifest.generation
    target = first[:3]
    before = _selection(index, target)
    index.tag("paper")
    _append(index, [f"b{i}" for i in range(10)], 1)
    _append(index, ["a0", "a1", "a2"], 2, replace=True)  # replaced rows: the version's deleted file
    v3 = index.manifest.generation
    after = _selection(index, target)
    assert after != before

    # every commit since the build is readable, by number or by tag
    assert Index.open(tmp_path / "idx", version=v1).num_documents == 10
    assert _selection(Index.open(tmp_path / "idx", version="paper"), target) == before
    assert Index.open(tmp_path / "idx", version=v3 - 1).num_documents == 20
    with pytest.raises(NagError, match="read-only"):
        _append(Index.open(tmp_path / "idx", version=v1), ["c0"], 3)

    # compaction keeps the tagged version (and the new one), forgets the others
    index.compact()
    assert _selection(Index.open(tmp_path / "idx", version="paper"), target) == before
    assert _selection(Index.open(tmp_path / "idx"), target) == after
    with pytest.raises(NagError, match="not readable"):
        Index.open(tmp_path / "idx", version=v3 - 1)
    listed = {r["version"]: r["tags"] for r in Index.open(tmp_path / "idx").versions()}
    assert listed[v1] == ["paper"] and len(listed) == 2
    # a later append and compaction still keep it
    _append(index, ["d0"], 4)
    index.compact()
    assert _selection(Index.open(tmp_path / "idx", version="paper"), target) == before


def test_versions_from_the_command_line(tmp_path):
    index = Index.create(tmp_path / "idx", SPEC)
    feats = _append(index, [f"a{i}" for i in range(6)], 0)
    from nagindex.io import write_features_parquet

    write_features_parquet(tmp_path / "t.parquet", ["t0"], {"fwd_up": feats[:1]}, SPEC)
    run = CliRunner().invoke
    res = run(app, ["index", "tag", str(tmp_path / "idx"), "v-first"])
    assert res.exit_code == 0 and "tagged version 1" in res.output, res.output
    _append(index, [f"b{i}" for i in range(6)], 1)
    rows = json.loads(run(app, ["index", "versions", str(tmp_path / "idx"), "--json"]).output)
    assert [r["documents"] for r in rows] == [0, 6, 12] and rows[1]["tags"] == ["v-first"]
    res = run(app, ["query", str(tmp_path / "idx"), "--target-features", str(tmp_path / "t.parquet"), "--top", "2",
                    "--as-of", "v-first", "--json", "--no-progress", "--out", str(tmp_path / "s.parquet")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["pool_docs"] == 6
    res = run(app, ["index", "tag", str(tmp_path / "idx"), "12"])
    assert res.exit_code == 2 and "not a number" in res.output
