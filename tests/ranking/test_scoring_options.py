"""The scoring options beyond the SPEC (weightings, power, rank discount, K at
query time, embeddings, fusion), each against a plain reference written here,
and the presets: `paper` is the SPEC exactly."""

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nagindex.errors import NagError
from nagindex.ranking import embedding as E
from nagindex.ranking import query as Q
from nagindex.ranking import scoring
from nagindex.ranking.options import PAPER, ScoringOptions

from test_query import MemoryIndex, make_pool, make_spec
from test_scoring import random_features


# -- plain references -----------------------------------------------------------
def ref_weights(target, pool, L, K, slots, power, weighting):
    """Per layer {neuron: weight} from dict counts: c^p, c^p * idf, or c^p * lift; normalised per layer."""
    n, N = len(target), len(pool)
    weights = {}
    for l in range(L):
        counts = Counter(int(x) for row in target for x in row[l * K : l * K + slots])
        df = Counter(int(x) for row in pool for x in set(row[l * K : l * K + slots].tolist()))
        raw = {}
        for j, c in counts.items():
            w = c**power
            if weighting == "idf":
                w *= max(math.log((N + 1) / (df.get(j, 0) + 1)), 0.0)
            elif weighting == "contrast":
                w *= max(math.log((c / n) / ((df.get(j, 0) + 1) / (N + 1))), 0.0)
            raw[j] = w
        total = sum(raw.values())
        weights[l] = {j: (v / total if total > 0 else 0.0) for j, v in raw.items()}
    return weights


def ref_similarity(doc, weights, L, K, slots, discount):
    terms = []
    for l in range(L):
        for r in range(slots):
            d = 1.0 / math.log2(r + 2) if discount == "log2" else 1.0
            terms.append(d * weights[l].get(int(doc[l * K + r]), 0.0))
    return math.fsum(terms) / L


@st.composite
def option_cases(draw):
    L = draw(st.integers(1, 4))
    K = draw(st.integers(1, 6))
    W = draw(st.integers(K, 14))
    slots = draw(st.integers(1, K))
    return (L, K, W, slots, draw(st.integers(0, 2**31)), draw(st.integers(1, 8)), draw(st.integers(2, 40)),
            draw(st.sampled_from([1.0, 0.5, 2.0])), draw(st.sampled_from(["spec", "idf", "contrast"])),
            draw(st.sampled_from(["none", "log2"])))


@settings(max_examples=150, deadline=None)
@given(option_cases())
def test_every_weighting_discount_and_k_matches_the_reference(case):
    L, K, W, slots, seed, n_target, n_pool, power, weighting, discount = case
    rng = np.random.default_rng(seed)
    target = random_features(rng, n_target, L, K, W)
    pool = random_features(rng, n_pool, L, K, W)
    sub = scoring.select_slots(pool, L, K, slots)
    pool_counts = scoring.layer_counts(sub, num_layers=L, top_k=slots, width=W)
    profile = scoring.build_profile(target, num_layers=L, top_k=K, width=W, power=power, weighting=weighting,
                                    slots=slots, discount=discount, pool_counts=pool_counts, pool_size=n_pool)
    weights = ref_weights(target, pool, L, K, slots, power, weighting)
    want = np.array([ref_similarity(doc, weights, L, K, slots, discount) for doc in pool])
    for kernel in ("numpy", "numba"):
        got = profile.similarity(scoring.score_features(pool, profile, kernel=kernel))
        assert np.max(np.abs(got - want)) <= 1e-6
    assert scoring.score_features(pool, profile).max() <= profile.max_score()


def test_discounted_scores_are_exact_integers_whatever_the_order_of_equal_weights():
    rng = np.random.default_rng(4)
    target = random_features(rng, 30, 3, 8, 40)
    pool = random_features(rng, 500, 3, 8, 40)
    counts = scoring.layer_counts(pool, num_layers=3, top_k=8, width=40)
    p = scoring.build_profile(target, num_layers=3, top_k=8, width=40, power=0.5, weighting="idf",
                              discount="log2", pool_counts=counts, pool_size=500)
    assert p.discount.tolist()[:2] == [scoring.DISCOUNT_ONE, round(scoring.DISCOUNT_ONE / math.log2(3))]
    assert p.denominator == 3 * scoring.FIXED_POINT_ONE * scoring.DISCOUNT_ONE
    a = scoring.score_features(pool, p, kernel="numpy")
    b = scoring.score_features(pool, p, kernel="numba")
    assert a.dtype == np.int64 and np.array_equal(a, b)
    assert not p.additive  # the planner must not give it to the inverted lists


