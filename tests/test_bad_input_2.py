"""Input that still gave a traceback, or was misread, after issue 14 (issue 22): each is
one `Error: ...` line with exit code 2, and nothing is changed on disk."""

from __future__ import annotations

import errno
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex import Index, NagError
from nagindex.io import read_documents, read_feature_files, write_features_parquet
from nagindex.schemas import SPEC_METADATA_KEY
from tests.test_bad_input import SPEC, assert_one_line_error, features_for, nag, write_pool


def _index(tmp_path, ids=("a", "b", "c")):
    ids = list(ids)
    pool = write_pool(tmp_path / "pool.parquet", ids)
    write_features_parquet(tmp_path / "f.parquet", ids, {"fwd_up": features_for(len(ids))}, SPEC)
    return Index.build(tmp_path / "idx", [pool], features=[tmp_path / "f.parquet"], progress=False)


def test_a_feature_file_with_broken_spec_metadata_is_one_line(tmp_path):
    table = pa.table({"docid": ["a"], "fwd_up_feature": pa.array([[1, 2, 3, 4, 5, 6]], pa.list_(pa.uint16(), 6))})
    pq.write_table(table.replace_schema_metadata({SPEC_METADATA_KEY: b"{not json"}), tmp_path / "f.parquet")
    with pytest.raises(NagError) as e:
        read_feature_files([tmp_path / "f.parquet"])
    assert "f.parquet" in str(e.value) and "spec" in str(e.value) and "\n" not in str(e.value)


def test_a_token_count_past_int64_is_one_line(tmp_path):
    pq.write_table(pa.table({"docid": ["a"], "doc": ["x"], "token_num": pa.array([2**64 - 1], pa.uint64())}),
                   tmp_path / "pool.parquet")
    with pytest.raises(NagError, match="token_num"):
        read_documents(tmp_path / "pool.parquet")


def test_non_utf8_jsonl_pool_is_one_line(tmp_path):
    (tmp_path / "pool.jsonl").write_bytes(b'{"docid": "a", "text": "ok"}\n{"docid": "b", "text": "\xff\xfe"}\n')
    with pytest.raises(NagError) as e:
        read_documents(tmp_path / "pool.jsonl")
    assert "pool.jsonl" in str(e.value) and "UTF-8" in str(e.value)


def test_a_null_docid_in_upstream_features_names_its_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"docid": "a", "fwd_up_feature": {"layer_topk_value_index": [1] * 6}}) + "\n"
                    + json.dumps({"docid": None, "fwd_up_feature": {"layer_topk_value_index": [1] * 6}}) + "\n")
    with pytest.raises(NagError, match=r"f.jsonl:2: docid must be text, found null"):
        read_feature_files([path])


def test_disk_full_while_tagging_is_one_line_and_changes_nothing(tmp_path, monkeypatch):
    index = _index(tmp_path)
    import nagindex.atomic as atomic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(NagError) as e:
        index.tag("t")
    assert "disk full" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert not (tmp_path / "idx" / "tags.json").exists() and not [p for p in (tmp_path / "idx").iterdir() if p.name.endswith(".tmp")]


def test_disk_full_while_extracting_is_one_line(tmp_path, monkeypatch, tiny_llama):
    from nagindex.extraction import jobs

    write_pool(tmp_path / "pool.parquet", ["a", "b"])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobs.nio, "write_features_parquet", full)
    with pytest.raises(NagError) as e:
        jobs.extract_files([tmp_path / "pool.parquet"], tmp_path / "out.parquet", model=tiny_llama, progress=False)
    assert "disk full" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("size", [("--width", "100000", "--height", "100000"), ("--width", "70000")])
def test_picture_sizes_are_bounded(tmp_path, size):
    _index(tmp_path)
    code, _, err = nag("plot", "map", tmp_path / "idx", "--out", tmp_path / "map.png", *size)
    assert_one_line_error(code, err, "--width")
    assert not (tmp_path / "map.png").exists()


def test_device_cuda_without_cuda_is_one_line(tmp_path):
    write_pool(tmp_path / "pool.parquet", ["a"])
    code, _, err = nag("extract", tmp_path / "pool.parquet", "--out", tmp_path / "o.parquet", "--device", "cuda:7",
                       env={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(code, err, "cuda")


def test_a_remote_pool_without_its_filesystem_library_is_one_line(tmp_path):
    _index(tmp_path)
    code, _, err = nag("index", "append", tmp_path / "idx", "nosuchscheme://bucket/pool.parquet", "--features",
                       tmp_path / "f.parquet", "--no-progress")
    assert_one_line_error(code, err, "nosuchscheme://bucket/pool.parquet")


class _Planted:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_an_embedder_folder_with_pickle_weights_is_refused_unread(tmp_path):
    import pickle

    from nagindex.extraction.embedder import load_embedder
    from nagindex.extraction.testing import tiny_config, tiny_tokenizer

    folder = tmp_path / "emb"
    tiny_tokenizer().save_pretrained(folder)
    tiny_config("llama").save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Planted(tmp_path / "ran")}))
    with pytest.raises(NagError) as e:
        load_embedder(folder)
    assert "safetensors" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("depth", [1_000, 20_000])
def test_deeply_nested_jsonl_is_one_line_not_a_crash(tmp_path, depth):
    import subprocess
    import sys

    deep = "[" * depth + "1" + "]" * depth
    (tmp_path / "pool.jsonl").write_text('{"docid": "a", "text": "ok"}\n' + f'{{"docid": "b", "text": "x", "deep": {deep}}}\n')
    (tmp_path / "f.jsonl").write_text(f'{{"docid": "b", "fwd_up_feature": {deep}}}\n')
    # in a child: the crash this guards against is a segfault of the JSON reader
    code = ("import sys\nfrom nagindex import NagError\nfrom nagindex.io import read_documents, read_feature_files\n"
            "for read in (lambda: read_documents(sys.argv[1]), lambda: read_feature_files([sys.argv[2]])):\n"
            "    try:\n        read()\n    except NagError as e:\n        print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pool.jsonl"), str(tmp_path / "f.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and "pool.jsonl:2: nested more than" in lines[0]
    assert "f.jsonl:1: nested more than" in lines[1]
