"""Input that used to be misread, silently accepted or answered with a traceback
(issue 14): each is refused in one line, or read as it says, and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex import Index, NagError
from nagindex.io import read_feature_files, write_features_parquet, write_upstream_jsonl
from nagindex.ranking import selection
from nagindex.schemas import FeatureSpec
from nagindex.store.writer import CRASH_ENV

L, K, W = 2, 3, 8
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",), layer_widths={"fwd_up": W})


def features_for(n, seed=1):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, L, W)), axis=2)[:, :, :K].reshape(n, L * K).astype(np.uint16)


def write_pool(path, ids, **extra):
    cols = {"docid": ids, "doc": [f"text {i}" for i in ids], "token_num": np.arange(1, len(ids) + 1)}
    cols.update(extra)
    pq.write_table(pa.table(cols), path)
    return path


def nag(*args, env=None, timeout=180):
    """`python -m nagindex ...` as a user runs it: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "nagindex", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], err


# -- 3. upstream JSONL feature values are integers in range ----------------------------------


@pytest.mark.parametrize("value,shown", [(3.5, "3.5"), (True, "true"), (None, "null"), (10**30, str(10**30)), (-1, "-1"), (65536, "65536")])
def test_upstream_jsonl_values_must_be_integers_in_range(tmp_path, value, shown):
    path = tmp_path / "f.jsonl"
    rows = [{"docid": "a", "fwd_up_feature": {"layer_topk_value_index": [1, 2, 3, 4, 5, 6]}},
            {"docid": "b", "fwd_up_feature": {"layer_topk_value_index": [1, 2, value, 4, 5, 6]}}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(NagError) as e:
        read_feature_files([path])
    assert f"f.jsonl:2: fwd_up_feature holds {shown}; neuron indices must be integers in 0..65535" in str(e.value)


def test_upstream_jsonl_float_is_refused_by_build(tmp_path):
    pool = write_pool(tmp_path / "pool.parquet", ["a", "b"])
    path = tmp_path / "f.jsonl"
    write_upstream_jsonl(path, ["a", "b"], {"fwd_up": features_for(2)}, SPEC)
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["fwd_up_feature"]["layer_topk_value_index"][0] = 3.5
    path.write_text("\n".join([json.dumps(rec), lines[1]]) + "\n")
    code, _, err = nag("index", "build", tmp_path / "idx", pool, "--features", path, "--num-layers", L, "--top-k", K,
                       "--width", W, "--no-progress")
    assert_one_line_error(code, err, "f.jsonl:1: fwd_up_feature holds 3.5")
    assert not (tmp_path / "idx").exists()


# -- 4. duplicate docids in a feature parquet ---------------------------------------------------


def test_duplicate_docids_in_feature_parquet_are_refused_on_build_and_append(tmp_path):
    ids = ["a", "b", "c"]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    feats = features_for(4)
    write_features_parquet(tmp_path / "f.parquet", ["a", "b", "b", "c"], {"fwd_up": feats}, SPEC)
    with pytest.raises(NagError, match="feature files: 1 docids occur more than once .*'b'"):
        Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    assert not (tmp_path / "idx").exists()
    index = Index.create(tmp_path / "idx2", SPEC)
    with pytest.raises(NagError, match="occur more than once"):
        index.append([pool], features=[tmp_path / "f.parquet"], progress=False)
    assert Index.open(tmp_path / "idx2").num_documents == 0


def test_a_repeat_far_from_its_first_copy_is_refused_too(tmp_path, monkeypatch):
    from nagindex.store import ingest

    monkeypatch.setattr(ingest, "PARQUET_READ_ROWS", 2)
    ids = [f"d{i}" for i in range(8)]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids + ["d0"], {"fwd_up": features_for(9)}, SPEC)
    index = Index.create(tmp_path / "idx", SPEC)
    index.batch_rows = 2
    with pytest.raises(NagError, match="repeated in the feature files"):
        index.append([pool], features=[tmp_path / "f.parquet"], progress=False)


# -- 5. non-finite quality --------------------------------------------------------------------


def test_non_finite_quality_is_left_out_like_missing():
    distance = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    quality = np.array([0.2, np.inf, 0.8, np.nan, -np.inf])
    got = selection.quality_combination(distance, quality, invert=False)
    assert got.kept.tolist() == [0, 2] and got.missing == 3
    # the SPEC formula over the finite rows alone
    d = np.array([0.1, 0.3])
    q = np.array([0.2, 0.8])
    want = (d - d.min()) / (d.max() - d.min()) + (q - q.min()) / (q.max() - q.min())
    np.testing.assert_allclose(got.combined, want)


# -- 8. killed and racing builds ---------------------------------------------------------------


def test_a_killed_build_leaves_nothing_after_the_rerun(tmp_path):
    ids = [f"d{i}" for i in range(30)]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(30)}, SPEC)
    code, _, err = nag("index", "build", tmp_path / "idx", pool, "--features", tmp_path / "f.parquet", "--no-progress",
                       env={CRASH_ENV: "before-commit"})
    assert code == -signal.SIGKILL, err
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.building-")]
    assert len(left) == 1 and not (tmp_path / "idx").exists()
    (tmp_path / ".other.building-1").mkdir()  # another index's: not ours to remove
    Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.building-")]
    assert (tmp_path / ".other.building-1").exists()
    assert Index.open(tmp_path / "idx").num_documents == 30


