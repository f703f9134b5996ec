"""Target profiles and the gather-sum kernel (SPEC sections 2-3), pure numpy.

A profile is an integer weight table ``W`` of shape (L_kept, width) and an
integer denominator ``D``: the similarity of a document is the sum of
``W[l, feature[l*K + r]]`` over its kept layers and ranks, divided by ``D``.
Scores are ranked as integers, so equal neuron multisets always give equal
scores and the docid tie-break (never the summation order) decides.

- power 1 (the default): ``W`` holds the target counts and ``D = L*n*K``;
  this is SPEC 3 exactly, with no rounding at all.
- any other power, or another weighting (``idf``, ``contrast``): ``W`` is
  the weight in fixed point, ``round(w * 2**32)``, and ``D = L * 2**32``. The
  rounding error of one weight is at most 2**-33, far below the 1e-6 the
  distances promise.
- the document-side rank discount: slot r of a layer (r = 0 the strongest
  neuron) counts ``round(2**20 / log2(r + 2))`` times its weight, and ``D``
  gains a factor 2**20. The table is integer, so the sums stay exact.
- ``slots`` < K uses only the first `slots` ranks of each layer (the NAG at
  that K, since features are stored in rank order).

docs/scoring.md gives every formula.

Nothing here reads files; `query.py` feeds matrices in.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

from nagindex.errors import NagError
from nagindex.store.segment import neuron_counts

FIXED_POINT_BITS = 32
FIXED_POINT_ONE = 1 << FIXED_POINT_BITS

CONTRASTS = (None, "none", "pool")
# Profile weightings (docs/scoring.md): the SPEC's c**p, c**p times the pool
# idf, and c**p times the pool lift (the earlier `--contrast pool`).
WEIGHTINGS = ("spec", "idf", "contrast")
# Document-side rank discounts: none (the SPEC) or 1 / log2(r + 2).
DISCOUNTS = ("none", "log2")
DISCOUNT_BITS = 20  # rounding <= 2**-21 of a weight; with 2**32 weights a layer sums below 2**52
DISCOUNT_ONE = 1 << DISCOUNT_BITS


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
    weighting: str = "spec"
    slots: int | None = None  # ranks used per layer (None: all K)
    discount: np.ndarray | None = None  # int64 per-slot multiplier (None: 1 each)

    @property
    def width(self) -> int:
        return int(self.weights.shape[1])

    @property
    def used_slots(self) -> int:
        return self.top_k if self.slots is None else int(self.slots)

    @property
    def additive(self) -> bool:
        """Whether a document's score is a plain sum of its neurons' weights over
        all K slots: what the inverted lists (which do not record ranks) can bound."""
        return self.discount is None and self.used_slots == self.top_k

    def slot_multipliers(self) -> np.ndarray:
        """The integer multiplier of each column `gather_plan` reads."""
        disc = np.ones(self.used_slots, np.int64) if self.discount is None else self.discount
        return np.tile(np.asarray(disc, dtype=np.int64), len(self.layers))

    def similarity(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) / float(self.denominator)

    def gather_plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(columns, offsets): which feature columns the kernel reads, and where
        each column's layer starts in the flattened weight table."""
        k, used = self.top_k, self.used_slots
        cols = np.array([l * k + r for l in self.layers for r in range(used)], dtype=np.int64)
        offs = np.array(
            [i * self.width for i in range(len(self.layers)) for _ in range(used)], dtype=np.int64
        )
        return cols, offs

    def max_score(self) -> int:
        """The largest score any document can reach: the K heaviest weights of
        each kept layer (a NAG lists K distinct neurons per layer), the heaviest
        in the slot with the largest discount (the discount never grows with r)."""
        k = min(self.used_slots, self.width)
        top = -np.sort(-self.weights, axis=1)[:, :k]
        if self.discount is None:
            return int(top.sum())
        return int((top * np.asarray(self.discount[:k], dtype=np.int64)[None, :]).sum())


