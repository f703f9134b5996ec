"""The scan: every live row scored from the memory-mapped forward index, block by block,
with the gather-sum kernel (`scoring.score_features`); memory is the block plus the
score, token and row arrays, whatever the pool size."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from nagindex.errors import NagError
from nagindex.ranking import scoring
from nagindex.store.segment import gather_rows

SCAN_BLOCK_ROWS = 65536


def pool_neuron_counts(index, neuron_type: str, live: np.ndarray, slots: int | None = None) -> np.ndarray:
    """(L, width) number of live documents whose NAG holds each neuron: the
    posting-list sizes, less the replaced rows' entries (so the answer does
    not change when `compact` drops them). With `slots` below the index's K
    (the NAG at a smaller K), or without lists, the forward index is read."""
    spec = index.spec
    width = spec.width(neuron_type)
    if slots is not None and slots != spec.top_k:
        return _slot_counts(index, neuron_type, live, slots)
    if not getattr(index, "has_postings", True):  # built without --postings: count from the forward index
        return _slot_counts(index, neuron_type, live, spec.top_k)
    sizes = index.posting_lists(neuron_type).sizes()
    if len(live) < index.num_rows:
        dead = np.setdiff1d(np.arange(index.num_rows, dtype=np.int64), live)
        sizes -= scoring.layer_counts(
            read_rows(index, neuron_type, dead), num_layers=spec.num_layers, top_k=spec.top_k, width=width
        ).ravel()
    return sizes.reshape(spec.num_layers, width)


def _slot_counts(index, neuron_type: str, live: np.ndarray, slots: int) -> np.ndarray:
    """Document counts per (layer, neuron) over the first `slots` ranks of the live rows."""
    spec = index.spec
    width = spec.width(neuron_type)
    is_live = np.zeros(index.num_rows, dtype=bool)
    is_live[live] = True
    counts = np.zeros((spec.num_layers, width), dtype=np.int64)
    for first, matrix in index.feature_segments(neuron_type):
        for start, block in iter_blocks(matrix, SCAN_BLOCK_ROWS):
            keep = is_live[first + start : first + start + len(block)]
            sub = scoring.select_slots(np.asarray(block)[keep], spec.num_layers, spec.top_k, slots)
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


