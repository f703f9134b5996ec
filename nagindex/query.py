"""`Index.query`: rank an indexed pool against target sets (SPEC sections 2-4).

Two ways to get the same answer:

- the scan: stream the forward-index matrices in row blocks and score every
  row with the gather-sum kernel (`scoring.score_features`); memory is the
  block plus the score, token and row arrays.
- the inverted lists: add profile weights term by term (heaviest neuron
  first) over the FAISS posting lists, keep an upper bound on what the
  unread lists can still add, and stop as soon as the bound proves which rows
  can possibly be in the answer; those candidates are rescored exactly from
  the forward matrices. When the bound cannot prove it within a cost cap, the
  query falls back to the scan, so the answer is always the scan's.

A planner picks the path per target; `explain` says which and why.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import scoring, selection
from .errors import NagError
from .schemas import DATASET, DEFAULT_NEURON_TYPE, DOCID, TEXT, TOKEN_NUM, feature_column

DEFAULT_FRACTION = 0.2
PLANS = ("auto", "scan", "inverted")

# Planner thresholds (see `choose_plan`): the inverted lists only pay off
# when the answer is a small share of a large pool.
INVERTED_MIN_ROWS = 50_000
INVERTED_MAX_SHARE = 0.01
# The inverted path gives up (and scans) after reading this share of the
# pool's postings, or when more than this share of rows stay candidates.
INVERTED_MAX_POSTINGS_SHARE = 0.5
# The auto planner's try is cheaper to abandon: reading 5% of the postings
# costs about a fifth of a scan, the most a failed try adds.
INVERTED_AUTO_MAX_POSTINGS_SHARE = 0.05
INVERTED_MAX_CANDIDATE_SHARE = 0.1
# ... but never insist on fewer candidates than this (rescoring them is cheap).
INVERTED_MIN_CANDIDATES = 1024

SCAN_BLOCK_ROWS = 65536


# ---------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------
@dataclass
class Target:
    """One target set: its name (shown in the `target` column) and its NAG
    features for the queried neuron type, (n, L*K) uint16."""

    name: str
    features: np.ndarray


def _expand(pattern: str | os.PathLike) -> list[Path]:
    text = str(pattern)
    if any(ch in text for ch in "*?["):
        found = sorted(glob.glob(text))
        if not found:
            raise NagError(f"no file matches {text}")
        return [Path(p) for p in found]
    path = Path(text)
    if not path.exists():
        raise NagError(f"target file not found: {path}")
    return [path]


def _filter_rows(table: pa.Table, value: str | None, column: str, source: str) -> pa.Table:
    if value is None:
        return table
    if column not in table.column_names:
        raise NagError(f"{source} has no column {column!r} to filter the target on")
    col = table.column(column).cast(pa.string())
    mask = pc.equal(col, pa.scalar(str(value)))
    return table.filter(pc.fill_null(mask, False))


def load_text_target(index, source, *, neuron_type: str, target_filter=None, target_filter_col=DATASET,
                     fmt: str = "auto", batch_size: int = 32, progress: bool = False) -> Target:
    """Read raw target documents and extract their NAG with the index's own
    backbone and settings (K, max_length)."""
    from .extraction import extract_texts
    from .io import read_documents

    paths = _expand(source) if not isinstance(source, (list, tuple)) else [p for s in source for p in _expand(s)]
    name = str(source) if not isinstance(source, (list, tuple)) else ",".join(map(str, source))
    docs = _filter_rows(read_documents(paths, fmt), target_filter, target_filter_col, name)
    if docs.num_rows == 0:
        raise NagError(f"the target {name} is empty" + (" after filtering" if target_filter is not None else ""))
    spec = index.spec
    feats = extract_texts(
        index.backbone(),
        docs.column(TEXT).to_pylist(),
        neuron_types=(neuron_type,),
        top_k=spec.top_k,
        max_length=spec.max_length,
        batch_size=batch_size,
        progress=progress,
    )
    return Target(name, feats[neuron_type])


def load_feature_target(index, source, *, neuron_type: str, target_filter=None,
                        target_filter_col=DATASET) -> Target:
    """Read precomputed target features (nagindex parquet or upstream JSONL)
    after checking they were made like the index's."""
    from .io import features_from_table, read_feature_files

    paths = _expand(source) if not isinstance(source, (list, tuple)) else [p for s in source for p in _expand(s)]
    name = str(source) if not isinstance(source, (list, tuple)) else ",".join(map(str, source))
    table, spec = read_feature_files(paths)
    if spec is not None:
        index.spec.check_compatible(spec, what=f"the target features {name}")
    col = feature_column(neuron_type)
    if col not in table.column_names:
        raise NagError(f"the target features {name} have no {col} column")
    table = _filter_rows(table, target_filter, target_filter_col, name)
    if table.num_rows == 0:
        raise NagError(f"the target {name} is empty" + (" after filtering" if target_filter is not None else ""))
    feats = features_from_table(table.select([col]), [neuron_type])[neuron_type]
    expected = index.spec.feature_length
    if feats.shape[1] != expected:
        raise NagError(
            f"the target features {name} have {feats.shape[1]} entries per document, this index "
            f"has L*K = {index.spec.num_layers}*{index.spec.top_k} = {expected}"
        )
    return Target(name, feats)


