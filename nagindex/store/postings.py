"""Inverted lists of NAG features, stored so that FAISS maps them from disk.

For one neuron type the inverted list of (layer l, neuron j) holds the global
rows of the documents whose NAG has j among the top-K of layer l; its list id
is ``l * width + j``. A row appears in a list as often as the neuron appears in
that layer of its feature (once, for top-K features), so summing list weights
reproduces the SPEC score exactly.

On disk a segment keeps, per neuron type, the ids of all lists concatenated in
list order (``int64``, the data layout of `faiss.OnDiskInvertedLists` with
code_size 0) and the list offsets (``.npy``). Opening builds the OnDisk
metadata in memory, so FAISS maps the ids read-only and nothing is copied.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

# faiss (~0.2 s to import) loads only when lists are opened: a scan never needs it.
if TYPE_CHECKING:
    import faiss


def ids_path(segment_dir: Path, neuron_type: str) -> Path:
    return Path(segment_dir) / f"postings.{neuron_type}.ids"


def offsets_path(segment_dir: Path, neuron_type: str) -> Path:
    return Path(segment_dir) / f"postings.{neuron_type}.offsets.npy"


def layer_postings(block: np.ndarray, width: int, first_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverted lists of one layer.

    `block` is (n, K): the layer's K neuron indices of n documents. Returns
    (sizes, ids): sizes[j] = number of entries of neuron j, ids = the global
    rows sorted by (neuron, row). A stable radix sort on the uint16 indices
    keeps rows ascending within each list.
    """
    n, k = block.shape
    flat = np.ascontiguousarray(block, dtype=np.uint16).ravel()
    ids = np.argsort(flat, kind="stable").astype(np.int64, copy=False)
    np.floor_divide(ids, k, out=ids)  # entry position -> row, in place (n*K*8 bytes saved)
    ids += first_row
    sizes = np.bincount(flat, minlength=width).astype(np.int64)
    return sizes, ids


def write_postings(
    segment_dir: Path,
    neuron_type: str,
    layer_blocks: Iterable[np.ndarray],
    width: int,
    first_row: int,
) -> None:
    """Write the inverted lists of one neuron type, given its (n, K) block of each layer in order.

    One layer at a time is in memory (n*K*18 bytes), whatever the number of layers.
    """
    offsets = [np.zeros(1, dtype=np.int64)]
    end = 0
    with open(ids_path(segment_dir, neuron_type), "wb") as f:
        for block in layer_blocks:
            sizes, ids = layer_postings(block, width, first_row)
            offsets.append(end + np.cumsum(sizes))
            end += int(sizes.sum())
            ids.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    with open(offsets_path(segment_dir, neuron_type), "wb") as f:
        np.save(f, np.concatenate(offsets))
        f.flush()
        os.fsync(f.fileno())


def _ondisk_metadata(data_path: Path, offsets: np.ndarray) -> bytes:
    """Serialised `faiss.OnDiskInvertedLists` ("ilod") over `data_path`, code_size 0."""
    nlist = len(offsets) - 1
    sizes = np.diff(offsets).astype("<u8")
    # one OnDiskOneList per list: size, capacity, byte offset of the ids
    lists = np.stack([sizes, sizes, (offsets[:-1] * 8).astype("<u8")], axis=1)
    name = str(Path(data_path).resolve()).encode()
    return b"".join(
        [
            b"ilod",
            struct.pack("<QQ", nlist, 0),
            struct.pack("<Q", nlist),
            lists.tobytes(),
            struct.pack("<Q", 0),  # no free slots
            struct.pack("<Q", len(name)),
            name,
            struct.pack("<Q", int(offsets[-1]) * 8),
        ]
    )


def open_postings(segment_dir: Path, neuron_type: str) -> faiss.InvertedLists:
    """Map one segment's inverted lists of `neuron_type` read-only."""
    import faiss

    offsets = np.load(offsets_path(segment_dir, neuron_type))
    data = ids_path(segment_dir, neuron_type)
    if os.path.getsize(data) != int(offsets[-1]) * 8:
        raise OSError(f"{data} does not match its offsets (truncated segment?)")
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.frombuffer(_ondisk_metadata(data, offsets), dtype=np.uint8), reader.data)
    return faiss.read_InvertedLists(reader, faiss.IO_FLAG_READ_ONLY)


def stack_postings(parts: list[faiss.InvertedLists]) -> faiss.InvertedLists:
    """One view over the lists of several segments (base + deltas), in segment order."""
    if len(parts) == 1:
        return parts[0]
    import faiss

    pointers = faiss.InvertedListsPtrVector()
    for part in parts:
        pointers.push_back(part)
    stacked = faiss.HStackInvertedLists(len(parts), pointers.data())
    # the view holds raw pointers: keep the parts (and the pointer array) alive with it
    stacked.referenced_objects = [pointers, *parts]
    return stacked


def list_ids(invlists: faiss.InvertedLists, list_no: int) -> np.ndarray:
    """A copy of the ids of one list (works for stacked and mapped lists)."""
    n = invlists.list_size(list_no)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    import faiss

    ptr = invlists.get_ids(list_no)
    try:
        return faiss.rev_swig_ptr(ptr, n).copy()
    finally:
        invlists.release_ids(list_no, ptr)


class PostingLists:
    """The same lists read with numpy: list sizes from the offsets, ids as slices of
    the memory-mapped ids file (no faiss import, no copy, no per-list call overhead).

    The map is made when the segment is opened, so a snapshot keeps reading its
    lists even after a compaction removes the file."""

    def __init__(self, offsets: np.ndarray, ids: np.ndarray):
        self.offsets = offsets
        self._ids = ids

    @classmethod
    def open(cls, segment_dir: Path, neuron_type: str) -> "PostingLists":
        offsets = np.load(offsets_path(segment_dir, neuron_type))
        data = ids_path(segment_dir, neuron_type)
        size = os.path.getsize(data)
        if size != int(offsets[-1]) * 8:
            raise OSError(f"{data} does not match its offsets (truncated segment?)")
        ids = np.memmap(data, dtype=np.int64, mode="r") if size else np.zeros(0, dtype=np.int64)
        return cls(offsets, ids)

    @property
    def nlist(self) -> int:
        return len(self.offsets) - 1

    def sizes(self) -> np.ndarray:
        """int64 (nlist): entries of every list."""
        return np.diff(self.offsets)

    def ids(self, list_no: int) -> np.ndarray:
        """The rows of one list, ascending (a read-only view)."""
        return self._ids[self.offsets[list_no] : self.offsets[list_no + 1]]


class StackedPostingLists:
    """One view over the numpy lists of several segments (in row order)."""

    def __init__(self, parts: list[PostingLists], nlist: int):
        self.parts = parts
        self.nlist = nlist

    def sizes(self) -> np.ndarray:
        total = np.zeros(self.nlist, dtype=np.int64)
        for part in self.parts:
            total += part.sizes()
        return total

    def ids(self, list_no: int) -> np.ndarray:
        if len(self.parts) == 1:
            return self.parts[0].ids(list_no)
        return np.concatenate([part.ids(list_no) for part in self.parts])
