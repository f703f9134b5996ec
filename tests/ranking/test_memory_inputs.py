"""Pools and targets from memory (pyarrow, pandas, polars, datasets), directories, globs and strings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from nagindex import Index
from nagindex.analysis.views import target_features_for
from nagindex.errors import NagError
from nagindex.extraction.features import extract_texts
from nagindex.sources import expand_sources, is_table_like, read_documents, source_name

TEXTS = ["cats are small animals", "the cat sat on a mat", "stock prices fell today", "bonds and shares rallied",
         "a kitten purrs", "the market closed lower", "dogs chase cats", "interest rates rose"]
POOL = pa.table({"docid": [f"d{i}" for i in range(8)], "doc": TEXTS, "token_num": np.arange(1, 9),
                 "dataset": ["pets", "pets", "money", "money", "pets", "money", "pets", "money"]})
K, LENGTH = 3, 16


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("ref")
    pq.write_table(POOL.slice(0, 4), folder / "a.parquet")
    pq.write_table(POOL.slice(4), folder / "b.parquet")
    index = Index.build(folder / "idx", [folder / "a.parquet", folder / "b.parquet"], model=tiny_llama, top_k=K,
                        max_length=LENGTH, progress=False, embedder=None)
    return folder, index


class FakeHFDataset:
    """What nagindex reads of a Hugging Face `datasets.Dataset` (where the package is not installed)."""

    __module__ = "datasets.arrow_dataset"

    def __init__(self, table):
        self._table = table
        self.column_names = table.column_names
        self.num_rows = table.num_rows

    def with_format(self, kind):
        assert kind == "arrow"
        table = self._table

        class View:
            def __getitem__(self, key):
                return table[key] if not isinstance(key, slice) else table.slice(0, table.num_rows)

        return View()


def _pools(folder):
    pd = pytest.importorskip("pandas")
    out = {
        "arrow table": POOL,
        "record batch": POOL.to_batches()[0],
        "arrow dataset": pads.dataset([folder / "a.parquet", folder / "b.parquet"]),
        "pandas": pd.DataFrame(POOL.to_pydict()),
        "hf-style id/text": FakeHFDataset(POOL.rename_columns(["id", "text", "token_num", "dataset"])),
        "directory": folder,
        "glob": str(folder / "*.parquet"),
    }
    try:
        import polars as pl

        out["polars"] = pl.from_arrow(POOL)
    except ImportError:
        pass
    return out


def test_every_pool_kind_builds_the_same_index(reference, tiny_llama, tmp_path):
    folder, want = reference
    for kind, pool in _pools(folder).items():
        got = Index.build(tmp_path / kind.replace(" ", "_"), pool, model=tiny_llama, top_k=K, max_length=LENGTH,
                          progress=False, embedder=None)
        assert got.docids().to_pylist() == want.docids().to_pylist(), kind
        assert np.array_equal(got.features("fwd_up"), want.features("fwd_up")), kind
        assert got.take(np.arange(8), ["dataset"]).equals(want.take(np.arange(8), ["dataset"])), kind


def test_append_from_a_dataframe(reference, tiny_llama, tmp_path):
    pd = pytest.importorskip("pandas")
    index = Index.build(tmp_path / "idx", POOL.slice(0, 4), model=tiny_llama, top_k=K, max_length=LENGTH,
                        progress=False, embedder=None)
    result = index.append(pd.DataFrame(POOL.slice(4).to_pydict()), progress=False)
    assert result.added == 4
    assert np.array_equal(index.features("fwd_up"), reference[1].features("fwd_up"))


def test_targets_from_memory_and_strings(reference, tiny_llama):
    pd = pytest.importorskip("pandas")
    folder, index = reference
    target = ["my cat purrs", "kittens and cats"]
    feats = extract_texts(tiny_llama, target, top_k=K, max_length=LENGTH)["fwd_up"]
    want = index.run_query([feats], top=3).table.column("docid").to_pylist()
    frame = pd.DataFrame({"docid": ["x", "y"], "doc": target})
    for kwargs in ({"targets": [frame]}, {"targets": frame}, {"target_texts": target},
                   {"target_texts": {"pets": target}}):
        got = index.run_query(top=3, **kwargs)
        assert got.table.column("docid").to_pylist() == want, kwargs
    assert list(index.run_query(target_texts={"pets": target}, top=3).summary["targets"]) == ["pets"]
    # explain and plots read their target the same way
    assert np.array_equal(target_features_for(index, target_texts=target), feats)
    assert np.array_equal(target_features_for(index, frame), feats)
    with pytest.raises(NagError, match="list of strings"):
        index.run_query(target_texts="one string, not a list", top=3)


def test_mixture_names_and_per_target_filters(reference, tmp_path):
    folder, index = reference
    pq.write_table(POOL, tmp_path / "arc.parquet")
    (tmp_path / "mmlu").mkdir()
    pq.write_table(POOL, tmp_path / "mmlu" / "part-0.parquet")
    res = index.run_query([str(tmp_path / "arc.parquet"), str(tmp_path / "mmlu")], top=4,
                          target_filter=["pets", "money"])
    assert res.summary["targets"] == {"arc": 4, "mmlu": 4}
    assert set(res.table.column("target").to_pylist()) == {"arc", "mmlu"}
    twice = index.run_query([str(tmp_path / "arc.parquet")] * 2, top=4)
    assert list(twice.summary["targets"]) == ["arc", "arc#2"]
    with pytest.raises(NagError, match="3 target filters for 2 targets"):
        index.run_query([str(tmp_path / "arc.parquet")] * 2, top=4, target_filter=["a", "b", "c"])


def test_sources_helpers(tmp_path):
    pq.write_table(POOL, tmp_path / "p.parquet")
    (tmp_path / ".hidden.parquet").write_bytes(b"x")
    (tmp_path / "notes.md").write_text("x")
    assert expand_sources(tmp_path) == [tmp_path / "p.parquet"]
    assert expand_sources(str(tmp_path / "*.parquet")) == [tmp_path / "p.parquet"]
    assert is_table_like(POOL) and not is_table_like("p.parquet") and not is_table_like([POOL])
    pd = pytest.importorskip("pandas")
    assert is_table_like(pd.DataFrame({"docid": ["a"], "name": ["a column called name"]}))
    assert not is_table_like(pd.Series([1]))
    assert read_documents([POOL.slice(0, 2), POOL.slice(2)]).num_rows == 8
    with pytest.raises(NagError, match="more than once"):
        read_documents([POOL, tmp_path / "p.parquet"])
    with pytest.raises(NagError, match="no file matches"):
        expand_sources(str(tmp_path / "*.jsonl"))
    assert source_name("data/arc_train.jsonl.gz") == "arc_train" and source_name("arc/*.parquet") == "arc"


def test_urls_and_jsonl_through_pyarrow(tmp_path, monkeypatch):
    import nagindex.io as nio

    pq.write_table(POOL, tmp_path / "p.parquet")
    got = read_documents(tmp_path.as_uri() + "/p.parquet")
    assert got.column("docid").to_pylist() == POOL.column("docid").to_pylist()
    lines = "\n".join(f'{{"id": {i}, "text": "t{i}", "score": {i / 2}}}' for i in range(3)) + "\n"
    (tmp_path / "d.jsonl").write_text(lines)
    monkeypatch.setattr(nio, "_jsonl_records", None)  # typed JSONL needs no line-by-line reader
    docs = read_documents(tmp_path / "d.jsonl")
    assert docs.column("docid").to_pylist() == ["0", "1", "2"] and docs.column("score").to_pylist() == [0, 0.5, 1]
