"""Target profiles and the gather-sum kernel (SPEC sections 2-3), pure numpy.

A profile is an integer weight table ``W`` of shape (L_kept, width) and an
integer denominator ``D``: the similarity of a document is the sum of
``W[l, feature[l*K + r]]`` over its kept layers and ranks, divided by ``D``.
Scores are ranked as integers, so equal neuron multisets always give equal
scores and the docid tie-break (never the summation order) decides.

- power 1 (the default): ``W`` holds the target counts and ``D = L*n*K``;
  this is SPEC 3 exactly, with no rounding at all.
- any other power, or the pool contrast: ``W`` is the SPEC weight in fixed
  point, ``round(w * 2**32)``, and ``D = L * 2**32``. The rounding error of
  one weight is at most 2**-33, far below the 1e-6 the distances promise.

Nothing here reads files; `query.py` feeds matrices in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from nagindex.errors import NagError

FIXED_POINT_BITS = 32
FIXED_POINT_ONE = 1 << FIXED_POINT_BITS

CONTRASTS = (None, "none", "pool")


@dataclass(frozen=True, eq=False)
class Profile:
    """A target profile: integer weights per kept layer and one denominator.

    `layers` are the kept layer indices (into the full L of the features),
    `weights[i]` belongs to layer `layers[i]`; `num_layers` is the full L of
    the features the profile is applied to.
    """

    weights: np.ndarray
    denominator: int
    layers: tuple[int, ...]
    num_layers: int
    top_k: int
    power: float = 1.0
    contrast: str | None = None
    num_targets: int = 0

    @property
    def width(self) -> int:
        return int(self.weights.shape[1])

    def similarity(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) / float(self.denominator)

    def gather_plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(columns, offsets): which feature columns the kernel reads, and where
        each column's layer starts in the flattened weight table."""
        k = self.top_k
        cols = np.array([l * k + r for l in self.layers for r in range(k)], dtype=np.int64)
        offs = np.array(
            [i * self.width for i in range(len(self.layers)) for _ in range(k)], dtype=np.int64
        )
        return cols, offs

    def max_score(self) -> int:
        """The largest score any document can reach: the K heaviest weights of
        each kept layer (a NAG lists K distinct neurons per layer)."""
        k = min(self.top_k, self.width)
        top = -np.partition(-self.weights, k - 1, axis=1)[:, :k]
        return int(top.sum())


# -- layers ------------------------------------------------------------------
def resolve_layers(layers, num_layers: int) -> tuple[int, ...]:
    """Turn ``"all" | "first" | "last" | "0,5,9" | [0, 5, 9]`` into sorted
    unique layer indices; an unknown layer is a `NagError`."""
    if layers is None:
        layers = "all"
    if isinstance(layers, str):
        text = layers.strip().lower()
        if text == "all":
            return tuple(range(num_layers))
        if text == "first":
            return (0,)
        if text == "last":
            return (num_layers - 1,)
        try:
            items = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise NagError(
                f"unknown layer selection {layers!r}; use all, first, last or a list like 0,5,9"
            ) from None
    else:
        try:
            items = [int(x) for x in layers]
        except (TypeError, ValueError):
            raise NagError(f"unknown layer selection {layers!r}") from None
    if not items:
        raise NagError("empty layer selection")
    bad = [i for i in items if not 0 <= i < num_layers]
    if bad:
        raise NagError(f"unknown layer {bad[0]}: the features have layers 0..{num_layers - 1}")
    return tuple(sorted(set(items)))


def select_layers(features: np.ndarray, num_layers: int, top_k: int, layers) -> np.ndarray:
    """Keep only the columns of the selected layers (still layer-major)."""
    kept = resolve_layers(layers, num_layers)
    if kept == tuple(range(num_layers)):
        return features
    cols = np.array([l * top_k + r for l in kept for r in range(top_k)], dtype=np.int64)
    return np.ascontiguousarray(features[:, cols])


