"""An Arrow IPC file mapped read-only and read by row position, one record batch at a
time, each batch's pages handed back to the OS page cache once read: rows scattered
over a large file never hold the whole file in the process's resident memory."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pyarrow as pa


def map_file(path: Path):
    """A read-only mapping of a whole file (a bytes object for an empty one: mmap refuses those)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def hand_back(mapping, lo: int = 0, hi: int | None = None) -> None:
    """Drop this process's pages of bytes [lo, hi) of a file `mapping` (MADV_DONTNEED:
    they stay in the OS page cache and map again on use), where the platform can."""
    if not hasattr(mapping, "madvise"):
        return
    hi = len(mapping) if hi is None else hi
    lo = lo // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= lo < hi <= len(mapping):
        try:
            mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            pass


def take_in_order(positions: np.ndarray, take_sorted):
    """`take_sorted` (rows at ascending positions, as a pyarrow table or array) for
    `positions` in any order: sorted first, put back in the order given after."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) < 2 or bool(np.all(positions[1:] >= positions[:-1])):
        return take_sorted(positions)
    order = np.argsort(positions, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return take_sorted(positions[order]).take(pa.array(inverse))


class MappedArrow:
    """The record batches of an Arrow IPC file, zero-copy over our own mapping
    (pyarrow's gives no way to hand pages back)."""

    def __init__(self, path: str | os.PathLike):
        self._map = map_file(Path(path))
        self.table = pa.ipc.open_file(pa.py_buffer(self._map)).read_all()
        self._starts = np.cumsum([0] + [b.num_rows for b in self.table.to_batches()])

    def __len__(self) -> int:
        return self.table.num_rows

    def take_sorted(self, positions: np.ndarray) -> pa.Table:
        """Rows at ascending `positions`, batch by batch (arrow's take on a chunked table
        joins every chunk first: a copy of the whole file)."""
        positions = np.asarray(positions, dtype=np.int64)
        bounds = np.searchsorted(positions, self._starts)
        parts = []
        for k, batch in enumerate(self.table.to_batches()):
            if bounds[k + 1] > bounds[k]:
                parts.append(batch.take(pa.array(positions[bounds[k] : bounds[k + 1]] - self._starts[k])))
                self._release(batch)
        if not parts:
            return self.table.schema.empty_table()
        return pa.Table.from_batches(parts).combine_chunks()

    def take(self, positions: np.ndarray) -> pa.Table:
        """Rows at `positions` in the order given."""
        return take_in_order(positions, self.take_sorted)

    def _release(self, batch: pa.RecordBatch) -> None:
        """Hand one batch's pages back."""
        base = pa.py_buffer(self._map).address
        spans = [(b.address - base, b.address - base + b.size)
                 for column in batch.columns for b in column.buffers() if b is not None and b.size]
        if spans:
            hand_back(self._map, min(a for a, _ in spans), max(b for _, b in spans))

    def release(self) -> None:
        """Hand every page of the file back."""
        hand_back(self._map)
