"""The index finds its backbone again: a resolved location, --model checked by hash, fast failure."""

from __future__ import annotations

import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nagindex import Index
from nagindex.cli import app
from nagindex.errors import NagError
from nagindex.extraction.backbones import load_backbone, model_location
from nagindex.extraction.testing import tiny_backbone


def _save(bb, folder):
    bb.model.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)


@pytest.fixture
def relative_index(tmp_path, tiny_llama, monkeypatch):
    _save(tiny_llama, tmp_path / "tiny")
    ids = [f"d{i}" for i in range(8)]
    pq.write_table(pa.table({"docid": ids, "doc": [f"document {i} text" for i in range(8)]}), tmp_path / "pool.parquet")
    (tmp_path / "t.txt").write_text("document 1 text\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["index", "build", "idx", "pool.parquet", "--model", "tiny", "--top-k", "3",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    return tmp_path


def _query(idx, *extra):
    return CliRunner().invoke(app, ["query", str(idx), str(idx.parent / "t.txt"), "--top", "2", "--out",
                                    str(idx.parent / "sel.parquet"), "--no-progress", *extra])


def test_relative_model_is_found_from_another_folder(relative_index):
    spec = Index.open(relative_index / "idx").spec
    assert spec.backbone_location == str((relative_index / "tiny").resolve())
    res = _query(relative_index / "idx")
    assert res.exit_code == 0, res.output


def test_moved_model_fails_fast_and_model_option_is_checked(relative_index, tmp_path):
    shutil.move(relative_index / "tiny", relative_index / "moved")
    start = time.monotonic()
    res = _query(relative_index / "idx")
    assert time.monotonic() - start < 20
    assert res.exit_code == 2 and "pass --model" in res.output and len(res.output.strip().splitlines()) == 1
    assert _query(relative_index / "idx", "--model", str(relative_index / "moved")).exit_code == 0
    _save(tiny_backbone("llama", seed=7), relative_index / "other")
    res = _query(relative_index / "idx", "--model", str(relative_index / "other"))
    assert res.exit_code == 2 and "weights" in res.output


def test_unreachable_hub_id_fails_in_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(NagError, match="pass --model"):
        load_backbone("no-such-org/no-such-model", device="cpu")
    assert time.monotonic() - start < 20


def test_model_locations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"")
    assert model_location("m.gguf") == str(tmp_path / "m.gguf")
    assert model_location(None) == model_location("embedded") == "embedded"
    assert model_location("org/name") == "org/name"
