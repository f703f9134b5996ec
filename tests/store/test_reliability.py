"""Nothing on disk is trusted: damage is found and named in one line, never
read out of bounds, and recovery never removes committed data (issue 14)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from nagindex import Index, NagError
from nagindex.ranking import query as Q
from nagindex.ranking import scoring
from nagindex.schemas import FeatureSpec

L, K, W = 2, 3, 8
N = 40
SPEC = FeatureSpec(backbone="synthetic", backbone_hash="h0", num_layers=L, top_k=K, neuron_types=("fwd_up",), layer_widths={"fwd_up": W})


def features_for(n, seed):
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, L, W)), axis=2)[:, :, :K].reshape(n, L * K).astype(np.uint16)


def docs(ids, tokens=None):
    n = len(ids)
    return pa.table({"docid": list(ids), "doc": [f"text {i}" for i in ids],
                     "token_num": np.arange(1, n + 1, dtype=np.int64) if tokens is None else tokens})


def make_index(path, n=N, replace_some=False) -> Index:
    index = Index.create(path, SPEC, postings=True)
    ids = [f"d{i}" for i in range(n)]
    index.append(documents=docs(ids), feature_arrays={"fwd_up": features_for(n, 1)}, progress=False)
    if replace_some:
        index.append(documents=docs(ids[:3]), feature_arrays={"fwd_up": features_for(3, 2)}, replace=True, progress=False)
    return Index.open(path)


def edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def segment_file(path, name):
    seg = Index.open(path).manifest.segments[0].name
    return path / "segments" / seg / name


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- 1. recovery validates before it removes anything ---------------------------------------


def test_recovery_on_a_manifest_naming_a_missing_table_removes_nothing(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    before = sorted(p.name for p in idx.iterdir())
    edit_manifest(idx, lance_table="docs_000099")
    with pytest.raises(NagError) as e:
        Index.open(idx)
    assert "docs_000099.lance is missing" in one_line(e.value)
    # a writer that gets past opening (e.g. one that opened before the damage) must not drop the data either
    from nagindex.store import writer
    from nagindex.store.manifest import read_manifest

    with pytest.raises(NagError, match="is missing"):
        writer.recover(idx, read_manifest(idx))
    assert sorted(p.name for p in idx.iterdir()) == before
    edit_manifest(idx, lance_table="docs")
    assert Index.open(idx).num_documents == N


def test_recovery_leaves_files_it_did_not_make(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    (idx / "segments" / "notes.txt").write_text("mine")
    (idx / "segments" / "backup").mkdir()
    (idx / "segments" / "backup" / "keep").write_text("mine")
    (idx / "README").write_text("mine")
    import lancedb

    lancedb.connect(str(idx)).create_table("mine", data=pa.table({"x": [1]}))
    (idx / "segments" / "seg-000077").mkdir()  # what a crashed writer leaves: removed
    index.append(documents=docs(["x"]), feature_arrays={"fwd_up": features_for(1, 3)}, progress=False)
    assert (idx / "segments" / "notes.txt").exists() and (idx / "README").exists()
    assert (idx / "segments" / "backup" / "keep").exists() and (idx / "mine.lance").is_dir()
    assert not (idx / "segments" / "seg-000077").exists()


# -- 2. damage is found, named and never read out of bounds -------------------------------------


def test_opening_checks_sizes_and_check_verifies_hashes(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    from nagindex.store import checksums

    assert index.manifest.checksums and all(v[1].startswith(checksums.DEFAULT_ALGORITHM) for v in index.manifest.checksums.values())
    report = index.check()
    assert report.ok, report.problems
    assert report.files_hashed == len(index.manifest.checksums) and report.rows_checked == N
    counts = segment_file(idx, "neuron_counts.fwd_up.i64")
    good = counts.read_bytes()
    values = np.frombuffer(good, dtype=np.int64).copy()
    values[[0, -1]] = values[[-1, 0]] + 1  # plausible counts that the features do not give
    counts.write_bytes(values.tobytes())
    problems = Index.open(idx).check().problems
    assert any("neuron_counts.fwd_up.i64 does not match the segment's features" in p for p in problems)
    assert any("neuron_counts.fwd_up.i64 does not match its checksum" in p for p in problems)
    counts.write_bytes(good)
    feats = segment_file(idx, "features.fwd_up.u16")
    data = bytearray(feats.read_bytes())
    data[0] ^= 1  # same size, other content: found by check only
    feats.write_bytes(bytes(data))
    assert any("features.fwd_up.u16 does not match its checksum" in p for p in Index.open(idx).check().problems)
    with open(feats, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(NagError) as e:
        Index.open(idx)
    assert "features.fwd_up.u16 has" in one_line(e.value) and "bytes, the manifest recorded" in str(e.value)


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
def test_neuron_ids_past_the_width_are_refused_before_the_kernel(tmp_path, monkeypatch, kernel):
    idx = tmp_path / "idx"
    make_index(idx)
    feats = segment_file(idx, "features.fwd_up.u16")
    matrix = np.fromfile(feats, dtype=np.uint16)
    matrix[7] = 60000  # far past the width: an unchecked kernel reads outside its table
    matrix.tofile(feats)
    monkeypatch.setenv("NAGINDEX_KERNEL", kernel)
    index = Index.open(idx)
    with pytest.raises(NagError) as e:
        Q.run_query(index, [features_for(3, 9)], top=5, plan="scan")
    assert "features.fwd_up.u16 holds neuron id 60000, outside the layer width 0..7" in one_line(e.value)
    problems = index.check().problems
    assert any("holds neuron id 60000" in p for p in problems)
    assert any("does not match its checksum" in p for p in problems)


def test_kernel_refuses_out_of_width_ids_directly():
    profile = scoring.build_profile(features_for(4, 1), num_layers=L, top_k=K, width=W)
    bad = features_for(5, 2)
    bad[3, 4] = W
    for kernel in ("numba", "numpy"):
        with pytest.raises(NagError, match=f"neuron id {W}, outside the layer width"):
            scoring.score_features(bad, profile, kernel=kernel)


def test_negative_token_count_is_damage_not_a_budget(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    tokens = segment_file(idx, "token_num.i64")
    values = np.fromfile(tokens, dtype=np.int64)
    values[0] = -1_000_000
    values.tofile(tokens)
    index = Index.open(idx)
    with pytest.raises(NagError) as e:
        Q.run_query(index, [features_for(3, 9)], fraction=0.1)
    assert "token_num.i64 holds a negative token count (-1000000)" in one_line(e.value)
    assert any("negative token count" in p for p in index.check().problems)


@pytest.mark.parametrize("rows", [[-1, 0, 1], [0, 1, 5000]])
def test_deleted_row_file_out_of_range_is_refused(tmp_path, rows):
    idx = tmp_path / "idx"
    index = make_index(idx, replace_some=True)
    name = index.manifest.deleted_file
    assert index.num_documents == N and index.num_rows == N + 3
    np.save(idx / name, np.array(rows, dtype=np.int64))  # same size as the committed file
    with pytest.raises(NagError) as e:
        Index.open(idx)
    assert f"{name} lists rows outside 0..{N + 2}" in one_line(e.value)


def test_inverted_list_ids_out_of_range_are_refused(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    ids_file = segment_file(idx, "postings.fwd_up.ids")
    ids = np.fromfile(ids_file, dtype=np.int64)
    ids[:] = 10**9 + np.arange(len(ids))  # sorted, far outside the rows
    ids.tofile(ids_file)
    index = Index.open(idx)
    with pytest.raises(NagError, match="an inverted list of fwd_up names row"):
        Q.run_query(index, [features_for(3, 9)], top=2, plan="inverted", discount="none")
    assert any("postings.fwd_up.ids names rows outside 0..39" in p for p in index.check().problems)


def test_check_finds_a_lance_table_that_disagrees(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    data = sorted((idx / "docs.lance" / "data").iterdir())[0]
    data.write_bytes(data.read_bytes()[:100])  # truncated Lance data file
    with pytest.raises(NagError) as e:
        Index.open(idx).take([0, 1])
    assert "docs.lance" in one_line(e.value) and "nag index check" in str(e.value)
    # its size is recorded (issue 22): opening finds it, and check names the file
    problems = Index.check_path(idx).problems
    assert problems and any(p.startswith(f"docs.lance/data/{data.name} has 100 bytes") for p in problems)
    del index


# -- 6. token totals stay representable --------------------------------------------------------


def test_token_totals_that_overflow_are_refused(tmp_path):
    index = Index.create(tmp_path / "idx", SPEC, postings=True)
    ids = [f"t{i}" for i in range(10)]
    with pytest.raises(NagError, match=r"token counts add up to more than 2\*\*62"):
        index.append(documents=docs(ids, np.full(10, 2**62, np.int64)), feature_arrays={"fwd_up": features_for(10, 1)}, progress=False)
    with pytest.raises(NagError, match=r"more than 2\*\*62"):
        index.append(documents=docs(ids, np.full(10, 2**60, np.int64)), feature_arrays={"fwd_up": features_for(10, 1)}, progress=False)
    assert Index.open(tmp_path / "idx").num_documents == 0


# -- 7. a query that runs while a compaction commits ---------------------------------------------


@pytest.mark.parametrize("replace_some", [False, True])
def test_a_snapshot_opened_before_compaction_still_answers(tmp_path, replace_some):
    idx = tmp_path / "idx"
    make_index(idx, replace_some=replace_some)
    before = Index.open(idx)
    target = features_for(4, 5)
    want = Q.run_query(before, [target], top=6, plan="scan", with_text=True).table
    reader = Index.open(idx)
    Index.open(idx).compact()
    assert not (idx / "docs.lance").exists()  # the table the reader pinned is gone
    got = Q.run_query(reader, [target], top=6, plan="scan", with_text=True).table
    assert got.select(["docid", "doc", "token_num"]).equals(want.select(["docid", "doc", "token_num"]))
    assert reader.take([0, 5], columns=["docid", "doc"]).column("doc").to_pylist() == before.take([0, 5], columns=["docid", "doc"]).column("doc").to_pylist()


# -- security: names in the manifest stay inside the index -----------------------------------------


@pytest.mark.parametrize("field,value", [
    ("lance_table", "../../other/docs"),
    ("lance_table", "/etc/docs"),
    ("deleted_file", "../x.npy"),
])
def test_manifest_names_outside_the_index_are_refused(tmp_path, field, value):
    idx = tmp_path / "idx"
    make_index(idx)
    other = tmp_path / "other"
    make_index(other / "inner")
    edit_manifest(idx, **{field: value})
    with pytest.raises(NagError) as e:
        Index.open(idx)
    assert "not a file of this index" in one_line(e.value)


def test_segment_names_outside_the_index_are_refused(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    m = json.loads((idx / "manifest.json").read_text())
    m["segments"][0]["name"] = "../../other"
    (idx / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(NagError, match="not a file of this index"):
        Index.open(idx)


def test_a_segments_symlink_out_of_the_index_is_refused(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    seg = index.manifest.segments[0].name
    shutil.move(idx / "segments" / seg, tmp_path / seg)
    (idx / "segments" / seg).symlink_to(tmp_path / seg)
    with pytest.raises(NagError, match="lies outside the index directory|is a symbolic link"):
        Index.open(idx)


# -- Lance errors: one line naming the index, the file and what to do; index unchanged --------------


def test_a_manifest_naming_a_lance_version_that_does_not_exist(tmp_path):
    idx = tmp_path / "idx"
    make_index(idx)
    edit_manifest(idx, lance_version=999)
    with pytest.raises(NagError) as e:
        Index.open(idx)
    text = one_line(e.value)
    assert "version 999 of its Lance table docs.lance cannot be opened" in text and ".rs:" not in text
    report = Index.check_path(idx)
    assert not report.ok and "version 999" in report.problems[-1]


@pytest.mark.parametrize("error", [
    OSError("LanceError(IO): Generic LocalFileSystem error: No space left on device (os error 28)"),
    RuntimeError("lance error: Commit conflict\nsecond line"),
])
@pytest.mark.parametrize("action", ["append", "compact"])
def test_lance_failures_inside_a_write_are_one_line_and_change_nothing(tmp_path, monkeypatch, error, action):
    import lancedb.table

    idx = tmp_path / "idx"
    make_index(idx, replace_some=True)
    before = json.loads((idx / "manifest.json").read_text())

    def fail(self, *args, **kw):
        raise error

    monkeypatch.setattr(lancedb.table.LanceTable, "add", fail)
    index = Index.open(idx)
    with pytest.raises(NagError) as e:
        if action == "append":
            index.append(documents=docs(["new"]), feature_arrays={"fwd_up": features_for(1, 4)}, progress=False)
        else:
            index.compact()
    text = one_line(e.value)
    assert str(idx) in text and "the index is unchanged" in text
    assert ("disk full" in text) == isinstance(error, OSError)
    monkeypatch.undo()
    assert json.loads((idx / "manifest.json").read_text()) == before
    assert Index.open(idx).check().ok


# -- security: a downloaded index never makes nagindex download the model it names -------------------


def test_a_hub_model_named_by_an_index_is_not_downloaded(tmp_path, capfd):
    import dataclasses

    spec = dataclasses.replace(SPEC, backbone="nobody/not-a-model", extra={"backbone_location": "nobody/not-a-model"})
    index = Index.create(tmp_path / "idx", spec, postings=True)
    index.append(documents=docs(["a"]), feature_arrays={"fwd_up": features_for(1, 1)}, progress=False)
    with pytest.raises(NagError) as e:
        Index.open(tmp_path / "idx").backbone()
    text = one_line(e.value)
    assert "does not download a model because an index names it" in text and "--model nobody/not-a-model" in text
    assert "nobody/not-a-model" in text  # the one line names the model the index asked for
    with pytest.raises(NagError) as e:  # named by the user: allowed to fetch (refused here only by the offline hub)
        Index.open(tmp_path / "idx", model="nobody/not-a-model").backbone()
    assert "does not download a model because an index names it" not in str(e.value)
