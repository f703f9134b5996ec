"""The profile and kernel against a plain implementation of SPEC 2-3."""

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nagindex.ranking import scoring
from nagindex.errors import NagError


def random_features(rng, n, num_layers, top_k, width):
    """NAGs with K distinct neurons per layer, popularity skewed so ties are common."""
    p = 1.0 / np.arange(1, width + 1)
    p /= p.sum()
    out = np.empty((n, num_layers * top_k), dtype=np.uint16)
    for i in range(n):
        for l in range(num_layers):
            out[i, l * top_k : (l + 1) * top_k] = rng.choice(width, top_k, replace=False, p=p)
    return out


def reference_weights(target, num_layers, top_k, power, layers):
    """SPEC 2 with a dict per layer and float weights."""
    weights = {}
    for l in layers:
        counts = Counter(int(x) for row in target for x in row[l * top_k : (l + 1) * top_k])
        raised = {j: c**power for j, c in counts.items()}
        total = sum(raised.values())
        weights[l] = {j: v / total for j, v in raised.items()}
    return weights


def reference_distance(doc, weights, top_k):
    layers = sorted(weights)
    sim = sum(weights[l].get(int(x), 0.0) for l in layers for x in doc[l * top_k : (l + 1) * top_k])
    return 1.0 - sim / len(layers)


@st.composite
def cases(draw):
    num_layers = draw(st.integers(1, 5))
    top_k = draw(st.integers(1, 4))
    width = draw(st.integers(top_k, 12))
    seed = draw(st.integers(0, 2**31))
    n_target = draw(st.integers(1, 8))
    n_pool = draw(st.integers(1, 40))
    power = draw(st.sampled_from([1.0, 0.5, 2.0, 0.0, 1.7]))
    layers = draw(
        st.one_of(
            st.sampled_from(["all", "first", "last"]),
            st.lists(st.integers(0, num_layers - 1), min_size=1, max_size=num_layers, unique=True),
        )
    )
    return num_layers, top_k, width, seed, n_target, n_pool, power, layers


@settings(max_examples=150, deadline=None)
@given(cases())
def test_scores_match_the_spec_formula(case):
    num_layers, top_k, width, seed, n_target, n_pool, power, layers = case
    rng = np.random.default_rng(seed)
    target = random_features(rng, n_target, num_layers, top_k, width)
    pool = random_features(rng, n_pool, num_layers, top_k, width)
    profile = scoring.build_profile(
        target, num_layers=num_layers, top_k=top_k, width=width, power=power, layers=layers
    )
    kept = scoring.resolve_layers(layers, num_layers)
    ref_w = reference_weights(target, num_layers, top_k, power, kept)
    expected = np.array([reference_distance(doc, ref_w, top_k) for doc in pool])
    for kernel in ("numpy", "numba"):
        scores = scoring.score_features(pool, profile, kernel=kernel)
        got = scoring.nag_distance(scores, profile)
        assert np.max(np.abs(got - expected)) <= 1e-6


def test_power_one_is_exact_counts_over_lnk():
    target = np.array([[0, 1, 2, 3], [0, 2, 3, 1]], dtype=np.uint16)  # L=2, K=2
    p = scoring.build_profile(target, num_layers=2, top_k=2, width=4)
    assert p.denominator == 2 * 2 * 2
    assert p.weights.tolist() == [[2, 1, 1, 0], [0, 1, 1, 2]]
    pool = np.array([[0, 1, 3, 2], [3, 2, 1, 0]], dtype=np.uint16)
    assert scoring.score_features(pool, p).tolist() == [2 + 1 + 2 + 1, 0 + 1 + 1 + 0]


@pytest.mark.parametrize("power", [0.5, 2.0, 1.3])
def test_equal_neuron_multisets_score_equal_whatever_the_order(power):
    rng = np.random.default_rng(1)
    target = random_features(rng, 30, 3, 5, 40)
    p = scoring.build_profile(target, num_layers=3, top_k=5, width=40, power=power)
    doc = random_features(rng, 1, 3, 5, 40)[0]
    shuffled = np.concatenate([rng.permutation(doc[l * 5 : (l + 1) * 5]) for l in range(3)])
    s = scoring.score_features(np.stack([doc, shuffled]), p)
    assert s[0] == s[1]
    assert p.denominator == 3 * scoring.FIXED_POINT_ONE


def test_numba_and_numpy_kernels_agree_on_a_large_block():
    rng = np.random.default_rng(2)
    target = random_features(rng, 50, 4, 6, 100)
    pool = random_features(rng, 3000, 4, 6, 100)
    p = scoring.build_profile(target, num_layers=4, top_k=6, width=100, layers=[1, 3])
    a = scoring.score_features(pool, p, kernel="numpy")
    b = scoring.score_features(pool, p, kernel="numba")
    assert np.array_equal(a, b)