# -- layers ------------------------------------------------------------------
def _layer_range(part: str) -> list[int]:
    """``"3"`` -> [3]; ``"0-7"`` or ``"0..7"`` -> [0, ..., 7]."""
    text = part.strip()
    for sep in ("..", "-"):
        low, found, high = text.partition(sep)
        if found and low.strip() and high.strip():
            a, b = int(low), int(high)
            if b < a:
                raise ValueError(text)
            return list(range(a, b + 1))
    return [int(text)]


def resolve_layers(layers, num_layers: int) -> tuple[int, ...]:
    """Turn ``"all" | "first" | "last" | "0,5,9" | "0-7" | "0..7,12" | [0, 5, 9]``
    into sorted unique layer indices (ranges include both ends); an unknown
    layer is a `NagError`."""
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
            items = [i for part in text.split(",") if part.strip() for i in _layer_range(part)]
        except ValueError:
            raise NagError(
                f"unknown layer selection {layers!r}; use all, first, last, a list like 0,5,9 or a range like 0-7"
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
    return neuron_counts(features, num_layers, top_k, width).reshape(num_layers, width)


def select_slots(features: np.ndarray, num_layers: int, top_k: int, slots: int) -> np.ndarray:
    """The first `slots` ranks of each layer (the NAG at K = slots), layer-major."""
    if slots == top_k:
        return features
    cols = np.array([l * top_k + r for l in range(num_layers) for r in range(slots)], dtype=np.int64)
    return np.ascontiguousarray(np.asarray(features)[:, cols])


def resolve_slots(slots, top_k: int) -> int:
    """Ranks used per layer at query time: None means all K; more than K is an error."""
    if slots is None:
        return top_k
    slots = int(slots)
    if not 1 <= slots <= top_k:
        raise NagError(f"K={slots} at query time needs 1 <= K <= {top_k}, the K this index was built with")
    return slots


def discount_table(discount: str | None, slots: int) -> np.ndarray | None:
    """Per-slot integer multipliers: None for no discount, else round(2**20 / log2(r + 2))."""
    if discount in (None, "none"):
        return None
    if discount != "log2":
        raise NagError(f"unknown rank discount {discount!r}; use {' or '.join(DISCOUNTS)}")
    r = np.arange(slots, dtype=np.float64)
    return np.rint(DISCOUNT_ONE / np.log2(r + 2.0)).astype(np.int64)


def idf_weights(counts: np.ndarray, pool_counts: np.ndarray, *, pool_size: int, power: float) -> np.ndarray:
    """idf weights per layer (floats summing to 1 per layer, or 0).

    raw[l, j] = c[l, j]**p * ln((N + 1) / (pool[l, j] + 1)): the SPEC's target
    frequency times the smoothed inverse document frequency of the neuron in
    the pool (N documents), so neurons that fire for every document weigh ~0.
    """
    c = counts.astype(np.float64)
    idf = np.log((pool_size + 1.0) / (pool_counts.astype(np.float64) + 1.0))
    raw = np.where(c > 0, np.power(np.where(c > 0, c, 1.0), power), 0.0) * np.maximum(idf, 0.0)
    sums = raw.sum(axis=1, keepdims=True)
    return np.where(sums > 0, raw / np.where(sums > 0, sums, 1.0), 0.0)


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
    weighting: str | None = None,
    slots: int | None = None,
    discount: str | None = None,
) -> Profile:
    """The target profile of SPEC 2 as an integer weight table.

    `target_features` is (n, L*K) in the full layer layout; `layers` picks the
    layers used (SPEC 4 layer subset); `slots` the ranks used per layer (the
    NAG at a smaller K; None = all K). `weighting`: "spec" (SPEC 2, the
    default), "idf" or "contrast" (see `idf_weights`, `contrast_weights`);
    both need `pool_counts` (L, width), the number of pool documents whose
    first `slots` ranks of layer l hold neuron j, and `pool_size`.
    `contrast="pool"` is the older name of weighting "contrast".
    `discount`: "none" or "log2", the document-side rank discount.
    """
    if contrast == "none":
        contrast = None
    if contrast not in CONTRASTS:
        raise NagError(f"unknown contrast {contrast!r}; use none or pool")
    if contrast == "pool":
        if weighting not in (None, "spec", "contrast"):
            raise NagError(f"--contrast pool and the weighting {weighting} contradict each other")
        weighting = "contrast"
    weighting = weighting or "spec"
    if weighting not in WEIGHTINGS:
        raise NagError(f"unknown weighting {weighting!r}; use {', '.join(WEIGHTINGS)}")
    power = float(power)
    if not np.isfinite(power) or power < 0:
        raise NagError(f"power must be a finite number >= 0, got {power}")
    kept = resolve_layers(layers, num_layers)
    used = resolve_slots(slots, top_k)
    disc = discount_table(discount, used)
    n = int(np.asarray(target_features).shape[0])
    if n == 0:
        raise NagError("the target set is empty")
    target_features = np.asarray(target_features)
    if target_features.ndim != 2 or target_features.shape[1] != num_layers * top_k:
        raise NagError(
            f"features have shape {target_features.shape}, expected (n, {num_layers * top_k}) "
            f"for L={num_layers}, K={top_k}"
        )
    counts = layer_counts(select_slots(target_features, num_layers, top_k, used), num_layers=num_layers,
                          top_k=used, width=width)
    counts = counts[list(kept)]
    n_layers = len(kept)
    if weighting in ("idf", "contrast"):
        if pool_counts is None or pool_size is None:
            raise NagError(f"the {weighting} weighting needs the pool's neuron counts")
        pool = np.asarray(pool_counts)[list(kept)]
        if weighting == "idf":
            w = idf_weights(counts, pool, pool_size=pool_size, power=power)
        else:
            w = contrast_weights(counts, pool, num_targets=n, pool_size=pool_size, power=power)
        weights, denominator = _fixed_point(w), n_layers * FIXED_POINT_ONE
    elif power == 1.0:
        # Every layer's counts sum to n*K: the SPEC weight is c / (n*K) exactly.
        weights, denominator = counts.astype(np.int64), n_layers * n * used
    else:
        c = counts.astype(np.float64)
        # Absent neurons are outside the profile and weigh 0 (also for p = 0).
        raw = np.where(c > 0, np.power(c, power), 0.0)
        w = raw / raw.sum(axis=1, keepdims=True)
        weights, denominator = _fixed_point(w), n_layers * FIXED_POINT_ONE
    if disc is not None:
        denominator *= DISCOUNT_ONE
    return Profile(
        weights=np.ascontiguousarray(weights, dtype=np.int64),
        denominator=int(denominator),
        layers=kept,
        num_layers=num_layers,
        top_k=top_k,
        power=power,
        contrast="pool" if weighting == "contrast" else None,
        num_targets=n,
        weighting=weighting,
        slots=None if used == top_k else used,
        discount=disc,
    )