def as_target(index, item, i: int, neuron_type: str) -> Target:
    """Python API convenience: a `Target`, or an (n, L*K) array of features."""
    if isinstance(item, Target):
        return item
    arr = np.asarray(item)
    if arr.ndim != 2 or arr.shape[1] != index.spec.feature_length:
        raise NagError(f"target {i}: features of shape {arr.shape}, expected (n, {index.spec.feature_length})")
    return Target(f"target{i}", arr.astype(np.uint16, copy=False))


# ---------------------------------------------------------------------------
# Pool statistics and the scan
# ---------------------------------------------------------------------------
def live_rows(index) -> np.ndarray:
    mask = index.live_mask()
    if mask is None:
        return np.arange(index.num_rows, dtype=np.int64)
    return np.flatnonzero(mask).astype(np.int64)


def pool_neuron_counts(index, neuron_type: str, live: np.ndarray) -> np.ndarray:
    """(L, width) number of live documents whose NAG holds each neuron: the
    posting-list sizes, less the replaced rows' entries (so the answer does
    not change when `compact` drops them)."""
    spec = index.spec
    width = spec.width(neuron_type)
    inv = index.postings(neuron_type)
    sizes = np.array([inv.list_size(i) for i in range(spec.num_layers * width)], dtype=np.int64)
    if len(live) < index.num_rows:
        dead = np.setdiff1d(np.arange(index.num_rows, dtype=np.int64), live)
        sizes -= scoring.layer_counts(
            read_rows(index, neuron_type, dead), num_layers=spec.num_layers, top_k=spec.top_k, width=width
        ).ravel()
    return sizes.reshape(spec.num_layers, width)


def read_rows(index, neuron_type: str, rows: np.ndarray) -> np.ndarray:
    """Feature rows at sorted global `rows`, gathered from the segments."""
    from .segment import gather_rows

    return gather_rows(index.feature_segments(neuron_type), rows, index.spec.feature_length)


def scan_scores(index, profiles: Sequence[scoring.Profile], neuron_type: str, *, progress: bool = False) -> np.ndarray:
    """(len(profiles), num_rows) int64 scores of every row, one pass over the
    forward matrices (each block is read once for all profiles)."""
    from tqdm.auto import tqdm

    scores = np.zeros((len(profiles), index.num_rows), dtype=np.int64)
    bar = tqdm(total=index.num_rows, unit="doc", desc="scan", disable=not progress, dynamic_ncols=True)
    for first, matrix in index.feature_segments(neuron_type):
        for start, block in iter_blocks(matrix, SCAN_BLOCK_ROWS):
            lo = first + start
            for i, profile in enumerate(profiles):
                scores[i, lo : lo + len(block)] = scoring.score_features(block, profile)
            bar.update(len(block))
    bar.close()
    return scores


def _whole_file_map(matrix) -> str | None:
    """The file behind `matrix` when it maps a whole file from offset 0."""
    if not isinstance(matrix, np.memmap) or not getattr(matrix, "filename", None):
        return None
    if matrix.offset != 0 or not matrix.flags.c_contiguous:
        return None
    try:
        if os.path.getsize(matrix.filename) != matrix.nbytes:
            return None
    except OSError:
        return None
    return matrix.filename


