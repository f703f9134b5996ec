"""Why a document scored as it did: per-layer contributions, shared neurons, neighbours, and the numbers behind the score and layer pictures."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nagindex.analysis.views import PoolView, pool_view, target_profile
from nagindex.errors import NagError
from nagindex.ranking import scoring
from nagindex.ranking.query import default_preset_of, embeds, load_targets, run_query
from nagindex.ranking.request import QueryRequest
from nagindex.store.index import live_rows
from nagindex.ranking.selection import check_fraction, rank_order, select_budget
from nagindex.schemas import DEFAULT_NEURON_TYPE


def layer_contributions(features: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """contrib[d, l] = sum over r < K of W[l, feature_d[l*K + r]]: integer, exact.

    Summed over layers it is the document's integer score (similarity * D).
    """
    feats = np.asarray(features)
    n = len(feats)
    L = weights.shape[0]
    if feats.shape[1] != L * top_k:
        raise NagError(f"features have {feats.shape[1]} entries, the profile expects L*K = {L}*{top_k}")
    layer_of = np.repeat(np.arange(L), top_k)
    gathered = weights[layer_of[None, :], feats.astype(np.int64)]  # (n, L*K)
    return gathered.reshape(n, L, top_k).sum(axis=2, dtype=np.int64)


# Rows per block when a whole pool is reduced: bounds the (rows, L*K) int64
# gather to ~300 MB whatever the pool size.
BLOCK_ROWS = 65536


def document_scores(features: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """Integer score of every row: the ranking kernel (`scoring.score_features`) over all layers."""
    weights = np.asarray(weights, dtype=np.int64)
    L = weights.shape[0]
    if np.asarray(features).shape[1] != L * top_k:
        raise NagError(f"features have {np.asarray(features).shape[1]} entries, the profile expects L*K = {L}*{top_k}")
    profile = scoring.Profile(weights=weights, denominator=1, layers=tuple(range(L)), num_layers=L, top_k=top_k)
    out = np.empty(len(features), dtype=np.int64)
    for start in range(0, len(features), BLOCK_ROWS):
        out[start : start + BLOCK_ROWS] = scoring.score_features(np.asarray(features[start : start + BLOCK_ROWS]), profile)
    return out


def mean_layer_contributions(features: np.ndarray, weights: np.ndarray, top_k: int) -> np.ndarray:
    """Mean over rows of each layer's contribution (float), computed block by block."""
    total = np.zeros(weights.shape[0], dtype=np.float64)
    for start in range(0, len(features), BLOCK_ROWS):
        total += layer_contributions(features[start : start + BLOCK_ROWS], weights, top_k).sum(axis=0)
    return total / max(len(features), 1)


def per_layer_denominator(denominator: int, num_layers: int) -> int:
    """D / L: the integer that makes one layer's contribution a weight sum in [0, 1].

    With power 1, D = L*n*K; in fixed point, D = L*2**32: both divisible by L.
    """
    return int(denominator) // int(num_layers)


def ranking(scores: np.ndarray, docids: np.ndarray) -> np.ndarray:
    """Row order of the ranking: score descending (= nag_distance ascending), docid ascending."""

    return rank_order(np.asarray(scores, dtype=np.int64), np.asarray(docids, dtype=object))


def budget_count(order: np.ndarray, token_num: np.ndarray, fraction: float) -> int:
    """How many rows of `order` the token budget keeps (SPEC 3): the longest prefix whose
    cumulative token_num <= floor(total * fraction), at least one row."""

    check_fraction(fraction)
    return select_budget(np.asarray(token_num, dtype=np.int64)[order], fraction)


def score_distribution(pool: PoolView, weights: np.ndarray, denominator: int, fraction: float = 0.2) -> dict:
    """The numbers behind `nag plot scores` with a SPEC profile: every live document's
    nag_distance, grouped by `dataset` label, and the distance at the token-budget cut."""
    scores = document_scores(pool.features, weights, pool.top_k)
    order = ranking(scores, pool.docids)
    dist = _distribution(pool, order, 1.0 - scores / float(denominator),
                         budget_count(order, pool.token_num, fraction), fraction)
    return {**dist, "scores": scores}