def test_bad_options_are_refused():
    t = np.array([[0, 1]], dtype=np.uint16)
    with pytest.raises(NagError, match="weighting"):
        scoring.build_profile(t, num_layers=1, top_k=2, width=4, weighting="bm25")
    with pytest.raises(NagError, match="discount"):
        scoring.build_profile(t, num_layers=1, top_k=2, width=4, discount="log10")
    with pytest.raises(NagError, match="K=3"):
        scoring.build_profile(t, num_layers=1, top_k=2, width=4, slots=3)
    with pytest.raises(NagError, match="pool"):
        scoring.build_profile(t, num_layers=1, top_k=2, width=4, weighting="idf")
    for bad in (dict(mode="both"), dict(embedding_score="max"), dict(neighbours=0), dict(power=-1),
                dict(fusion="max"), dict(nag_weight=1.5), dict(nag_weight=-0.1), dict(nag_weight=float("nan"))):
        with pytest.raises(NagError):
            ScoringOptions().with_overrides(**bad)
    with pytest.raises(NagError, match="preset"):
        ScoringOptions.from_preset("fast")


# -- queries with the default options ---------------------------------------------
def ref_top(sims, docids, n):
    return [d for _, d in sorted(zip(sims, docids), key=lambda x: (-x[0], x[1]))[:n]]


def test_default_query_ranks_by_the_reference_formula():
    rng = np.random.default_rng(5)
    L, K, W = 3, 6, 30
    feats, payload = make_pool(rng, 300, L, K, W)
    target = random_features(rng, 12, L, K, W)
    index = MemoryIndex(make_spec(L, K, W), feats, payload)
    res = Q.run_query(index, [target], top=25)
    assert res.summary["mode"] == "nag" and "idf" in res.summary["scoring"]
    weights = ref_weights(target, feats, L, K, K, 0.5, "idf")
    sims = [ref_similarity(doc, weights, L, K, K, "log2") for doc in feats]
    # the reference floats can tie differently in the last bit: compare the order of distinct values
    got = res.table.column("docid").to_pylist()
    want = ref_top(sims, payload.column("docid").to_pylist(), 25)
    assert got == want
    dist = res.table.column("nag_distance").to_numpy()
    ids = payload.column("docid").to_pylist()
    assert np.allclose(dist, [1 - sims[ids.index(d)] for d in got], atol=1e-6)


def test_k_below_the_index_k_reads_the_first_ranks_and_scans():
    rng = np.random.default_rng(6)
    L, K, W = 2, 8, 30
    feats, payload = make_pool(rng, 200, L, K, W)
    target = random_features(rng, 10, L, K, W)
    big = MemoryIndex(make_spec(L, K, W), feats, payload)
    small = MemoryIndex(make_spec(L, 3, W), scoring.select_slots(feats, L, K, 3), payload)
    kw = dict(top=20, weighting="idf", power=0.5, discount="none")
    a = Q.run_query(big, [target], top_k=3, plan="inverted", **kw)
    b = Q.run_query(small, [scoring.select_slots(target, L, K, 3)], **kw)
    assert a.table.column("docid").to_pylist() == b.table.column("docid").to_pylist()
    assert a.plans[0].path == "scan" and "rank" in a.plans[0].reason
    with pytest.raises(NagError, match="built with K=8"):
        Q.run_query(big, [target], top_k=9)


def test_paper_preset_on_a_k100_index_is_the_spec_at_k20():
    rng = np.random.default_rng(7)
    L, K, W = 2, 30, 60
    feats, payload = make_pool(rng, 300, L, K, W)
    target = random_features(rng, 10, L, K, W)
    big = MemoryIndex(make_spec(L, K, W), feats, payload)
    k20 = MemoryIndex(make_spec(L, 20, W), scoring.select_slots(feats, L, K, 20), payload)
    a = Q.run_query(big, [target], fraction=0.2, preset="paper")
    b = Q.run_query(k20, [scoring.select_slots(target, L, K, 20)], fraction=0.2, power=1.0, layers="all",
                    scoring_options=ScoringOptions(weighting="spec", discount="none", mode="nag"))
    assert a.table.column("docid").to_pylist() == b.table.column("docid").to_pylist()
    assert np.array_equal(a.table.column("nag_distance").to_numpy(), b.table.column("nag_distance").to_numpy())
    assert PAPER.describe("nag") == "NAG spec p=1 K=20"


