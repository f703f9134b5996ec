"""Exact ranking and selection (SPEC sections 3-4), pure numpy / pyarrow.

Every ordering here is by a key ascending (the negated integer score, or the
quality-combined score) and then by docid ascending, compared as UTF-8 bytes,
which is the same order as Python's ``str`` comparison. Functions return row
positions into the arrays they were given; the caller maps them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nagindex.errors import NagError


def _as_arrow(docids) -> pa.Array:
    if isinstance(docids, pa.ChunkedArray):
        return docids.combine_chunks()
    if isinstance(docids, pa.Array):
        return docids
    return pa.array(np.asarray(docids, dtype=object), type=pa.string())


def exact_order(keys: np.ndarray, docids) -> np.ndarray:
    """Positions sorted by (key ascending, docid ascending)."""
    keys = np.asarray(keys)
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    table = pa.table({"k": keys, "d": _as_arrow(docids)})
    return pc.sort_indices(table, sort_keys=[("k", "ascending"), ("d", "ascending")]).to_numpy().astype(np.int64)


def rank_order(scores: np.ndarray, docids) -> np.ndarray:
    """Positions by (score descending = distance ascending, docid ascending)."""
    return exact_order(-np.asarray(scores, dtype=np.int64), docids)


def check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise NagError.for_param("fraction", f"must be in (0, 1], got {fraction}")
    return fraction


def token_budget(total_tokens: int, fraction: float) -> int:
    """floor(T * fraction), SPEC 3."""
    return int(math.floor(int(total_tokens) * check_fraction(fraction)))


def select_budget(ordered_token_num: np.ndarray, fraction: float, total_tokens: int | None = None) -> int:
    """How many leading rows of an already ranked pool the budget keeps.

    The longest prefix whose cumulative token_num is <= floor(T * fraction),
    T the pool's total (default: the sum of `ordered_token_num`); if that
    prefix is empty, the first row is kept anyway (SPEC 3).
    """
    tokens = np.asarray(ordered_token_num, dtype=np.int64)
    if tokens.size == 0:
        return 0
    total = int(tokens.sum()) if total_tokens is None else int(total_tokens)
    budget = token_budget(total, fraction)
    kept = int(np.searchsorted(np.cumsum(tokens), budget, side="right"))
    return max(kept, 1)


def select_top(n_rows: int, top: int) -> int:
    """How many leading rows `--top N` keeps."""
    if int(top) < 1:
        raise NagError(f"--top must be at least 1, got {top}")
    return min(int(top), int(n_rows))


def docid_reader(docids):
    """positions -> their docids (a pyarrow array), from `docids` given as an
    array (numpy, pyarrow, list) or as such a function already, so that the
    selections below read only the docids of the rows whose order they decide."""
    if callable(docids):
        return docids
    arrow = _as_arrow(docids)
    return lambda positions: arrow.take(pa.array(np.asarray(positions, dtype=np.int64)))


# rows whose docids one step of `_order_prefix` reads at a time
ORDER_CHUNK_ROWS = 65_536


def _order_prefix(sorted_keys: np.ndarray, docids, end: int, coarse: np.ndarray) -> np.ndarray:
    """Exact order of the first `end` positions of `coarse` (a stable sort by
    key alone, `sorted_keys` the keys in that order), where `end` is a
    tie-group boundary: chunk by chunk, each through the end of its last tie
    group, so that only one chunk's docids are read at a time, and none for a
    chunk without ties. Reorders `coarse[:end]` in place and returns it."""
    docids_of = docid_reader(docids)
    order = coarse[:end]
    start = 0
    while start < end:
        stop = min(start + ORDER_CHUNK_ROWS, end)
        if stop < end:
            stop = int(np.searchsorted(sorted_keys[:end], sorted_keys[stop - 1], side="right"))
        part = order[start:stop]
        chunk_keys = sorted_keys[start:stop]
        if len(part) > 1 and bool(np.any(chunk_keys[1:] == chunk_keys[:-1])):
            order[start:stop] = part[exact_order(chunk_keys, docids_of(part))]
        start = stop
    return order


def budget_selection(
    keys: np.ndarray, token_num: np.ndarray, docids, fraction: float, total_tokens: int | None = None
) -> np.ndarray:
    """Rows kept by the token budget, in rank order (key asc, docid asc).

    Only the tie groups up to the cut are sorted by docid: the groups before
    it fit whole whatever their inner order (token counts are >= 0), and the
    ones after it are out whatever their inner order. `docids` may be a
    function of positions (`docid_reader`): only those rows' docids are read.
    """
    keys = np.asarray(keys)
    tokens = np.asarray(token_num, dtype=np.int64)
    n = keys.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    total = int(tokens.sum()) if total_tokens is None else int(total_tokens)
    budget = token_budget(total, fraction)
    lead = _leading_rows(keys, tokens, budget)
    if lead is not None and len(lead) < n // 2:  # else its copies would cost more than they save
        docids_of = docid_reader(docids)
        return lead[budget_selection(keys[lead], tokens[lead], lambda pos: docids_of(lead[pos]), fraction,
                                     total_tokens=total)]
    coarse = np.argsort(keys, kind="stable")
    sorted_keys = keys[coarse]
    cut = int(np.searchsorted(np.cumsum(tokens[coarse]), budget, side="right"))
    end = n if cut >= n else int(np.searchsorted(sorted_keys, sorted_keys[cut], side="right"))
    exact = _order_prefix(sorted_keys, docids, end, coarse)
    del sorted_keys
    kept = int(np.searchsorted(np.cumsum(tokens[exact]), budget, side="right"))
    return exact[: max(kept, 1)].copy()  # not a view that keeps all of `coarse`


def _leading_rows(keys: np.ndarray, tokens: np.ndarray, budget: int) -> np.ndarray | None:
    """For integer keys: the rows whose key is at most the end of the key bin
    in which the token budget runs out (a counting pass, no sort), so only
    those need sorting. Rows past that bin cannot be kept: the rows before
    them already hold more tokens than the budget. None when no bin runs it out.
    Bins as `_bin_shift` says."""
    if keys.dtype.kind not in "iu" or keys.size < 4096:
        return None
    lo, hi = int(keys.min()), int(keys.max())
    shift = _bin_shift(hi - lo, keys.size)
    bins = keys - lo
    bins >>= shift
    mass = np.bincount(bins, weights=tokens, minlength=((hi - lo) >> shift) + 1)
    del bins
    cut = _first_bin_past(mass, budget=budget)
    if cut is None:
        return None
    return np.flatnonzero(keys <= lo + ((cut + 1) << shift) - 1)


def _bin_shift(span: int, rows: int) -> int:
    """log2 of the width of the histogram bins over a key span: at most one bin per 16
    rows, so the histogram stays small (n/2 bytes) whatever the range of the scores."""
    return max(0, (span // max(rows // 16, 1)).bit_length())


def _first_bin_past(mass: np.ndarray, *, budget: int | None = None, top: int | None = None) -> int | None:
    """The first bin (best first) at which the running mass exceeds the token `budget`
    (or reaches `top` rows), or None when it never does."""
    # float64 sums of integer token counts are exact below 2**53
    cum = np.cumsum(mass)
    past = np.flatnonzero(cum > budget) if budget is not None else np.flatnonzero(cum >= top)
    return int(past[0]) if len(past) else None


def pool_leading_rows(scores: np.ndarray, token_blocks, *, live: np.ndarray | None = None,
                      budget: int | None = None, top: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows ascending, their scores, their token counts): the live rows of a
    whole pool that can be in its selection, read in blocks with no copy of the pool.

    `scores` (num_rows,) integers, higher is better; `token_blocks()` yields
    (first row, int64 token counts) over rows 0..num_rows-1 in order; `live`
    a bool mask (None: every row). The rows kept are those scored at or above
    the score bin in which the token `budget` (or the `top` N rows) runs out:
    every row ranked ahead of a row past that bin is inside it, and the bins
    up to it already hold more than the budget (at least N rows), so no row
    past it is selected; a tie group never spans two bins. Bins are 2**shift
    scores wide, at most one per 16 live rows: memory is the candidates plus
    a histogram of n/2 bytes. Neither `budget` nor `top`: every live row.
    """
    scores = np.asarray(scores)
    if scores.dtype.kind not in "iu":
        raise TypeError("pool_leading_rows needs integer scores")
    n_live = len(scores) if live is None else int(np.count_nonzero(live))
    threshold = None
    if n_live and (budget is not None or top is not None):
        lo, hi = _live_range(scores, live)
        shift = _bin_shift(hi - lo, n_live)
        mass = np.zeros(((hi - lo) >> shift) + 1, dtype=np.float64)
        for first, tokens in token_blocks():
            bins = hi - scores[first : first + len(tokens)].astype(np.int64)
            bins >>= shift  # bin 0 holds the best scores
            weights = np.ones(len(tokens)) if budget is None else tokens
            if live is not None:
                keep = live[first : first + len(tokens)]
                bins, weights = bins[keep], weights[keep]
            mass += np.bincount(bins, weights=weights, minlength=len(mass))
        cut = _first_bin_past(mass, budget=budget, top=top)
        if cut is not None:
            threshold = hi - (((cut + 1) << shift) - 1)
    rows, kept_scores, kept_tokens = [], [], []
    for first, tokens in token_blocks():
        block = scores[first : first + len(tokens)]
        keep = np.ones(len(tokens), dtype=bool) if threshold is None else block >= threshold
        if live is not None:
            keep &= live[first : first + len(tokens)]
        at = np.flatnonzero(keep)
        rows.append(at + first)
        kept_scores.append(block[at])
        kept_tokens.append(np.asarray(tokens[at], dtype=np.int64))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, scores.dtype), np.zeros(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(kept_scores), np.concatenate(kept_tokens)


def _live_range(scores: np.ndarray, live: np.ndarray | None) -> tuple[int, int]:
    """(lowest, highest) score of the live rows (at least one), without a copy of the pool."""
    if live is None:
        return int(scores.min()), int(scores.max())
    lo, hi = None, None
    step = 1 << 20
    for start in range(0, len(scores), step):
        block = scores[start : start + step][live[start : start + step]]
        if len(block):
            lo = int(block.min()) if lo is None else min(lo, int(block.min()))
            hi = int(block.max()) if hi is None else max(hi, int(block.max()))
    return lo, hi


def top_selection(keys: np.ndarray, docids, top: int) -> np.ndarray:
    """The best `top` rows in rank order (key asc, docid asc)."""
    keys = np.asarray(keys)
    n_keep = select_top(keys.size, top)
    if n_keep == 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(keys, n_keep - 1)[n_keep - 1]
    cand = np.flatnonzero(keys <= kth)
    cand_keys = keys[cand]
    coarse = np.argsort(cand_keys, kind="stable")
    docids_of = docid_reader(docids)
    order = _order_prefix(cand_keys[coarse], lambda pos: docids_of(cand[pos]), len(cand), coarse)
    return cand[order[:n_keep]]


def mixture_positions(selections: list[np.ndarray], docids, dedupe: bool = False) -> np.ndarray:
    """Positions, in the concatenation of `selections`, that a mixture keeps: all of them,
    or with `dedupe` the first occurrence of every docid (earlier targets win)."""
    rows = np.concatenate([np.asarray(s, dtype=np.int64) for s in selections]) if selections else np.zeros(0, np.int64)
    if not dedupe or not rows.size:
        return np.arange(len(rows), dtype=np.int64)
    ids = _as_arrow(docids).take(pa.array(rows))
    # np.unique keeps the first index of every value: stable "keep first".
    _, first = np.unique(np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object), return_index=True)
    return np.sort(first)


