"""The index store: layout, inverted lists, append/replace/compact, validation."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex import Index, NagError
from nagindex.io import write_features_parquet, write_upstream_jsonl
from nagindex.store.postings import layer_postings, list_ids, open_postings
from nagindex.schemas import SCHEMA_VERSION, FeatureSpec

L, K, W = 3, 4, 16


def make_spec(**kw) -> FeatureSpec:
    args = dict(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",), layer_widths={"fwd_up": W})
    args.update(kw)
    return FeatureSpec(**args)


def random_features(rng, n, layers=L, k=K, width=W) -> np.ndarray:
    """Top-K-like features: K distinct neurons per layer."""
    keys = rng.random((n, layers, width))
    return np.argsort(keys, axis=2)[:, :, :k].reshape(n, layers * k).astype(np.uint16)


def docs_table(ids, **cols) -> pa.Table:
    n = len(ids)
    base = {"docid": list(ids), "doc": [f"text of {i}" for i in ids], "token_num": np.arange(1, n + 1, dtype=np.int64)}
    base.update(cols)
    return pa.table(base)


def small_index(path, spec=None, segment_rows=7, batch_rows=5) -> Index:
    index = Index.create(path, spec or make_spec(), postings=True)
    index.segment_rows, index.batch_rows = segment_rows, batch_rows
    return index


def plain_postings(features: np.ndarray, first_row: int, width: int, k: int) -> dict[int, list[int]]:
    """SPEC reading of the inverted lists: list l*width+j holds every row whose layer l has j."""
    lists: dict[int, list[int]] = {}
    for r, row in enumerate(features):
        for pos, j in enumerate(row):
            lists.setdefault((pos // k) * width + int(j), []).append(first_row + r)
    return lists


def assert_postings_equal(invlists, features, width, k, first_row=0):
    want = plain_postings(features, first_row, width, k)
    assert invlists.nlist == (features.shape[1] // k) * width
    for list_no in range(invlists.nlist):
        np.testing.assert_array_equal(list_ids(invlists, list_no), want.get(list_no, []))


# -- inverted lists ----------------------------------------------------------------


def test_layer_postings_matches_plain_sort():
    rng = np.random.default_rng(1)
    block = rng.integers(0, W, size=(50, K)).astype(np.uint16)  # repeats allowed: multiplicity kept
    sizes, ids = layer_postings(block, W, first_row=100)
    np.testing.assert_array_equal(sizes, np.bincount(block.ravel(), minlength=W))
    want = [100 + r for j in range(W) for r in range(50) for c in range(K) if block[r, c] == j]
    np.testing.assert_array_equal(ids, want)


def test_postings_across_segments_match_definition(tmp_path):
    rng = np.random.default_rng(2)
    feats = random_features(rng, 23)
    index = small_index(tmp_path / "idx")
    index.append(documents=docs_table([f"d{i}" for i in range(23)]), feature_arrays={"fwd_up": feats}, progress=False)
    reopened = Index.open(tmp_path / "idx")
    assert [first for first, _ in reopened.feature_segments("fwd_up")] == [0, 7, 14, 21]
    assert_postings_equal(reopened.postings("fwd_up"), feats, W, K)
    # one segment alone holds only its own rows, as global row numbers
    seg = reopened._segments[1]
    assert_postings_equal(open_postings(seg.dir, "fwd_up"), feats[7:14], W, K, first_row=7)


def test_mapped_lists_equal_faiss_array_lists(tmp_path):
    import faiss

    rng = np.random.default_rng(3)
    feats = random_features(rng, 40)
    index = small_index(tmp_path / "idx", segment_rows=100)
    index.append(documents=docs_table([f"d{i}" for i in range(40)]), feature_arrays={"fwd_up": feats}, progress=False)
    ref = faiss.ArrayInvertedLists(L * W, 0)
    for list_no, rows in plain_postings(feats, 0, W, K).items():
        ids = np.asarray(rows, dtype=np.int64)
        ref.add_entries(list_no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(np.zeros(1, np.uint8)))
    mapped = index.postings("fwd_up")
    assert isinstance(mapped, faiss.OnDiskInvertedLists)
    for list_no in range(L * W):
        assert mapped.list_size(list_no) == ref.list_size(list_no)
        np.testing.assert_array_equal(list_ids(mapped, list_no), list_ids(ref, list_no))


# -- round trip ----------------------------------------------------------------------


def test_append_then_open_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    ids = [f"doc-{i}" for i in range(20)]
    feats = random_features(rng, 20)
    index = small_index(tmp_path / "idx")
    result = index.append(documents=docs_table(ids, dataset=["web"] * 20, score=np.arange(20) * 0.5), feature_arrays={"fwd_up": feats}, progress=False)
    assert (result.added, result.skipped, result.replaced) == (20, 0, 0)
    index = Index.open(tmp_path / "idx")
    assert index.num_rows == 20 and index.live_mask() is None
    assert index.docids().to_pylist() == ids
    np.testing.assert_array_equal(index.token_num(), np.arange(1, 21))
    np.testing.assert_array_equal(index.features("fwd_up"), feats)
    rows = np.array([19, 3, 3, 0])
    got = index.take(rows)
    assert got.column_names == ["docid", "token_num", "dataset", "doc", "score"]
    assert got.column("docid").to_pylist() == [ids[r] for r in rows]
    assert got.column("score").to_pylist() == [r * 0.5 for r in rows]
    feat_col = index.take(rows, columns=["fwd_up_feature", "_row"])
    np.testing.assert_array_equal(np.array(feat_col.column("fwd_up_feature").to_pylist()), feats[rows])
    assert feat_col.column("_row").to_pylist() == rows.tolist()
    info = index.info()
    assert info["documents"] == 20 and info["tokens"] == 210 and info["num_layers"] == L and info["top_k"] == K
    assert info["segments"] == 3 and info["deltas_pending"] == 0 and info["size_bytes"] > 0
    with pytest.raises(NagError, match="row numbers"):
        index.take([20])
    with pytest.raises(NagError, match="unknown column"):
        index.take([0], columns=["nope"])


@pytest.mark.parametrize("reader", ["lance", "lancedb"])
def test_take_reads_the_pinned_version_through_either_reader(tmp_path, monkeypatch, reader):
    """Reads use pylance where installed, LanceDB otherwise: same rows, same pinned version."""
    import builtins

    rng = np.random.default_rng(5)
    index = small_index(tmp_path / "idx")
    index.append(documents=docs_table([f"a{i}" for i in range(10)]), feature_arrays={"fwd_up": random_features(rng, 10)}, progress=False)
    snapshot = Index.open(tmp_path / "idx")
    Index.open(tmp_path / "idx").append(
        documents=docs_table([f"b{i}" for i in range(5)]), feature_arrays={"fwd_up": random_features(rng, 5)}, progress=False
    )
    if reader == "lancedb":
        real_import = builtins.__import__

        def no_pylance(name, *args, **kwargs):
            if name == "lance":
                raise ImportError("pylance hidden by the test")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_pylance)
    else:
        pytest.importorskip("lance")
    rows = np.array([9, 0, 4, 4])
    got = snapshot.take(rows, columns=["docid", "_row"])
    assert got.column("docid").to_pylist() == [f"a{r}" for r in rows]
    assert got.column("_row").to_pylist() == rows.tolist()
    assert snapshot.num_rows == 10  # the append after the snapshot stays invisible to it
    fresh = Index.open(tmp_path / "idx")
    assert fresh.take(np.array([14]), columns=["docid"]).column("docid").to_pylist() == ["b4"]


def test_skip_and_replace(tmp_path):
    rng = np.random.default_rng(5)
    index = small_index(tmp_path / "idx")
    base = random_features(rng, 10)
    index.append(documents=docs_table([f"d{i}" for i in range(10)]), feature_arrays={"fwd_up": base}, progress=False)
    new = random_features(rng, 4)
    batch = docs_table(["d2", "d3", "n1", "n2"])
    r = index.append(documents=batch, feature_arrays={"fwd_up": new}, progress=False)
    assert (r.added, r.skipped, r.replaced) == (2, 2, 0)
    assert index.info()["deltas_pending"] == 1
    np.testing.assert_array_equal(index.features("fwd_up")[2], base[2])  # skipped: old row kept
    r = index.append(documents=batch, feature_arrays={"fwd_up": new}, replace=True, progress=False)
    assert (r.added, r.skipped, r.replaced) == (4, 0, 4)
    index = Index.open(tmp_path / "idx")
    assert index.num_rows == 16 and index.num_documents == 12
    live = index.live_mask()
    assert live is not None and not live[[2, 3, 10, 11]].any() and live.sum() == 12
    docids = np.array(index.docids().to_pylist())
    assert sorted(docids[live]) == sorted([f"d{i}" for i in range(10)] + ["n1", "n2"])
    np.testing.assert_array_equal(index.features("fwd_up")[12:], new)
    assert index.info()["tokens"] == int(index.token_num()[live].sum())


def test_compact_keeps_every_live_document(tmp_path):
    rng = np.random.default_rng(6)
    index = small_index(tmp_path / "idx")
    index.append(documents=docs_table([f"d{i}" for i in range(12)], extra=np.arange(12)), feature_arrays={"fwd_up": random_features(rng, 12)}, progress=False)
    index.append(documents=docs_table(["d1", "d5", "x1"], extra=[100, 101, 102]), feature_arrays={"fwd_up": random_features(rng, 3)}, replace=True, progress=False)
    index.append(documents=docs_table(["x2", "x3"], extra=[7, 8]), feature_arrays={"fwd_up": random_features(rng, 2)}, progress=False)
    before = Index.open(tmp_path / "idx")
    live = before.live_mask()
    keep = np.flatnonzero(live)

    def by_docid(ix: Index, rows):
        table = ix.take(rows, columns=["docid", "token_num", "doc", "extra", "fwd_up_feature"])
        feats = ix.features("fwd_up")[rows]
        return {d: (t, txt, e, tuple(f), tuple(g)) for d, t, txt, e, f, g in zip(
            table.column("docid").to_pylist(), table.column("token_num").to_pylist(), table.column("doc").to_pylist(),
            table.column("extra").to_pylist(), table.column("fwd_up_feature").to_pylist(), feats)}

    want = by_docid(before, keep)
    live_docids = before.docids().filter(pa.array(live)).to_pylist()
    before.compact()
    after = Index.open(tmp_path / "idx")
    assert after.num_rows == len(keep) == after.num_documents and after.live_mask() is None
    assert after.info()["deltas_pending"] == 0
    assert after.docids().to_pylist() == live_docids
    assert by_docid(after, np.arange(after.num_rows)) == want
    assert all(v[3] == v[4] for v in want.values())  # Lance copy == forward index
    assert_postings_equal(after.postings("fwd_up"), after.features("fwd_up"), W, K)
    np.testing.assert_array_equal(after.take(np.arange(after.num_rows), columns=["_row"]).column("_row"), np.arange(after.num_rows))
    # old segments and tables are gone
    assert len(list((tmp_path / "idx" / "segments").iterdir())) == len(after.manifest.segments)


def test_reader_keeps_its_snapshot_while_appending(tmp_path):
    rng = np.random.default_rng(7)
    index = small_index(tmp_path / "idx")
    index.append(documents=docs_table([f"d{i}" for i in range(8)]), feature_arrays={"fwd_up": random_features(rng, 8)}, progress=False)
    reader = Index.open(tmp_path / "idx")
    writer = Index.open(tmp_path / "idx")
    writer.append(documents=docs_table(["e1", "e2", "e3"]), feature_arrays={"fwd_up": random_features(rng, 3)}, progress=False)
    assert reader.num_rows == 8 and len(reader.docids()) == 8
    assert reader.take(np.arange(8)).num_rows == 8
    assert reader.postings("fwd_up").nlist == L * W
    assert sum(reader.postings("fwd_up").list_size(i) for i in range(L * W)) == 8 * L * K
    assert Index.open(tmp_path / "idx").num_rows == 11


def test_payload_columns_evolve_with_appends(tmp_path):
    rng = np.random.default_rng(8)
    index = small_index(tmp_path / "idx")
    index.append(documents=docs_table(["a", "b"], lang=["en", "fr"]), feature_arrays={"fwd_up": random_features(rng, 2)}, progress=False)
    index.append(documents=docs_table(["c"]), feature_arrays={"fwd_up": random_features(rng, 1)}, progress=False)
    assert index.take([0, 2], columns=["lang"]).column("lang").to_pylist() == ["en", None]
    # a new column is added, nullable: null in the rows before it
    index.append(documents=docs_table(["d"], other=[1]), feature_arrays={"fwd_up": random_features(rng, 1)}, progress=False)
    assert index.take([0, 3], columns=["other"]).column("other").to_pylist() == [None, 1]


def test_feature_columns_in_documents_table(tmp_path):
    rng = np.random.default_rng(9)
    feats = random_features(rng, 5)
    table = docs_table([f"d{i}" for i in range(5)]).append_column(
        "fwd_up_feature", pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), L * K))
    index = small_index(tmp_path / "idx")
    index.append(documents=table, progress=False)
    np.testing.assert_array_equal(index.features("fwd_up"), feats)


def test_multiple_neuron_types(tmp_path):
    rng = np.random.default_rng(10)
    spec = make_spec(neuron_types=("fwd_up", "att_q"), layer_widths={"fwd_up": W, "att_q": 8})
    feats = {"fwd_up": random_features(rng, 9), "att_q": random_features(rng, 9, width=8)}
    index = small_index(tmp_path / "idx", spec=spec)
    index.append(documents=docs_table([f"d{i}" for i in range(9)]), feature_arrays=feats, progress=False)
    index = Index.open(tmp_path / "idx")
    np.testing.assert_array_equal(index.features("att_q"), feats["att_q"])
    assert_postings_equal(index.postings("att_q"), feats["att_q"], 8, K)
    with pytest.raises(NagError, match="not in these features"):
        index.postings("att_v")


# -- building from files -------------------------------------------------------------


def write_pool(path, ids, **cols):
    pq.write_table(docs_table(ids, **cols), path)


def test_build_from_feature_parquet_in_another_order(tmp_path):
    rng = np.random.default_rng(11)
    ids = [f"p{i}" for i in range(30)]
    feats = random_features(rng, 30)
    write_pool(tmp_path / "pool.parquet", ids, dataset=["a"] * 30)
    perm = rng.permutation(30)
    write_features_parquet(tmp_path / "f.parquet", [ids[i] for i in perm], {"fwd_up": feats[perm]}, make_spec())
    Index.batch_rows, saved = 8, Index.batch_rows
    try:
        index = Index.build(tmp_path / "idx", [tmp_path / "pool.parquet"], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    finally:
        Index.batch_rows = saved
    assert index.docids().to_pylist() == ids
    np.testing.assert_array_equal(index.features("fwd_up"), feats)
    assert index.take([29]).column("dataset").to_pylist() == ["a"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx")]  # no temp dir left


def test_build_from_upstream_jsonl_needs_a_model(tmp_path, tiny_llama):
    from nagindex.extraction.features import feature_spec

    spec = feature_spec(tiny_llama, ("fwd_up",), top_k=K)
    rng = np.random.default_rng(12)
    ids = [f"u{i}" for i in range(6)]
    feats = random_features(rng, 6, layers=spec.num_layers, width=spec.width("fwd_up"))
    write_pool(tmp_path / "pool.parquet", ids)
    write_upstream_jsonl(tmp_path / "f.jsonl", ids, {"fwd_up": feats})
    with pytest.raises(NagError, match="--model"):
        Index.build(tmp_path / "a", [tmp_path / "pool.parquet"], features=[tmp_path / "f.jsonl"], progress=False, embedder=None)
    assert not (tmp_path / "a").exists()
    index = Index.build(tmp_path / "b", [tmp_path / "pool.parquet"], features=[tmp_path / "f.jsonl"], model=tiny_llama, top_k=K, progress=False, embedder=None)
    np.testing.assert_array_equal(index.features("fwd_up"), feats)
    assert index.spec.backbone_hash == tiny_llama.weights_hash


def test_build_and_append_with_a_model(tmp_path, tiny_llama):
    from nagindex.extraction.features import count_tokens, extract_texts

    texts = ["the cat sat on the mat", "a stock market report", "gradient descent on a loss", "recipes with lentils"]
    ids = [f"m{i}" for i in range(4)]
    pq.write_table(pa.table({"docid": ids[:3], "doc": texts[:3]}), tmp_path / "pool.parquet")  # no token_num
    index = Index.build(tmp_path / "idx", [tmp_path / "pool.parquet"], model=tiny_llama, top_k=K, max_length=16, progress=False, embedder=None)
    want = extract_texts(tiny_llama, texts, neuron_types=("fwd_up",), top_k=K, max_length=16)["fwd_up"]
    np.testing.assert_array_equal(index.features("fwd_up"), want[:3])
    np.testing.assert_array_equal(index.token_num(), count_tokens(tiny_llama.tokenizer, texts[:3]))
    pq.write_table(pa.table({"docid": ids[2:], "doc": texts[2:], "token_num": [5, 6]}), tmp_path / "more.parquet")
    r = index.append([tmp_path / "more.parquet"], progress=False)  # the index's backbone extracts
    assert (r.added, r.skipped) == (1, 1)
    np.testing.assert_array_equal(index.features("fwd_up")[3], want[3])
    assert index.token_num()[3] == 6


# -- bad input: NagError, index untouched --------------------------------------------


@pytest.fixture
def filled(tmp_path):
    rng = np.random.default_rng(13)
    index = small_index(tmp_path / "idx")
    index.append(documents=docs_table([f"d{i}" for i in range(10)]), feature_arrays={"fwd_up": random_features(rng, 10)}, progress=False)
    return index


def snapshot(index_dir):
    index = Index.open(index_dir)
    return (
        (index_dir / "manifest.json").read_bytes(),
        index.docids().to_pylist(),
        index.features("fwd_up").tobytes(),
        index.take(np.arange(index.num_rows)).to_pydict(),
    )


@pytest.mark.parametrize(
    "documents, feature_arrays, message",
    [
        (pa.table({"id": ["x"], "token_num": [1]}), None, "no 'docid' column"),
        (docs_table(["x"], token_num=[-3]), None, "token_num must be >= 0"),
        (docs_table(["x"], token_num=[2.5]), None, "whole number"),
        (docs_table(["x"], token_num=["many"]), None, "integer column"),
        (pa.table({"docid": ["x"], "doc": ["t"]}), None, "no token_num"),
        (docs_table(["x", "x"]), "two", "more than once"),
        (docs_table(["x"]), np.zeros((1, L * K + 1), np.uint16), "length 13, expected L\\*K"),
        (docs_table(["x"]), np.full((1, L * K), W, np.uint16), "outside the layer width"),
        (docs_table(["x"]), np.full((1, L * K), -1, np.int64), "outside the layer width"),
        (docs_table(["x"]), {}, "no fwd_up features"),
    ],
)
def test_bad_documents_are_refused(filled, documents, feature_arrays, message):
    before = snapshot(filled.path)
    if isinstance(feature_arrays, str):
        feature_arrays = {"fwd_up": np.zeros((2, L * K), np.uint16)}
    elif isinstance(feature_arrays, np.ndarray) or feature_arrays is None:
        feature_arrays = {"fwd_up": feature_arrays if feature_arrays is not None else np.zeros((documents.num_rows, L * K), np.uint16)}
    with pytest.raises(NagError, match=message):
        filled.append(documents=documents, feature_arrays=feature_arrays, progress=False)
    assert snapshot(filled.path) == before


def test_bad_input_after_rows_were_written_rolls_back(filled, tmp_path):
    """A bad batch deep in a pool file is found after earlier batches reached Lance."""
    rng = np.random.default_rng(14)
    before = snapshot(filled.path)
    ids = [f"n{i}" for i in range(20)]
    write_pool(tmp_path / "pool.parquet", ids)
    feats = random_features(rng, 20)
    write_features_parquet(tmp_path / "f.parquet", ids[:15], {"fwd_up": feats[:15]}, make_spec())
    with pytest.raises(NagError, match="have no features"):
        filled.append([tmp_path / "pool.parquet"], features=[tmp_path / "f.parquet"], progress=False)
    assert snapshot(filled.path) == before
    assert sorted(p.name for p in (filled.path / "segments").iterdir()) == [s.name for s in filled.manifest.segments]


def test_features_without_pool_documents_are_refused(filled, tmp_path):
    rng = np.random.default_rng(15)
    write_pool(tmp_path / "pool.parquet", ["n1", "n2"])
    write_features_parquet(tmp_path / "f.parquet", ["n1", "n2", "ghost"], {"fwd_up": random_features(rng, 3)}, make_spec())
    before = snapshot(filled.path)
    with pytest.raises(NagError, match="'ghost' have no document"):
        filled.append([tmp_path / "pool.parquet"], features=[tmp_path / "f.parquet"], progress=False)
    assert snapshot(filled.path) == before


def test_features_of_another_backbone_are_refused(filled, tmp_path):
    rng = np.random.default_rng(16)
    write_pool(tmp_path / "pool.parquet", ["n1"])
    write_features_parquet(tmp_path / "f.parquet", ["n1"], {"fwd_up": random_features(rng, 1)}, make_spec(backbone_hash="other"))
    with pytest.raises(NagError, match="incompatible"):
        filled.append([tmp_path / "pool.parquet"], features=[tmp_path / "f.parquet"], progress=False)


def test_not_an_index_and_newer_schema(tmp_path, filled):
    with pytest.raises(NagError, match="not a nagindex index"):
        Index.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NagError, match="not a nagindex index"):
        Index.open(tmp_path / "plain")
    manifest = json.loads((filled.path / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (filled.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NagError, match="newer nagindex"):
        Index.open(filled.path)
    with pytest.raises(NagError, match="not empty"):
        Index.create(filled.path, make_spec())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_no_write_permission(filled):
    before = snapshot(filled.path)
    os.chmod(filled.path, 0o555)
    try:
        with pytest.raises(NagError, match="permission"):
            filled.append(documents=docs_table(["z"]), feature_arrays={"fwd_up": np.zeros((1, L * K), np.uint16)}, progress=False)
    finally:
        os.chmod(filled.path, 0o755)
    assert snapshot(filled.path) == before


def test_permission_error_while_writing(filled, monkeypatch):
    """What a read-only file system or a foreign-owned directory raises mid-append."""
    import nagindex.store.segment as segment

    before = snapshot(filled.path)

    def denied(f, array):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(segment, "_write_array", denied)
    with pytest.raises(NagError, match="no permission"):
        filled.append(documents=docs_table(["z"]), feature_arrays={"fwd_up": np.zeros((1, L * K), np.uint16)}, progress=False)
    assert snapshot(filled.path) == before


def test_append_batches_stream(tmp_path):
    rng = np.random.default_rng(18)
    index = small_index(tmp_path / "idx")
    feats = random_features(rng, 9)
    stream = [(docs_table([f"s{i}" for i in range(j, j + 3)]), {"fwd_up": feats[j : j + 3]}) for j in (0, 3, 6)]
    r = index.append_batches(iter(stream), progress=False)
    assert r.added == 9 and index.docids().to_pylist() == [f"s{i}" for i in range(9)]
    np.testing.assert_array_equal(index.features("fwd_up"), feats)
    before = snapshot(index.path)
    repeated = [(docs_table(["t1", "t2"]), {"fwd_up": feats[:2]}), (docs_table(["t2"]), {"fwd_up": feats[:1]})]
    with pytest.raises(NagError, match="earlier batch"):
        index.append_batches(iter(repeated), progress=False)
    assert snapshot(index.path) == before


@pytest.mark.parametrize("fail_after", [0, 12])
def test_disk_full_while_appending(filled, monkeypatch, fail_after):
    """ENOSPC from the segment writer (first write, or after some batches reached Lance)."""
    import nagindex.store.segment as segment

    before = snapshot(filled.path)
    real = segment._write_array
    calls = {"n": 0}

    def failing(f, array):
        calls["n"] += 1
        if calls["n"] > fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, array)

    monkeypatch.setattr(segment, "_write_array", failing)
    rng = np.random.default_rng(17)
    with pytest.raises(NagError, match="disk full"):
        filled.append(documents=docs_table([f"n{i}" for i in range(12)]), feature_arrays={"fwd_up": random_features(rng, 12)}, progress=False)
    monkeypatch.setattr(segment, "_write_array", real)
    assert snapshot(filled.path) == before
    # and the index still takes the same append afterwards
    r = Index.open(filled.path).append(documents=docs_table([f"n{i}" for i in range(12)]), feature_arrays={"fwd_up": random_features(rng, 12)}, progress=False)
    assert r.added == 12


def test_manifest_replacement_is_all_or_nothing(filled, monkeypatch):
    from nagindex import atomic

    before = snapshot(filled.path)

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(NagError, match="I/O error"):
        filled.append(documents=docs_table(["z"]), feature_arrays={"fwd_up": np.zeros((1, L * K), np.uint16)}, progress=False)
    monkeypatch.undo()
    assert snapshot(filled.path) == before
    assert not [p for p in filled.path.iterdir() if ".tmp" in p.name]


def test_damaged_index_is_reported(filled):
    seg = filled.path / "segments" / filled.manifest.segments[0].name
    (seg / "postings.fwd_up.ids").write_bytes(b"short")
    with pytest.raises(NagError, match="damaged"):
        Index.open(filled.path)


def test_an_index_without_postings_scans_and_answers_the_same(tmp_path):
    from nagindex import Index
    from nagindex.ranking.query import run_query

    rng = np.random.default_rng(5)
    L, K, W, n = 3, 4, 20, 300
    spec = FeatureSpec(backbone="synthetic", backbone_hash="0" * 16, num_layers=L, top_k=K,
                       neuron_types=("fwd_up",), layer_widths={"fwd_up": W})
    feats = np.stack([np.concatenate([rng.permutation(W)[:K] for _ in range(L)]) for _ in range(n)]).astype(np.uint16)
    docs = pa.table({"docid": [f"d{i}" for i in range(n)], "doc": ["x"] * n, "token_num": rng.integers(1, 9, n)})
    with_lists, without = Index.create(tmp_path / "a", spec, postings=True), Index.create(tmp_path / "b", spec)
    for index in (with_lists, without):
        index.append(documents=docs, feature_arrays={"fwd_up": feats}, progress=False)
    a, b = Index.open(tmp_path / "a"), Index.open(tmp_path / "b")
    assert not b.has_postings and b.info()["postings"] is False
    assert not list((tmp_path / "b").rglob("postings.*")) and list((tmp_path / "a").rglob("postings.*"))
    target = feats[:5]
    got = run_query(b, [target], top=10, plan="inverted")
    assert got.plans[0].path == "scan" and "--postings" in got.plans[0].reason
    assert got.table.column("docid").to_pylist() == run_query(a, [target], top=10).table.column("docid").to_pylist()
    b.append(documents=pa.table({"docid": ["new"], "doc": ["y"], "token_num": [3]}),
             feature_arrays={"fwd_up": feats[:1]}, progress=False)
    b = Index.open(tmp_path / "b")
    b.compact()
    assert not list((tmp_path / "b").rglob("postings.*")) and Index.open(tmp_path / "b").num_documents == n + 1


@pytest.mark.parametrize("postings", [False, True])
def test_segments_keep_the_pool_neuron_counts(tmp_path, postings, monkeypatch):
    # the document frequencies idf and contrast read come from the segments' stored
    # counts, less the replaced rows, equal to counting the live forward index; an
    # index whose segments predate the counts falls back to the lists or the scan
    from nagindex.ranking import scan
    from nagindex.ranking.scoring import layer_counts

    rng = np.random.default_rng(8)
    index = Index.create(tmp_path / "idx", make_spec(), postings=postings)
    index.segment_rows, index.batch_rows = 7, 5
    index.append(documents=docs_table([f"d{i}" for i in range(20)]), feature_arrays={"fwd_up": random_features(rng, 20)},
                 progress=False)
    index.append(documents=docs_table(["d3", "d9", "n1"]), feature_arrays={"fwd_up": random_features(rng, 3)},
                 replace=True, progress=False)
    index = Index.open(tmp_path / "idx")
    live = index.live_mask()
    assert live is not None and live.sum() == 21
    want = layer_counts(index.features("fwd_up")[live], num_layers=L, top_k=K, width=W)
    assert index.neuron_counts("fwd_up").sum() == index.num_rows * L * K
    np.testing.assert_array_equal(scan.pool_neuron_counts(index, "fwd_up", live), want)
    reads = []
    monkeypatch.setattr(scan, "_slot_counts", lambda *a: reads.append(a) or want)
    scan.pool_neuron_counts(index, "fwd_up", live)
    assert reads == []  # the stored counts answered, no scan
    for s in index._segments:
        s.neuron_counts["fwd_up"] = None  # as written before the counts were kept
    assert index.neuron_counts("fwd_up") is None
    np.testing.assert_array_equal(scan.pool_neuron_counts(index, "fwd_up", live), want)
    assert len(reads) == (0 if postings else 1)
    monkeypatch.undo()
    index.compact()
    after = Index.open(tmp_path / "idx")
    assert after.live_mask() is None
    np.testing.assert_array_equal(after.neuron_counts("fwd_up"), want)
    assert sorted(p.name for p in (tmp_path / "idx" / "segments").rglob("neuron_counts.*")) == \
        ["neuron_counts.fwd_up.i64"] * len(after.manifest.segments)


def test_docids_at_reads_any_rows_across_segments(tmp_path):
    rng = np.random.default_rng(4)
    index = small_index(tmp_path / "idx", segment_rows=7, batch_rows=3)
    ids = [f"doc-{i:03d}-{'é' * (i % 3)}" for i in range(30)]
    index.append(documents=docs_table(ids), feature_arrays={"fwd_up": random_features(rng, 30)}, progress=False)
    index = Index.open(tmp_path / "idx")
    assert len(index.manifest.segments) > 2
    for rows in (np.arange(30), rng.integers(0, 30, 50), np.array([29, 0, 7, 7, 6]), np.zeros(0, np.int64)):
        assert index.docids_at(rows).to_pylist() == [ids[r] for r in rows]
    assert index.docids().to_pylist() == ids  # the whole array once, then takes from it
    assert index.docids_at(np.array([3, 1])).to_pylist() == [ids[3], ids[1]]
