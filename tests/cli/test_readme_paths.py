"""The README's paths, true as written (issue #21, item 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nagindex import Index
from nagindex.cli import app
from nagindex.ranking.options import ScoringOptions

from test_index_cli import features_for, write_inputs

ROOT = Path(__file__).resolve().parents[2]


def nag(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_index_compact_json(tmp_path):
    pool, feats, _ = write_inputs(tmp_path, "pool", [f"a{i}" for i in range(6)], 1)
    more, more_feats, _ = write_inputs(tmp_path, "more", ["a1", "b1"], 2)
    assert nag("index", "build", tmp_path / "idx", pool, "--features", feats, "--embedder", "none",
               "--no-progress").exit_code == 0
    assert nag("index", "append", tmp_path / "idx", more, "--features", more_feats, "--replace",
               "--no-progress").exit_code == 0
    res = nag("index", "compact", tmp_path / "idx", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert report["before"]["replaced_rows"] == 1 and report["after"]["replaced_rows"] == 0
    assert report["after"]["documents"] == 7 and report["after"]["segments"] <= report["before"]["segments"]


def test_paper_preset_index_queries_with_paper_scoring_by_default(tmp_path):
    pool, feats, all_feats = write_inputs(tmp_path, "pool", [f"a{i}" for i in range(30)], 3)
    res = nag("index", "build", tmp_path / "idx", pool, "--features", feats, "--preset", "paper", "--no-progress")
    assert res.exit_code == 0, res.output
    from nagindex.io import write_features_parquet
    from test_index_cli import SPEC

    write_features_parquet(tmp_path / "t.parquet", ["t0", "t1", "t2"], {"fwd_up": all_feats[:3]}, SPEC)
    runs = {}
    for name, flags in (("plain", ()), ("paper", ("--preset", "paper")), ("default", ("--preset", "default"))):
        res = nag("query", tmp_path / "idx", "--target-features", tmp_path / "t.parquet", "--top", "9", "--json",
                  "--out", tmp_path / f"{name}.parquet", "--no-progress", *flags)
        assert res.exit_code == 0, res.output
        runs[name] = json.loads(res.output)["scoring"]
    assert runs["plain"] == runs["paper"] == ScoringOptions.paper().describe("nag")
    assert runs["default"] != runs["paper"]
    assert Index.open(tmp_path / "idx").query_preset == "paper"


def test_reappend_skips_indexed_docids_before_extraction(tmp_path, tiny_llama, monkeypatch):
    from nagindex.extraction.extractor import Extractor

    docs = pa.table({"docid": ["a", "b", "c"], "doc": ["one cat", "two dogs", "three birds"], "token_num": [2, 2, 2]})
    pq.write_table(docs, tmp_path / "pool.parquet")
    index = Index.build(tmp_path / "idx", [tmp_path / "pool.parquet"], model=tiny_llama, top_k=3, max_length=16,
                        progress=False, embedder=None)
    seen = []
    real = Extractor.extract
    monkeypatch.setattr(Extractor, "extract", lambda self, texts, **kw: (seen.extend(texts), real(self, texts, **kw))[1])
    pq.write_table(pa.table({"docid": ["b", "d", "c"], "doc": ["two dogs", "four fish", "three birds"],
                             "token_num": [2, 2, 2]}), tmp_path / "more.parquet")
    again = Index.open(tmp_path / "idx", model=tiny_llama)
    result = again.append([tmp_path / "more.parquet"], progress=False)
    assert (result.added, result.skipped) == (1, 2)
    assert seen == ["four fish"]  # the indexed ones were never extracted
    assert Index.open(tmp_path / "idx").num_documents == 4
    del index


def test_readme_python_needs_no_package_the_setup_does_not_install():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    imported = {m.group(1).split(".")[0] for b in blocks for m in re.finditer(r"^\s*(?:import|from)\s+([\w.]+)", b, re.M)}
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    project = (ROOT / "pyproject.toml").read_text()
    core = project.split("dependencies = [", 1)[1].split("]", 1)[0]
    for name in imported - {"nagindex"}:
        assert name in core or name in setup.split("--test", 1)[0] or name in ("pyarrow", "numpy"), \
            f"the README's Python imports {name}, which `scripts/setup.sh` does not install"


def test_extract_defaults_to_the_index_k_and_writes_embeddings_that_fuse(tmp_path, tiny_llama):
    from nagindex.errors import NagError
    from nagindex.extraction.features import feature_spec
    from nagindex.extraction.jobs import extract_files
    from nagindex.schemas import DEFAULT_INDEX_TOP_K

    texts = ["a cat purrs", "the market fell", "dogs bark at night", "rates rose again"]
    pool = pa.table({"docid": [f"d{i}" for i in range(8)], "doc": texts * 2, "token_num": [3] * 8})
    index = Index.build(tmp_path / "idx", pool, model=tiny_llama, top_k=3, max_length=16, embedder="hash:16",
                        progress=False)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"docid": f"t{i}", "text": t}) + "\n"
                                              for i, t in enumerate(texts[:2])))
    # K: what `nag index build` keeps by default
    out = extract_files([tmp_path / "t.jsonl"], tmp_path / "k.parquet", model=tiny_llama, top_k=None, max_length=16,
                        progress=False)
    width = feature_spec(tiny_llama).width("fwd_up")
    assert out["spec"].top_k == min(DEFAULT_INDEX_TOP_K, width)
    with pytest.raises(NagError, match="nag extract --top-k 3"):
        index.query(target_features=[str(tmp_path / "k.parquet")], top=2)
    # with the index's embedder, feature targets are fused like text ones
    extract_files([tmp_path / "t.jsonl"], tmp_path / "f.parquet", model=tiny_llama, top_k=3, max_length=16,
                  embedder="hash:16", progress=False)
    by_features = index.run_query(target_features=[str(tmp_path / "f.parquet")], top=5)
    by_text = index.run_query([str(tmp_path / "t.jsonl")], top=5)
    assert by_features.summary["mode"] == by_text.summary["mode"] == "fusion"
    assert by_features.table.column("docid").to_pylist() == by_text.table.column("docid").to_pylist()
    # without them the summary says which mode ran and why
    extract_files([tmp_path / "t.jsonl"], tmp_path / "n.parquet", model=tiny_llama, top_k=3, max_length=16,
                  progress=False)
    plain = index.run_query(target_features=[str(tmp_path / "n.parquet")], top=5)
    assert plain.summary["mode"] == "nag" and "without embeddings" in plain.summary["mode_reason"]


def test_index_build_from_python_builds_what_nag_index_build_builds(tmp_path, tiny_llama):
    from nagindex.extraction.embedder import DEFAULT_EMBEDDER, load_embedder

    tiny_llama.model.save_pretrained(tmp_path / "tiny")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "tiny")
    pool = pa.table({"docid": ["a", "b", "c"], "doc": ["one cat", "two dogs", "three birds"], "token_num": [2, 2, 2]})
    pq.write_table(pool, tmp_path / "pool.parquet")
    res = nag("index", "build", tmp_path / "cli", tmp_path / "pool.parquet", "--model", tmp_path / "tiny",
              "--max-length", 16, "--no-progress")
    assert res.exit_code == 0, res.output
    py = Index.build(tmp_path / "py", [tmp_path / "pool.parquet"], model=str(tmp_path / "tiny"), max_length=16,
                     progress=False)
    cli = Index.open(tmp_path / "cli")
    assert py.spec.top_k == cli.spec.top_k == min(100, py.spec.width("fwd_up"))
    assert py.manifest.embedder == cli.manifest.embedder == load_embedder(DEFAULT_EMBEDDER).name
    assert np.array_equal(py.features(), cli.features())
    paper = Index.build(tmp_path / "paper", [tmp_path / "pool.parquet"], model=str(tmp_path / "tiny"), max_length=16,
                        preset="paper", progress=False)
    assert (paper.spec.top_k, paper.manifest.embedder, paper.query_preset) == (20, None, "paper")