# -- kernel ------------------------------------------------------------------
# numba is imported only when its kernel runs (`kernels_numba`): finding it is free.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

# Rows per kernel call: a block of 560 uint16 columns is ~36 MB at 32k rows.
BLOCK_ROWS = 32768
# Rows per numpy step: the int64 index block (~2.3 MB) stays in cache (1.5x 4096 rows).
NUMPY_STEP_ROWS = 512
INT32_MAX = 2**31 - 1
# The numba kernel costs a fixed 0.5-1 s in a fresh process (numba's import and
# its cached machine code) and then scores ~6x as fast as the numpy kernel
# (benchmarks/bench_query.py --parts a): it pays from about this many rows on.
NUMBA_MIN_ROWS = 400_000

_numba_kernels = None


def numba_kernels():
    """The compiled kernels module (imports numba on first use)."""
    global _numba_kernels
    if _numba_kernels is None:
        from nagindex.ranking import kernels_numba

        _numba_kernels = kernels_numba
    return _numba_kernels


def choose_kernel(rows: int) -> str:
    """The kernel ("numba" or "numpy") for scoring `rows` rows (profiles x documents) here.

    NAGINDEX_KERNEL=numpy|numba forces one; otherwise numba once it is loaded
    or when the work is large enough to repay loading it."""
    forced = os.environ.get("NAGINDEX_KERNEL", "")
    if forced == "numpy" or not HAVE_NUMBA:
        return "numpy"
    if forced == "numba" or _numba_kernels is not None or rows >= NUMBA_MIN_ROWS:
        return "numba"
    return "numpy"


