"""Versions and tags are read as strictly as the manifest (issue 22): garbage collection
never removes what a tag needs, tag names never read as versions, and a damaged
tags.json, version file or manifest is one line, never a traceback."""

from __future__ import annotations

import json

import pytest

from nagindex import Index, NagError
from tests.store.test_reliability import N, docs, features_for, make_index, one_line


def _files(idx):
    return sorted(str(p.relative_to(idx)) for p in idx.rglob("*") if "versions" not in p.parts)


def _append(index, ids, seed=5):
    index.append(documents=docs(ids), feature_arrays={"fwd_up": features_for(len(ids), seed)}, progress=False)


def test_a_tag_whose_version_file_was_removed_stops_collection(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)
    tagged = index.tag("keep")
    _append(index, ["x"])
    index.compact()  # a new table; the tagged version's segments and table stay
    (idx / "versions" / f"{tagged:06d}.json").unlink()
    before = _files(idx)
    with pytest.raises(NagError) as e:
        _append(index, ["y"])
    assert f"tag 'keep' names version {tagged}" in one_line(e.value) and "is damaged" in str(e.value)
    with pytest.raises(NagError, match="tag 'keep' names version"):
        index.compact()
    assert _files(idx) == before
    assert any("tag 'keep' names version" in p for p in Index.check_path(idx).problems)


@pytest.mark.parametrize("content,needle", [
    ('{"a": null}', "maps tag 'a' to null"),
    ('{"a": "3"}', "maps tag 'a' to \"3\""),
    ('{"v1": 1}', "reads as a version number"),
    ('[1]', "not a map"),
    ('{"a": ' * 20000 + "1" + "}" * 20000, "nested more than"),
    (b'{"a": 1, "\xff": 1}', "not UTF-8"),
])
def test_a_damaged_tags_file_is_one_line(tmp_path, content, needle):
    idx = tmp_path / "idx"
    index = make_index(idx)
    path = idx / "tags.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for action in (lambda: index.versions(), lambda: index.tag("b"), lambda: _append(index, ["z"]),
                   lambda: Index.open(idx, version="a")):
        with pytest.raises(NagError) as e:
            action()
        assert needle in one_line(e.value) and "tags.json" in str(e.value)
    assert Index.open(idx).num_documents == N


@pytest.mark.parametrize("name", ["v1", "V2", "3", "", "a b", "a/b", "-x", "x" * 65, "é"])
def test_tag_names_are_strict_and_never_a_version(tmp_path, name):
    index = make_index(tmp_path / "idx")
    with pytest.raises(NagError, match="is not a number or a version"):
        index.tag(name)
    assert not (tmp_path / "idx" / "tags.json").exists()


def test_a_version_number_is_never_shadowed(tmp_path):
    idx = tmp_path / "idx"
    index = make_index(idx)  # versions 0 and 1
    index.tag("first", 0)
    assert Index.open(idx, version="v1").num_documents == N
    assert Index.open(idx, version="first").num_documents == 0


@pytest.mark.parametrize("as_of", ["²", "v²", "1²"])
def test_superscript_versions_are_not_numbers(tmp_path, as_of):
    idx = tmp_path / "idx"
    make_index(idx)
    (idx / "versions" / "²³.json").write_text("{}")  # a stray file is not a version
    assert [v["version"] for v in Index.open(idx).versions()] == [0, 1]
    with pytest.raises(NagError, match="unknown version"):
        Index.open(idx, version=as_of)


@pytest.mark.parametrize("content,needle", [
    (b'{"format": "nagindex", "x": "\xff"}', "not UTF-8"),
    (b'{"format": "nagindex", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}", "nested more than"),
    (b'{"format": "nagindex", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested more than"),
])
def test_a_manifest_that_is_not_json_is_one_line_for_every_command(tmp_path, content, needle):
    from tests.test_bad_input import assert_one_line_error, nag

    idx = tmp_path / "idx"
    make_index(idx)
    (idx / "manifest.json").write_bytes(content)
    for args in (("index", "info", idx), ("index", "check", idx), ("index", "compact", idx)):
        code, _, err = nag(*args)
        assert_one_line_error(code, err, needle)