def iter_blocks(matrix: np.ndarray, block_rows: int):
    """(first row, block) over a feature matrix, without holding the pool in
    this process's resident memory: a memory-mapped file is scanned in place
    and each block's pages are handed back (MADV_DONTNEED, they stay in the
    OS page cache) once it is scored, or, where that is not possible, read
    into one reused buffer. Peak RSS does not grow with the pool."""
    n = len(matrix)
    mm = getattr(matrix, "_mmap", None)
    if _whole_file_map(matrix) is not None and mm is not None and hasattr(mm, "madvise"):
        import mmap

        row_bytes = matrix.shape[1] * matrix.itemsize
        page = mmap.PAGESIZE
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            yield start, matrix[start:stop]
            lo = (start * row_bytes) // page * page
            hi = stop * row_bytes
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass
        return
    path = _whole_file_map(matrix)
    if path is None:
        for start in range(0, n, block_rows):
            yield start, np.ascontiguousarray(matrix[start : start + block_rows])
        return
    row_bytes = matrix.shape[1] * matrix.itemsize
    buf = np.empty((min(block_rows, n), matrix.shape[1]), dtype=matrix.dtype)
    with open(path, "rb", buffering=0) as f:
        for start in range(0, n, block_rows):
            rows = min(block_rows, n - start)
            view = buf[:rows]
            f.seek(start * row_bytes)
            got = f.readinto(memoryview(view).cast("B"))
            if got != rows * row_bytes:
                raise NagError(f"{path} is shorter than the index says (truncated?)")
            yield start, view


# ---------------------------------------------------------------------------
# The inverted-list path
# ---------------------------------------------------------------------------
@dataclass
class InvertedResult:
    rows: np.ndarray  # candidate global rows (sorted), a superset of the answer
    scores: np.ndarray  # their exact scores
    stats: dict


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
) -> InvertedResult | None:
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
    from .postings import list_ids  # faiss loads only when the lists are used

    spec = index.spec
    width = profile.width
    k = profile.top_k
    n_live = len(live)
    if n_live == 0:
        return InvertedResult(live, np.zeros(0, np.int64), {"rounds": 0})
    inv = index.postings(neuron_type)
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
            ids = list_ids(inv, int(list_no[t]))
            if len(ids) > 1 and bool(np.any(ids[1:] <= ids[:-1])):
                # a row listed twice (a NAG naming one neuron twice in a layer)
                # or unsorted lists: the bound assumes neither, so scan instead
                return None
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
    return InvertedResult(cand, exact, stats)


def inverted_looks_hopeless(index, profile: scoring.Profile, neuron_type: str, live: np.ndarray, *,
                            share: float, max_postings_share: float, sample_rows: int = 4096) -> tuple[bool, str]:
    """A cheap look before trying the lists (planning only; exactness never
    depends on it): the bound R after reading as many of the heaviest lists
    as the cap allows is known from the list sizes alone, and a random sample
    of rows scored exactly estimates the cut score theta generously (the
    sample maximum for tiny answers). If R stays above that, the try can only
    fail, so scan at once."""
    inv = index.postings(neuron_type)
    width, k = profile.width, profile.top_k
    weights = profile.weights
    pos, neuron = np.nonzero(weights > 0)
    w = weights[pos, neuron]
    order = np.lexsort((neuron, pos, -w))
    pos, neuron = pos[order], neuron[order]
    list_no = np.asarray(profile.layers, dtype=np.int64)[pos] * width + neuron
    sizes = np.fromiter((inv.list_size(int(x)) for x in list_no), dtype=np.int64, count=len(list_no))
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


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------
@dataclass
class Plan:
    target: str
    path: str  # "scan" or "inverted"
    reason: str
    stats: dict = field(default_factory=dict)

    def describe(self) -> str:
        extra = ""
        if self.stats:
            extra = " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in self.stats.items()) + ")"
        return f"{self.target}: {self.path} - {self.reason}{extra}"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def choose_plan(plan: str, *, num_rows: int, n_live: int, top: int | None, fraction: float | None,
                quality: bool) -> tuple[str, str]:
    """(path, reason). The inverted lists pay off only for answers that are a
    small share of a large pool; everything else scans."""
    if plan == "scan":
        return "scan", "asked for (--plan scan)"
    if quality:
        return "scan", "the quality combination normalises over every row's distance"
    if plan == "inverted":
        return "inverted", "asked for (--plan inverted); falls back to a scan if the bound cannot prove the answer"
    if num_rows < INVERTED_MIN_ROWS:
        return "scan", f"small pool ({num_rows} rows < {INVERTED_MIN_ROWS}): one scan is cheapest"
    share = (top / max(n_live, 1)) if top is not None else fraction
    if share <= INVERTED_MAX_SHARE:
        what = f"--top {top}" if top is not None else f"fraction {fraction:g}"
        return "inverted", f"{what} is a small share of {n_live} rows: the heaviest lists can bound it"
    return "scan", f"the answer is {share:.1%} of the pool: scanning every row is cheaper than the lists"


