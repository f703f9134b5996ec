"""What `nag index check` calls damaged, no writer writes to (issue 22), and check reads
the Lance data files too: their hashes are recorded at every commit."""

from __future__ import annotations

import json

import pytest

from nagindex import Index, NagError
from tests.store.test_reliability import N, docs, edit_manifest, features_for, make_index, one_line


def _append(index, ids):
    index.append(documents=docs(ids), feature_arrays={"fwd_up": features_for(len(ids), 7)}, progress=False)


def test_a_lance_version_older_than_the_segments_is_refused_by_writers(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    _append(index, ["x", "y"])  # a second Lance version with more rows
    first = json.loads((idx / "versions" / "000001.json").read_text())["lance_version"]
    edit_manifest(idx, lance_version=first)
    manifest = (idx / "manifest.json").read_bytes()
    assert not Index.check_path(idx).ok
    for write in (lambda: _append(Index.open(idx), ["z"]), lambda: Index.open(idx).compact()):
        with pytest.raises(NagError) as e:
            write()
        assert "is damaged" in one_line(e.value) and f"has {N} rows" in str(e.value)
    assert (idx / "manifest.json").read_bytes() == manifest


@pytest.mark.parametrize("field,value", [("generation", -1), ("next_segment", -3), ("base_segments", 9)])
def test_impossible_counters_are_refused(tmp_path, field, value):
    idx = tmp_path / "idx"
    make_index(idx)
    edit_manifest(idx, **{field: value})
    with pytest.raises(NagError) as e:
        Index.open(idx)
    assert field.replace("_", " ") in one_line(e.value) or field in str(e.value)


def test_check_verifies_the_lance_data_files(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    _append(index, ["x"])
    recorded = [k for k in Index.open(idx).manifest.checksums if k.startswith("docs.lance/data/")]
    assert len(recorded) >= 2 and Index.check_path(idx).ok
    data = idx / recorded[0]
    good = data.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 3] ^= 0xFF
    data.write_bytes(bytes(raw))
    problems = Index.check_path(idx).problems
    assert any(recorded[0] in p and "does not match its checksum" in p for p in problems), problems
    data.write_bytes(good)
    index = Index.open(idx)
    index.compact()  # a compaction records the new table's files
    assert all(k.startswith(("segments/", "docs_")) for k in Index.open(idx).manifest.checksums)
    assert any(k.startswith(f"{Index.open(idx).manifest.lance_table}.lance/data/") for k in Index.open(idx).manifest.checksums)
