"""Embedding scores and their fusion with NAG, pure numpy, exact and deterministic.

A document's embedding score is a cosine (the stored vectors are unit length):
to the normalised mean of the target's vectors (``centroid``), or the mean of
its `k` highest cosines to single target items (``nn``). Cosines are computed
in float64 and quantised to fixed point (``round(cos * 2**24)``) before any
ranking, so that the order is decided by integers and then by docid, never
by float summation order.

Two fusions of the NAG and embedding scores, both integers in the end:

- the calibrated sum (the default): each score min-max scaled over the pool
  ranked, (s - min) / (max - min), then w * nag + (1 - w) * embedding in
  fixed point, ``round(2**40 * ...)``. Min and max are exact on integers and
  the arithmetic is elementwise, so the result does not depend on row order;
- reciprocal-rank fusion (Cormack et al. 2009): with r_nag and r_emb a
  document's 0-based ranks in the two exact orders (score descending, docid
  ascending), fused = 1/(k + 1 + r_nag) + 1/(k + 1 + r_emb); each term in fixed
  point, ``round(2**40 / (k + 1 + r))``.

docs/scoring.md gives the formulas; docs/quality.md how the default was chosen.
"""

from __future__ import annotations

import numpy as np

from nagindex.errors import NagError
from nagindex.ranking.selection import min_max, rank_order

COSINE_BITS = 24
COSINE_ONE = 1 << COSINE_BITS
RRF_BITS = 40
RRF_ONE = 1 << RRF_BITS
FUSED_ONE = RRF_ONE  # both fusions share one fixed point: fusion_score = fused / FUSED_ONE
# Pool rows per matrix product: bounds the (rows x target items) block in memory.
BLOCK_ROWS = 16384


def quantise_cosine(cosines: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(cosines, dtype=np.float64) * COSINE_ONE).astype(np.int64)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit length (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def centroid(target: np.ndarray) -> np.ndarray:
    """The unit-length mean of the target's unit vectors."""
    target = unit_rows(target)
    if len(target) == 0:
        raise NagError("the target set has no embeddings")
    c = target.mean(axis=0)
    norm = np.linalg.norm(c)
    return c / norm if norm > 0 else c


def centroid_scores(pool: np.ndarray, target: np.ndarray) -> np.ndarray:
    """int64 fixed-point cosine of every pool vector to the target centroid."""
    c = centroid(target)
    out = np.empty(len(pool), dtype=np.int64)
    for start in range(0, len(pool), BLOCK_ROWS):
        block = np.asarray(pool[start : start + BLOCK_ROWS], dtype=np.float64)
        out[start : start + len(block)] = quantise_cosine(block @ c)
    return out


def neighbour_scores(pool: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """int64 fixed-point mean of each pool vector's k highest cosines to single target items."""
    t = unit_rows(target)
    if len(t) == 0:
        raise NagError("the target set has no embeddings")
    k = min(int(k), len(t))
    out = np.empty(len(pool), dtype=np.int64)
    for start in range(0, len(pool), BLOCK_ROWS):
        sims = np.asarray(pool[start : start + BLOCK_ROWS], dtype=np.float64) @ t.T
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]
        # sort the k values so that their sum does not depend on partition's order
        out[start : start + len(sims)] = quantise_cosine(np.sort(top, axis=1).sum(axis=1) / k)
    return out


def embedding_scores(pool: np.ndarray, target: np.ndarray, *, how: str, neighbours: int) -> np.ndarray:
    if how == "centroid":
        return centroid_scores(pool, target)
    if how == "nn":
        return neighbour_scores(pool, target, neighbours)
    raise NagError(f"unknown embedding score {how!r}; use centroid or nn")


def ranks(scores: np.ndarray, docids) -> np.ndarray:
    """0-based rank of each position in the exact order (score descending, docid ascending)."""
    order = rank_order(scores, docids)
    r = np.empty(len(order), dtype=np.int64)
    r[order] = np.arange(len(order), dtype=np.int64)
    return r


def rrf_term(rank: np.ndarray, k: int) -> np.ndarray:
    return np.rint(RRF_ONE / (int(k) + 1.0 + np.asarray(rank, dtype=np.float64))).astype(np.int64)


def rrf_scores(score_lists: list[np.ndarray], docids, k: int) -> np.ndarray:
    """int64 reciprocal-rank fusion of integer score vectors over the same rows."""
    return np.sum([rrf_term(ranks(s, docids), k) for s in score_lists], axis=0, dtype=np.int64)


def calibrated_sum(nag: np.ndarray, embedding: np.ndarray, nag_weight: float) -> np.ndarray:
    """int64 fixed-point w * minmax(nag) + (1 - w) * minmax(embedding) over the same rows."""
    w = float(nag_weight)
    mixed = w * min_max(nag) + (1.0 - w) * min_max(embedding)
    return np.rint(mixed * FUSED_ONE).astype(np.int64)