# -- embeddings and fusion ------------------------------------------------------------
def test_embedding_scores_and_rrf_match_plain_references():
    rng = np.random.default_rng(8)
    pool = E.unit_rows(rng.normal(size=(50, 6))).astype(np.float32)
    target = E.unit_rows(rng.normal(size=(7, 6))).astype(np.float32)
    c = target.astype(np.float64).mean(0)
    c /= np.linalg.norm(c)
    want = [round(float(np.dot(p.astype(np.float64), c)) * 2**24) for p in pool]
    assert E.centroid_scores(pool, target).tolist() == want
    sims = pool.astype(np.float64) @ target.astype(np.float64).T
    want_nn = [round(sum(sorted(row)[-3:]) / 3 * 2**24) for row in sims]
    assert np.max(np.abs(E.neighbour_scores(pool, target, 3) - np.array(want_nn))) <= 1
    a = rng.integers(0, 5, 50)  # many ties: the docid decides each rank
    b = rng.integers(0, 5, 50)
    ids = [f"d{i:03d}" for i in rng.permutation(50)]
    rank_a = {d: r for r, d in enumerate(ref_top(a.tolist(), ids, 50))}
    rank_b = {d: r for r, d in enumerate(ref_top(b.tolist(), ids, 50))}
    want_rrf = [round(2**40 / (61 + rank_a[d])) + round(2**40 / (61 + rank_b[d])) for d in ids]
    assert E.rrf_scores([a, b], pa.array(ids), 60).tolist() == want_rrf


@pytest.fixture(scope="module")
def embedded_index(tmp_path_factory):
    from nagindex import Index

    rng = np.random.default_rng(9)
    L, K, W = 2, 5, 25
    feats, payload = make_pool(rng, 120, L, K, W)
    words = ["apple", "pear", "code", "loop", "cell", "gene", "ball", "goal"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(120)]
    payload = payload.set_column(payload.column_names.index("doc"), "doc", pa.array(texts))
    path = tmp_path_factory.mktemp("emb") / "idx"
    index = Index.create(path, make_spec(L, K, W), embedder="hash:16", postings=True)
    index.append(documents=payload.slice(0, 80), feature_arrays={"fwd_up": feats[:80]}, progress=False)
    Index.open(path).append(documents=payload.slice(80), feature_arrays={"fwd_up": feats[80:]}, progress=False)
    return path, feats, payload, texts, rng


def test_index_stores_embeddings_appends_embed_and_compaction_keeps_them(embedded_index):
    from nagindex import Index
    from nagindex.extraction.embedder import hashed_embeddings

    path, feats, payload, texts, rng = embedded_index
    index = Index.open(path)
    assert index.info()["embedder"] == "hash:16" and index.manifest.embedding_dim == 16
    rows = np.arange(index.num_rows)
    assert np.array_equal(index.embeddings(rows), hashed_embeddings(texts, 16))
    assert "embedding" not in index.take(rows[:3]).column_names
    before = index.embeddings(rows)
    index.compact()
    assert np.array_equal(Index.open(path).embeddings(rows), before)


