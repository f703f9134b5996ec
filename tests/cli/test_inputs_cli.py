"""The command line takes what users have: quoted globs, directories, filters on feature targets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from nagindex import Index
from nagindex.cli import app
from nagindex.extraction.jobs import extract_files
from nagindex.io import write_features_parquet
from nagindex.schemas import FeatureSpec

L, K, W = 2, 3, 10
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",),
                   layer_widths={"fwd_up": W})


def test_build_expands_a_quoted_glob(tmp_path):
    rng = np.random.default_rng(0)
    ids = []
    for shard in range(3):
        part = [f"s{shard}-{i}" for i in range(4)]
        ids += part
        pq.write_table(pa.table({"docid": part, "doc": part, "token_num": [1] * 4}), tmp_path / f"pool-{shard}.parquet")
    feats = np.argsort(rng.random((12, L, W)), axis=2)[:, :, :K].reshape(12, L * K).astype(np.uint16)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": feats}, SPEC)
    res = CliRunner().invoke(app, ["index", "build", str(tmp_path / "idx"), str(tmp_path / "pool-*.parquet"),
                                   "--features", str(tmp_path / "f.parquet"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert Index.open(tmp_path / "idx").num_documents == 12


def test_target_filter_works_on_extracted_features(tmp_path, tiny_llama):
    texts = ["cats purr", "dogs bark", "stocks fell", "bonds rose"]
    pq.write_table(pa.table({"docid": ["a", "b", "c", "d"], "doc": texts, "dataset": ["pets", "pets", "fin", "fin"]}),
                   tmp_path / "t.parquet")
    extract_files([tmp_path / "t.parquet"], tmp_path / "t.features.parquet", model=tiny_llama, top_k=3,
                  max_length=16, progress=False)
    assert "dataset" in pq.read_schema(tmp_path / "t.features.parquet").names
    Index.build(tmp_path / "idx", tmp_path / "t.parquet", model=tiny_llama, top_k=3, max_length=16, progress=False, embedder=None)
    args = ["query", str(tmp_path / "idx"), "--target-features", str(tmp_path / "t.features.parquet"), "--top", "2",
            "--no-progress", "--out"]
    res = CliRunner().invoke(app, [*args, str(tmp_path / "pets.parquet"), "--target-filter", "pets"])
    assert res.exit_code == 0, res.output
    assert "t.features (2 docs)" in res.output
