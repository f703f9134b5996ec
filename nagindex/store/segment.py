"""Segments: the immutable, memory-mappable forward index of a range of rows.

A segment directory holds, for rows [first_row, first_row + n):
  features.<type>.u16          (n, L*K) uint16, row-major: what a scan reads
  token_num.i64                (n,) int64, 0 where the pool had no count
  docids.arrow                 Arrow IPC file, one string column `docid`
  neuron_counts.<type>.i64     (L*width,) int64: documents whose NAG holds each
                               (layer, neuron), the document frequencies that
                               the idf and contrast weightings read
  postings.<type>.*            inverted lists (see `postings`)
  segment.json                 row range and shape, written last
A segment is written under a temporary name and renamed into place when
complete; it is derived data (rebuildable from the Lance table) and only
counts once the manifest lists it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from nagindex.store import checksums as _checksums
from nagindex.store import postings as _postings
from nagindex.atomic import fsync_dir
from nagindex.errors import NagError
from nagindex.store.manifest import SegmentRef
from nagindex.store.mapped import MappedArrow, hand_back
from nagindex.schemas import DOCID, FeatureSpec

SEGMENT_META = "segment.json"
TMP_PREFIX = ".tmp-"


def features_path(segment_dir: Path, neuron_type: str) -> Path:
    return Path(segment_dir) / f"features.{neuron_type}.u16"


def neuron_counts_path(segment_dir: Path, neuron_type: str) -> Path:
    return Path(segment_dir) / f"neuron_counts.{neuron_type}.i64"


def neuron_counts(features: np.ndarray, num_layers: int, top_k: int, width: int) -> np.ndarray:
    """(L*width,) int64: how many of the rows hold each (layer, neuron) among their K
    (a NAG's K neurons of a layer are distinct), one layer at a time."""
    counts = np.zeros(num_layers * width, dtype=np.int64)
    for layer in range(num_layers):
        ids = np.asarray(features[:, layer * top_k : (layer + 1) * top_k]).ravel()
        counts[layer * width : (layer + 1) * width] = np.bincount(ids, minlength=width)[:width]
    return counts


def token_num_path(segment_dir: Path) -> Path:
    return Path(segment_dir) / "token_num.i64"


def docids_path(segment_dir: Path) -> Path:
    return Path(segment_dir) / "docids.arrow"


def segment_name(number: int) -> str:
    return f"seg-{number:06d}"


def _write_array(f, array: np.ndarray) -> None:
    """Append an array's bytes to an open file (the one place segment data is written)."""
    f.write(np.ascontiguousarray(array).data)


_DOCID_SCHEMA = pa.schema([pa.field(DOCID, pa.string(), nullable=False)])


def _layer_path(segment_dir: Path, neuron_type: str, layer: int) -> Path:
    return Path(segment_dir) / f".layer.{neuron_type}.{layer:03d}.u16"


def _read_and_remove(path: Path, shape: tuple[int, int]) -> np.ndarray:
    block = np.fromfile(path, dtype=np.uint16).reshape(shape)
    path.unlink()
    return block


class SegmentWriter:
    """Writes one segment under a temporary directory; `finish` renames it into place."""

    def __init__(self, segments_dir: Path, number: int, spec: FeatureSpec, first_row: int, *, postings: bool = True):
        self.segments_dir = Path(segments_dir)
        self.postings = postings
        self.name = segment_name(number)
        self.spec = spec
        self.first_row = first_row
        self.num_rows = 0
        self.checksums: dict[str, list] = {}  # filled by `finish`, keyed relative to the index
        self.tmp = self.segments_dir / f"{TMP_PREFIX}{self.name}-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._features = {t: open(features_path(self.tmp, t), "wb") for t in spec.neuron_types}
        # the same features again, one file per (type, layer): the inverted lists
        # are built layer by layer from these without mapping the whole matrix
        self._layers = {
            (t, layer): open(_layer_path(self.tmp, t, layer), "wb")
            for t in spec.neuron_types for layer in range(spec.num_layers) if postings
        }
        self._tokens = open(token_num_path(self.tmp), "wb")
        self._docids = pa.ipc.new_file(str(docids_path(self.tmp)), _DOCID_SCHEMA)
        self._neuron_counts = {t: np.zeros(spec.num_layers * spec.width(t), dtype=np.int64) for t in spec.neuron_types}

    def add(self, docids: pa.Array, token_num: np.ndarray, features: dict[str, np.ndarray]) -> None:
        n = len(docids)
        k = self.spec.top_k
        for t in self.spec.neuron_types:
            _write_array(self._features[t], features[t])
            self._neuron_counts[t] += neuron_counts(features[t], self.spec.num_layers, k, self.spec.width(t))
            for layer in range(self.spec.num_layers if self.postings else 0):
                _write_array(self._layers[t, layer], features[t][:, layer * k : (layer + 1) * k])
        _write_array(self._tokens, np.asarray(token_num, dtype=np.int64))
        self._docids.write_batch(pa.record_batch([docids.cast(pa.string())], schema=_DOCID_SCHEMA))
        self.num_rows += n

    def _close_files(self) -> None:
        for f in [*self._features.values(), self._tokens]:
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        for f in self._layers.values():
            f.close()  # temporary: no fsync
        self._docids.close()

    def finish(self) -> SegmentRef:
        """Close the files, build the inverted lists, rename into place."""
        self._close_files()
        spec = self.spec
        for t in spec.neuron_types if self.postings else ():
            blocks = (
                _read_and_remove(_layer_path(self.tmp, t, layer), (self.num_rows, spec.top_k)) for layer in range(spec.num_layers)
            )
            _postings.write_postings(self.tmp, t, blocks, spec.width(t), self.first_row)
        for t in spec.neuron_types:
            with open(neuron_counts_path(self.tmp, t), "wb") as f:
                _write_array(f, self._neuron_counts[t])
                f.flush()
                os.fsync(f.fileno())
        meta = {"first_row": self.first_row, "num_rows": self.num_rows, "feature_length": spec.feature_length, "neuron_types": list(spec.neuron_types)}
        with open(self.tmp / SEGMENT_META, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.tmp)
        prefix = f"{self.segments_dir.name}/{self.name}/"
        self.checksums = {prefix + k: v for k, v in _checksums.describe_dir(self.tmp, self.tmp).items()}
        final = self.segments_dir / self.name
        if final.exists():  # an orphan of a crashed writer that was never committed
            shutil.rmtree(final)
        os.rename(self.tmp, final)
        fsync_dir(self.segments_dir)
        return SegmentRef(self.name, self.first_row, self.num_rows)

    def abort(self) -> None:
        try:
            self._close_files()
        except Exception:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


class Segment:
    """A committed segment, mapped read-only."""

    def __init__(self, segments_dir: Path, ref: SegmentRef, spec: FeatureSpec):
        self.ref = ref
        self.dir = Path(segments_dir) / ref.name
        self.spec = spec
        n = ref.num_rows
        try:
            meta = json.loads((self.dir / SEGMENT_META).read_text())
            if meta["num_rows"] != n or meta["first_row"] != ref.first_row:
                raise OSError(f"{self.dir} describes rows {meta['first_row']}+{meta['num_rows']}, the manifest {ref.first_row}+{n}")
            self.features = {
                t: np.memmap(features_path(self.dir, t), dtype=np.uint16, mode="r", shape=(n, spec.feature_length))
                for t in spec.neuron_types
            }
            self.token_num = np.memmap(token_num_path(self.dir), dtype=np.int64, mode="r", shape=(n,))
            # None in segments written before the counts were kept
            self.neuron_counts = {t: _read_counts(neuron_counts_path(self.dir, t), spec.num_layers * spec.width(t))
                                  for t in spec.neuron_types}
            # the record batches stay in the mapped file: a query reads only the docids it needs
            self._docids = MappedArrow(docids_path(self.dir))
            self.docid_chunks = self._docids.table.column(DOCID)
            # opened now, not on first use, so that a snapshot never depends on
            # files a later compaction may remove
            self.posting_lists_by_type = {
                t: _postings.PostingLists.open(self.dir, t)
                for t in spec.neuron_types if _postings.offsets_path(self.dir, t).exists()
            }
            self._faiss_postings: dict = {}
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            raise OSError(f"segment {self.dir} is damaged: {e}") from None
        if len(self.docid_chunks) != n:
            raise OSError(f"segment {self.dir} is damaged: {len(self.docid_chunks)} docids for {n} rows")

    def docids_at(self, rows: np.ndarray) -> pa.StringArray:
        """docids at ascending segment-local `rows`, read batch by batch with each batch's
        pages handed back (`mapped.MappedArrow`)."""
        return self._docids.take_sorted(rows).column(DOCID).combine_chunks()

    def release_docid_pages(self) -> None:
        """Hand the docid file's pages back to the OS page cache."""
        self._docids.release()

    def postings(self, neuron_type: str):
        """The lists as FAISS `InvertedLists` (imports faiss on first use)."""
        if neuron_type not in self._faiss_postings:
            self.posting_lists(neuron_type)  # a clear error where there are none
            self._faiss_postings[neuron_type] = _postings.open_postings(self.dir, neuron_type)
        return self._faiss_postings[neuron_type]

    def posting_lists(self, neuron_type: str) -> _postings.PostingLists:
        """The lists read with numpy (what queries use)."""
        if neuron_type not in self.posting_lists_by_type:
            raise NagError(f"segment {self.dir} has no inverted lists (the index was built without --postings)")
        return self.posting_lists_by_type[neuron_type]


def _read_counts(path: Path, length: int) -> np.ndarray | None:
    if not path.exists():
        return None
    counts = np.fromfile(path, dtype=np.int64)
    if len(counts) != length or (counts < 0).any():
        raise OSError(f"{path} is damaged: {len(counts)} neuron counts, expected {length} non-negative")
    return counts


def gather_rows(segments, rows: np.ndarray, feature_length: int) -> np.ndarray:
    """Feature rows at sorted global `rows`, gathered from (first row, matrix) segments."""
    out = np.empty((len(rows), feature_length), dtype=np.uint16)
    for first, matrix in segments:
        lo, hi = np.searchsorted(rows, [first, first + len(matrix)])
        if hi > lo:
            out[lo:hi] = matrix[rows[lo:hi] - first]
    return out


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
    """(first row, block) over a segment's memory-mapped matrix or vector,
    without holding the pool in this process's resident memory: a memory-
    mapped file is read in place and each block's pages are handed back
    (MADV_DONTNEED, they stay in the OS page cache) once the caller is done
    with it, or, where that is not possible, read into one reused buffer.
    Peak RSS does not grow with the pool."""
    n = len(matrix)
    row_bytes = matrix.itemsize * int(np.prod(matrix.shape[1:], dtype=np.int64))
    mm = getattr(matrix, "_mmap", None)
    if _whole_file_map(matrix) is not None and mm is not None and hasattr(mm, "madvise"):
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            yield start, matrix[start:stop]
            hand_back(mm, start * row_bytes, stop * row_bytes)
        return
    path = _whole_file_map(matrix)
    if path is None:
        for start in range(0, n, block_rows):
            yield start, np.ascontiguousarray(matrix[start : start + block_rows])
        return
    buf = np.empty((min(block_rows, n), *matrix.shape[1:]), dtype=matrix.dtype)
    with open(path, "rb", buffering=0) as f:
        for start in range(0, n, block_rows):
            rows = min(block_rows, n - start)
            view = buf[:rows]
            f.seek(start * row_bytes)
            got = f.readinto(memoryview(view).cast("B"))
            if got != rows * row_bytes:
                raise NagError(f"{path} is shorter than the index says (truncated?)")
            yield start, view


