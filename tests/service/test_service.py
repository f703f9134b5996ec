"""`nag serve`: every answer equals `Index.query`'s; bad requests are 4xx and the server goes on;
another writer's append or compaction is seen by the next request; `as_of` reads the past."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nagindex import Client, Index
from nagindex.cli import app as cli
from nagindex.errors import NagError
from nagindex.io import write_features_parquet
from nagindex.service import wire
from nagindex.service.app import BackgroundServer, create_app

TEXTS = ["cats are small animals", "the cat sat on a mat", "stock prices fell today", "bonds and shares rallied",
         "a kitten purrs", "the market closed lower", "dogs chase cats", "interest rates rose",
         "a puppy plays in the garden", "the central bank cut rates", "birds sing at dawn", "oil prices jumped"]
K, LENGTH = 3, 16


def _docs(lo: int, hi: int, texts=TEXTS) -> pa.Table:
    return pa.table({"docid": [f"d{i:03d}" for i in range(lo, hi)], "doc": [texts[i % len(texts)] for i in range(lo, hi)],
                     "token_num": [3 + i % 7 for i in range(lo, hi)],
                     "dataset": ["pets" if i % 2 == 0 else "money" for i in range(lo, hi)],
                     "quality": [float(i % 5) for i in range(lo, hi)]})


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("serve")
    Index.build(folder / "idx", _docs(0, 12), model=tiny_llama, top_k=K, max_length=LENGTH, embedder="hash:16",
                progress=False)
    (folder / "pets.jsonl").write_text("".join(json.dumps({"docid": f"p{i}", "text": t}) + "\n"
                                               for i, t in enumerate(TEXTS[::2])))
    (folder / "money.jsonl").write_text("".join(json.dumps({"docid": f"m{i}", "text": t}) + "\n"
                                                for i, t in enumerate(TEXTS[1::2])))
    server = BackgroundServer(create_app(folder / "idx", model=tiny_llama))
    yield folder, server
    server.stop()


def _same(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    assert a.equals(b), (a.to_pydict(), b.to_pydict())


CASES = [
    dict(target_texts=["a cat and a kitten"], top=4),
    dict(target_texts={"pets": TEXTS[::2], "money": TEXTS[1::2]}, fraction=0.3),
    dict(target_texts={"pets": TEXTS[::2], "money": TEXTS[1::2]}, top=3, each=True),
    dict(target_texts={"pets": TEXTS[::2], "money": TEXTS[1::2]}, top=6, dedupe=True, with_text=True),
    dict(target_texts=["rates and prices"], top=5, preset="paper"),
    dict(target_texts=["rates and prices"], top=5, mode="embedding"),
    dict(target_texts=["rates and prices"], fraction=0.5, quality_col="quality", invert_quality=True, mode="nag"),
    dict(target_texts=["rates and prices"], top=5, power=1.0, discount="none", layers="last"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_answer_equals_index_query(served, tiny_llama, case):
    folder, server = served
    options = CASES[case]
    want = Index.open(folder / "idx", model=tiny_llama).query(**options)
    _same(Client(server.url).query(**options), want)


def test_target_files_and_feature_files(served, tiny_llama, tmp_path):
    folder, server = served
    index = Index.open(folder / "idx", model=tiny_llama)
    files = [str(folder / "pets.jsonl"), str(folder / "money.jsonl")]
    _same(Client(server.url).query(files, top=4), index.query(files, top=4))
    feats = index.extractor().extract(TEXTS[:4])
    write_features_parquet(tmp_path / "feats.parquet", ["t0", "t1", "t2", "t3"], feats, index.spec)
    want = index.query(target_features=[str(tmp_path / "feats.parquet")], top=5)
    _same(Client(server.url).query(target_features=[str(tmp_path / "feats.parquet")], top=5), want)
    assert want.num_rows == 5


def test_json_answer_and_the_small_endpoints(served, tiny_llama):
    folder, server = served
    want = Index.open(folder / "idx", model=tiny_llama).query(target_texts=["a cat"], top=3)
    got = httpx.post(server.url + "/query", json={"target_texts": ["a cat"], "top": 3}).json()
    assert got["columns"]["docid"] == want.column("docid").to_pylist()
    assert got["summary"]["selected_docs"] == 3
    arrow = httpx.post(server.url + "/query", json={"target_texts": ["a cat"], "top": 3, "format": "arrow"})
    assert arrow.headers["content-type"] == wire.ARROW_STREAM
    assert wire.read_arrow(arrow.content)[0].equals(want)
    client = Client(server.url)
    assert client.health()["status"] == "ok"
    assert client.info()["documents"] == Index.open(folder / "idx").num_documents
    assert [v["version"] for v in client.versions()] == [v["version"] for v in Index.open(folder / "idx").versions()]
    ex = client.explain("d002", target_texts=["stock prices"])
    assert ex["docid"] == "d002" and ex["pool_size"] == Index.open(folder / "idx").num_documents


def test_bad_requests_are_4xx_and_the_server_goes_on(served, monkeypatch):
    folder, server = served
    client = Client(server.url)
    for body, message in [({"target_texts": ["x"], "top": 0}, "top must be at least 1"),
                          ({"target_texts": ["x"], "fraction": 0.1, "top": 2}, "either fraction or top"),
                          ({"target_texts": ["x"], "colour": "red"}, "unknown field"),
                          ({"target_texts": ["x"], "quality_col": "nope"}, "quality column 'nope'"),
                          ({"targets": ["/no/such/file.jsonl"]}, "no/such/file"),
                          ({"target_texts": ["x"], "as_of": "\u00b2"}, "unknown version"),
                          ({}, "no target given")]:
        answer = httpx.post(server.url + "/query", json=body)
        assert 400 <= answer.status_code < 500, (body, answer.text)
        assert message in answer.json()["error"] and "\n" not in answer.json()["error"]
    assert httpx.post(server.url + "/query", content=b"{not json").status_code == 400
    with pytest.raises(NagError, match="top must be at least 1"):
        client.query(target_texts=["x"], top=0)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Index, "run_query", broken)
    answer = httpx.post(server.url + "/query", json={"target_texts": ["x"], "top": 2})
    assert answer.status_code == 500 and "ZeroDivisionError: a bug" in answer.json()["error"]
    monkeypatch.undo()
    assert client.query(target_texts=["x"], top=2).num_rows == 2


def test_another_writers_append_and_compaction_are_seen_without_restart(tmp_path, tiny_llama):
    Index.build(tmp_path / "idx", _docs(0, 8), model=tiny_llama, top_k=K, max_length=LENGTH, progress=False, embedder=None)
    server = BackgroundServer(create_app(tmp_path / "idx", model=tiny_llama))
    try:
        client = Client(server.url)
        before = client.query(target_texts=["a cat"], fraction=1.0)
        assert before.num_rows <= 8 and client.health()["documents"] == 8
        first = Index.open(tmp_path / "idx").manifest.generation
        writer = Index.open(tmp_path / "idx", model=tiny_llama)  # another writer
        pq.write_table(_docs(8, 20), tmp_path / "more.parquet")
        writer.append([tmp_path / "more.parquet"], progress=False)
        assert client.health()["documents"] == 20
        after = client.query(target_texts=["a cat"], top=20)
        _same(after, Index.open(tmp_path / "idx", model=tiny_llama).query(target_texts=["a cat"], top=20))
        assert after.num_rows == 20
        # as_of reads the version before the append
        old = client.query(target_texts=["a cat"], top=20, as_of=first)
        _same(old, Index.open(tmp_path / "idx", model=tiny_llama, version=first).query(target_texts=["a cat"], top=20))
        assert old.num_rows == 8
        Index.open(tmp_path / "idx").compact()
        _same(client.query(target_texts=["a cat"], top=20),
              Index.open(tmp_path / "idx", model=tiny_llama).query(target_texts=["a cat"], top=20))
    finally:
        server.stop()


def test_nag_query_server_writes_what_nag_query_writes(served, tmp_path, monkeypatch):
    folder, server = served
    runner = CliRunner()
    target = str(folder / "pets.jsonl")
    index = server.server.config.app.state.served.index  # what `nag query` opens, with the tiny backbone
    want = index.query([target], top=4)
    remote = runner.invoke(cli, ["query", str(folder / "idx"), target, "--top", "4", "--server", server.url,
                                 "--out", str(tmp_path / "remote.parquet")])
    assert remote.exit_code == 0, remote.output
    assert pq.read_table(tmp_path / "remote.parquet").equals(want)
    assert "selected 4 of 12 documents" in remote.output
    monkeypatch.setenv("NAG_SERVER", server.url)
    env = runner.invoke(cli, ["query", str(folder / "idx"), target, "--top", "0", "--out", str(tmp_path / "x.parquet")])
    assert env.exit_code == 2 and env.output.strip().splitlines() == ["Error: --top must be at least 1, got 0"]
