"""`nag demo`: the bundled corpus, the per-domain table, and the end-to-end run."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nagindex import NagError
from nagindex import demo as D
from nagindex.extraction.testing import tiny_backbone

PERMISSIVE_SOURCES = {
    "python311_docs", "python_stdlib", "spamassassin", "minerva_math", "mbpp_reference", "medmcqa_explanation",
}


def test_bundled_corpus_is_small_labelled_and_permissive():
    pool = pq.read_table(D.data_path(D.DEMO_POOL))
    assert set(pool.column_names) >= {"docid", "doc", "token_num", "dataset", "source"}
    assert 500 <= pool.num_rows <= 700
    assert len(set(pool.column("docid").to_pylist())) == pool.num_rows
    assert len(set(pool.column("dataset").to_pylist())) >= 6
    for src in set(pool.column("source").to_pylist()):
        assert src in PERMISSIVE_SOURCES or src.startswith("brown_"), src
    assert max(len(t) for t in pool.column("doc").to_pylist()) <= 2000
    assert min(pool.column("token_num").to_pylist()) > 0
    attribution = D.data_path("ATTRIBUTION.md").read_text()
    for src in set(pool.column("source").to_pylist()):
        assert src in attribution
    total = D.data_path(D.DEMO_POOL).stat().st_size
    for name, file in D.DEMO_TARGETS.items():
        target = pq.read_table(D.data_path(file))
        assert 40 <= target.num_rows <= 60
        assert target.column("source")[0].as_py() in attribution
        total += D.data_path(file).stat().st_size
    assert total < 2_000_000


def test_domain_table_means_counts_and_order():
    domains = np.array(["a", "b", "a", "c", "b"])
    distances = {"t1": np.array([0.2, 0.5, 0.4, 0.1, 0.7]), "t2": np.array([0.9, 0.1, 0.9, 0.5, 0.3])}
    selected = {"t1": np.array(["c", "a"]), "t2": np.array(["b", "b", "c"])}
    rows = D.domain_table(domains, distances, selected)
    assert [r.domain for r in rows] == ["c", "a", "b"]  # by mean distance to t1
    a = rows[1]
    assert a.docs == 2 and a.mean_distance["t1"] == pytest.approx(0.3) and a.mean_distance["t2"] == pytest.approx(0.9)
    assert a.selected == {"t1": 1, "t2": 0}
    assert rows[2].selected == {"t1": 0, "t2": 2}


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "nag-demo"
    bb = tiny_backbone()
    # the hashed embedder stands in for all-MiniLM-L6-v2: the tests load no model
    return bb, out, D.run_demo(out, model=bb, progress=False, embedder="hash:32")


def test_demo_writes_what_it_promises(tiny_demo):
    _, out, res = tiny_demo
    assert not res.index_reused
    pool = pq.read_table(D.data_path(D.DEMO_POOL))
    pool_tokens = sum(pool.column("token_num").to_pylist())
    domains = dict(zip(pool.column("docid").to_pylist(), pool.column("dataset").to_pylist()))
    assert res.pool_docs == pool.num_rows
    assert sum(r.docs for r in res.rows) == pool.num_rows
    for name in D.DEMO_TARGETS:
        sel = pq.read_table(out / f"selected_{name}.parquet")
        assert sel.num_rows == res.selected_counts[name] > 0
        dist = sel.column("nag_distance").to_numpy()
        assert np.all((dist >= 0) & (dist <= 1))
        assert np.all(np.diff(sel.column("fusion_score").to_numpy()) <= 0)  # rank order: the fusion's
        paper = pq.read_table(out / f"selected_{name}_paper.parquet")
        assert np.all(np.diff(paper.column("nag_distance").to_numpy()) >= 0)
        assert {r.domain: r.selected_paper[name] for r in res.rows} == {
            d: [domains[x] for x in paper.column("docid").to_pylist()].count(d) for d in {r.domain for r in res.rows}}
        assert sum(sel.column("token_num").to_pylist()) <= int(pool_tokens * D.DEFAULT_FRACTION)
        assert "doc" in sel.column_names  # with text, ready to train on
        # the table's counts are the selection's domains
        labels = [domains[d] for d in sel.column("docid").to_pylist()]
        assert {r.domain: r.selected[name] for r in res.rows} == {
            d: labels.count(d) for d in {r.domain for r in res.rows}}
        # mean distance of a domain lies within the pool's distance range
        assert all(0 <= r.mean_distance[name] <= 1 for r in res.rows)
    assert res.plot.stat().st_size > 10_000
    summary = res.summary.read_text()
    assert all(r.domain in summary for r in res.rows) and "selected for code" in summary
    assert "code (paper)" in summary and "--preset paper" in summary and "fusion" in summary


def test_demo_rerun_reuses_the_index_and_gives_the_same_selection(tiny_demo):
    bb, out, first = tiny_demo
    before = pq.read_table(out / "selected_code.parquet")
    again = D.run_demo(out, model=bb, progress=False, embedder="hash:32")
    assert again.index_reused
    assert pq.read_table(out / "selected_code.parquet").equals(before)
    assert [r.domain for r in again.rows] == [r.domain for r in first.rows]


def test_demo_refuses_a_file_as_output(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NagError, match="is a file"):
        D.run_demo(f, model=tiny_backbone(), progress=False)


def test_nag_demo_command_prints_table_outputs_and_next_steps(tmp_path, monkeypatch):
    import nagindex.extraction.backbones as backbones
    from nagindex.cli import app

    bb = tiny_backbone()
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: bb)
    out = tmp_path / "demo-out"
    monkeypatch.setattr(D, "demo_embedder", lambda: "hash:32")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    for needle in ("mean distance to medical", "selected for code", str(out / "selected_medical.parquet"),
                   "distance_by_domain.png", "nag index build", "nag query"):
        assert needle in result.output
    assert (out / "selected_code.parquet").is_file()
