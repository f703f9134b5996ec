"""Every file nagindex writes follows the user's umask (an evaluation job under another account reads it)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nagindex import Index
from nagindex.analysis.deactivation import DeactivationKeys, save_deactivated_model, save_keys
from nagindex.extraction.jobs import extract_files
from nagindex.io import write_table_atomic, write_upstream_jsonl

UMASK = 0o027  # group may read, others nothing: not the 0600 of a temporary file


@pytest.fixture
def umask():
    old = os.umask(UMASK)
    yield
    os.umask(old)


def _modes(root):
    paths = [root] if root.is_file() else [root, *root.rglob("*")]
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


def test_every_writer_uses_the_umask(tmp_path, tiny_llama, umask):
    pq.write_table(pa.table({"docid": ["a", "b"], "doc": ["one text", "two texts"]}), tmp_path / "pool.parquet")
    outputs = [tmp_path / "sel.parquet", tmp_path / "f.parquet", tmp_path / "f.jsonl", tmp_path / "k.json",
               tmp_path / "k.meta.json", tmp_path / "off", tmp_path / "idx"]
    write_table_atomic(pa.table({"x": [1]}), outputs[0])
    extract_files([tmp_path / "pool.parquet"], outputs[1], model=tiny_llama, top_k=3, max_length=8, progress=False)
    write_upstream_jsonl(outputs[2], ["a"], {"fwd_up": np.zeros((1, 9), np.uint16)})
    save_keys(outputs[3], DeactivationKeys({0: [1]}, backbone="tiny", num_layers=3, width=64))
    save_deactivated_model(tiny_llama, {0: [1]}, outputs[5])
    index = Index.build(outputs[6], tmp_path / "pool.parquet", model=tiny_llama, top_k=3, max_length=8,
                        progress=False, embedder=None)
    index.append(tmp_path / "pool.parquet", replace=True, progress=False)
    index.compact()
    for out in outputs:
        for path, mode in _modes(out).items():
            want = 0o777 & ~UMASK if path.is_dir() else 0o666 & ~UMASK
            assert mode == want, f"{path.relative_to(tmp_path)}: {oct(mode)} != {oct(want)}"
