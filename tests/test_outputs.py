"""Every output file goes through one check (issue 22): an existing entry that is
not a regular file (a device such as /dev/full, a FIFO, a directory) is never
replaced, and nothing is ever written inside an index directory."""

from __future__ import annotations

import os
import stat

import numpy as np
import pyarrow as pa
import pytest

from nagindex import Index, NagError
from nagindex.analysis.deactivation import save_keys
from nagindex.atomic import atomic_write_text
from nagindex.io import write_features_parquet, write_table_atomic, write_upstream_jsonl
from nagindex.schemas import FeatureSpec
from tests.test_bad_input import SPEC, assert_one_line_error, features_for, nag, write_pool


def _writers(spec=SPEC):
    feats = {"fwd_up": features_for(2)}
    return {
        "parquet": lambda p: write_table_atomic(pa.table({"x": [1]}), p),
        "features": lambda p: write_features_parquet(p, ["a", "b"], feats, spec),
        "jsonl": lambda p: write_upstream_jsonl(p, ["a", "b"], feats, spec),
        "keys": lambda p: save_keys(p, {0: [1, 2]}),
        "text": lambda p: atomic_write_text(p, "x"),
    }


@pytest.mark.parametrize("writer", sorted(_writers()))
def test_a_fifo_output_is_refused_and_left_as_it_was(tmp_path, writer):
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    with pytest.raises(NagError, match="is not a regular file"):
        _writers()[writer](fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _index(tmp_path):
    ids = ["a", "b", "c"]
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(3)}, SPEC)
    Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False)
    return tmp_path / "idx"


def test_no_output_is_written_inside_an_index(tmp_path):
    idx = _index(tmp_path)
    before = sorted(str(p.relative_to(idx)) for p in idx.rglob("*"))
    os.symlink(idx / "segments", tmp_path / "link")
    for target in (idx / "out.parquet", idx / "segments" / "new" / "out.parquet", tmp_path / "link" / "out.parquet"):
        for name, writer in _writers().items():
            with pytest.raises(NagError, match="lies inside the index"):
                writer(target)
    assert sorted(str(p.relative_to(idx)) for p in idx.rglob("*")) == before


def test_query_refuses_a_fifo_and_a_path_inside_the_index_before_it_runs(tmp_path):
    idx = _index(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = nag("query", idx, "--target-features", tmp_path / "f.parquet", "--out", fifo)
    assert_one_line_error(code, err, "is not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    code, _, err = nag("query", idx, "--target-features", tmp_path / "f.parquet", "--out", idx / "sel.parquet")
    assert_one_line_error(code, err, "lies inside the index")
    assert not (idx / "sel.parquet").exists()
    code, _, err = nag("extract", tmp_path / "pool.parquet", "--out", idx / "segments" / "f.parquet")
    assert_one_line_error(code, err, "lies inside the index")