def query_ranking(index: Any, request: QueryRequest, target: Any = None) -> dict:
    """How `nag query` with `request` ranks and cuts the pool, in pool positions (`PoolView` rows):
    `order` (every live row, best first), `distance` (nag_distance per pool position; NaN where the
    query's mode computes none), `kept` (how many the query selects), `scoring` and `mode`.
    `target`: the request's one target already loaded (a `ranking.targets.Target`)."""
    if target is None:
        targets = load_targets(index, request, embed=embeds(index, request))
        if len(targets) != 1:
            raise NagError(f"explain and plot take one target, got {len(targets)}")
        target = targets[0]
    one = dataclasses.replace(request, targets=(target,), target_features=(), target_texts=(), each=False)
    whole = run_query(index, dataclasses.replace(one, fraction=None, top=max(index.num_documents, 1)))
    chosen = run_query(index, one)
    rows = live_rows(index)
    order = np.searchsorted(rows, whole.selection.rows)
    distance = np.full(len(rows), np.nan)
    distance[order] = whole.selection.distance
    return {"order": order, "distance": distance, "kept": len(chosen.selection), "scoring": whole.summary["scoring"],
            "mode": whole.summary["mode"]}


def query_distribution(pool: PoolView, ranking_: dict, fraction: float | None) -> dict:
    """`score_distribution` as `nag query` ranks and cuts (`query_ranking`)."""
    dist = _distribution(pool, ranking_["order"], ranking_["distance"], ranking_["kept"], fraction)
    return {**dist, "scores": None, "scoring": ranking_["scoring"]}


def _distribution(pool: PoolView, order: np.ndarray, distance: np.ndarray, kept: int, fraction) -> dict:
    """Distances by label, the selected rows (the first `kept` of `order`) and the distance at the cut."""
    selected = np.zeros(len(pool), dtype=bool)
    selected[order[:kept]] = True
    by_label = {str(lab): distance[pool.labels == lab] for lab in sorted(set(pool.labels.tolist()))}
    return {
        "distance": distance,
        "selected": selected,
        "cut_distance": float(distance[order[kept - 1]]) if kept else float("nan"),
        "fraction": fraction,
        "by_label": by_label,
        "selected_by_label": {lab: int(selected[pool.labels == lab].sum()) for lab in by_label},
    }


def layer_means(
    target_features: np.ndarray, pool: PoolView, weights: np.ndarray, denominator: int
) -> dict[str, np.ndarray]:
    """The numbers behind `nag plot layers`: per-layer mean similarity (weight sum in [0, 1])
    of the target documents and of the pool documents."""
    per = per_layer_denominator(denominator, pool.num_layers)
    target = mean_layer_contributions(np.asarray(target_features), weights, pool.top_k) / per
    pooled = mean_layer_contributions(pool.features, weights, pool.top_k) / per
    return {"target": target, "pool": pooled, "layers": np.arange(pool.num_layers)}


# ===========================================================================
# explain
# ===========================================================================


def nag_overlap(features: np.ndarray, one: np.ndarray, num_layers: int, top_k: int, width: int) -> np.ndarray:
    """Share of (layer, neuron) pairs that each row of `features` has in common with `one`:
    |A & B| / (L*K), 1 for identical NAGs, 0 for disjoint ones."""
    mask = np.zeros((num_layers, width), dtype=bool)
    layer_of = np.repeat(np.arange(num_layers), top_k)
    mask[layer_of, np.asarray(one, dtype=np.int64)] = True
    hits = mask[layer_of[None, :], np.asarray(features, dtype=np.int64)]
    return hits.sum(axis=1) / float(num_layers * top_k)