# ---------------------------------------------------------------------------
# The query
# ---------------------------------------------------------------------------
@dataclass
class QueryResult:
    table: pa.Table  # selected rows in rank order
    summary: dict
    plans: list[Plan]

    def explain(self) -> str:
        return "\n".join(p.describe() for p in self.plans)


def _split_top(top: int, m: int) -> list[int]:
    base, extra = divmod(int(top), m)
    return [base + (1 if i < extra else 0) for i in range(m)]


def _check_quality_column(index, column: str) -> None:
    columns = index.columns()
    if column not in columns:
        raise NagError(f"quality column {column!r} is not in this index (it has {', '.join(columns)})")
    typ = index.take(np.zeros(0, dtype=np.int64), [column]).schema.field(column).type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)):
        raise NagError(f"quality column {column!r} is not numeric (it is {typ})")


def _quality_values(index, rows: np.ndarray, column: str) -> np.ndarray:
    col = index.take(rows, [column]).column(column)
    values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def run_query(
    index,
    targets: Sequence[Any] = (),
    *,
    target_features: Sequence[Any] | None = None,
    target_filter: str | None = None,
    target_filter_col: str = DATASET,
    fraction: float | None = None,
    top: int | None = None,
    power: float = 1.0,
    layers="all",
    neuron_type: str = DEFAULT_NEURON_TYPE,
    dedupe: bool = False,
    quality_col: str | None = None,
    invert_quality: bool = False,
    with_text: bool = False,
    contrast: str | None = None,
    plan: str = "auto",
    engine: str = "local",
    fmt: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> QueryResult:
    """Select from the index's pool for each target (SPEC 3) and mix them (SPEC 4).

    `targets`: raw text files (one target per item; a glob or list of shards
    is one target), `Target` objects or (n, L*K) feature arrays.
    `target_features`: precomputed feature files, one target per item.
    Selection is by token budget (`fraction`, default 0.2) or the best `top`
    rows; with M targets each gets fraction/M (or top/M, remainders to the
    first targets).
    """
    spec = index.spec
    # -- validate everything cheap before any extraction ---------------------
    if top is not None and fraction is not None:
        raise NagError("give either --fraction or --top, not both")
    if top is not None:
        if int(top) < 1:
            raise NagError(f"--top must be at least 1, got {top}")
        top = int(top)
    else:
        fraction = selection.check_fraction(DEFAULT_FRACTION if fraction is None else fraction)
    width = spec.width(neuron_type)
    kept_layers = scoring.resolve_layers(layers, spec.num_layers)
    if contrast not in scoring.CONTRASTS:
        raise NagError(f"unknown contrast {contrast!r}; use none or pool")
    if plan not in PLANS:
        raise NagError(f"unknown plan {plan!r}; use {', '.join(PLANS)}")
    if engine not in ("local", "ray"):
        raise NagError(f"unknown engine {engine!r}; use local or ray")
    if quality_col is not None:
        _check_quality_column(index, quality_col)
    if isinstance(targets, (np.ndarray, Target, str, os.PathLike)):
        targets = [targets]  # one target given bare
    if isinstance(target_features, (str, os.PathLike)):
        target_features = [target_features]
    items = list(targets if targets is not None else []) + [("features", f) for f in (target_features or [])]
    if not items:
        raise NagError("no target given")

    # -- targets and profiles --------------------------------------------------
    loaded: list[Target] = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "features":
            loaded.append(load_feature_target(index, item[1], neuron_type=neuron_type,
                                              target_filter=target_filter, target_filter_col=target_filter_col))
        elif isinstance(item, (str, os.PathLike)) or (isinstance(item, list) and item and isinstance(item[0], (str, os.PathLike))):
            loaded.append(load_text_target(index, item, neuron_type=neuron_type, target_filter=target_filter,
                                           target_filter_col=target_filter_col, fmt=fmt,
                                           batch_size=batch_size, progress=progress))
        else:
            loaded.append(as_target(index, item, i, neuron_type))
    live = live_rows(index)
    pool_counts = pool_neuron_counts(index, neuron_type, live) if contrast == "pool" else None
    profiles = [
        scoring.build_profile(t.features, num_layers=spec.num_layers, top_k=spec.top_k, width=width,
                              power=power, layers=kept_layers, pool_counts=pool_counts,
                              pool_size=len(live), contrast=contrast)
        for t in loaded
    ]
    m = len(profiles)
    tops = _split_top(top, m) if top is not None else [None] * m
    fractions = [None] * m if top is not None else [fraction / m] * m

    # -- plan and score ----------------------------------------------------------
    tokens = np.asarray(index.token_num(), dtype=np.int64)
    docids = index.docids()
    live_tokens = int(tokens[live].sum())
    plans: list[Plan] = []
    inverted: dict[int, InvertedResult] = {}
    if engine == "ray":
        # the cluster scores every block and keeps a proven superset of each
        # answer; the selection below (tie-break, cut) is the local one
        from .engines import ray_engine

        keep_all = quality_col is not None
        budgets = [None if keep_all or tops[i] is not None else selection.token_budget(live_tokens, fractions[i])
                   for i in range(m)]
        found = ray_engine.scan_candidates(index, profiles, neuron_type,
                                           tops=[None if keep_all else x for x in tops], budgets=budgets)
        for i, (t, c) in enumerate(zip(loaded, found)):
            inverted[i] = InvertedResult(c.rows, c.scores, c.stats)
            plans.append(Plan(t.name, "ray", "distributed scan (--engine ray)", c.stats))
    for i, t in enumerate(loaded if engine == "local" else []):
        path, reason = choose_plan(plan, num_rows=index.num_rows, n_live=len(live), top=tops[i],
                                   fraction=fractions[i], quality=quality_col is not None)
        stats: dict = {}
        if path == "inverted" and plan == "auto":
            share = (tops[i] / max(len(live), 1)) if tops[i] is not None else fractions[i]
            hopeless, why = inverted_looks_hopeless(index, profiles[i], neuron_type, live, share=share,
                                                    max_postings_share=INVERTED_AUTO_MAX_POSTINGS_SHARE)
            if hopeless:
                path, reason = "scan", why
        if path == "inverted":
            budget = None if tops[i] is not None else selection.token_budget(live_tokens, fractions[i])
            cap = INVERTED_AUTO_MAX_POSTINGS_SHARE if plan == "auto" else INVERTED_MAX_POSTINGS_SHARE
            res = inverted_candidates(index, profiles[i], neuron_type, live, tokens, top=tops[i], budget=budget,
                                      max_postings_share=cap)
            if res is None:
                path, reason = "scan", reason + "; the bound could not prove the answer cheaply, fell back to a scan"
            else:
                inverted[i] = res
                stats = res.stats
        plans.append(Plan(t.name, path, reason, stats))
    to_scan = [i for i in range(m) if i not in inverted]
    scanned = scan_scores(index, [profiles[i] for i in to_scan], neuron_type, progress=progress) if to_scan else None

    # -- select per target ---------------------------------------------------------
    selections, distances, combined_all = [], [], []
    missing_quality = 0
    for i in range(m):
        profile = profiles[i]
        if i in inverted:
            rows, scores = inverted[i].rows, inverted[i].scores
        else:
            rows, scores = live, scanned[to_scan.index(i)][live]
        combined = None
        keys = -scores
        total = live_tokens
        if quality_col is not None:
            q = quality_combination_for(index, rows, scores, profile, quality_col, invert_quality)
            missing_quality = q.missing
            rows, scores, combined = rows[q.kept], scores[q.kept], q.combined
            keys = combined
            total = int(tokens[rows].sum())
        # every row live and in order: no need to copy the docids
        all_rows = len(rows) == len(docids) and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(rows) - 1))
        ids = docids if all_rows else docids.take(pa.array(rows))
        if tops[i] is not None:
            picked = selection.top_selection(keys, ids, tops[i])
        else:
            picked = selection.budget_selection(keys, tokens[rows], ids, fractions[i], total_tokens=total)
        selections.append(rows[picked])
        distances.append(scoring.nag_distance(scores[picked], profile))
        combined_all.append(combined[picked] if combined is not None else None)
    sel_rows, which = selection.mixture(selections, docids, dedupe=dedupe)
    # positions of kept rows inside the concatenation (mixture keeps first occurrences in order)
    concat_dist = np.concatenate(distances) if distances else np.zeros(0)
    concat_comb = np.concatenate(combined_all) if quality_col is not None and combined_all else None
    if dedupe:
        keep = _kept_positions(selections, docids)
        concat_dist = concat_dist[keep]
        concat_comb = concat_comb[keep] if concat_comb is not None else None

    table = _output_table(index, sel_rows, concat_dist, concat_comb,
                          [loaded[w].name for w in which] if m > 1 else None, tokens, with_text)
    summary = _summary(table, live, live_tokens, plans, missing_quality, loaded)
    return QueryResult(table, summary, plans)