def _kernel_name() -> str:
    """The kernel a large scan uses (for the benchmarks' labels)."""
    return choose_kernel(NUMBA_MIN_ROWS)


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
    all_cols = len(profile.layers) == profile.num_layers and profile.used_slots == profile.top_k
    return (None if all_cols else cols), offs, np.ascontiguousarray(table)


def _numpy_gather_sum(features, cols, table, offs, out) -> None:
    idx = (features if cols is None else features[:, cols]).astype(np.int64)
    idx += offs
    np.sum(np.take(table, idx), axis=1, dtype=np.int64, out=out)


def _score_weighted(features: np.ndarray, profile: Profile, kernel: str, out: np.ndarray, source: str) -> None:
    """Scores with a per-slot multiplier (the rank discount): int64 throughout."""
    cols, offs = profile.gather_plan()
    mult = profile.slot_multipliers()
    table = np.ascontiguousarray(profile.weights.ravel(), dtype=np.int64)
    n = features.shape[0]
    if kernel == "numba" and HAVE_NUMBA:
        k = numba_kernels()
        every_column = len(cols) == features.shape[1]  # all layers, all ranks: cols is 0..m-1
        offs32 = offs.astype(np.int32)  # L*width entries: far below 2**31
        for start in range(0, n, BLOCK_ROWS):
            block = _uint16_block(features[start : start + BLOCK_ROWS], profile.width, source)
            if every_column:
                k.gather_sum_weighted_all(block, offs32, mult, table, out[start : start + BLOCK_ROWS])
            else:
                k.gather_sum_weighted(block, cols, offs, mult, table, out[start : start + BLOCK_ROWS])
        return
    for start in range(0, n, NUMPY_STEP_ROWS):
        check_neuron_ids(features[start : start + NUMPY_STEP_ROWS], profile.width, source)
        idx = features[start : start + NUMPY_STEP_ROWS][:, cols].astype(np.int64) + offs
        np.sum(np.take(table, idx) * mult, axis=1, dtype=np.int64, out=out[start : start + NUMPY_STEP_ROWS])


def _check_shape(features: np.ndarray, profile: Profile) -> np.ndarray:
    features = np.asarray(features)  # a memmap becomes a plain view, no copy
    if features.ndim != 2 or features.shape[1] != profile.num_layers * profile.top_k:
        raise NagError(
            f"features have shape {features.shape}, expected (n, "
            f"{profile.num_layers * profile.top_k})"
        )
    return features


def check_neuron_ids(block: np.ndarray, width: int, source: str = "features") -> None:
    """NagError unless every neuron id of `block` is inside the layer width: a
    damaged file must never make the kernel read outside its weight table."""
    if block.size and (not np.issubdtype(block.dtype, np.unsignedinteger) or int(block.max()) >= width):
        bad = int(block.max()) if np.issubdtype(block.dtype, np.unsignedinteger) else int(block.min())
        raise NagError(
            f"{source} holds neuron id {bad}, outside the layer width 0..{width - 1}: the file is damaged "
            "(run `nag index check` on the index, then restore or rebuild it)"
        )


def _source(features) -> str:
    """The file a memory-mapped feature matrix comes from, for error messages."""
    return getattr(features, "filename", None) or "features"


def _uint16_block(block: np.ndarray, width: int, source: str) -> np.ndarray:
    """A block the compiled kernels can take: uint16, C-contiguous, every id checked
    (they index their weight table without bounds checks)."""
    if block.dtype != np.uint16 or not block.flags.c_contiguous:
        block = np.ascontiguousarray(block, dtype=np.uint16)
    if block.size and numba_kernels().max_neuron_id(block) >= width:
        check_neuron_ids(block, width, source)  # raises, naming the id
    return block


