"""A snapshot reads its own version's rows, or fails (issue 22): a compaction that dropped
its Lance table after documents were replaced never makes it return the new text
beside its old ranking."""

from __future__ import annotations

import pyarrow as pa
import pytest

from nagindex import Index, NagError
from tests.store.test_reliability import docs, features_for, make_index, one_line


def test_a_snapshot_never_reads_text_replaced_after_it_was_opened(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    reader = Index.open(idx)
    old = reader.take([0], ["docid", "doc"]).to_pylist()
    reader = Index.open(idx)  # opened, nothing read yet
    new = docs(["d0"]).set_column(1, "doc", pa.array(["replaced text"]))
    Index.open(idx).append(documents=new, feature_arrays={"fwd_up": features_for(1, 9)}, replace=True, progress=False)
    Index.open(idx).compact()
    try:
        got = reader.take([0], ["docid", "doc"]).to_pylist()
    except NagError as e:
        assert "changed while it was read" in one_line(e)
    else:
        assert got == old


def test_a_snapshot_still_reads_through_a_compaction_after_plain_appends(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    reader = Index.open(idx)
    want = Index.open(idx).take([0, 3], ["docid", "doc"])
    Index.open(idx).append(documents=docs(["new"]), feature_arrays={"fwd_up": features_for(1, 9)}, progress=False)
    Index.open(idx).compact()
    assert reader.take([0, 3], ["docid", "doc"]).equals(want)
