"""The scan: every row scored from the memory-mapped forward index, block by block,
with the gather-sum kernel (`scoring.score_features`); memory is one block plus
one int64 score per row and profile, whatever the pool size."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nagindex.ranking import scoring
from nagindex.store.segment import gather_rows, iter_blocks

SCAN_BLOCK_ROWS = 65536


def pool_neuron_counts(index, neuron_type: str, live_mask: np.ndarray | None, slots: int | None = None) -> np.ndarray:
    """(L, width) number of live documents (`live_mask`, None: every row) whose NAG
    holds each neuron: the counts the segments keep (or the posting-list sizes),
    less the replaced rows' entries (so the answer does not change when `compact`
    drops them). With `slots` below the index's K (the NAG at a smaller K), or an
    index that keeps neither, the forward index is read."""
    spec = index.spec
    width = spec.width(neuron_type)
    if slots is not None and slots != spec.top_k:
        return _slot_counts(index, neuron_type, live_mask, slots)
    stored = getattr(index, "neuron_counts", None)
    counts = stored(neuron_type) if stored is not None else None
    if counts is None and getattr(index, "has_postings", True):
        counts = index.posting_lists(neuron_type).sizes().reshape(spec.num_layers, width)
    if counts is None:
        return _slot_counts(index, neuron_type, live_mask, spec.top_k)
    if live_mask is not None and not live_mask.all():
        dead = np.flatnonzero(~live_mask).astype(np.int64)
        counts = counts - scoring.layer_counts(read_rows(index, neuron_type, dead), num_layers=spec.num_layers,
                                               top_k=spec.top_k, width=width)
    return counts


def _slot_counts(index, neuron_type: str, live_mask: np.ndarray | None, slots: int) -> np.ndarray:
    """Document counts per (layer, neuron) over the first `slots` ranks of the live rows."""
    spec = index.spec
    width = spec.width(neuron_type)
    counts = np.zeros((spec.num_layers, width), dtype=np.int64)
    for first, matrix in index.feature_segments(neuron_type):
        for start, block in iter_blocks(matrix, SCAN_BLOCK_ROWS):
            if live_mask is not None:
                block = np.asarray(block)[live_mask[first + start : first + start + len(block)]]
            sub = scoring.select_slots(block, spec.num_layers, spec.top_k, slots)
            counts += scoring.layer_counts(sub, num_layers=spec.num_layers, top_k=slots, width=width)
    return counts


def read_rows(index, neuron_type: str, rows: np.ndarray) -> np.ndarray:
    """Feature rows at sorted global `rows`, gathered from the segments."""

    return gather_rows(index.feature_segments(neuron_type), rows, index.spec.feature_length)


def scan_scores(index, profiles: Sequence[scoring.Profile], neuron_type: str, *, progress: bool = False) -> np.ndarray:
    """(len(profiles), num_rows) int64 scores of every row, one pass over the
    forward matrices (each block is read once for all profiles)."""
    scores = np.zeros((len(profiles), index.num_rows), dtype=np.int64)
    kernel = scoring.choose_kernel(index.num_rows * len(profiles))  # once for the whole pool
    bar = _progress_bar(index.num_rows, progress)
    for first, matrix in index.feature_segments(neuron_type):
        for start, block in iter_blocks(matrix, SCAN_BLOCK_ROWS):
            lo = first + start
            scores[:, lo : lo + len(block)] = scoring.score_features_many(block, profiles, kernel=kernel)
            bar.update(len(block))
    bar.close()
    return scores


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, progress: bool):
    if not progress:
        return _NoBar()  # tqdm.auto imports asyncio: not worth it for a bar nobody sees
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="doc", desc="scan", dynamic_ncols=True)
