"""Pictures and the interpretability commands on a small real index (tiny random-init backbone).

Checks: the PNGs are valid and of the requested pixel size (read from the
IHDR chunk), the numbers behind them equal the scores computed independently
by `nagindex.ranking.scoring`, and bad input exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nagindex.analysis import deactivation, explain, maps, views
from nagindex.analysis import plots
from nagindex.cli import app
from nagindex.errors import NagError
from nagindex.extraction.testing import tiny_backbone

K = 4
LABELS = ["alpha", "beta", None]
WORDS = {
    "alpha": "apples and pears grow in the old orchard near the river".split(),
    "beta": "1 + 2 = 3, 7 * 8 = 56, sum the numbers and divide by 4".split(),
    None: "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG !!!".split(),
}


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature and the chunk CRC."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16 : 16 + 13]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(kind + body) == crc, "IHDR CRC mismatch"
    assert data.endswith(b"IEND\xaeB`\x82"), "no IEND chunk"
    return struct.unpack(">II", body[:8])


def _docs(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lab = LABELS[i % 3]
        words = rng.choice(WORDS[lab], size=rng.integers(5, 12))
        rows.append({"docid": f"doc{i:03d}", "doc": " ".join(words), "token_num": int(rng.integers(5, 40)), "dataset": lab})
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny model, a 45-document index built with it, and target files."""
    from nagindex import Index

    root = tmp_path_factory.mktemp("world")
    bb = tiny_backbone("llama")
    model_dir = root / "tiny-model"
    bb.model.save_pretrained(model_dir)
    bb.tokenizer.save_pretrained(model_dir)
    pool = root / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(_docs(45, 0)), pool)
    index_dir = root / "index"
    Index.build(index_dir, [pool], model=str(model_dir), top_k=K, progress=False, embedder=None)
    target = root / "target.jsonl"
    target.write_text("".join(json.dumps({"id": f"t{i}", "text": r["doc"]}) + "\n"
                              for i, r in enumerate(_docs(12, 5)) if r["dataset"] == "beta"))
    empty = root / "empty.txt"
    empty.write_text("\n\n")
    return {"root": root, "model_dir": model_dir, "index_dir": index_dir, "target": target, "empty": empty}


@pytest.fixture(scope="module")
def index(world):
    from nagindex import Index

    return Index.open(world["index_dir"])


@pytest.fixture(scope="module")
def target_feats(world, index):
    return views.target_features_for(index, [world["target"]])


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


# ---------------------------------------------------------------------------
# the numbers behind the pictures, against nagindex.ranking.scoring
# ---------------------------------------------------------------------------


def test_target_features_are_the_backbones(index, world, target_feats):
    from nagindex.extraction.features import extract_texts
    from nagindex.io import read_documents

    texts = read_documents([world["target"]]).column("doc").to_pylist()
    expect = extract_texts(index.backbone(), texts, top_k=K, max_length=index.spec.max_length)["fwd_up"]
    np.testing.assert_array_equal(target_feats, expect)


def test_score_numbers_match_scoring(index, target_feats):
    from nagindex.ranking import scoring
    from nagindex.ranking import selection

    pool = views.pool_view(index)
    profile = views.target_profile(index, target_feats)
    dist = explain.score_distribution(pool, profile.weights, profile.denominator, 0.3)
    feats = index.features()
    scores = scoring.score_features(feats, profile)
    np.testing.assert_array_equal(dist["scores"], scores)
    np.testing.assert_allclose(dist["distance"], scoring.nag_distance(scores, profile))
    kept = selection.budget_selection(-scores, index.token_num(), index.docids(), 0.3)
    assert set(np.flatnonzero(dist["selected"])) == set(kept.tolist())
    assert dist["cut_distance"] == pytest.approx(float(scoring.nag_distance(scores, profile)[kept[-1]]))
    assert {k: len(v) for k, v in dist["by_label"].items()} == {"alpha": 15, "beta": 15, views.NO_LABEL: 15}


def test_layer_numbers_match_scoring(index, target_feats):
    from nagindex.ranking import scoring

    pool = views.pool_view(index)
    profile = views.target_profile(index, target_feats)
    means = explain.layer_means(target_feats, pool, profile.weights, profile.denominator)
    L = index.spec.num_layers
    # mean over layers of the per-layer similarity = mean similarity (SPEC 3's 1/L)
    sims = scoring.score_features(index.features(), profile) / profile.denominator
    assert means["pool"].mean() == pytest.approx(sims.mean())
    tsims = scoring.score_features(target_feats, profile) / profile.denominator
    assert means["target"].mean() == pytest.approx(tsims.mean())
    # each layer alone: the same score with a one-layer profile
    for l in range(L):
        one = scoring.build_profile(target_feats, num_layers=L, top_k=K, width=pool.width, layers=[l])
        assert means["pool"][l] == pytest.approx((scoring.score_features(index.features(), one) / one.denominator).mean())