@pytest.mark.parametrize("how", ["centroid", "nn"])
def test_embedding_and_fusion_modes_match_the_reference(embedded_index, how):
    from nagindex import Index
    from nagindex.ranking.targets import Target

    path, feats, payload, texts, rng = embedded_index
    index = Index.open(path)
    pick = rng.choice(120, 9, replace=False)
    vecs = E.unit_rows(index.embeddings(pick))
    target = Target("t", feats[pick], vecs.astype(np.float32))
    ids = payload.column("docid").to_pylist()
    pool = index.embeddings(np.arange(120)).astype(np.float64)
    sims = pool @ vecs.T
    cos = sims.mean(1) / np.linalg.norm(vecs.mean(0)) if how == "centroid" else np.sort(sims, 1)[:, -4:].mean(1)
    emb_q = [round(float(x) * 2**24) for x in cos]
    got = Q.run_query(index, [target], top=15, mode="embedding", embedding_score=how, neighbours=4)
    assert got.table.column("docid").to_pylist() == ref_top(emb_q, ids, 15)
    assert got.table.column("nag_distance").null_count == 15
    # rrf fusion: reciprocal ranks of the (default) NAG order and the embedding order
    nag_res = Q.run_query(index, [target], top=120, mode="nag").table
    nag = nag_res.column("docid").to_pylist()
    emb_order = ref_top(emb_q, ids, 120)
    rrf = [1 / (61 + nag.index(d)) + 1 / (61 + emb_order.index(d)) for d in ids]
    rrf_opts = ScoringOptions(embedding_score=how, neighbours=4, fusion="rrf", mode="fusion")
    fused = Q.run_query(index, [target], top=15, scoring_options=rrf_opts)
    assert fused.table.column("docid").to_pylist() == ref_top(rrf, ids, 15)
    assert fused.summary["mode"] == "fusion" and "fusion_score" in fused.table.column_names
    # the default fusion: min-max scaled scores, weighted, in fixed point (a plain reference in Python)
    d = ScoringOptions()
    profile = Q.target_profiles(index, [target], "fwd_up", None, power=d.power, layers=d.layers,
                                weighting=d.weighting, discount=d.discount)[0]
    nag_by_id = scoring.score_features(feats, profile).tolist()  # rows are in payload order

    def unit(xs):
        lo, hi = min(xs), max(xs)
        return [0.0 if hi == lo else (x - lo) / float(hi - lo) for x in xs]

    for w in (0.5, 0.3):
        want = [round((w * a + (1 - w) * b) * 2**40) for a, b in zip(unit(nag_by_id), unit(emb_q))]
        got_sum = Q.run_query(index, [target], top=15, mode="fusion", embedding_score=how, neighbours=4,
                              scoring_options=ScoringOptions(embedding_score=how, neighbours=4, nag_weight=w))
        assert got_sum.table.column("docid").to_pylist() == ref_top(want, ids, 15)
        assert got_sum.table.column("fusion_score").to_pylist() == [x / 2**40 for x in sorted(want, reverse=True)[:15]]
    # auto fuses when the targets carry embeddings, and falls back to NAG when they do not
    assert Q.run_query(index, [target], top=15, embedding_score=how, neighbours=4).summary["mode"] == "fusion"
    assert Q.run_query(index, [feats[pick]], top=15).summary["mode"] == "nag"
    with pytest.raises(NagError, match="text"):
        Q.run_query(index, [feats[pick]], top=15, mode="fusion")


def test_modes_need_an_index_with_embeddings():
    rng = np.random.default_rng(10)
    feats, payload = make_pool(rng, 30, 1, 2, 8)
    index = MemoryIndex(make_spec(1, 2, 8), feats, payload)
    with pytest.raises(NagError, match="embeddings"):
        Q.run_query(index, [feats[:3]], top=3, mode="embedding")


def test_given_embeddings_are_checked_scaled_and_stored_instead_of_embedding_again(tmp_path):
    from nagindex import Index

    rng = np.random.default_rng(12)
    L, K, W = 2, 5, 25
    feats, payload = make_pool(rng, 30, L, K, W)
    index = Index.create(tmp_path / "idx", make_spec(L, K, W), embedder="hash:16")
    vectors = rng.normal(size=(30, 16)) * 7.0  # any length: stored at unit length
    for bad, match in ((vectors[:29], "shape"), (np.where(np.eye(30, 16) > 0, np.nan, vectors), "not finite"),
                       (np.zeros((30, 16)), "zero vector")):
        with pytest.raises(NagError, match=match):
            index.append(documents=payload, feature_arrays={"fwd_up": feats}, embeddings=bad, progress=False)
    assert Index.open(tmp_path / "idx").num_documents == 0  # nothing was written
    with pytest.raises(NagError, match="documents table"):
        index.append([tmp_path / "pool.parquet"], embeddings=vectors, progress=False)
    index.append(documents=payload, feature_arrays={"fwd_up": feats}, embeddings=vectors, progress=False)
    stored = Index.open(tmp_path / "idx").embeddings(np.arange(30))
    want = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, want, rtol=1e-6)
    bare = Index.create(tmp_path / "bare", make_spec(L, K, W))
    with pytest.raises(NagError, match="stores no embeddings"):
        bare.append(documents=payload, feature_arrays={"fwd_up": feats}, embeddings=vectors, progress=False)
