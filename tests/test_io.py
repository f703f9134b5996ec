"""Reading documents in every layout; feature files round-trip; bad input is a NagError."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex import FeatureSpec, NagError
from nagindex import io as nio


def _spec(**kw):
    base = dict(backbone="b", backbone_hash="h" * 64, num_layers=2, top_k=3, neuron_types=("fwd_up", "att_q"),
                layer_widths={"fwd_up": 100, "att_q": 40}, max_length=120)
    base.update(kw)
    return FeatureSpec(**base)


def test_web_parquet_carries_payload_and_types(tmp_path):
    p = tmp_path / "web.parquet"
    pq.write_table(pa.table({"docid": ["a", "b"], "doc": ["x y", "z"], "token_num": pa.array([3, 1], pa.int32()),
                             "dataset": ["d1", None], "score": [0.5, 0.7]}), p)
    t = nio.read_documents([p])
    assert t.column_names[:4] == ["docid", "doc", "token_num", "dataset"] and "score" in t.column_names
    assert t.schema.field("token_num").type == pa.int64()
    assert t.column("dataset").to_pylist() == ["d1", None]
    assert t.column("score").to_pylist() == [0.5, 0.7]
    assert nio.skipped_count(t) == 0


def test_missing_token_num_and_dataset_are_null(tmp_path):
    p = tmp_path / "web.parquet"
    pq.write_table(pa.table({"docid": ["a"], "doc": ["x"]}), p)
    t = nio.read_documents(p, "web")
    assert t.column("token_num").to_pylist() == [None] and t.column("dataset").to_pylist() == [None]
    assert t.schema.field("token_num").type == pa.int64()


def test_final_parquet(tmp_path):
    p = tmp_path / "final.parquet"
    meta = pa.array([{"docid": "m1", "token_num": 4}, {"docid": "m2", "token_num": 9}])
    pq.write_table(pa.table({"meta": meta, "content_split": ["first doc", "second doc"], "lang": ["en", "fr"]}), p)
    t = nio.read_documents([p])  # auto-detected from the columns
    assert t.column("docid").to_pylist() == ["m1", "m2"]
    assert t.column("doc").to_pylist() == ["first doc", "second doc"]
    assert t.column("token_num").to_pylist() == [4, 9]
    assert t.column("lang").to_pylist() == ["en", "fr"]


def test_jsonl_with_id_text_and_gzip(tmp_path):
    p = tmp_path / "docs.jsonl.gz"
    rows = [{"id": 7, "text": "seven", "domain": "math"}, {"id": "x", "text": "ex", "domain": "code", "extra": {"a": 1}}]
    with gzip.open(p, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n\n")
    t = nio.read_documents([p])
    assert t.column("docid").to_pylist() == ["7", "x"]
    assert t.column("doc").to_pylist() == ["seven", "ex"]
    assert t.column("domain").to_pylist() == ["math", "code"]
    assert t.column("token_num").null_count == 2


def test_txt_one_doc_per_line(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("first line\n\n   \nthird one\n")
    t = nio.read_documents([p])
    assert t.column("docid").to_pylist() == ["notes:1", "notes:4"]
    assert t.column("doc").to_pylist() == ["first line", "third one"]


def test_empty_and_non_string_docs_skip_with_warning_or_fail_strict(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"docid": "a", "doc": "fine"}, {"docid": "b", "doc": ""}, {"docid": "c", "doc": 12},
        {"docid": "d", "doc": None}, {"docid": "e", "doc": "  \n"}, {"docid": "f", "doc": "ok"}]))
    with pytest.warns(nio.SkippedDocumentsWarning, match="skipped 4 documents"):
        t = nio.read_documents([p])
    assert t.column("docid").to_pylist() == ["a", "f"] and nio.skipped_count(t) == 4
    with pytest.raises(NagError, match="4 documents have empty or non-string text"):
        nio.read_documents([p], strict=True)
    # Parquet strings: same rule.
    q = tmp_path / "w.parquet"
    pq.write_table(pa.table({"docid": ["a", "b"], "doc": ["x", None]}), q)
    with pytest.raises(NagError, match="1 documents"):
        nio.read_documents([q], strict=True)


@pytest.mark.parametrize(
    "table, message",
    [
        (pa.table({"id_": ["a"], "doc": ["x"]}), "no 'docid' column"),
        (pa.table({"docid": ["a"], "body": ["x"]}), "no 'doc' text column"),
        (pa.table({"docid": ["a", "a"], "doc": ["x", "y"]}), "occur more than once"),
        (pa.table({"docid": pa.array([None, "b"], pa.string()), "doc": ["x", "y"]}), "have no docid"),
    ],
)
def test_bad_document_files(tmp_path, table, message):
    p = tmp_path / "bad.parquet"
    pq.write_table(table, p)
    with pytest.raises(NagError, match=message):
        nio.read_documents([p], "web")


def test_other_bad_inputs(tmp_path):
    with pytest.raises(NagError, match="input file not found"):
        nio.read_documents([tmp_path / "nope.parquet"])
    with pytest.raises(NagError, match="unknown format"):
        nio.read_documents([tmp_path / "nope.parquet"], "xml")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"docid": "a", "doc": "x"}\n{not json\n')
    with pytest.raises(NagError, match="bad.jsonl:2: not valid JSON"):
        nio.read_documents([bad])
    odd = tmp_path / "docs.csv"
    odd.write_text("docid,doc\n")
    with pytest.raises(NagError, match="pass --format"):
        nio.read_documents([odd])
    # Duplicates across files.
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"docid": "same", "doc": "x"}))
    b.write_text(json.dumps({"docid": "same", "doc": "y"}))
    with pytest.raises(NagError, match="'same'"):
        nio.read_documents([a, b])
    with pytest.raises(NagError, match="'same'"):
        list(nio.iter_document_batches([a, b]))


def test_require_text_false_allows_missing_doc(tmp_path):
    p = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"docid": ["a", "b"], "token_num": [1, 2]}), p)
    t = nio.read_documents([p], require_text=False)
    assert t.column("doc").null_count == 2 and t.column("token_num").to_pylist() == [1, 2]


def test_iter_document_batches_equals_read_documents(tmp_path):
    p = tmp_path / "web.parquet"
    n = 25
    pq.write_table(pa.table({"docid": [f"d{i}" for i in range(n)], "doc": [f"text {i}" for i in range(n)],
                             "k": list(range(n))}), p, row_group_size=7)
    j = tmp_path / "more.jsonl"
    j.write_text("\n".join(json.dumps({"id": f"j{i}", "text": f"t{i}"}) for i in range(5)))
    batches = list(nio.iter_document_batches([p, j], batch_size=4))
    assert all(b.num_rows <= 4 for b in batches)
    whole = nio.read_documents([p, j])
    assert sum(b.num_rows for b in batches) == whole.num_rows
    got = pa.concat_tables([b.select(["docid", "doc"]) for b in batches])
    assert got.equals(whole.select(["docid", "doc"]))


def test_features_parquet_round_trip(tmp_path):
    spec = _spec()
    rng = np.random.default_rng(0)
    feats = {"fwd_up": rng.integers(0, 100, (4, 6)).astype(np.uint16),
             "att_q": rng.integers(0, 40, (4, 6)).astype(np.uint16)}
    p = tmp_path / "f.parquet"
    nio.write_features_parquet(p, ["a", "b", "c", "d"], feats, spec, columns={"token_num": [1, 2, 3, 4]})
    table, got_spec = nio.read_feature_files([p])
    assert got_spec == spec
    assert table.schema.field("fwd_up_feature").type == pa.list_(pa.uint16(), 6)
    back = nio.features_from_table(table, spec)
    for t in feats:
        np.testing.assert_array_equal(back[t], feats[t])
    assert [f for f in tmp_path.iterdir()] == [p]  # no temporary file left behind
    with pytest.raises(NagError, match="shape"):
        nio.write_features_parquet(tmp_path / "g.parquet", ["a"], feats, spec)
    assert not (tmp_path / "g.parquet").exists()


def test_feature_files_with_different_specs_are_refused(tmp_path):
    feats = {"fwd_up": np.zeros((1, 6), np.uint16), "att_q": np.zeros((1, 6), np.uint16)}
    nio.write_features_parquet(tmp_path / "a.parquet", ["a"], feats, _spec())
    nio.write_features_parquet(tmp_path / "b.parquet", ["b"], feats, _spec(backbone_hash="x" * 64))
    with pytest.raises(NagError, match="incompatible"):
        nio.read_feature_files([tmp_path / "a.parquet", tmp_path / "b.parquet"])


def test_upstream_jsonl_round_trip(tmp_path):
    spec = _spec()
    feats = {"fwd_up": np.arange(12, dtype=np.uint16).reshape(2, 6),
             "att_q": np.arange(12, 24, dtype=np.uint16).reshape(2, 6)}
    p = tmp_path / "up.jsonl"
    nio.write_upstream_jsonl(p, ["x", "y"], feats, spec)
    first = json.loads(p.read_text().splitlines()[0])
    assert first == {"docid": "x", "fwd_up_feature": {"layer_topk_value_index": [0, 1, 2, 3, 4, 5]},
                     "att_q_feature": {"layer_topk_value_index": [12, 13, 14, 15, 16, 17]}}
    table, got_spec = nio.read_feature_files([p])
    assert got_spec is None
    back = nio.features_from_table(table)
    assert set(back) == {"fwd_up", "att_q"}
    np.testing.assert_array_equal(back["att_q"], feats["att_q"])


def test_upstream_jsonl_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"docid": "a", "fwd_up_feature": {"layer_topk_value_index": [1, 70000]}}))
    with pytest.raises(NagError, match="must be integers in 0..65535"):
        nio.read_feature_files([p])
    p.write_text(json.dumps({"docid": "a", "fwd_up_feature": {"layer_topk_value_index": [1, 2]}}) + "\n"
                 + json.dumps({"docid": "b", "fwd_up_feature": {"layer_topk_value_index": [1]}}))
    with pytest.raises(NagError, match="different lengths"):
        nio.read_feature_files([p])
    p.write_text(json.dumps({"docid": "a", "text": "no features"}))
    with pytest.raises(NagError, match="no '<type>_feature'"):
        nio.read_feature_files([p])


# -- docids seen across batches: hashed, flat in memory --------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from nagindex.io import SeenDocids, docid_hashes  # noqa: E402


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=60, unique=True), st.integers(1, 7), st.data())
def test_seen_docids_finds_exactly_the_repeats(ids, batch, data):
    seen = SeenDocids()
    batches = [ids[i : i + batch] for i in range(0, len(ids), batch)]
    for b in batches:
        assert seen.add(pa.array(b)) is None  # distinct docids never collide
    # the merged runs hold every hash pair once, each run sorted by its first hash
    h1, h2 = docid_hashes(pa.array(ids))
    runs = seen._runs
    assert all(np.all(r1[:-1] <= r1[1:]) for r1, _ in runs)
    assert sorted(p for r1, r2 in runs for p in zip(r1.tolist(), r2.tolist())) == sorted(zip(h1.tolist(), h2.tolist()))
    again = data.draw(st.sampled_from(ids))
    fresh = [x for x in ["zz-new", again] if x not in ids or x == again]
    pos = seen.add(pa.array(fresh))
    assert pos is not None and fresh[pos] == again


def test_docid_hashes_see_bytes_and_length():
    a, b = docid_hashes(pa.array(["", "\0", "ab", "ba", "abc", "é", "doc-1", "doc-1"]))
    pairs = list(zip(a.tolist(), b.tolist()))
    assert len(set(pairs[:7])) == 7 and pairs[6] == pairs[7]
    chunked = pa.chunked_array([pa.array(["ab", "ba"]), pa.array(["abc"])])
    assert docid_hashes(chunked)[0].tolist() == a[2:5].tolist()
    sliced = pa.array(["x", "ab", "ba", "abc"]).slice(1)
    assert docid_hashes(sliced)[1].tolist() == b[2:5].tolist()
