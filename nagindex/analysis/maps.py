"""A 2-D map of NAG features: PCA by SVD always, t-SNE where scikit-learn is installed."""

from __future__ import annotations


import numpy as np

from nagindex.errors import NagError, require_extra
from nagindex.analysis.views import PoolView


def bag_of_neurons(features: np.ndarray, num_layers: int, top_k: int, width: int):
    """Sparse binary matrix (n, L*width): 1 where the document has (layer, neuron) in its NAG."""
    sparse = require_extra("scipy.sparse", "plots", "a feature map")

    feats = np.asarray(features, dtype=np.int64)
    n = len(feats)
    cols = (feats + np.repeat(np.arange(num_layers) * width, top_k)[None, :]).ravel()
    rows = np.repeat(np.arange(n), num_layers * top_k)
    m = sparse.csr_matrix((np.ones(len(cols), dtype=np.float64), (rows, cols)), shape=(n, num_layers * width))
    m.sum_duplicates()
    m.data[:] = 1.0  # a neuron counts once per layer, even if listed twice
    return m


def pca_2d(features: np.ndarray, num_layers: int, top_k: int, width: int, components: int = 2) -> np.ndarray:
    """PCA scores of the bag-of-neurons matrix, by SVD of its centred Gram matrix.

    The matrix has L*width columns (46k for SmolLM2) but only n rows, so the
    n x n Gram matrix is the cheap route. Signs are fixed (largest |loading|
    positive) so the picture is reproducible.
    """
    x = bag_of_neurons(features, num_layers, top_k, width)
    n = x.shape[0]
    if n < 2:
        raise NagError("a map needs at least 2 documents")
    gram = np.asarray((x @ x.T).todense(), dtype=np.float64)
    centre = np.eye(n) - 1.0 / n
    gc = centre @ gram @ centre
    u, s, _ = np.linalg.svd(gc, hermitian=True)
    k = min(components, n)
    coords = u[:, :k] * np.sqrt(np.clip(s[:k], 0, None))
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), np.arange(k)])
    signs[signs == 0] = 1
    coords = coords * signs
    if k < components:
        coords = np.pad(coords, ((0, 0), (0, components - k)))
    return coords


def has_tsne() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


def tsne_2d(features: np.ndarray, num_layers: int, top_k: int, width: int, seed: int = 0) -> np.ndarray:
    """t-SNE of the first (up to 50) principal components; needs scikit-learn (`analysis` extra)."""
    if not has_tsne():
        raise NagError("t-SNE needs scikit-learn: pip install 'nagindex[analysis]' (or use --method pca)")
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 5:
        raise NagError("t-SNE needs at least 5 documents")
    pcs = pca_2d(features, num_layers, top_k, width, components=min(50, n))
    perplexity = float(min(30.0, (n - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # One OpenMP thread: on a busy machine its spinning worker threads made a
    # 24-point t-SNE take 77 s instead of 1 s; a map of a few thousand points
    # stays well under a minute on one thread.
    with threadpool_limits(1):
        return tsne.fit_transform(pcs)


def sample_per_label(labels: np.ndarray, per_label: int, seed: int = 0) -> np.ndarray:
    """Rows of at most `per_label` documents of each label, sorted, reproducible."""
    rng = np.random.default_rng(seed)
    rows = []
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        rows.append(idx if len(idx) <= per_label else np.sort(rng.choice(idx, per_label, replace=False)))
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def feature_map(
    pool: PoolView,
    *,
    target_features: np.ndarray | None = None,
    method: str = "pca",
    per_label: int = 300,
    seed: int = 0,
) -> dict:
    """The numbers behind `nag plot map`: 2-D coordinates of a per-label sample of the pool
    (plus the target documents, labelled "target"), by PCA or t-SNE."""
    if method not in ("pca", "tsne"):
        raise NagError(f"unknown map method {method!r}; choose pca or tsne")
    rows = sample_per_label(pool.labels, per_label, seed)
    feats = pool.features[rows]
    labels = pool.labels[rows].astype(object)
    docids = pool.docids[rows].astype(object)
    if target_features is not None and len(target_features):
        tf = np.asarray(target_features)[:per_label]
        feats = np.concatenate([feats, tf.astype(feats.dtype)])
        labels = np.concatenate([labels, np.array(["target"] * len(tf), dtype=object)])
        docids = np.concatenate([docids, np.array([f"target:{i}" for i in range(len(tf))], dtype=object)])
    args = (feats, pool.num_layers, pool.top_k, pool.width)
    coords = pca_2d(*args) if method == "pca" else tsne_2d(*args, seed=seed)
    return {"coords": coords, "labels": labels, "docids": docids, "method": method}


