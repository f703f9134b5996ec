"""The inverted-list path: add profile weights term by term (heaviest neuron first)
over the FAISS posting lists, keep an upper bound on what the unread lists can still
add, and stop as soon as the bound proves which rows can possibly be in the answer;
those candidates are rescored exactly from the forward matrices. When the bound cannot
prove it within a cost cap the caller scans, so the answer is always the scan's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nagindex.errors import NagError
from nagindex.ranking import scoring
from nagindex.ranking.scan import read_rows

# The inverted path gives up (and scans) after reading this share of the
# pool's postings, or when more than this share of rows stay candidates.
INVERTED_MAX_POSTINGS_SHARE = 0.5
# The auto planner's try is cheaper to abandon: reading 5% of the postings
# costs about a fifth of a scan, the most a failed try adds.
INVERTED_AUTO_MAX_POSTINGS_SHARE = 0.05
INVERTED_MAX_CANDIDATE_SHARE = 0.1
# ... but never insist on fewer candidates than this (rescoring them is cheap).
INVERTED_MIN_CANDIDATES = 1024


@dataclass
class Candidates:
    """Rows that provably hold one target's exact answer, with their exact scores.

    Every path that scores a pool (the scan, the inverted lists, an engine's
    distributed scan) returns this; the selection (tie-break, cut) is then
    the same code for all of them.
    """

    rows: np.ndarray  # candidate global rows (sorted), a superset of the answer
    scores: np.ndarray  # their exact int64 scores
    stats: dict = field(default_factory=dict)
    tokens: np.ndarray | None = None  # their token counts, where the step read them


def _budget_threshold(acc: np.ndarray, live: np.ndarray, tokens: np.ndarray, budget: int) -> int | None:
    """Largest theta such that the live rows with acc >= theta hold more than
    `budget` tokens (None when even all touched rows do not)."""
    touched = live[acc[live] > 0]
    if not len(touched):
        return None
    order = touched[np.argsort(-acc[touched], kind="stable")]
    cum = np.cumsum(tokens[order])
    p = int(np.searchsorted(cum, budget, side="right"))
    if p >= len(order):
        return None
    return int(acc[order[p]])


def inverted_candidates(
    index,
    profile: scoring.Profile,
    neuron_type: str,
    live: np.ndarray,
    tokens: np.ndarray,
    *,
    top: int | None = None,
    budget: int | None = None,
    max_postings_share: float | None = None,
    max_candidate_share: float | None = None,
    min_candidates: int | None = None,
) -> Candidates | None:
    """Rows that provably hold the exact answer, with their exact scores, or
    None when the lists cannot prove it cheaply (the caller then scans).

    After reading the heaviest lists, acc(d) <= score(d) <= acc(d) + R, where
    R bounds what the unread lists can add to any document: per kept layer,
    the sum of the K heaviest unread weights (a NAG lists K distinct neurons
    per layer). theta is a proven lower bound of the cut score: for `top` N,
    the N-th largest acc; for a token `budget`, the acc at which the rows
    ranked by acc first exceed the budget. Every row with score >= theta has
    acc + R >= theta, so the rows with acc + R >= theta contain the answer
    (the untouched rows, acc = 0, are out once R < theta).
    """
    if not profile.additive:
        return None  # scores weigh ranks, which the lists do not record: the caller scans
    width = profile.width
    k = profile.top_k
    n_live = len(live)
    if n_live == 0:
        return Candidates(live, np.zeros(0, np.int64), {"rounds": 0})
    inv = index.posting_lists(neuron_type)
    weights = profile.weights
    pos, neuron = np.nonzero(weights > 0)
    w = weights[pos, neuron]
    order = np.lexsort((neuron, pos, -w))
    pos, neuron, w = pos[order], neuron[order], w[order]
    list_no = np.asarray(profile.layers, dtype=np.int64)[pos] * width + neuron
    # Each layer's weights, heaviest first: the unread ones are always a suffix.
    layer_sorted = [np.sort(weights[i][weights[i] > 0])[::-1] for i in range(len(profile.layers))]
    read_in_layer = np.zeros(len(profile.layers), dtype=np.int64)

    def rest_bound() -> int:
        return int(sum(int(s[r : r + k].sum()) for s, r in zip(layer_sorted, read_in_layer)))

    is_live = np.zeros(index.num_rows, dtype=bool)
    is_live[live] = True
    acc = np.zeros(index.num_rows, dtype=np.int64)
    scan_volume = index.num_rows * len(profile.layers) * k
    if max_postings_share is None:
        max_postings_share = INVERTED_MAX_POSTINGS_SHARE
    if max_candidate_share is None:
        max_candidate_share = INVERTED_MAX_CANDIDATE_SHARE
    if min_candidates is None:
        min_candidates = INVERTED_MIN_CANDIDATES
    max_postings = max_postings_share * scan_volume
    max_candidates = max(int(max_candidate_share * n_live), (top or 0) * 4, min_candidates)
    quota = max(scan_volume // 64, 1)
    read, t, rounds = 0, 0, 0
    stats: dict[str, Any] = {"terms": int(len(w))}
    while True:
        # read lists until this round's quota of postings is used up
        target_read = read + quota
        while t < len(w) and read < target_read:
            ids = inv.ids(int(list_no[t]))
            if len(ids) > 1 and bool(np.any(ids[1:] <= ids[:-1])):
                # a row listed twice (a NAG naming one neuron twice in a layer)
                # or unsorted lists: the bound assumes neither, so scan instead
                return None
            if len(ids) and (ids[0] < 0 or ids[-1] >= index.num_rows):
                raise NagError(
                    f"index {index.path} is damaged: an inverted list of {neuron_type} names row {int(ids[-1] if ids[0] >= 0 else ids[0])} "
                    f"outside 0..{index.num_rows - 1} (run `nag index check {index.path}`)"
                )
            acc[ids] += w[t]
            read += len(ids)
            read_in_layer[pos[t]] += 1
            t += 1
        rounds += 1
        bound = rest_bound()
        if top is not None:
            n_keep = min(top, n_live)
            theta = int(np.partition(acc[live], n_live - n_keep)[n_live - n_keep])
        else:
            theta = _budget_threshold(acc, live, tokens, budget)
        if theta is not None and theta > bound:
            cand = np.flatnonzero((acc + bound >= theta) & is_live)
            if len(cand) <= max_candidates:
                break
        elif theta is not None and t == len(w):
            # every list read, bound 0: acc is exact, theta <= 0 leaves all rows in
            cand = np.flatnonzero((acc >= theta) & is_live)
            if len(cand) <= max_candidates:
                break
        if t == len(w) or read >= max_postings:
            return None
        quota = min(quota * 2, max(int(max_postings - read), 1))
    feats = read_rows(index, neuron_type, cand)
    exact = scoring.score_features(feats, profile)
    stats.update(
        rounds=rounds,
        postings_read=int(read),
        postings_share=read / max(scan_volume, 1),
        terms_read=int(t),
        bound=bound,
        theta=int(theta),
        candidates=int(len(cand)),
    )
    return Candidates(cand, exact, stats)


def inverted_looks_hopeless(index, profile: scoring.Profile, neuron_type: str, live: np.ndarray, *,
                            share: float, max_postings_share: float, sample_rows: int = 4096) -> tuple[bool, str]:
    """A cheap look before trying the lists (planning only; exactness never
    depends on it): the bound R after reading as many of the heaviest lists
    as the cap allows is known from the list sizes alone, and a random sample
    of rows scored exactly estimates the cut score theta generously (the
    sample maximum for tiny answers). If R stays above that, the try can only
    fail, so scan at once."""
    inv = index.posting_lists(neuron_type)
    width, k = profile.width, profile.top_k
    weights = profile.weights
    pos, neuron = np.nonzero(weights > 0)
    w = weights[pos, neuron]
    order = np.lexsort((neuron, pos, -w))
    pos, neuron = pos[order], neuron[order]
    list_no = np.asarray(profile.layers, dtype=np.int64)[pos] * width + neuron
    sizes = inv.sizes()[list_no]
    cap = max_postings_share * index.num_rows * len(profile.layers) * k
    readable = int(np.searchsorted(np.cumsum(sizes), cap, side="right"))
    read_in_layer = np.bincount(pos[:readable], minlength=len(profile.layers))
    layer_sorted = [np.sort(weights[i][weights[i] > 0])[::-1] for i in range(len(profile.layers))]
    bound = sum(int(s[r : r + k].sum()) for s, r in zip(layer_sorted, read_in_layer))
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(live, size=min(sample_rows, len(live)), replace=False))
    scores = scoring.score_features(read_rows(index, neuron_type, sample), profile)
    theta = int(np.quantile(scores, max(0.0, 1.0 - 0.5 * share))) if share * len(sample) >= 2 else int(scores.max())
    if bound >= theta:
        return True, (f"the lists could not prove it: after the {readable} heaviest lists the bound "
                      f"{bound / profile.denominator:.3f} stays above a generous cut estimate "
                      f"{theta / profile.denominator:.3f}")
    return False, ""