def test_explain_on_index(index, target_feats):
    from nagindex.ranking import scoring
    from nagindex.ranking import selection

    profile = views.target_profile(index, target_feats)
    scores = scoring.score_features(index.features(), profile)
    order = selection.rank_order(scores, index.docids())
    docids = index.docids().to_pylist()
    docid = docids[order[2]]
    ex = explain.explain(index, docid, target_feats, fraction=0.5, neighbours=3)
    assert ex["rank"] == 3 and ex["selected"]
    assert ex["score"] == scores[order[2]]
    assert sum(l["contribution"] for l in ex["layers"]) == pytest.approx(ex["similarity"])
    assert len(ex["neighbours"]) == 3 and docid not in {n["docid"] for n in ex["neighbours"]}
    with pytest.raises(NagError, match="unknown docid"):
        explain.explain(index, "no-such-doc", target_feats)


# ---------------------------------------------------------------------------
# pictures: valid PNG of the requested size
# ---------------------------------------------------------------------------


def test_plot_functions_write_pngs_of_requested_size(index, target_feats, tmp_path):
    pool = views.pool_view(index)
    profile = views.target_profile(index, target_feats)
    dist = explain.score_distribution(pool, profile.weights, profile.denominator)
    assert png_size(plots.plot_scores(dist, tmp_path / "s.png", size=(640, 480))) == (640, 480)
    means = explain.layer_means(target_feats, pool, profile.weights, profile.denominator)
    assert png_size(plots.plot_layers(means, tmp_path / "l.png", size=(900, 300))) == (900, 300)
    fmap = maps.feature_map(pool, target_features=target_feats)
    assert png_size(plots.plot_map(fmap, tmp_path / "m.png")) == plots.DEFAULT_SIZE
    with pytest.raises(NagError, match="PNG"):
        plots.plot_map(fmap, tmp_path / "m.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "m.png", "s.png"]  # no temp files left


@pytest.mark.parametrize("kind", ["scores", "layers", "map"])
def test_plot_cli(world, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    r = run("plot", kind, world["index_dir"], world["target"], "--out", out, "--width", 500, "--height", 400, "--no-progress")
    assert r.exit_code == 0, r.output
    assert png_size(out) == (500, 400)


def test_plot_map_without_target_and_tsne(world, tmp_path):
    out = tmp_path / "map.png"
    r = run("plot", "map", world["index_dir"], "--out", out, "--per-label", 10)
    assert r.exit_code == 0, r.output
    assert "30 points" in r.output and png_size(out) == (1200, 800)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        r = run("plot", "map", world["index_dir"], "--out", out, "--method", "tsne")
        assert r.exit_code == 2 and "scikit-learn" in r.output
    else:
        r = run("plot", "map", world["index_dir"], "--out", tmp_path / "t.png", "--method", "tsne", "--per-label", 10)
        assert r.exit_code == 0, r.output
        assert png_size(tmp_path / "t.png") == (1200, 800)


# ---------------------------------------------------------------------------
# CLI: explain and deactivate
# ---------------------------------------------------------------------------


def test_explain_cli(world, index, target_feats, tmp_path):
    docid = index.docids()[7].as_py()
    r = run("explain", world["index_dir"], docid, world["target"], "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    ex = json.loads(r.stdout)
    from nagindex.ranking.options import ScoringOptions

    expect = explain.explain(index, docid, target_feats, power=ScoringOptions().power)  # the query's power
    assert ex["score"] == expect["score"]
    # rank, cut and selection are those of `nag query` with the same options
    whole = run("query", world["index_dir"], world["target"], "--top", index.num_documents, "--no-progress",
                "--out", tmp_path / "all.parquet")
    chosen = run("query", world["index_dir"], world["target"], "--no-progress", "--out", tmp_path / "sel.parquet")
    assert whole.exit_code == 0 and chosen.exit_code == 0, whole.output + chosen.output
    ranked = pq.read_table(tmp_path / "all.parquet").column("docid").to_pylist()
    selected = pq.read_table(tmp_path / "sel.parquet").column("docid").to_pylist()
    assert ex["rank"] == ranked.index(docid) + 1
    assert ex["selected_count"] == len(selected) and ex["selected"] == (docid in selected)
    paper = json.loads(run("explain", world["index_dir"], docid, world["target"], "--json", "--no-progress",
                           "--preset", "paper", "--top", 5).stdout)
    top5 = run("query", world["index_dir"], world["target"], "--preset", "paper", "--top", 5, "--no-progress",
               "--out", tmp_path / "p.parquet")
    assert top5.exit_code == 0
    assert paper["selected_count"] == 5 and paper["selected"] == (
        docid in pq.read_table(tmp_path / "p.parquet").column("docid").to_pylist())
    r = run("explain", world["index_dir"], docid, world["target"], "--no-progress")
    assert r.exit_code == 0 and f"{docid} (label" in r.output and "nearest selected neighbours" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["explain", "{index}", "nope", "{target}"], "unknown docid"),
        (["explain", "{index}", "doc001", "{empty}"], "empty"),
        (["explain", "{index}", "doc001"], "no target"),
        (["plot", "scores", "{index}", "{empty}", "--out", "{tmp}/x.png"], "empty"),
        (["deactivate", "keys", "{index}", "{empty}", "--out", "{tmp}/k.json"], "empty"),
        (["deactivate", "keys", "{index}", "{target}", "--out", "{tmp}/k.json", "--per-layer", "0"], "per-layer"),
    ],
)
def test_bad_input_exits_2(world, tmp_path, args, message):
    subst = {"{index}": world["index_dir"], "{target}": world["target"], "{empty}": world["empty"]}
    argv = [str(subst.get(a, a)).replace("{tmp}", str(tmp_path)) for a in args]
    r = run(*argv, "--no-progress")
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]  # (model loading may draw a progress bar above)
    assert last.startswith("Error: ") and message in last, r.output
    assert not list(tmp_path.iterdir())  # nothing written


