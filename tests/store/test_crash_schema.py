"""A killed append that brought a new payload column leaves no trace (issue 22): the
column belongs to the append's commit, so the next writer never commits it alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nagindex import Index
from nagindex.io import write_features_parquet
from nagindex.store.writer import CRASH_ENV
from tests.store.test_reliability import SPEC, docs, features_for

CHILD = textwrap.dedent(
    """
    import sys
    from nagindex import Index
    index = Index.open(sys.argv[1])
    index.batch_rows = index.segment_rows = 10  # a segment finishes before the first Lance rows are added
    index.append([sys.argv[2]], features=[sys.argv[3]], progress=False)
    """
)


def test_a_killed_append_with_a_new_column_is_not_committed_by_the_next_writer(tmp_path):
    idx = tmp_path / "idx"
    index = Index.create(idx, SPEC)
    index.append(documents=docs(["a", "b"]), feature_arrays={"fwd_up": features_for(2, 1)}, progress=False)
    ids = [f"n{i}" for i in range(30)]
    pq.write_table(pa.table({"docid": ids, "doc": ids, "token_num": np.ones(30, np.int64), "lang": ["en"] * 30}),
                   tmp_path / "pool.parquet")
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(30, 2)}, SPEC)
    (tmp_path / "child.py").write_text(CHILD)
    args = [sys.executable, str(tmp_path / "child.py"), str(idx), str(tmp_path / "pool.parquet"), str(tmp_path / "f.parquet")]
    proc = subprocess.run(args, env={**os.environ, CRASH_ENV: "segment"}, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    generation = Index.open(idx).manifest.generation
    Index.open(idx).tag("after-crash")  # the next writer: recovery runs
    after = Index.open(idx)
    assert "lang" not in after.columns() and after.manifest.generation == generation
    subprocess.run(args, check=True, capture_output=True, timeout=120)  # the rerun commits it, with its rows
    done = Index.open(idx)
    assert done.num_documents == 32 and "lang" in done.columns()
    assert done.take([0, 2], ["lang"]).column("lang").to_pylist() == [None, "en"]
