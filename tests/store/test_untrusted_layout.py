"""An index's own folders and files are never symbolic links (issue 22): a crafted
index cannot make recovery remove, or a writer write, anything outside it."""

from __future__ import annotations

import os
import shutil

import pytest

from nagindex import Index, NagError
from tests.store.test_reliability import docs, features_for, make_index, one_line


def _append(index):
    index.append(documents=docs(["new"]), feature_arrays={"fwd_up": features_for(1, 5)}, progress=False)


def _move_out(idx, name, outside):
    shutil.move(idx / name, outside)
    os.symlink(outside, idx / name)


@pytest.mark.parametrize("name", ["segments", "versions", "docs.lance"])
def test_a_linked_folder_is_refused_by_readers_and_writers_and_nothing_outside_changes(tmp_path, name):
    idx = tmp_path / "idx"
    index = make_index(idx)  # a writer opened before the link was planted
    outside = tmp_path / "elsewhere"
    _move_out(idx, name, outside)
    (outside / "seg-000077").mkdir()  # what recovery would remove as a crashed writer's segment
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    with pytest.raises(NagError) as e:
        Index.open(idx)
    assert f"{name} is a symbolic link" in one_line(e.value)
    with pytest.raises(NagError, match=f"{name} is a symbolic link"):
        _append(index)
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before


def test_a_dangling_lock_link_is_refused_and_its_target_never_created(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    (idx / ".lock").unlink()
    os.symlink(tmp_path / "planted", idx / ".lock")
    with pytest.raises(NagError, match=r"\.lock is a symbolic link"):
        _append(index)
    assert not (tmp_path / "planted").exists()
    report_problems = Index.check_path(idx).problems
    assert any(".lock is a symbolic link" in p for p in report_problems)
