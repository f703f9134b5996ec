"""What a killed writer of an output leaves (a partial temporary, a staging folder) is
removed by the next write of the same output, once its process is gone (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from nagindex.io import write_table_atomic


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_dead_writer_are_removed_and_a_live_ones_kept(tmp_path):
    out = tmp_path / "sel.parquet"
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f".sel.parquet.{dead}-abc123.tmp", tmp_path / f".sel.parquet.stage-{dead}-x1y2"]
    stale[0].write_bytes(b"partial")
    stale[1].mkdir()
    (stale[1] / "part-0.arrow").write_bytes(b"staged")
    running = [tmp_path / f".sel.parquet.{live}-def456.tmp", tmp_path / f".sel.parquet.stage-{live}-z9"]
    running[0].write_bytes(b"partial")
    running[1].mkdir()
    other = tmp_path / ".other.parquet.12345-abc.tmp"  # another output's: not ours to judge
    other.write_bytes(b"x")
    write_table_atomic(pa.table({"x": [1]}), out)
    assert out.is_file()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in running) and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, other.name, *(p.name for p in running)])


def test_a_hub_model_named_by_an_index_is_loaded_with_the_hub_offline(tmp_path, monkeypatch):
    import dataclasses

    from nagindex import Index, NagError
    from nagindex.extraction import backbones
    from tests.store.test_reliability import SPEC, docs, features_for

    spec = dataclasses.replace(SPEC, backbone="nobody/not-a-model", extra={"backbone_location": "nobody/not-a-model"})
    index = Index.create(tmp_path / "idx", spec)
    index.append(documents=docs(["a"]), feature_arrays={"fwd_up": features_for(1, 1)}, progress=False)
    seen = []

    def load(source, **kwargs):
        seen.append(os.environ.get("HF_HUB_OFFLINE"))
        raise NagError("stop")

    monkeypatch.setattr(backbones, "load_backbone", load)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(NagError):
        Index.open(tmp_path / "idx", model="nobody/not-a-model").backbone()  # the user's consent: left alone
    with pytest.raises(NagError):
        Index.open(tmp_path / "idx").backbone()
    assert seen == [None, "1"]
