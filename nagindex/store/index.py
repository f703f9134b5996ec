"""The read side of an index: one committed snapshot of its directory.

An index is a directory:

    manifest.json            the committed state (see `manifest`): spec, Lance
                             table + version, segments, replaced rows
    docs*.lance/             LanceDB table: docid, token_num, dataset, payload
                             (text included), one uint16 feature column per
                             neuron type, `_row` (global row number)
    segments/seg-NNNNNN/     forward index + inverted lists of a row range
    deleted-NNNNNN.npy       global rows replaced by newer versions (--replace)
    .lock                    held by the one process that writes

Global row r is the r-th document ever added (Lance offset r in the table the
manifest names); rows replaced by an append with `replace=True` stay until
compaction and are masked by `live_mask()`.

A snapshot (`IndexSnapshot.open`) pins one manifest: its segments are
immutable and its Lance version is checked out, so it sees one consistent
state while a writer (`writer`) commits a new one.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nagindex.errors import NagError, damaged
from nagindex.schemas import (
    DEFAULT_NEURON_TYPE,
    EMBEDDING,
    ROW,
    FeatureSpec,
    feature_column,
    index_schema,
)
from nagindex.store import checksums
from nagindex.store import versions as index_versions
from nagindex.store.layout import LOCK_NAME, SEGMENTS_DIR, link_problem
from nagindex.store.manifest import Manifest, read_manifest
from nagindex.store.mapped import take_in_order
from nagindex.store.postings import StackedPostingLists, stack_postings
from nagindex.store.segment import Segment, gather_rows, iter_blocks

# Lance logs "No existing dataset ... will be created" as a warning on every new table.
os.environ.setdefault("LANCEDB_LOG", "error")

DELETED_PREFIX = "deleted-"

# Rows handled at once while streaming (memory ~ BATCH_ROWS * L*K * 2 bytes per type).
BATCH_ROWS = 65_536
# Largest segment: bounds the memory of building its inverted lists.
SEGMENT_ROWS = 1 << 20


# What Lance raises for a missing, truncated or unreadable file (pylance's
# LanceError(IO) is an OSError; some paths raise RuntimeError or ValueError).
LANCE_ERRORS = (OSError, RuntimeError, ValueError)


def first_line(exc: BaseException) -> str:
    """The first line of an error, without the source locations Lance appends."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r",\s*/[^,]*\.rs:\d+:\d+", "", line)


def inside(root: Path, path: Path) -> bool:
    """True when `path` resolves (symlinks followed) to a place inside `root`."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def check_own_entries(path: Path) -> None:
    """The damage error when one of the index's own folders or files is a link (`layout`)."""
    problem = link_problem(path)
    if problem:
        raise damaged(path, problem)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total



def live_rows(index) -> np.ndarray:
    """int64 global rows of the live documents of `index` (anything with `live_mask` and
    `num_rows`), ascending: every row but those replaced by a newer version."""
    mask = index.live_mask()
    if mask is None:
        return np.arange(index.num_rows, dtype=np.int64)
    return np.flatnonzero(mask).astype(np.int64)