def test_deactivate_keys_apply_eval_cli(world, target_feats, tmp_path):
    keys_path = tmp_path / "keys.json"
    r = run("deactivate", "keys", world["index_dir"], world["target"], "--out", keys_path, "--per-layer", 3, "--no-progress")
    assert r.exit_code == 0, r.output
    keys = deactivation.load_keys(keys_path)
    L = 3
    assert keys == deactivation.deactivation_keys(target_feats, L, K, 3)
    assert (keys.num_layers, keys.width, keys.per_layer) == (L, 64, 3)

    copy = tmp_path / "copy"
    r = run("deactivate", "apply", "--model", world["model_dir"], "--keys", keys_path, "--out", copy)
    assert r.exit_code == 0, r.output
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(world["model_dir"])
    zeroed = AutoModelForCausalLM.from_pretrained(copy)
    for l, neurons in keys.items():
        w0 = original.model.layers[l].mlp.up_proj.weight
        w1 = zeroed.model.layers[l].mlp.up_proj.weight
        assert torch.count_nonzero(w1[neurons]) == 0
        rest = [j for j in range(64) if j not in neurons]
        assert torch.equal(w0[rest], w1[rest])
    r = run("deactivate", "apply", "--model", world["model_dir"], "--keys", keys_path, "--out", copy)
    assert r.exit_code == 2 and "already exists" in r.output

    report = tmp_path / "eval.json"
    r = run("deactivate", "eval", world["target"], "--control", world["root"] / "pool.parquet", "--keys", keys_path,
            "--model", world["model_dir"], "--limit", 6, "--seeds", 2, "--json", report, "--no-progress")
    assert r.exit_code == 0, r.output
    d = json.loads(report.read_text())
    assert d["zeroed"] == keys.count and d["total_neurons"] == 3 * 64 and len(d["random"]) == 2
    assert "NAG keys zeroed" in r.output and "random (mean)" in r.output
    assert d["control_items"] == 6


def test_keys_for_another_model_shape_exit_2(world, tmp_path):
    keys_path = deactivation.save_keys(tmp_path / "k.json", {0: [1]}, backbone="SmolLM2", num_layers=30, width=1536)
    r = run("deactivate", "apply", "--model", world["model_dir"], "--keys", keys_path, "--out", tmp_path / "copy")
    assert r.exit_code == 2 and "30 layers" in r.output
    assert not (tmp_path / "copy").exists()
    r = run("deactivate", "eval", world["target"], "--control", world["target"], "--keys", keys_path,
            "--model", world["model_dir"], "--no-progress")
    assert r.exit_code == 2 and "30 layers" in r.output


# ---------------------------------------------------------------------------
# the real embedded backbone: one small smoke test
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_backbone_deactivation_smoke(embedded_backbone):
    bb = embedded_backbone
    assert (bb.num_layers, bb.width("fwd_up")) == (30, 1536)
    texts = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."]
    control = ["The trophy doesn't fit into the brown suitcase because it is too large."]
    keys = {l: list(range(0, 1536, 16)) for l in range(30)}  # 96 per layer: a visible effect
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few short texts: one thread is as fast, and robust on a busy machine
    try:
        rep = deactivation.deactivation_eval(bb, keys, texts, control, seeds=(0,), max_length=32)
    finally:
        torch.set_num_threads(threads)
    assert rep.zeroed == 30 * 96 and rep.total_neurons == 30 * 1536
    assert 0 < rep.intact["target"] < 10 and rep.keys["target"] != rep.intact["target"]
    again = deactivation.mean_token_loss(bb.model, bb.tokenizer, texts, max_length=32)
    assert again == pytest.approx(rep.intact["target"], rel=1e-6)  # the model was restored


def test_plot_scores_cuts_where_nag_query_cuts(world, index, tmp_path):
    r = run("plot", "scores", world["index_dir"], world["target"], "--out", tmp_path / "s.png", "--no-progress",
            "--fraction", 0.3)
    assert r.exit_code == 0, r.output
    q = run("query", world["index_dir"], world["target"], "--fraction", 0.3, "--no-progress", "--out",
            tmp_path / "q.parquet")
    assert q.exit_code == 0, q.output
    kept = pq.read_table(tmp_path / "q.parquet").num_rows
    assert f"{index.num_documents} documents, {kept} selected" in r.output