def test_layer_selection():
    assert scoring.resolve_layers("all", 4) == (0, 1, 2, 3)
    assert scoring.resolve_layers("first", 4) == (0,)
    assert scoring.resolve_layers("last", 4) == (3,)
    assert scoring.resolve_layers("3,1,1", 4) == (1, 3)
    f = np.arange(8, dtype=np.uint16).reshape(1, 8)  # L=4, K=2
    assert scoring.select_layers(f, 4, 2, "1,3").tolist() == [[2, 3, 6, 7]]
    for bad in ("4", "-1", "middle", "", [7]):
        with pytest.raises(NagError):
            scoring.resolve_layers(bad, 4)


def test_bad_inputs_are_refused():
    with pytest.raises(NagError, match="outside the layer width"):
        scoring.build_profile(np.array([[0, 9]], dtype=np.uint16), num_layers=1, top_k=2, width=4)
    with pytest.raises(NagError, match="empty"):
        scoring.build_profile(np.zeros((0, 2), dtype=np.uint16), num_layers=1, top_k=2, width=4)
    with pytest.raises(NagError, match="expected"):
        scoring.build_profile(np.zeros((1, 3), dtype=np.uint16), num_layers=1, top_k=2, width=4)
    with pytest.raises(NagError, match="power"):
        scoring.build_profile(np.zeros((1, 2), dtype=np.uint16) + [[0, 1]], num_layers=1, top_k=2, width=4, power=-1)


def test_pool_contrast_weights_lift_over_the_pool():
    # neuron 0 is in every target doc and every pool doc: no lift, weight 0;
    # neuron 1 is in every target doc and rare in the pool: all the weight.
    target = np.array([[0, 1], [1, 0]], dtype=np.uint16)  # L=1, K=2
    pool_counts = np.array([[1000, 10, 500, 500]])
    p = scoring.build_profile(
        target, num_layers=1, top_k=2, width=4, contrast="pool", pool_counts=pool_counts, pool_size=1000
    )
    assert p.weights[0, 0] == 0 and p.weights[0, 2] == 0
    assert p.weights[0, 1] == scoring.FIXED_POINT_ONE
    # formula check against floats
    t = np.array([1.0, 1.0, 0, 0])
    q = (pool_counts[0] + 1) / 1001
    raw = np.where(t > 0, 2.0 * np.maximum(np.log(np.where(t > 0, t, 1) / q), 0), 0)
    assert np.allclose(p.weights[0] / scoring.FIXED_POINT_ONE, raw / raw.sum())
    with pytest.raises(NagError, match="pool"):
        scoring.build_profile(target, num_layers=1, top_k=2, width=4, contrast="pool")


def test_max_score_bounds_every_document():
    rng = np.random.default_rng(3)
    target = random_features(rng, 20, 3, 4, 15)
    pool = random_features(rng, 500, 3, 4, 15)
    p = scoring.build_profile(target, num_layers=3, top_k=4, width=15)
    assert scoring.score_features(pool, p).max() <= p.max_score()
    assert math.isclose(p.max_score() / p.denominator, 1.0) or p.max_score() < p.denominator


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
def test_many_profiles_in_one_pass_equal_each_alone(kernel):
    rng = np.random.default_rng(3)
    pool = random_features(rng, 2500, 4, 6, 100)
    profiles = [
        scoring.build_profile(random_features(rng, 20, 4, 6, 100), num_layers=4, top_k=6, width=100, power=p)
        for p in (1.0, 1.0, 0.5)
    ] + [scoring.build_profile(random_features(rng, 9, 4, 6, 100), num_layers=4, top_k=6, width=100, layers=[0, 2])]
    # the first two share one table type (one fused pass); the others fall back per profile
    for group in (profiles[:2], profiles[:2] * 3, profiles):  # two, six (as --each), and mixed
        got = scoring.score_features_many(pool, group, kernel=kernel)
        for j, p in enumerate(group):
            assert np.array_equal(got[j], scoring.score_features(pool, p, kernel="numpy"))


def test_the_kernel_is_chosen_by_the_work(monkeypatch):
    monkeypatch.delenv("NAGINDEX_KERNEL", raising=False)
    monkeypatch.setattr(scoring, "_numba_kernels", None)
    monkeypatch.setattr(scoring, "HAVE_NUMBA", True)
    assert scoring.choose_kernel(1000) == "numpy"  # not worth loading numba for
    assert scoring.choose_kernel(scoring.NUMBA_MIN_ROWS) == "numba"
    monkeypatch.setenv("NAGINDEX_KERNEL", "numba")
    assert scoring.choose_kernel(10) == "numba"
    monkeypatch.setenv("NAGINDEX_KERNEL", "numpy")
    assert scoring.choose_kernel(10**9) == "numpy"