class IndexSnapshot:
    """A NAG index directory, opened read-only as one committed snapshot."""

    segment_rows: int = SEGMENT_ROWS
    batch_rows: int = BATCH_ROWS
    # the generation of a past version this snapshot was opened at (read-only), else None
    pinned_version: int | None = None

    def __init__(self, path: str | os.PathLike, manifest: Manifest, model=None):
        self.path = Path(path)
        # a backbone named by the caller (`--model`): used instead of the recorded location
        self._model = model
        self._load(manifest)

    # -- opening ---------------------------------------------------------------
    def _load(self, manifest: Manifest) -> None:
        segments_dir = self.path / SEGMENTS_DIR
        for ref in manifest.segments:
            if not inside(self.path, segments_dir / ref.name):
                raise OSError(f"segment {ref.name} lies outside the index directory")
        # sizes only (one stat per file): the full hashes are `check`'s
        for name, expected in manifest.checksums.items():
            problem = checksums.size_problem(self.path, name, expected)
            if problem:
                raise OSError(problem)
        segments = [Segment(segments_dir, ref, manifest.spec) for ref in manifest.segments]
        deleted = np.zeros(0, dtype=np.int64)
        if manifest.deleted_file:
            deleted = np.load(self.path / manifest.deleted_file, allow_pickle=False)
            problem = deleted_rows_problem(deleted, manifest.num_deleted, manifest.num_rows)
            if problem:
                raise OSError(f"{manifest.deleted_file} {problem}")
        table = _check_lance_present(self.path, manifest, self._open_lance)
        self.manifest = manifest
        self._segments = segments
        self._deleted = deleted
        self._table = table  # None until first read (its import is the slowest of a query)
        self._docids = None
        self._token_num = None

    @classmethod
    def open(cls, path: str | os.PathLike, *, model=None, version: int | str | None = None) -> "IndexSnapshot":
        """Open the index at `path` read-only, pinned to its current committed state,
        or with `version` (a version number or tag, see `nag index versions`) to
        the state it had then; an index opened at a past version cannot be written.

        `model` (a path, hub id, ``embedded`` or a loaded Backbone) replaces the
        recorded backbone location when text must be extracted; its weights
        are checked against the index's.
        """
        path = Path(path)
        check_own_entries(path)
        if version is not None:
            read_manifest(path)  # a clear error when `path` is no index
            past = index_versions.resolve(path, version)
            try:
                snapshot = cls(path, past, model=model)
            except LANCE_ERRORS as e:
                raise NagError(f"version {version} of {path} is not readable any more ({first_line(e)})") from None
            if past.generation != read_manifest(path).generation:
                snapshot.pinned_version = past.generation
            return snapshot
        last_error: Exception | None = None
        for _ in range(5):
            manifest = read_manifest(path)
            try:
                return cls(path, manifest, model=model)
            except LANCE_ERRORS as e:
                # a compaction may have replaced the files between reading the
                # manifest and opening them: read the manifest again
                last_error = e
                if read_manifest(path).generation == manifest.generation:
                    break
        raise damaged(path, first_line(last_error))

    # -- the snapshot, for queries -----------------------------------------------
    @property
    def spec(self) -> FeatureSpec:
        return self.manifest.spec

    @property
    def num_rows(self) -> int:
        """Global rows, replaced ones included (see `live_mask`)."""
        return self.manifest.num_rows

    @property
    def num_documents(self) -> int:
        return self.manifest.num_live

    def __len__(self) -> int:
        return self.num_documents

    def live_mask(self) -> np.ndarray | None:
        """bool (num_rows): False for rows replaced by a newer version; None when all are live."""
        if not len(self._deleted):
            return None
        mask = np.ones(self.num_rows, dtype=bool)
        mask[self._deleted] = False
        return mask

    def feature_segments(self, neuron_type: str = DEFAULT_NEURON_TYPE) -> list[tuple[int, np.ndarray]]:
        """[(first global row, uint16 (n, L*K) memory-mapped matrix)] in row order."""
        self.spec.width(neuron_type)
        return [(s.ref.first_row, s.features[neuron_type]) for s in self._segments]

    def features(self, neuron_type: str = DEFAULT_NEURON_TYPE) -> np.ndarray:
        """All feature rows in one (num_rows, L*K) array (a copy when there are several segments)."""
        parts = [m for _, m in self.feature_segments(neuron_type)]
        if not parts:
            return np.zeros((0, self.spec.feature_length), dtype=np.uint16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def token_num(self) -> np.ndarray:
        """int64 (num_rows): token counts (0 where the pool had none); the mapped file
        itself where there is one segment."""
        if self._token_num is None:
            parts = []
            for s in self._segments:
                part = np.asarray(s.token_num)
                problem = token_num_problem(part)
                if problem:
                    raise damaged(self.path, f"{s.dir / 'token_num.i64'} {problem}")
                parts.append(part)
            if len(parts) == 1:
                self._token_num = parts[0]
            else:
                self._token_num = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._token_num

    def token_blocks(self, block_rows: int = BATCH_ROWS):
        """(first global row, int64 token counts) of every row, block by block, each checked;
        read without keeping the pool's counts in resident memory."""
        for s in self._segments:
            for start, block in iter_blocks(s.token_num, block_rows):
                problem = token_num_problem(block)
                if problem:
                    raise damaged(self.path, f"{s.dir / 'token_num.i64'} {problem}")
                yield s.ref.first_row + start, block

    def live_tokens(self) -> int:
        """Tokens of the live documents (the T of the SPEC's budget), read block by block."""
        mask = self.live_mask()
        total = 0
        for first, block in self.token_blocks():
            total += int(block.sum() if mask is None else block[mask[first : first + len(block)]].sum())
        return total

    def docids(self) -> pa.StringArray:
        """docid of every global row (num_rows), as one array (a copy of the mapped files:
        `docids_at` reads only the rows it is given)."""
        if self._docids is None:
            chunks = [c for s in self._segments for c in s.docid_chunks.chunks]
            self._docids = pa.chunked_array(chunks, type=pa.string()).combine_chunks()
            self._release_docid_pages()
        return self._docids

    def docids_at(self, rows: np.ndarray | Sequence[int]) -> pa.StringArray:
        """docids of global `rows` (any order), read from the segment files batch by
        batch with their pages handed back: memory grows with `rows`, not with the pool."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._docids is not None:
            return self._docids.take(pa.array(rows))
        return take_in_order(rows, self._docids_at_sorted)

    def _docids_at_sorted(self, rows: np.ndarray) -> pa.StringArray:
        parts = []
        for s in self._segments:
            lo, hi = np.searchsorted(rows, [s.ref.first_row, s.ref.first_row + s.ref.num_rows])
            if hi > lo:
                parts.append(s.docids_at(rows[lo:hi] - s.ref.first_row))
        if not parts:
            return pa.array([], pa.string())
        return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)

    def _release_docid_pages(self) -> None:
        for s in self._segments:
            s.release_docid_pages()

    def neuron_counts(self, neuron_type: str = DEFAULT_NEURON_TYPE) -> np.ndarray | None:
        """(L, width) int64: rows (replaced ones included) whose NAG holds each neuron,
        summed over the segments' stored counts; None where a segment predates them."""
        spec = self.spec
        total = np.zeros(spec.num_layers * spec.width(neuron_type), dtype=np.int64)
        for s in self._segments:
            counts = s.neuron_counts[neuron_type]
            if counts is None:
                return None
            total += counts
        return total.reshape(spec.num_layers, spec.width(neuron_type))

    def postings(self, neuron_type: str = DEFAULT_NEURON_TYPE):
        """FAISS inverted lists over all segments: list id = layer * width + neuron, ids = global rows."""

        self.spec.width(neuron_type)
        if not self._segments:
            import faiss

            return faiss.ArrayInvertedLists(self.spec.num_layers * self.spec.width(neuron_type), 0)
        return stack_postings([s.postings(neuron_type) for s in self._segments])

    @property
    def has_postings(self) -> bool:
        """Whether the segments carry inverted lists (not after `build(..., postings=False)`)."""
        return self.manifest.postings

    def posting_lists(self, neuron_type: str = DEFAULT_NEURON_TYPE):
        """The same lists read with numpy (`postings.StackedPostingLists`): `sizes()`, `ids(list_no)`."""

        if not self.has_postings:
            raise NagError(f"index {self.path} has no inverted lists (build it with --postings to have them)")
        nlist = self.spec.num_layers * self.spec.width(neuron_type)
        return StackedPostingLists([s.posting_lists(neuron_type) for s in self._segments], nlist)

    def prefetch_payload_reader(self) -> None:
        """Start importing the payload reader (pylance, with the pyarrow.dataset and
        pandas it pulls in: ~0.5 s, the largest import of a query) on a background
        thread, so that it overlaps the scoring of the pool instead of adding to it.
        `_lance` then finds it imported, or waits for it on Python's import lock."""
        if self._table is not None or self.manifest.lance_version is None or "lance" in sys.modules:
            return
        threading.Thread(target=_import_quietly, args=("lance",), name="nagindex-prefetch", daemon=True).start()

    def _lance(self):
        """The documents table at the manifest's version (opened on first use), or None.

        OSError when it cannot be opened: a compaction may have dropped it since
        the snapshot was taken (`take` then reads the newer state), or it is damaged."""
        if self._table is None and self.manifest.lance_version is not None:
            self._table = self._open_lance(self.manifest)
        return self._table

    def _newer(self, error: Exception) -> "IndexSnapshot":
        """The newest committed state, when a compaction replaced this snapshot's Lance
        table; the one-line damage error when nothing newer was committed."""
        try:
            newest = read_manifest(self.path)
        except NagError:
            newest = self.manifest
        if newest.generation == self.manifest.generation:
            table, problem = f"{self.manifest.lance_table}.lance", first_line(error)
            raise damaged(self.path, problem if table in problem else f"reading {table} failed ({problem})") from None
        return type(self).open(self.path, model=self._model)

    def _open_lance(self, manifest: Manifest):
        """The documents table at the manifest's version, for reading.

        Opened with the snapshot, so that it stays readable when a compaction
        commits a new table afterwards. Reads go through the Lance dataset itself (pylance) where it is
        installed: `import lancedb` costs over 2 s of start-up (its REST
        namespace client), which dominated a `nag query` from the CLI, while
        the dataset reader loads in a fraction of that. Writes stay with
        LanceDB. Both objects answer `.schema` and take rows by offset.
        """
        if manifest.lance_version is None:
            return None
        uri = self.path / f"{manifest.lance_table}.lance"  # checked to lie inside by `_check_lance_present`
        try:
            import lance
        except ImportError:
            import lancedb

            lance = None
        try:
            if lance is None:
                table = lancedb.connect(str(self.path)).open_table(manifest.lance_table)
                table.checkout(manifest.lance_version)
                return _LanceDBReader(table)
            return _LanceReader(lance.dataset(str(uri), version=manifest.lance_version))
        except LANCE_ERRORS as e:
            raise OSError(f"version {manifest.lance_version} of its Lance table {uri.name} cannot be opened ({first_line(e)})") from None

    def columns(self) -> list[str]:
        """Columns `take` can return."""
        try:
            table = self._lance()
        except LANCE_ERRORS as e:
            return self._newer(e).columns()  # compaction keeps the columns
        if table is None:
            return list(index_schema(self.spec).names)
        return list(table.schema.names)

    def take(self, rows: np.ndarray | Sequence[int], columns: Sequence[str] | None = None) -> pa.Table:
        """Document rows (payload) in the order of `rows` (global row numbers).

        `columns` defaults to every column except the feature columns and `_row`.
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise NagError(f"row numbers must be in 0..{self.num_rows - 1}")
        available = self.columns()
        if columns is None:
            hidden = {ROW, EMBEDDING} | {feature_column(t) for t in self.spec.neuron_types}
            columns = [c for c in available if c not in hidden]
        else:
            columns = list(columns)
            unknown = [c for c in columns if c not in available]
            if unknown:
                raise NagError(f"unknown column(s) {', '.join(unknown)}; this index has {', '.join(available)}")
        unique, inverse = np.unique(rows, return_inverse=True)
        try:
            table = self._lance()
            if table is None or not len(rows):
                schema = pa.schema([f for f in index_schema(self.spec) if f.name in columns]) if table is None else table.schema
                return pa.schema([schema.field(c) for c in columns]).empty_table()
            got = self._take_sorted(table, unique, columns)
        except LANCE_ERRORS as e:
            got = self._take_from_newer(unique, columns, e)
        return got.take(pa.array(inverse))

    def _take_sorted(self, table, unique: np.ndarray, columns: list[str]) -> pa.Table:
        parts = []
        for i in range(0, len(unique), 4 * self.batch_rows):
            chunk = unique[i : i + 4 * self.batch_rows]
            parts.append(table.take(chunk, columns))
        got = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if got.num_rows != len(unique):
            raise damaged(self.path, f"asked for {len(unique)} rows, its Lance table returned {got.num_rows}")
        return got

    def _take_from_newer(self, unique: np.ndarray, columns: list[str], error: Exception) -> pa.Table:
        """The same documents from the newest committed state, when a compaction
        removed the Lance table this snapshot pinned (their payload is unchanged:
        compaction only renumbers rows); a damaged table otherwise."""
        newer = self._newer(error)
        if newer.manifest.last_replace > self.manifest.generation:
            # a document may have new text under its old docid: reading it would pair it with this
            # snapshot's ranking
            raise NagError(f"index {self.path} changed while it was read (documents were replaced and the index "
                           "compacted); run the command again")
        if not len(unique):
            return newer.take(unique, columns)
        ids = self.docids_at(unique)
        live_ids, live_rows = newer._live_docids()
        pos = pc.index_in(ids, value_set=live_ids)
        if pos.null_count:
            raise NagError(f"index {self.path} changed while it was read (documents were replaced); run the command again")
        return newer._take_sorted(newer._lance(), live_rows[pos.to_numpy(zero_copy_only=False)], columns)

    @property
    def has_embeddings(self) -> bool:
        return self.manifest.embedder is not None

    def embeddings(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """(len(rows), dim) float32 unit vectors of the documents at global `rows`."""
        if not self.has_embeddings:
            raise NagError(f"index {self.path} has no embeddings; build it with --embedder")
        rows = np.asarray(rows, dtype=np.int64).ravel()
        dim = int(self.manifest.embedding_dim)
        out = np.empty((len(rows), dim), dtype=np.float32)
        step = 16 * self.batch_rows
        for start in range(0, len(rows), step):
            col = self.take(rows[start : start + step], [EMBEDDING]).column(EMBEDDING).combine_chunks()
            out[start : start + len(col)] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), dim)
        return out

    def info(self) -> dict:
        """Documents, tokens, backbone, L, K, neuron types, versions, pending deltas, size on disk."""
        spec, m = self.spec, self.manifest
        return {
            "path": str(self.path),
            "documents": m.num_live,
            "rows": m.num_rows,
            "replaced_rows": m.num_deleted,
            "tokens": self.live_tokens(),
            "backbone": spec.backbone,
            "backbone_hash": spec.backbone_hash,
            "tokenizer": spec.tokenizer,
            "num_layers": spec.num_layers,
            "top_k": spec.top_k,
            "neuron_types": list(spec.neuron_types),
            "layer_widths": {t: spec.layer_widths[t] for t in spec.neuron_types},
            "max_length": spec.max_length,
            "embedder": m.embedder,
            "embedding_dim": m.embedding_dim,
            "schema_version": m.schema_version,
            "generation": m.generation,
            "version": m.generation,
            "tags": sorted(name for name, g in index_versions.tags(self.path).items() if g == m.generation),
            "lance_table": m.lance_table,
            "lance_version": m.lance_version,
            "segments": len(m.segments),
            "postings": m.postings,
            "deltas_pending": m.deltas,
            "columns": [c for c in self.columns() if c != ROW],
            "size_bytes": _dir_size(self.path),
        }

    def _live_docids(self) -> tuple[pa.Array, np.ndarray]:
        """docids of the live rows and their global rows."""
        ids = self.docids()
        mask = self.live_mask()
        return (ids if mask is None else ids.filter(pa.array(mask))), live_rows(self)

    def _feature_rows(self, neuron_type: str, rows: np.ndarray) -> np.ndarray:
        """Feature rows at sorted global `rows`, gathered from the segments."""
        return gather_rows(self.feature_segments(neuron_type), rows, self.spec.feature_length)


def _lance_version_files(version: int) -> tuple[str, ...]:
    """The names Lance gives the manifest of `version` (its V1 and V2 naming schemes)."""
    return (f"{version}.manifest", f"{2**64 - 1 - version:020d}.manifest")


def _check_lance_present(path: Path, manifest: Manifest, open_lance):
    """OSError unless the Lance table and version the manifest names are there: a stat,
    without importing Lance (the slowest import of a query); an unknown file naming
    is left to Lance itself (its opened table is returned)."""
    if manifest.lance_version is None:
        return None
    uri = path / f"{manifest.lance_table}.lance"
    if not inside(path, uri):
        raise OSError(f"the Lance table {manifest.lance_table} lies outside the index directory")
    if not uri.is_dir():
        raise OSError(f"its Lance table {uri.name} is missing")
    if any((uri / "_versions" / name).is_file() for name in _lance_version_files(manifest.lance_version)):
        return None
    return open_lance(manifest)


def token_num_problem(token_num: np.ndarray) -> str | None:
    """Why a segment's token counts cannot be right, or None."""
    if len(token_num) and int(token_num.min()) < 0:
        return f"holds a negative token count ({int(token_num.min())})"
    return None


def deleted_rows_problem(deleted: np.ndarray, expected: int, num_rows: int) -> str | None:
    """Why a deleted-row file cannot be right, or None: it must list `expected`
    distinct rows of 0..num_rows-1 in ascending order."""
    if deleted.ndim != 1 or not np.issubdtype(deleted.dtype, np.integer):
        return f"is not a list of row numbers ({deleted.dtype}, shape {deleted.shape})"
    if len(deleted) != expected:
        return f"lists {len(deleted)} rows, the manifest {expected}"
    if len(deleted) and (int(deleted[0]) < 0 or int(deleted[-1]) >= num_rows or bool(np.any(np.diff(deleted) <= 0))):
        return f"lists rows outside 0..{num_rows - 1} or out of order"
    return None


def _import_quietly(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - `_lance` imports it again and reports what is wrong
        pass


class _LanceReader:
    """Rows by offset from a pylance dataset pinned to one version."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.schema = dataset.schema

    def count_rows(self) -> int:
        return self.dataset.count_rows()

    def take(self, offsets: np.ndarray, columns: list[str]) -> pa.Table:
        return self.dataset.take(offsets.tolist(), columns=columns)


class _LanceDBReader:
    """The same through LanceDB, where pylance is not installed."""

    def __init__(self, table):
        self.table = table
        self.schema = table.schema

    def take(self, offsets: np.ndarray, columns: list[str]) -> pa.Table:
        return self.table.take_offsets(offsets.tolist()).select(columns).to_arrow()