def score_features(features: np.ndarray, profile: Profile, *, kernel: str | None = None) -> np.ndarray:
    """Integer scores of documents: sum of profile weights over their NAG.

    `features` is (n, L*K) uint16 in the full layer layout (a memmap is fine:
    it is read block by block). Returns int64 scores; divide by
    `profile.denominator` for the similarity. `kernel` None picks one by size
    (`choose_kernel`); both give the same integers.
    """
    source = _source(features)
    features = _check_shape(features, profile)
    n = features.shape[0]
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    kernel = kernel or choose_kernel(n)
    if profile.discount is not None:
        _score_weighted(features, profile, kernel, out, source)
        return out
    cols, offs, table = kernel_tables(profile)
    if kernel == "numba" and HAVE_NUMBA:
        k = numba_kernels()
        for start in range(0, n, BLOCK_ROWS):
            block = _uint16_block(features[start : start + BLOCK_ROWS], profile.width, source)
            if cols is None:
                k.gather_sum_all(block, offs, table, table.dtype.type(0), out[start : start + BLOCK_ROWS])
            else:
                k.gather_sum_cols(block, cols, offs, table, table.dtype.type(0), out[start : start + BLOCK_ROWS])
    else:
        offs64 = offs.astype(np.int64)
        for start in range(0, n, NUMPY_STEP_ROWS):
            check_neuron_ids(features[start : start + NUMPY_STEP_ROWS], profile.width, source)
            _numpy_gather_sum(features[start : start + NUMPY_STEP_ROWS], cols, table, offs64,
                              out[start : start + NUMPY_STEP_ROWS])
    return out


def score_features_many(features: np.ndarray, profiles, *, kernel: str | None = None) -> np.ndarray:
    """(len(profiles), n) int64 scores, each row equal to `score_features` of that
    profile; profiles over the same layers share one read of every feature row."""
    profiles = list(profiles)
    if not profiles:
        return np.zeros((0, len(features)), dtype=np.int64)
    source, raw = _source(features), features
    features = _check_shape(features, profiles[0])
    n = features.shape[0]
    kernel = kernel or choose_kernel(n * len(profiles))
    plans = [kernel_tables(p) for p in profiles]
    shared = all(
        c is None and p.discount is None and t.dtype == plans[0][2].dtype and p.num_layers == profiles[0].num_layers
        and p.top_k == profiles[0].top_k and p.width == profiles[0].width
        for p, (c, _, t) in zip(profiles, plans)
    )
    if len(profiles) == 1 or not shared:
        return np.stack([score_features(raw, p, kernel=kernel) for p in profiles])
    offs = plans[0][1]
    tables = np.ascontiguousarray(np.stack([t for _, _, t in plans]))
    out = np.empty((len(profiles), n), dtype=np.int64)
    if kernel == "numba" and HAVE_NUMBA:
        k = numba_kernels()
        by_entry = np.ascontiguousarray(tables.T)  # (L*width, P): one cache line per lookup for all P
        for start in range(0, n, BLOCK_ROWS):
            block = _uint16_block(features[start : start + BLOCK_ROWS], profiles[0].width, source)
            k.gather_sum_many(block, offs, by_entry, tables.dtype.type(0), out[:, start : start + BLOCK_ROWS])
    else:
        offs64 = offs.astype(np.int64)
        for start in range(0, n, NUMPY_STEP_ROWS):
            check_neuron_ids(features[start : start + NUMPY_STEP_ROWS], profiles[0].width, source)
            idx = features[start : start + NUMPY_STEP_ROWS].astype(np.int64)
            idx += offs64
            for j in range(len(profiles)):
                np.sum(np.take(tables[j], idx), axis=1, dtype=np.int64, out=out[j, start : start + NUMPY_STEP_ROWS])
    return out


def nag_distance(scores: np.ndarray, profile: Profile) -> np.ndarray:
    """SPEC 3 distance, 1 - similarity, as float64."""
    return 1.0 - profile.similarity(scores)
