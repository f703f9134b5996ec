"""Interpretability: deactivation keys, zeroing neurons, the loss test, explain, plot numbers."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nagindex.analysis import deactivation, explain, maps, views
from nagindex.analysis.deactivation import DeactivationKeys, apply_deactivation, deactivated, deactivation_keys, load_keys, random_keys_like, save_keys, up_projections
from nagindex.errors import NagError
from nagindex.extraction.testing import tiny_backbone


# ---------------------------------------------------------------------------
# keys: checked against a plain Counter implementation of SPEC 4
# ---------------------------------------------------------------------------


def plain_keys(features, L, K, per_layer):
    keys = {}
    for l in range(L):
        c = Counter(int(x) for row in features for x in row[l * K : (l + 1) * K])
        ranked = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
        keys[l] = [j for j, _ in ranked[:per_layer]]
    return keys


@pytest.mark.parametrize("seed", range(5))
def test_keys_match_plain_counting(seed):
    rng = np.random.default_rng(seed)
    L, K, width, n = 4, 5, 12, 30
    # Small width: many ties, so the ascending-index tie-break is exercised.
    feats = np.stack([
        np.concatenate([rng.choice(width, K, replace=False) for _ in range(L)]) for _ in range(n)
    ]).astype(np.uint16)
    for per_layer in (1, 3, 7, 50):
        assert deactivation_keys(feats, L, K, per_layer) == plain_keys(feats, L, K, per_layer)


def test_keys_tie_break_and_unused_neurons():
    # layer 0: neuron 9 twice, 2 and 4 once each; layer 1: 1, 3 once each.
    feats = np.array([[9, 4, 3, 1], [9, 2, 1, 3]], dtype=np.uint16)
    keys = deactivation_keys(feats, num_layers=2, top_k=2, per_layer=3)
    assert keys == {0: [9, 2, 4], 1: [1, 3]}  # never pads with unused neurons


def test_keys_bad_input():
    with pytest.raises(NagError, match="empty"):
        deactivation_keys(np.zeros((0, 4), dtype=np.uint16), 2, 2, 3)
    with pytest.raises(NagError, match="L\\*K"):
        deactivation_keys(np.zeros((2, 5), dtype=np.uint16), 2, 2, 3)
    with pytest.raises(NagError, match="per-layer"):
        deactivation_keys(np.zeros((2, 4), dtype=np.uint16), 2, 2, 0)


def test_save_load_roundtrip_and_upstream_format(tmp_path):
    keys = DeactivationKeys({0: [5, 1], 2: [7]}, backbone="tiny", num_layers=3, width=64, per_layer=2)
    path = save_keys(tmp_path / "k.json", keys)
    doc = json.loads(path.read_text())
    # exactly upstream's {layer: [neurons]}: every key a layer, so upstream's loader reads it
    assert {int(layer): neurons for layer, neurons in doc.items()} == {0: [5, 1], 2: [7]}
    assert json.loads((tmp_path / "k.meta.json").read_text())["width"] == 64
    back = load_keys(path)
    assert back == {0: [5, 1], 2: [7]}
    assert (back.backbone, back.num_layers, back.width) == ("tiny", 3, 64)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"0": [3], "1": [2, 4]}))
    assert load_keys(plain) == {0: [3], 1: [2, 4]} and load_keys(plain).width is None


@pytest.mark.parametrize("text", ["[1, 2]", "{\"a\": [1]}", "not json", "{\"0\": [-1]}"])
def test_load_keys_rejects_garbage(tmp_path, text):
    p = tmp_path / "k.json"
    p.write_text(text)
    with pytest.raises(NagError):
        load_keys(p)
    with pytest.raises(NagError, match="not found"):
        load_keys(tmp_path / "missing.json")


def test_random_keys_same_counts_never_keys():
    keys = {0: [1, 2, 3], 2: [0], 3: []}
    for seed in range(3):
        r = random_keys_like(keys, width=10, seed=seed)
        assert {l: len(v) for l, v in r.items()} == {0: 3, 2: 1, 3: 0}
        assert not set(r[0]) & {1, 2, 3} and r[2] != [0]
    assert random_keys_like(keys, 10, 0) == random_keys_like(keys, 10, 0)
    assert random_keys_like(keys, 10, 0) != random_keys_like(keys, 10, 1)


# ---------------------------------------------------------------------------
# zeroing neurons: the neuron's up-projection output must be exactly 0
# ---------------------------------------------------------------------------


def _up_outputs(bb, text="hello neurons"):
    """The up projection output of every layer, captured with hooks."""
    outs = {}
    projs = up_projections(bb)
    hooks = [p.module.register_forward_hook(lambda m, i, o, l=l: outs.__setitem__(l, o.detach().clone()))
             for l, p in enumerate(projs)]
    ids = torch.tensor([bb.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = bb.model(input_ids=ids).logits
    for h in hooks:
        h.remove()
    return outs, logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen3"])
def test_apply_deactivation_zeroes_exactly_those_neurons(arch):
    bb = tiny_backbone(arch)
    before, logits_before = _up_outputs(bb)
    keys = {0: [3, 7], 2: [0, 63, 3]}
    assert apply_deactivation(bb.model, keys) == 5
    after, logits_after = _up_outputs(bb)
    for l in before:
        zeroed = keys.get(l, [])
        others = [j for j in range(before[l].shape[-1]) if j not in zeroed]
        if zeroed:
            assert torch.count_nonzero(after[l][..., zeroed]) == 0
        if l == 0:  # layers before any change are untouched
            torch.testing.assert_close(after[l][..., others], before[l][..., others])
        else:
            assert torch.count_nonzero(before[l][..., zeroed]) > 0 if zeroed else True
    assert not torch.equal(logits_before, logits_after)


def test_gpt2_conv1d_columns_are_zeroed():
    bb = tiny_backbone("gpt2")
    w = up_projections(bb)[1].module.weight  # Conv1D: (in=32, out=64)
    assert w.shape == (32, 64)
    apply_deactivation(bb, {1: [10]})
    assert torch.count_nonzero(w[:, 10]) == 0 and torch.count_nonzero(w[10, :]) > 0
    assert up_projections(bb)[1].module.bias[10] == 0


def test_deactivated_context_restores_weights():
    bb = tiny_backbone("llama")
    state = {k: v.clone() for k, v in bb.model.state_dict().items()}
    with deactivated(bb, {1: [4, 5]}) as n:
        assert n == 2
        assert torch.count_nonzero(up_projections(bb)[1].module.weight[[4, 5]]) == 0
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_keys_for_another_shape_are_refused(tmp_path):
    bb = tiny_backbone("llama")  # 3 layers, width 64
    with pytest.raises(NagError, match="layer 5"):
        apply_deactivation(bb.model, {5: [1]})
    with pytest.raises(NagError, match="neuron 64"):
        apply_deactivation(bb.model, {0: [64]})
    wide = save_keys(tmp_path / "k.json", {0: [1]}, backbone="other", num_layers=3, width=1536)
    with pytest.raises(NagError, match="1536"):
        apply_deactivation(bb.model, load_keys(wide))
    deep = save_keys(tmp_path / "k2.json", {0: [1]}, backbone="other", num_layers=30, width=64)
    with pytest.raises(NagError, match="30 layers"):
        apply_deactivation(bb.model, load_keys(deep))
    # nothing was changed by the refused calls
    assert torch.count_nonzero(up_projections(bb)[0].module.weight[1]) > 0


# ---------------------------------------------------------------------------
# the loss test
# ---------------------------------------------------------------------------


def plain_mean_loss(model, tok, texts, max_length):
    total, n = 0.0, 0
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"][:max_length]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        n += len(ids) - 1
    return total / n


def test_mean_token_loss_matches_one_text_at_a_time():
    bb = tiny_backbone("llama")
    texts = ["the cat sat on the mat", "a", "numbers 1 2 3 4 5 6 7 8 9", "short one", "x" * 50]
    got = deactivation.mean_token_loss(bb.model, bb.tokenizer, texts, max_length=30, batch_size=2)
    assert got == pytest.approx(plain_mean_loss(bb.model, bb.tokenizer, texts, 30), rel=1e-5)


def test_deactivation_eval_conditions_and_restores():
    bb = tiny_backbone("llama")
    state = {k: v.clone() for k, v in bb.model.state_dict().items()}
    target = ["alpha beta gamma delta", "one two three four five"]
    control = ["the quick brown fox", "jumps over the lazy dog"]
    keys = {0: [1, 2, 3], 1: [4, 5, 6], 2: [7, 8, 9]}
    rep = deactivation.deactivation_eval(bb, keys, target, control, seeds=(0, 1), max_length=40)
    assert rep.zeroed == 9 and rep.total_neurons == 3 * 64
    assert rep.share_zeroed == pytest.approx(9 / 192)
    assert rep.intact["target"] == pytest.approx(plain_mean_loss(bb.model, bb.tokenizer, target, 40), rel=1e-5)
    with deactivated(bb, keys):
        expected = plain_mean_loss(bb.model, bb.tokenizer, control, 40)
    assert rep.keys["control"] == pytest.approx(expected, rel=1e-5)
    with deactivated(bb, random_keys_like(keys, 64, 1)):
        expected = plain_mean_loss(bb.model, bb.tokenizer, target, 40)
    assert rep.random[1]["target"] == pytest.approx(expected, rel=1e-5)
    d = rep.to_dict()
    assert d["keys_relative"]["target"] == pytest.approx((rep.keys["target"] - rep.intact["target"]) / rep.intact["target"])
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(NagError, match="empty"):
        deactivation.deactivation_eval(bb, keys, [], control)


# ---------------------------------------------------------------------------
# scores, contributions, budget cut, explain, map: against plain SPEC formulas
# ---------------------------------------------------------------------------

L_, K_, W_ = 3, 4, 16


def synthetic_pool(n=60, seed=0, labels=("math", "code", None)):
    rng = np.random.default_rng(seed)
    feats = np.stack([
        np.concatenate([rng.choice(W_, K_, replace=False) for _ in range(L_)]) for _ in range(n)
    ]).astype(np.uint16)
    docids = np.array([f"d{i:03d}" for i in rng.permutation(n)], dtype=object)
    tokens = rng.integers(1, 50, size=n).astype(np.int64)
    labs = np.array([labels[i % len(labels)] or views.NO_LABEL for i in range(n)], dtype=object)
    return views.PoolView(feats, docids, tokens, labs, L_, K_, W_)


def plain_profile(target, L, K, width):
    """SPEC 2 with power 1 as integers: W = counts, D = L*n*K."""
    counts = np.zeros((L, width), dtype=np.int64)
    for row in target:
        for l in range(L):
            for r in range(K):
                counts[l, row[l * K + r]] += 1
    return counts, L * len(target) * K


def plain_similarity(row, counts, D, L, K):
    return sum(counts[l, row[l * K + r]] for l in range(L) for r in range(K)) / D


def plain_selection(scores, docids, tokens, fraction):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], docids[i]))
    budget = int(sum(tokens) * fraction)
    kept, cum = [], 0
    for i in order:
        if cum + tokens[i] > budget:
            break
        cum += tokens[i]
        kept.append(i)
    return order, kept or order[:1]


@pytest.fixture
def pool_and_target():
    pool = synthetic_pool()
    target = synthetic_pool(n=7, seed=9).features
    return pool, target


def test_contributions_sum_to_spec_similarity(pool_and_target):
    pool, target = pool_and_target
    W, D = plain_profile(target, L_, K_, W_)
    contrib = explain.layer_contributions(pool.features, W, K_)
    for i, row in enumerate(pool.features):
        assert contrib[i].sum() / D == pytest.approx(plain_similarity(row, W, D, L_, K_), abs=0)
        for l in range(L_):
            assert contrib[i, l] == sum(W[l, row[l * K_ + r]] for r in range(K_))


def test_block_reductions_equal_whole_pool(pool_and_target, monkeypatch):
    pool, target = pool_and_target
    W, D = plain_profile(target, L_, K_, W_)
    whole = explain.layer_contributions(pool.features, W, K_)
    monkeypatch.setattr(explain, "BLOCK_ROWS", 7)  # 60 rows: 9 blocks, the last one short
    np.testing.assert_array_equal(explain.document_scores(pool.features, W, K_), whole.sum(axis=1))
    np.testing.assert_allclose(explain.mean_layer_contributions(pool.features, W, K_), whole.mean(axis=0))


def test_contributions_match_scoring_module(pool_and_target):
    scoring = pytest.importorskip("nagindex.ranking.scoring")
    pool, target = pool_and_target
    profile = scoring.build_profile(target, num_layers=L_, top_k=K_, width=W_)
    W, D = plain_profile(target, L_, K_, W_)
    assert int(profile.denominator) == D
    np.testing.assert_array_equal(np.asarray(profile.weights), W)
    got = explain.layer_contributions(pool.features, np.asarray(profile.weights), K_).sum(axis=1)
    np.testing.assert_array_equal(got, scoring.score_features(pool.features, profile))


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 1.0])
def test_score_distribution_matches_plain_selection(pool_and_target, fraction):
    pool, target = pool_and_target
    W, D = plain_profile(target, L_, K_, W_)
    dist = explain.score_distribution(pool, W, D, fraction)
    sims = [plain_similarity(r, W, D, L_, K_) for r in pool.features]
    np.testing.assert_allclose(dist["distance"], 1 - np.array(sims))
    order, kept = plain_selection([s * D for s in sims], list(pool.docids), list(pool.token_num), fraction)
    assert set(np.flatnonzero(dist["selected"])) == set(kept)
    assert dist["cut_distance"] == pytest.approx(1 - sims[kept[-1]])
    assert sum(len(v) for v in dist["by_label"].values()) == len(pool)
    assert set(dist["by_label"]) == {"math", "code", views.NO_LABEL}
    assert sum(dist["selected_by_label"].values()) == len(kept)


def test_budget_keeps_first_row_when_it_alone_exceeds_budget():
    order = np.array([2, 0, 1])
    assert explain.budget_count(order, np.array([1, 1, 100]), 0.1) == 1
    assert explain.budget_count(order, np.array([5, 5, 5]), 2 / 3) == 2
    with pytest.raises(NagError):
        explain.budget_count(order, np.array([1, 1, 1]), 0.0)


def test_ranking_ties_broken_by_docid():
    scores = np.array([5, 7, 5, 7])
    docids = np.array(["b", "z", "a", "c"], dtype=object)
    assert explain.ranking(scores, docids).tolist() == [3, 1, 2, 0]


def test_layer_means(pool_and_target):
    pool, target = pool_and_target
    W, D = plain_profile(target, L_, K_, W_)
    means = explain.layer_means(target, pool, W, D)
    n = len(target)
    for l in range(L_):
        # per-layer weight sum of SPEC w_l = counts / (n*K)
        expect_t = np.mean([sum(W[l, row[l * K_ + r]] for r in range(K_)) / (n * K_) for row in target])
        expect_p = np.mean([sum(W[l, row[l * K_ + r]] for r in range(K_)) / (n * K_) for row in pool.features])
        assert means["target"][l] == pytest.approx(expect_t)
        assert means["pool"][l] == pytest.approx(expect_p)
    # the mean over layers is the mean similarity
    assert means["pool"].mean() == pytest.approx(np.mean([plain_similarity(r, W, D, L_, K_) for r in pool.features]))


def test_explain_row(pool_and_target):
    pool, target = pool_and_target
    W, D = plain_profile(target, L_, K_, W_)
    sims = [plain_similarity(r, W, D, L_, K_) for r in pool.features]
    order, kept = plain_selection([s * D for s in sims], list(pool.docids), list(pool.token_num), 0.5)
    row = order[3]
    ex = explain.explain_row(pool, row, W, D, fraction=0.5, neighbours=4)
    assert ex["docid"] == pool.docids[row] and ex["rank"] == 4
    assert ex["similarity"] == pytest.approx(sims[row])
    assert ex["selected"] == (row in kept) and ex["selected_count"] == len(kept)
    assert sum(l["contribution"] for l in ex["layers"]) == pytest.approx(sims[row])
    n = len(target)
    for l in ex["layers"]:
        doc = pool.features[row][l["layer"] * K_ : (l["layer"] + 1) * K_]
        shared = {int(j) for j in doc if W[l["layer"], j] > 0}
        assert {s["neuron"] for s in l["shared"]} == shared
        for s in l["shared"]:
            assert s["weight"] == pytest.approx(W[l["layer"], s["neuron"]] / (n * K_))
        assert l["layer_similarity"] == pytest.approx(sum(s["weight"] for s in l["shared"]))
    # neighbours: selected docs other than this one, by descending NAG overlap
    def overlap(a, b):
        return sum(len(set(a[l * K_:(l + 1) * K_]) & set(b[l * K_:(l + 1) * K_])) for l in range(L_)) / (L_ * K_)
    cand = [i for i in kept if i != row]
    best = sorted((overlap(pool.features[row], pool.features[i]) for i in cand), reverse=True)[:4]
    assert [nb["overlap"] for nb in ex["neighbours"]] == pytest.approx(best)
    assert all(pool.docids[order[nb["rank"] - 1]] == nb["docid"] for nb in ex["neighbours"])


def test_pca_matches_dense_svd(pool_and_target):
    pool, _ = pool_and_target
    feats = pool.features[:25]
    coords = maps.pca_2d(feats, L_, K_, W_)
    dense = np.zeros((len(feats), L_ * W_))
    for i, row in enumerate(feats):
        for p, j in enumerate(row):
            dense[i, (p // K_) * W_ + j] = 1
    centred = dense - dense.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    expect = u[:, :2] * s[:2]
    for c in range(2):  # equal up to sign
        sign = np.sign(expect[:, c] @ coords[:, c])
        np.testing.assert_allclose(coords[:, c], sign * expect[:, c], atol=1e-8)


def test_feature_map_sample_and_targets(pool_and_target):
    pool, target = pool_and_target
    fmap = maps.feature_map(pool, target_features=target, per_label=5)
    labels = list(fmap["labels"])
    assert labels.count("target") == 5  # targets are capped at per_label too
    assert {lab: labels.count(lab) for lab in ("math", "code", views.NO_LABEL)} == {"math": 5, "code": 5, views.NO_LABEL: 5}
    assert fmap["coords"].shape == (20, 2)
    again = maps.feature_map(pool, target_features=target, per_label=5)
    np.testing.assert_array_equal(fmap["coords"], again["coords"])
    with pytest.raises(NagError, match="method"):
        maps.feature_map(pool, method="umap")


def test_tsne_map_when_available(pool_and_target):
    pytest.importorskip("sklearn")
    pool, _ = pool_and_target
    fmap = maps.feature_map(pool, method="tsne", per_label=8)
    assert fmap["coords"].shape == (24, 2) and np.isfinite(fmap["coords"]).all()


def test_unknown_docid(pool_and_target):
    pool, _ = pool_and_target
    with pytest.raises(NagError, match="unknown docid 'nope'"):
        pool.row_of("nope")
    assert pool.row_of(pool.docids[5]) == 5
