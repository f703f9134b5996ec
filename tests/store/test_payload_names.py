"""A pool's payload never takes a name the index or its outputs keep for themselves
(issue 22): `embedding`, `_row`, feature columns and the output's score columns are
refused at build and append, from files and from tables in memory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex import Index, NagError
from nagindex.io import write_features_parquet
from tests.store.test_reliability import SPEC, N, docs, features_for, make_index, one_line

RESERVED = ["embedding", "_row", "nag_distance", "target", "combined_score", "embedding_similarity", "fusion_score",
            "att_q_feature"]


def _pool(name, n=3):
    table = docs([f"p{i}" for i in range(n)])
    return table.append_column(name, pa.array([[1e30] * 4] * n) if name == "embedding" else pa.array(["x"] * n))


@pytest.mark.parametrize("name", RESERVED)
def test_a_reserved_payload_name_is_refused_from_files_and_tables(tmp_path, name):
    pool = _pool(name)
    pq.write_table(pool, tmp_path / "pool.parquet")
    write_features_parquet(tmp_path / "f.parquet", pool.column("docid").to_pylist(), {"fwd_up": features_for(3, 4)}, SPEC)
    for source in (tmp_path / "pool.parquet", pool):
        with pytest.raises(NagError) as e:
            Index.build(tmp_path / "new", [source], features=[tmp_path / "f.parquet"], progress=False)
        assert f"pool column {name!r}" in one_line(e.value) and "reserved" in str(e.value)
        assert not (tmp_path / "new").exists()
    index = make_index(tmp_path / "idx")
    for append in (lambda: index.append([tmp_path / "pool.parquet"], features=[tmp_path / "f.parquet"], progress=False),
                   lambda: index.append(documents=pool, feature_arrays={"fwd_up": features_for(3, 4)}, progress=False)):
        with pytest.raises(NagError, match=f"pool column {name!r}"):
            append()
    after = Index.open(tmp_path / "idx")
    assert after.num_documents == N and after.columns() == ["docid", "token_num", "dataset", "doc", "fwd_up_feature", "_row"]


def test_an_embedding_column_is_not_taken_as_the_documents_embedding(tmp_path):
    index = Index.create(tmp_path / "idx", SPEC, embedder="hash:4")
    with pytest.raises(NagError, match="pool column 'embedding'"):
        index.append(documents=_pool("embedding"), feature_arrays={"fwd_up": features_for(3, 4)}, progress=False)


def test_two_columns_of_one_name_are_one_line(tmp_path):
    table = docs(["a", "b"])
    table = pa.Table.from_arrays(table.columns + [pa.array(["x", "y"]), pa.array(["z", "w"])],
                                 names=table.column_names + ["lang", "lang"])
    write_features_parquet(tmp_path / "f.parquet", ["a", "b"], {"fwd_up": features_for(2, 4)}, SPEC)
    with pytest.raises(NagError) as e:
        Index.build(tmp_path / "idx", [table], features=[tmp_path / "f.parquet"], progress=False)
    assert "column 'lang' appears 2 times" in one_line(e.value)


def test_a_nan_embedding_never_reaches_lance(tmp_path, monkeypatch):
    from nagindex.extraction import embedder as E

    index = Index.create(tmp_path / "idx", SPEC, embedder="hash:4")
    index.append(documents=docs(["a"]), feature_arrays={"fwd_up": features_for(1, 4)}, progress=False)
    monkeypatch.setattr(E, "hashed_embeddings", lambda texts, dim: np.full((len(texts), dim), np.nan, np.float32))
    with pytest.raises(NagError) as e:
        index.append(documents=docs(["b", "c"]), feature_arrays={"fwd_up": features_for(2, 4)}, progress=False)
    assert "embedding of document 'b' is not finite" in one_line(e.value)
    after = Index.open(tmp_path / "idx")
    assert after.num_documents == 1 and np.isfinite(after.embeddings([0])).all()