# -- profile -----------------------------------------------------------------
def layer_counts(features: np.ndarray, *, num_layers: int, top_k: int, width: int) -> np.ndarray:
    """c[l, j]: how often neuron j appears among the n*K entries of layer l."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != num_layers * top_k:
        raise NagError(
            f"features have shape {features.shape}, expected (n, {num_layers * top_k}) "
            f"for L={num_layers}, K={top_k}"
        )
    if features.size and int(features.max()) >= width:
        raise NagError(f"feature value {int(features.max())} is outside the layer width {width}")
    layer_of_col = np.repeat(np.arange(num_layers, dtype=np.int64), top_k)
    flat = features.astype(np.int64) + layer_of_col * width
    return np.bincount(flat.ravel(), minlength=num_layers * width).reshape(num_layers, width)


def _fixed_point(weights: np.ndarray) -> np.ndarray:
    return np.rint(weights * FIXED_POINT_ONE).astype(np.int64)


def contrast_weights(
    counts: np.ndarray, pool_counts: np.ndarray, *, num_targets: int, pool_size: int, power: float
) -> np.ndarray:
    """Pool-contrast weights per layer (floats summing to 1 per layer, or 0).

    raw[l, j] = c[l, j]**p * max(0, ln(t / q)), with t = c[l, j] / n the share
    of target documents whose layer-l NAG holds neuron j and
    q = (pool[l, j] + 1) / (N + 1) the smoothed share of pool documents. So a
    neuron weighs by its target frequency (as in SPEC 2) times how many times
    more often it fires in the target than in the pool (an IDF-like lift);
    neurons no more frequent in the target than in the pool weigh 0.
    """
    c = counts.astype(np.float64)
    t = c / max(num_targets, 1)
    q = (pool_counts.astype(np.float64) + 1.0) / (pool_size + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(c > 0, np.log(np.where(c > 0, t, 1.0) / q), 0.0)
        raw = np.where(c > 0, np.power(c, power), 0.0) * np.maximum(lift, 0.0)
        sums = raw.sum(axis=1, keepdims=True)
        return np.where(sums > 0, raw / np.where(sums > 0, sums, 1.0), 0.0)


def build_profile(
    target_features: np.ndarray,
    *,
    num_layers: int,
    top_k: int,
    width: int,
    power: float = 1.0,
    layers="all",
    pool_counts: np.ndarray | None = None,
    pool_size: int | None = None,
    contrast: str | None = None,
) -> Profile:
    """The target profile of SPEC 2 as an integer weight table.

    `target_features` is (n, L*K) in the full layer layout; `layers` picks the
    layers used (SPEC 4 layer subset). `contrast="pool"` needs `pool_counts`
    (L, width) document counts per neuron over the pool and `pool_size` (see
    `contrast_weights`); the default (None / "none") is the plain SPEC profile.
    """
    if contrast == "none":
        contrast = None
    if contrast not in CONTRASTS:
        raise NagError(f"unknown contrast {contrast!r}; use none or pool")
    power = float(power)
    if not np.isfinite(power) or power < 0:
        raise NagError(f"power must be a finite number >= 0, got {power}")
    kept = resolve_layers(layers, num_layers)
    n = int(np.asarray(target_features).shape[0])
    if n == 0:
        raise NagError("the target set is empty")
    counts = layer_counts(target_features, num_layers=num_layers, top_k=top_k, width=width)
    counts = counts[list(kept)]
    n_layers = len(kept)
    if contrast == "pool":
        if pool_counts is None or pool_size is None:
            raise NagError("the pool contrast needs the pool's neuron counts")
        pool = np.asarray(pool_counts)[list(kept)]
        w = contrast_weights(counts, pool, num_targets=n, pool_size=pool_size, power=power)
        weights, denominator = _fixed_point(w), n_layers * FIXED_POINT_ONE
    elif power == 1.0:
        # Every layer's counts sum to n*K: the SPEC weight is c / (n*K) exactly.
        weights, denominator = counts.astype(np.int64), n_layers * n * top_k
    else:
        c = counts.astype(np.float64)
        # Absent neurons are outside the profile and weigh 0 (also for p = 0).
        raw = np.where(c > 0, np.power(c, power), 0.0)
        w = raw / raw.sum(axis=1, keepdims=True)
        weights, denominator = _fixed_point(w), n_layers * FIXED_POINT_ONE
    return Profile(
        weights=np.ascontiguousarray(weights, dtype=np.int64),
        denominator=int(denominator),
        layers=kept,
        num_layers=num_layers,
        top_k=top_k,
        power=power,
        contrast=contrast,
        num_targets=n,
    )


# -- kernel ------------------------------------------------------------------
def _numpy_gather_sum(features, cols, table, offs, out) -> None:
    idx = (features if cols is None else features[:, cols]).astype(np.int64)
    idx += offs
    np.sum(np.take(table, idx), axis=1, dtype=np.int64, out=out)


try:  # numba compiles the gather-sum loop; plain numpy is the fallback.
    import numba

    # One flat loop per row over (offset + neuron) lookups: with an int32
    # table and accumulator LLVM turns it into SIMD gathers (2x the int64 speed).
    @numba.njit(nogil=True, parallel=True, cache=True)
    def _numba_gather_sum_all(features, offs, table, zero, out):  # pragma: no cover - compiled
        n, m = features.shape
        for i in numba.prange(n):
            s = zero
            for c in range(m):
                s += table[offs[c] + np.int32(features[i, c])]
            out[i] = s

    @numba.njit(nogil=True, parallel=True, cache=True)
    def _numba_gather_sum_cols(features, cols, offs, table, zero, out):  # pragma: no cover - compiled
        n = features.shape[0]
        m = cols.shape[0]
        for i in numba.prange(n):
            s = zero
            for c in range(m):
                s += table[offs[c] + np.int32(features[i, cols[c]])]
            out[i] = s

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False

# Rows per kernel call: a block of 560 uint16 columns is ~36 MB at 32k rows.
BLOCK_ROWS = 32768
INT32_MAX = 2**31 - 1


def _kernel_name() -> str:
    if HAVE_NUMBA and os.environ.get("NAGINDEX_KERNEL", "") != "numpy":
        return "numba"
    return "numpy"


def kernel_tables(profile: Profile) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(columns or None for all, offsets, flat weight table) for the kernel.

    The table is int32 when no document can score above 2**31 - 1 (the
    power-1 counts), so sums stay exact in an int32 accumulator; int64
    otherwise (fixed point)."""
    cols, offs = profile.gather_plan()
    table = profile.weights.ravel()
    if profile.max_score() <= INT32_MAX:
        table = table.astype(np.int32)
        offs = offs.astype(np.int32)
    all_cols = len(profile.layers) == profile.num_layers
    return (None if all_cols else cols), offs, np.ascontiguousarray(table)


