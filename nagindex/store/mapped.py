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
        """Hand one batch's pages back (the data stays readable: it maps again on use)."""
        if not hasattr(self._map, "madvise"):
            return
        base = pa.py_buffer(self._map).address
        spans = [(b.address - base, b.address - base + b.size)
                 for column in batch.columns for b in column.buffers() if b is not None and b.size]
        if not spans:
            return
        lo = min(a for a, _ in spans) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = max(b for _, b in spans)
        if 0 <= lo < hi <= len(self._map):
            try:
                self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    def release(self) -> None:
        """Hand every page of the file back."""
        if hasattr(self._map, "madvise"):
            try:
                self._map.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass
