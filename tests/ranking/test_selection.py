"""Ranking and selection against a plain Python implementation of SPEC 3-4."""

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nagindex.ranking import selection
from nagindex.errors import NagError

docid_text = st.text(alphabet="ab10_é", min_size=1, max_size=4)


@st.composite
def pools(draw):
    n = draw(st.integers(1, 60))
    docids = draw(st.lists(docid_text, min_size=n, max_size=n, unique=True))
    # few distinct scores: many ties, including at the cut
    scores = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    tokens = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    fraction = draw(st.floats(0.001, 1.0))
    return docids, scores, tokens, fraction


def reference_selection(scores, docids, tokens, rows=None, *, fraction=None, top=None):
    """SPEC 3 in plain Python: `rows` (default all) by score descending, then docid; the
    best `top`, or the longest prefix within floor(T * fraction) tokens (T summed over
    `rows`), the first row at least."""
    rows = range(len(docids)) if rows is None else rows
    order = sorted(rows, key=lambda i: (-scores[i], docids[i]))
    if top is not None:
        return order[:top]
    budget = math.floor(sum(tokens[i] for i in rows) * fraction)
    kept, total = [], 0
    for i in order:
        if total + tokens[i] > budget:
            break
        total += tokens[i]
        kept.append(i)
    return kept or order[:1]


@settings(max_examples=300, deadline=None)
@given(pools())
def test_budget_selection_matches_the_reference(pool):
    docids, scores, tokens, fraction = pool
    got = selection.budget_selection(-np.array(scores, dtype=np.int64), np.array(tokens), pa.array(docids), fraction)
    assert [docids[i] for i in got] == [docids[i] for i in reference_selection(scores, docids, tokens, fraction=fraction)]


@settings(max_examples=200, deadline=None)
@given(pools(), st.integers(1, 80))
def test_top_selection_and_rank_order_match_the_reference(pool, top):
    docids, scores, tokens, _ = pool
    order = sorted(range(len(docids)), key=lambda i: (-scores[i], docids[i]))
    got = selection.top_selection(-np.array(scores, dtype=np.int64), pa.array(docids), top)
    assert got.tolist() == order[:top]
    assert selection.rank_order(np.array(scores), np.array(docids, dtype=object)).tolist() == order


def test_select_budget_prefix_rule():
    assert selection.select_budget(np.array([3, 3, 3]), 2 / 3) == 2  # budget 6
    assert selection.select_budget(np.array([10, 1]), 0.5) == 1  # nothing fits: first row
    assert selection.select_budget(np.array([0, 0, 5]), 0.1) == 2  # zero-token rows fit
    assert selection.select_budget(np.array([], dtype=np.int64), 0.5) == 0
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(NagError, match="fraction"):
            selection.select_budget(np.array([1]), bad)


def test_mixture_keeps_duplicates_unless_dedupe():
    docids = pa.array(["a", "b", "c", "d"])
    sels = [np.array([2, 0]), np.array([0, 3, 2])]
    rows, which = selection.mixture(sels, docids)
    assert rows.tolist() == [2, 0, 0, 3, 2] and which.tolist() == [0, 0, 1, 1, 1]
    rows, which = selection.mixture(sels, docids, dedupe=True)
    assert rows.tolist() == [2, 0, 3] and which.tolist() == [0, 0, 1]


def test_quality_combination():
    distance = np.array([0.2, 0.4, 0.6, 0.3])
    quality = np.array([1.0, np.nan, 3.0, 2.0])
    q = selection.quality_combination(distance, quality, invert=False)
    assert q.missing == 1 and q.kept.tolist() == [0, 2, 3]
    # distance (0.2, 0.6, 0.3) -> (0, 1, 0.25); quality lower-is-better (1, 3, 2) -> (0, 1, 0.5)
    assert np.allclose(q.combined, [0.0, 2.0, 0.75])
    q = selection.quality_combination(distance, quality, invert=True)
    assert np.allclose(q.combined, [1.0, 1.0, 0.75])
    # a constant column normalises to 0 (1 - 0 once inverted): only the distance ranks
    q = selection.quality_combination(distance[:3], np.array([5.0, 5.0, 5.0]), invert=False)
    assert np.allclose(q.combined, [0.0, 0.5, 1.0])
    q = selection.quality_combination(distance[:3], np.array([5.0, 5.0, 5.0]), invert=True)
    assert np.allclose(q.combined, [1.0, 1.5, 2.0])


def test_float_keys_tie_break_on_docid():
    keys = np.array([0.5, 0.25, 0.5, 0.25])
    assert selection.exact_order(keys, pa.array(["z", "y", "a", "b"])).tolist() == [3, 1, 2, 0]


@pytest.mark.parametrize("fraction", [0.0001, 0.05, 0.2, 0.7, 1.0])
@pytest.mark.parametrize("score_range", [300, 10**12])
def test_large_pool_counting_cut_matches_the_reference(fraction, score_range):
    # >= 4096 rows with integer keys take the counting-pass shortcut; a range far wider
    # than the pool counts keys in bins (fixed-point scores), ties included
    rng = np.random.default_rng(5)
    n = 20_000
    scores = rng.integers(0, score_range, n)
    scores[::7] = scores[3]  # a large tie group
    scores = scores.tolist()
    tokens = rng.integers(0, 50, n).tolist()
    docids = [f"d{x}" for x in rng.permutation(n)]
    got = selection.budget_selection(-np.array(scores, dtype=np.int64), np.array(tokens), pa.array(docids), fraction)
    assert got.tolist() == reference_selection(scores, docids, tokens, fraction=fraction)


def _blocks(tokens, block_rows):
    tokens = np.asarray(tokens, dtype=np.int64)
    return lambda: ((s, tokens[s : s + block_rows]) for s in range(0, len(tokens), block_rows))


@settings(max_examples=300, deadline=None)
@given(pools(), st.data())
def test_pool_cut_holds_the_selection_of_the_live_rows(pool, data):
    docids, scores, tokens, fraction = pool
    n = len(docids)
    live = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    live[data.draw(st.integers(0, n - 1))] = True  # at least one live row
    top = data.draw(st.none() | st.integers(1, 70))
    block_rows = data.draw(st.integers(1, 64))
    mask = None if live.all() else live
    live_rows = np.flatnonzero(live)
    total = int(np.asarray(tokens)[live_rows].sum())
    budget = None if top is not None else selection.token_budget(total, fraction)
    rows, kept_scores, kept_tokens = selection.pool_leading_rows(
        np.array(scores, dtype=np.int64), _blocks(tokens, block_rows), live=mask, budget=budget, top=top)
    assert np.all(np.diff(rows) > 0) and live[rows].all()
    assert kept_scores.tolist() == [scores[r] for r in rows] and kept_tokens.tolist() == [tokens[r] for r in rows]
    expected = reference_selection(scores, docids, tokens, live_rows.tolist(), fraction=fraction, top=top)
    ids = pa.array([docids[r] for r in rows])
    if top is not None:
        picked = selection.top_selection(-kept_scores, ids, top)
    else:
        picked = selection.budget_selection(-kept_scores, kept_tokens, ids, fraction, total_tokens=total)
    assert rows[picked].tolist() == expected


@pytest.mark.parametrize("score_range", [300, 10**12])
def test_pool_cut_keeps_little_more_than_the_selection(score_range):
    # a cut that kept every row would still be exact: check that it really cuts, in blocks
    rng = np.random.default_rng(9)
    n = 50_000
    scores = rng.integers(0, score_range, n)
    tokens = rng.integers(0, 50, n)
    live = rng.random(n) > 0.1
    total = int(tokens[live].sum())
    budget = selection.token_budget(total, 0.05)
    rows, _, _ = selection.pool_leading_rows(scores, _blocks(tokens, 4096), live=live, budget=budget)
    order = np.flatnonzero(live)[np.argsort(-scores[live], kind="stable")]
    answer = int(np.searchsorted(np.cumsum(tokens[order]), budget, side="right"))
    assert answer <= len(rows) <= answer + n // 100
    rows, _, _ = selection.pool_leading_rows(scores, _blocks(tokens, 4096), live=live, top=500)
    assert 500 <= len(rows) <= 500 + n // 100


@pytest.mark.parametrize("top", [None, 700])
def test_chunked_ordering_reads_docids_only_where_ties_decide(monkeypatch, top):
    # chunks of 5 rows, each extended through its last tie group, give the reference order
    monkeypatch.setattr(selection, "ORDER_CHUNK_ROWS", 5)
    rng = np.random.default_rng(3)
    n = 3000
    scores = rng.integers(0, 400, n).tolist()
    tokens = rng.integers(0, 30, n).tolist()
    docids = [f"d{x}" for x in rng.permutation(n)]
    reads = []

    def docids_of(positions):
        reads.append(len(positions))
        return pa.array([docids[p] for p in positions])

    keys = -np.array(scores, dtype=np.int64)
    if top is None:
        got = selection.budget_selection(keys, np.array(tokens), docids_of, 0.3)
    else:
        got = selection.top_selection(keys, docids_of, top)
    assert got.tolist() == reference_selection(scores, docids, tokens, fraction=0.3, top=top)
    assert reads and max(reads) < 60  # one chunk at a time (5 rows plus a tie group)
    # distinct scores: no tie to break, so no docid is read at all
    reads.clear()
    distinct = -rng.permutation(n).astype(np.int64)
    selection.budget_selection(distinct, np.array(tokens), docids_of, 0.3)
    selection.top_selection(distinct, docids_of, 700)
    assert reads == []