def quality_combination_for(index, rows, scores, profile, column, invert) -> selection.QualityCombination:
    quality = _quality_values(index, rows, column)
    # min-max of the integer score is the min-max of the distance, computed exactly
    return selection.quality_combination(-scores.astype(np.float64), quality, invert)


def _kept_positions(selections, docids) -> np.ndarray:
    rows = np.concatenate([np.asarray(s, dtype=np.int64) for s in selections])
    ids = np.asarray(docids.take(pa.array(rows)).to_numpy(zero_copy_only=False), dtype=object)
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)


def _output_table(index, rows, distance, combined, target_names, tokens, with_text) -> pa.Table:
    hidden = {DOCID, TOKEN_NUM, "_row"} | {feature_column(t) for t in index.spec.neuron_types}
    if not with_text:
        hidden.add(TEXT)
    payload_cols = [c for c in index.columns() if c not in hidden]
    payload = index.take(rows, payload_cols)
    cols: dict[str, pa.Array] = {
        DOCID: index.docids().take(pa.array(rows, type=pa.int64())),
        TOKEN_NUM: pa.array(tokens[rows], type=pa.int64()),
        DATASET: payload.column(DATASET) if DATASET in payload.column_names else pa.nulls(len(rows), pa.string()),
        "nag_distance": pa.array(distance, type=pa.float64()),
    }
    if combined is not None:
        cols["combined_score"] = pa.array(combined, type=pa.float64())
    if target_names is not None:
        cols["target"] = pa.array(target_names, type=pa.string())
    for c in payload.column_names:
        if c not in cols:
            cols[c] = payload.column(c)
    return pa.table(cols)


def _summary(table: pa.Table, live, live_tokens, plans, missing_quality, targets) -> dict:
    dist = table.column("nag_distance").to_numpy() if table.num_rows else np.zeros(0)
    counts: dict[str, int] = {}
    for item in pc.value_counts(table.column(DATASET).cast(pa.string())).to_pylist():
        key = "(none)" if item["values"] is None else str(item["values"])
        counts[key] = counts.get(key, 0) + int(item["counts"])
    tokens = int(np.asarray(table.column(TOKEN_NUM).to_numpy()).sum()) if table.num_rows else 0
    return {
        "selected_docs": table.num_rows,
        "selected_tokens": tokens,
        "pool_docs": int(len(live)),
        "pool_tokens": int(live_tokens),
        "distance_min": float(dist.min()) if len(dist) else None,
        "distance_max": float(dist.max()) if len(dist) else None,
        "datasets": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "targets": {t.name: int(len(t.features)) for t in targets},
        "missing_quality": int(missing_quality),
        "plans": [p.describe() for p in plans],
    }