def mixture(selections: list[np.ndarray], docids, dedupe: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-target selections (SPEC 4 multi-target mixture).

    Returns (rows, target number of each row). With `dedupe`, a docid already
    selected by an earlier target (or earlier in the same one) is dropped, so
    the first occurrence is kept.
    """
    if not selections:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows = np.concatenate([np.asarray(s, dtype=np.int64) for s in selections])
    which = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(selections)])
    keep = mixture_positions(selections, docids, dedupe)
    return rows[keep], which[keep]


@dataclass(frozen=True)
class QualityCombination:
    combined: np.ndarray  # float64, lower is better, for the rows kept
    kept: np.ndarray  # positions (into the inputs) whose quality is present
    missing: int  # rows left out because their quality is missing or not finite


def min_max(values: np.ndarray) -> np.ndarray:
    """float64 (v - min) / (max - min); all zero when every value is equal (or there are none).
    Integer scores are shifted in int64, exactly, before the one division: their order and
    spacing are not rounded away above 2**53."""
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.float64)
    lo, hi = values.min(), values.max()
    if hi == lo:
        return np.zeros(values.shape, dtype=np.float64)
    if np.issubdtype(values.dtype, np.integer):
        values = values.astype(np.int64)
        return (values - int(lo)) / float(int(hi) - int(lo))
    return (values - lo) / (hi - lo)


def quality_combination(distance: np.ndarray, quality: np.ndarray, invert: bool) -> QualityCombination:
    """SPEC 4 quality combination: min-max normalise both over the pool (rows
    with missing or non-finite quality are left out first: one inf would
    turn every other row's normalised quality into 0), turn a higher-is-better quality
    into 1 - q, and add; lower is better. As upstream's ``--invert_quality``,
    ``invert=True`` says the column is higher-is-better (e.g. a FineWeb-Edu
    probability); without it the column is used as is (lower is better)."""
    distance = np.asarray(distance, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    kept = np.flatnonzero(np.isfinite(quality))
    if kept.size == 0:
        return QualityCombination(np.zeros(0), kept, int(quality.size))
    d = min_max(distance[kept])
    q = min_max(quality[kept])
    if invert:
        q = 1.0 - q
    return QualityCombination(d + q, kept, int(quality.size - kept.size))


def _through_tie_group(sorted_scores: np.ndarray, count: int) -> int:
    """Extend a prefix of length `count` (of scores sorted descending) to the end of its last tie group."""
    if count <= 0:
        return 0
    last = sorted_scores[count - 1]
    # sorted descending: rows with score >= last form the extended prefix
    return int(np.searchsorted(-sorted_scores, -last, side="right"))


def block_candidates(
    scores: np.ndarray, token_num: np.ndarray, *, top: int | None = None, budget: int | None = None
) -> np.ndarray:
    """Positions in one block that may belong to the global answer (a superset of it).

    Pure; needs no docids. The global order is (score descending, docid
    ascending).

    - `top` N: a row in the global top N is in its own block's top N, so
      the block's N best rows by score, extended through the last tie group
      (whose docid order is decided later, globally), are enough.
    - token `budget`: the global answer is the ranked prefix up to, not
      including, the first row that does not fit. Each row ranked ahead of a
      row of the answer is in the answer, so within its own block the tokens
      ahead of it are at most the budget. The block therefore returns every
      row whose block-order tokens-ahead are <= budget (its prefix plus its
      first row that does not fit, which the global cut may need to see),
      extended through the last tie group. A negative token_num breaks that
      argument: then the whole block is returned (still exact, just larger).
    - neither: every row (the quality combination normalises over all rows).
    """
    scores = np.asarray(scores, dtype=np.int64)
    n = len(scores)
    if n == 0 or (top is None and budget is None):
        return np.arange(n, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    if top is not None:
        keep = _through_tie_group(sorted_scores, min(int(top), n))
    else:
        tok = np.asarray(token_num, dtype=np.int64)[order]
        if (tok < 0).any():
            return np.arange(n, dtype=np.int64)
        ahead = np.cumsum(tok) - tok
        keep = _through_tie_group(sorted_scores, int(np.searchsorted(ahead, budget, side="right")))
    return np.sort(order[:keep])