def score_features(features: np.ndarray, profile: Profile, *, kernel: str | None = None) -> np.ndarray:
    """Integer scores of documents: sum of profile weights over their NAG.

    `features` is (n, L*K) uint16 in the full layer layout (a memmap is fine:
    it is read block by block). Returns int64 scores; divide by
    `profile.denominator` for the similarity.
    """
    features = np.asarray(features)  # a memmap becomes a plain view, no copy
    if features.ndim != 2 or features.shape[1] != profile.num_layers * profile.top_k:
        raise NagError(
            f"features have shape {features.shape}, expected (n, "
            f"{profile.num_layers * profile.top_k})"
        )
    n = features.shape[0]
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    cols, offs, table = kernel_tables(profile)
    kernel = kernel or _kernel_name()
    if kernel == "numba" and HAVE_NUMBA:
        for start in range(0, n, BLOCK_ROWS):
            block = features[start : start + BLOCK_ROWS]
            if block.dtype != np.uint16 or not block.flags.c_contiguous:
                block = np.ascontiguousarray(block, dtype=np.uint16)
            if cols is None:
                _numba_gather_sum_all(block, offs, table, table.dtype.type(0), out[start : start + BLOCK_ROWS])
            else:
                _numba_gather_sum_cols(block, cols, offs, table, table.dtype.type(0), out[start : start + BLOCK_ROWS])
    else:
        step = 4096
        offs64 = offs.astype(np.int64)
        for start in range(0, n, step):
            _numpy_gather_sum(features[start : start + step], cols, table, offs64, out[start : start + step])
    return out


def nag_distance(scores: np.ndarray, profile: Profile) -> np.ndarray:
    """SPEC 3 distance, 1 - similarity, as float64."""
    return 1.0 - profile.similarity(scores)
