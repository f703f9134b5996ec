"""The payload schema evolves: final-layout meta fields kept, new nullable columns on append,
columns added with plain LanceDB kept by the next append and by compaction."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nagindex import Index
from nagindex.io import write_features_parquet
from nagindex.schemas import FeatureSpec

L, K, W = 2, 3, 12
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",),
                   layer_widths={"fwd_up": W})


def _feats(n, seed):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, L, W)), axis=2)[:, :, :K].reshape(n, L * K).astype(np.uint16)


def _append(index, table, seed):
    index.append(documents=table, feature_arrays={"fwd_up": _feats(table.num_rows, seed)}, progress=False)


def test_final_layout_keeps_meta_fields(tmp_path):
    meta = pa.array([{"docid": f"m{i}", "token_num": 3, "url": f"u{i}", "lang": "en"} for i in range(4)])
    pq.write_table(pa.table({"meta": meta, "content_split": [f"text {i}" for i in range(4)], "lang": ["x"] * 4}),
                   tmp_path / "final.parquet")
    write_features_parquet(tmp_path / "f.parquet", [f"m{i}" for i in range(4)], {"fwd_up": _feats(4, 0)}, SPEC)
    index = Index.build(tmp_path / "idx", tmp_path / "final.parquet", features=tmp_path / "f.parquet",
                        progress=False, embedder=None)
    rows = index.take(np.arange(4))
    assert rows.column("url").to_pylist() == ["u0", "u1", "u2", "u3"]
    assert rows.column("lang").to_pylist() == ["x"] * 4 and rows.column("meta_lang").to_pylist() == ["en"] * 4
    assert rows.column("token_num").to_pylist() == [3] * 4


def test_new_columns_on_append_and_plain_lancedb_columns_survive(tmp_path):
    index = Index.create(tmp_path / "idx", SPEC)
    _append(index, pa.table({"docid": ["a0", "a1"], "doc": ["x", "y"], "token_num": [1, 1]}), 0)
    # a quality column arrives later
    _append(index, pa.table({"docid": ["b0", "b1"], "doc": ["z", "w"], "token_num": [1, 1],
                             "quality": [0.9, 0.1]}), 1)
    assert index.take(np.arange(4), ["quality"]).column("quality").to_pylist() == [None, None, 0.9, 0.1]
    selected = index.query([_feats(2, 1)], top=4, quality_col="quality")
    assert sorted(selected.column("docid").to_pylist()) == ["b0", "b1"]  # rows without quality are left out

    # a column added to the documents table with plain LanceDB
    table = lancedb.connect(str(tmp_path / "idx")).open_table(index.manifest.lance_table)
    table.add_columns({"source": "'web'"})
    _append(index, pa.table({"docid": ["c0"], "doc": ["v"], "token_num": [1]}), 2)
    reopened = Index.open(tmp_path / "idx")
    assert reopened.take(np.arange(5), ["source"]).column("source").to_pylist() == ["web"] * 4 + [None]
    reopened.compact()
    after = Index.open(tmp_path / "idx")
    assert after.take(np.arange(5), ["source"]).column("source").to_pylist() == ["web"] * 4 + [None]
    assert after.take(np.arange(5), ["quality"]).column("quality").to_pylist() == [None, None, 0.9, 0.1, None]