def test_the_loser_of_two_builds_into_one_path_gets_one_line(tmp_path, monkeypatch):
    ids = ["a", "b", "c"]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(3)}, SPEC)
    original = Index.append

    def append_while_another_build_finishes(self, *args, **kw):
        result = original(self, *args, **kw)
        (tmp_path / "idx").mkdir()
        (tmp_path / "idx" / "manifest.json").write_text("{}")  # the winner's index
        return result

    monkeypatch.setattr(Index, "append", append_while_another_build_finishes)
    with pytest.raises(NagError) as e:
        Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    assert "was created by another process while this build ran" in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "idx" / "manifest.json").read_text() == "{}"
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


# -- tracebacks that are one line now ------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"not a parquet file\n"])
def test_empty_or_garbage_parquet_pool_is_one_line(tmp_path, content):
    (tmp_path / "pool.parquet").write_bytes(content)
    code, _, err = nag("index", "build", tmp_path / "idx", tmp_path / "pool.parquet", "--no-progress")
    assert_one_line_error(code, err, "cannot read", "pool.parquet as parquet")
    ids = ["a", "b"]
    pool = write_pool(tmp_path / "ok.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(2)}, SPEC)
    Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    code, _, err = nag("index", "append", tmp_path / "idx", tmp_path / "pool.parquet", "--features", tmp_path / "f.parquet", "--no-progress")
    assert_one_line_error(code, err, "pool.parquet as parquet")
    code, _, err = nag("extract", tmp_path / "pool.parquet", "--out", tmp_path / "out.parquet")
    assert_one_line_error(code, err, "pool.parquet as parquet")


def test_struct_dataset_column_and_existing_directory_outputs_are_one_line(tmp_path):
    ids = ["a", "b"]
    pool = write_pool(tmp_path / "pool.parquet", ids, dataset=pa.array([{"x": 1}, {"x": 2}]))
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(2)}, SPEC)
    with pytest.raises(NagError, match="'dataset' must be text"):
        Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    good = write_pool(tmp_path / "good.parquet", ids)
    Index.build(tmp_path / "idx", [good], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    (tmp_path / "outdir").mkdir()
    code, _, err = nag("deactivate", "keys", tmp_path / "idx", "--target-features", tmp_path / "f.parquet", "--out", tmp_path / "outdir")
    assert_one_line_error(code, err, "outdir: it is a directory")


def test_nag_index_check_from_the_command_line(tmp_path):
    ids = ["a", "b", "c"]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(3)}, SPEC)
    index = Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False, embedder=None)
    code, out, err = nag("index", "check", tmp_path / "idx")
    assert code == 0 and "ok (" in out and "3 rows checked" in out, err
    seg = tmp_path / "idx" / "segments" / index.manifest.segments[0].name / "token_num.i64"
    values = np.fromfile(seg, dtype=np.int64)
    values[1] = -7
    values.tofile(seg)
    code, out, err = nag("index", "check", tmp_path / "idx")
    assert code == 1 and "token_num.i64 does not match its checksum" in err and "negative token count (-7)" in err


# -- input that was misread or ignored -------------------------------------------------------------


def test_pools_are_read_as_they_say_with_imported_features(tmp_path):
    ids = ["a", "b"]
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(2)}, SPEC)
    f = [tmp_path / "f.parquet"]
    empty = write_pool(tmp_path / "empty.parquet", ids)
    pq.write_table(pa.table({"docid": ids, "doc": ["x", ""], "token_num": [1, 2]}), empty)
    with pytest.raises(NagError, match=r"1 documents have empty or non-string text \(first: docid 'b'\)"):
        Index.build(tmp_path / "i1", [empty], features=f, progress=False, embedder=None)
    nodoc = tmp_path / "nodoc.parquet"
    pq.write_table(pa.table({"docid": ids, "token_num": [1, 2]}), nodoc)
    with pytest.raises(NagError, match="no 'doc' text column"):
        Index.build(tmp_path / "i2", [nodoc], features=f, progress=False, embedder=None)
    clash = write_pool(tmp_path / "clash.parquet", ids, fwd_up_feature=["p", "q"])
    with pytest.raises(NagError, match="pool column 'fwd_up_feature' has a name reserved"):
        Index.build(tmp_path / "i3", [clash], features=f, progress=False, embedder=None)
    good = write_pool(tmp_path / "good.parquet", ids)
    with pytest.raises(NagError, match="unknown neuron type 'bogus'"):
        Index.build(tmp_path / "i4", [good], features=f, neuron_types="bogus", progress=False, embedder=None)
    with pytest.raises(NagError, match="the feature files have no att_q features"):
        Index.build(tmp_path / "i5", [good], features=f, neuron_types="att_q", progress=False, embedder=None)
    assert not any((tmp_path / f"i{i}").exists() for i in range(1, 6))
    code, _, err = nag("index", "build", tmp_path / "i6", good, "--features", f[0], "-t", "bogus", "--no-progress")
    assert_one_line_error(code, err, "unknown neuron type 'bogus'")