def explain_row(
    pool: PoolView,
    row: int,
    weights: np.ndarray,
    denominator: int,
    *,
    fraction: float = 0.2,
    neighbours: int = 5,
    query: dict | None = None,
) -> dict:
    """Why pool row `row` scored as it did (see `explain`). `query` (`query_ranking`): the
    rank, the cut and the distances are the query's, not the SPEC profile's."""
    if int(neighbours) < 0:  # a negative count would slice the list from its end
        raise NagError.for_param("neighbours", f"must be 0 or more, got {neighbours}")
    L, K = pool.num_layers, pool.top_k
    scores = document_scores(pool.features, weights, K)
    contrib = layer_contributions(pool.features[row : row + 1], weights, K)[0]
    if query is None:
        order = ranking(scores, pool.docids)
        kept = budget_count(order, pool.token_num, fraction)
        distances = 1.0 - scores / float(denominator)
    else:
        order, kept, distances = query["order"], query["kept"], query["distance"]
    position = np.empty(len(pool), dtype=np.int64)
    position[order] = np.arange(len(pool))
    per = per_layer_denominator(denominator, L)
    feat = pool.features[row].astype(np.int64)
    layers = []
    for l in range(L):
        neurons = feat[l * K : (l + 1) * K]
        shared = [
            {"neuron": int(j), "rank_in_doc": r, "weight": float(weights[l, j]) / per, "weight_int": int(weights[l, j])}
            for r, j in enumerate(neurons)
            if weights[l, j] > 0
        ]
        layers.append({
            "layer": l,
            "contribution": int(contrib[l]) / float(denominator),
            "layer_similarity": int(contrib[l]) / float(per),
            "shared": sorted(shared, key=lambda s: (-s["weight_int"], s["neuron"])),
        })
    selected_rows = order[:kept]
    others = selected_rows[selected_rows != row]
    overlap = nag_overlap(pool.features[others], feat, L, K, pool.width)
    # Most similar NAG first; equal overlaps keep the ranking order.
    nearest = others[np.argsort(-overlap, kind="stable")][:neighbours]
    ov = dict(zip(others.tolist(), overlap.tolist()))
    return {
        "docid": str(pool.docids[row]),
        "label": str(pool.labels[row]),
        "score": int(scores[row]),
        "denominator": int(denominator),
        "similarity": int(scores[row]) / float(denominator),
        "nag_distance": float(distances[row]),
        "rank": int(position[row]) + 1,
        "pool_size": len(pool),
        "selected": bool(position[row] < kept),
        "selected_count": int(kept),
        "fraction": fraction,
        "layers": layers,
        "neighbours": [
            {
                "docid": str(pool.docids[r]),
                "label": str(pool.labels[r]),
                "overlap": float(ov[int(r)]),
                "rank": int(position[r]) + 1,
                "nag_distance": float(distances[r]),
            }
            for r in nearest
        ],
        **({"scoring": query["scoring"]} if query is not None else {}),
    }



def explain(
    index: Any,
    docid: str,
    target_features: np.ndarray,
    *,
    neuron_type: str = DEFAULT_NEURON_TYPE,
    power: float = 1.0,
    fraction: float = 0.2,
    neighbours: int = 5,
    request: QueryRequest | None = None,
    target: Any = None,
) -> dict:
    """Why document `docid` scored as it did against this target.

    With `request` (a `QueryRequest` of this one target, `target` its loaded
    `Target`), the rank, the cut, the selection and the distances are those of
    `nag query` with the same options; the per-layer breakdown is the SPEC
    profile's with the request's power.

    Returns its similarity, nag_distance, rank and whether the token budget
    selects it; per layer, its contribution to the similarity and the neurons
    it shares with the target profile with their SPEC weights; and its
    nearest selected neighbours (selected documents whose NAG overlaps most
    with its own).
    """
    pool = pool_view(index, neuron_type)
    row = pool.row_of(str(docid))
    query = None
    if request is not None:
        query = query_ranking(index, request, target)
        power = float(request.scoring_options(default_preset_of(index)).power)
        fraction = request.fraction
    profile = target_profile(index, target_features, neuron_type, power)
    out = explain_row(pool, row, profile.weights, profile.denominator, fraction=fraction, neighbours=neighbours,
                      query=query)
    if request is not None and request.top is not None:
        out["top"] = request.top
    out["num_targets"] = int(len(target_features))
    return out
